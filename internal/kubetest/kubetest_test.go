package kubetest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// TestServiceAccountIsHeldToRBACAndEvictionToTheBudget starts one control
// plane and checks what the remediator's tests rely on: a ServiceAccount
// gets exactly what its ClusterRole grants, the disruption controller runs
// (an eviction the budget allows is accepted), the Eviction API refuses
// what the budget forbids, and nothing outlives the test.
func TestServiceAccountIsHeldToRBACAndEvictionToTheBudget(t *testing.T) {
	var c *ControlPlane
	t.Run("control plane", func(t *testing.T) {
		began := time.Now()
		c = Start(t, Options{})
		t.Logf("Start took %v", time.Since(began).Round(time.Millisecond))
		if len(c.procs) != 3 {
			t.Fatalf("%d components running, want 3", len(c.procs))
		}
		checkRBAC(t, c)
		checkEviction(t, c)
	})
	if c == nil {
		return // skipped
	}
	for _, p := range c.procs {
		select {
		case <-p.done:
		default:
			t.Errorf("%s (pid %d) still running after the test", p.name, p.cmd.Process.Pid)
		}
	}
}

const (
	ns     = "ark"
	saName = "remediator"
)

func checkRBAC(t *testing.T, c *ControlPlane) {
	ctx := t.Context()
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "ark-remediator"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "patch"}},
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"}},
			{APIGroups: []string{""}, Resources: []string{"pods/eviction"}, Verbs: []string{"create"}},
		},
	}
	if _, err := c.Client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "ark-remediator"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: saName}},
	}
	if _, err := c.Client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.CreateNode(t, "gpu-node-1", map[string]string{"nvidia.com/gpu.present": "true"})
	c.CreatePod(t, ns, "victim", "gpu-node-1", map[string]string{"app": "victim"}, nil)

	// Through a kubeconfig file, as a child process would see it.
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig(t, c.ServiceAccountConfig(t, ns, saName)))
	if err != nil {
		t.Fatal(err)
	}
	sa, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}

	// The apiserver's RBAC cache learns of the binding through a watch.
	var nodes *corev1.NodeList
	eventually(t, func() error {
		nodes, err = sa.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		return err
	})
	if len(nodes.Items) != 1 || nodes.Items[0].Name != "gpu-node-1" {
		t.Fatalf("the serviceaccount lists nodes %v, want [gpu-node-1]", nodes.Items)
	}
	cordon := []byte(`{"spec":{"unschedulable":true}}`)
	node, err := sa.CoreV1().Nodes().Patch(ctx, "gpu-node-1", types.StrategicMergePatchType, cordon, metav1.PatchOptions{})
	if err != nil || !node.Spec.Unschedulable {
		t.Fatalf("cordoning as the serviceaccount: %v", err)
	}
	if err := sa.CoreV1().Pods(ns).Delete(ctx, "victim", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("deleting a pod as the serviceaccount: got %v, want Forbidden", err)
	}
	if _, err := sa.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("listing secrets as the serviceaccount: got %v, want Forbidden", err)
	}
	if err := c.Client.CoreV1().Pods(ns).Delete(ctx, "victim", *metav1.NewDeleteOptions(0)); err != nil {
		t.Fatalf("deleting a pod as admin: %v", err)
	}
}

func checkEviction(t *testing.T, c *ControlPlane) {
	ctx := t.Context()
	sa, err := kubernetes.NewForConfig(c.ServiceAccountConfig(t, ns, saName))
	if err != nil {
		t.Fatal(err)
	}
	c.CreateNode(t, "gpu-node-2", nil)
	owner := &metav1.OwnerReference{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "trainer", UID: "trainer-uid", Controller: new(true)}
	for _, name := range []string{"trainer-0", "trainer-1"} {
		pod := c.CreatePod(t, ns, name, "gpu-node-2", map[string]string{"app": "trainer"}, owner)
		if pod.Status.Phase != corev1.PodRunning || pod.Spec.NodeName != "gpu-node-2" || len(pod.OwnerReferences) != 1 {
			t.Fatalf("pod %s: phase %s on %q, owners %v", name, pod.Status.Phase, pod.Spec.NodeName, pod.OwnerReferences)
		}
	}
	c.CreatePDB(t, ns, "trainer", map[string]string{"app": "trainer"}, 1)
	pdb := c.WaitForDisruptionsAllowed(t, ns, "trainer", 1)
	if pdb.Status.CurrentHealthy != 2 || pdb.Status.DesiredHealthy != 1 {
		t.Fatalf("budget status %+v, want 2 healthy of 1 desired", pdb.Status)
	}

	if code, err := evict(ctx, sa, "trainer-0"); code != http.StatusCreated {
		t.Fatalf("first eviction: %d %v, want 201", code, err)
	}
	pod, err := c.Client.CoreV1().Pods(ns).Get(ctx, "trainer-0", metav1.GetOptions{})
	if err == nil && pod.DeletionTimestamp == nil {
		t.Fatal("the evicted pod is not being deleted")
	}
	code, err := evict(ctx, sa, "trainer-1")
	if code != http.StatusTooManyRequests || !apierrors.IsTooManyRequests(err) {
		t.Fatalf("second eviction: %d %v, want 429", code, err)
	}
	// The controller, too, sees the evicted pod gone from the healthy ones.
	c.WaitForDisruptionsAllowed(t, ns, "trainer", 0)
}

// evict posts an Eviction and returns the HTTP status, which the typed
// client hides.
func evict(ctx context.Context, cs kubernetes.Interface, pod string) (int, error) {
	var code int
	ev := &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: pod, Namespace: ns}}
	err := cs.CoreV1().RESTClient().Post().Namespace(ns).Resource("pods").Name(pod).
		SubResource("eviction").Body(ev).Do(ctx).StatusCode(&code).Error()
	return code, err
}

func eventually(t *testing.T, f func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestComponentsDieWithTheTestBinary kills, with SIGKILL, a test binary
// that has started a component, and checks the kernel kills the component:
// no t.Cleanup runs then.
func TestComponentsDieWithTheTestBinary(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("only Linux ties a child's life to its parent's")
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	if os.Getenv("KUBETEST_HELPER") == "1" {
		c := &ControlPlane{dir: t.TempDir()}
		p, err := c.run("sleep", sleep, "600")
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("pid %d\n", p.cmd.Process.Pid)
		<-p.done // killed before
		return
	}

	helper := exec.Command(os.Args[0], "-test.run=^TestComponentsDieWithTheTestBinary$", "-test.v")
	helper.Env = append(os.Environ(), "KUBETEST_HELPER=1")
	stdout, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	defer helper.Wait()
	defer helper.Process.Kill()
	child := 0
	sc := bufio.NewScanner(stdout)
	for child == 0 && sc.Scan() {
		if s, ok := strings.CutPrefix(sc.Text(), "pid "); ok {
			child, _ = strconv.Atoi(s)
		}
	}
	if child == 0 {
		t.Fatal("the helper printed no pid")
	}
	if !alive(child) {
		t.Fatalf("the component (pid %d) is not running before its parent dies", child)
	}
	helper.Process.Kill()
	deadline := time.Now().Add(10 * time.Second)
	for alive(child) {
		if time.Now().After(deadline) {
			syscall.Kill(child, syscall.SIGKILL)
			t.Fatalf("the component (pid %d) outlived its parent", child)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// alive says whether pid runs; a zombie, dead but not yet reaped by
// whatever adopted it, does not.
func alive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	// The state follows the command name, which is in parentheses.
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}

// TestBindFailureCountsAsPortTaken: Start retries on other ports only when
// a component could not bind, and says why a component died.
func TestBindFailureCountsAsPortTaken(t *testing.T) {
	for _, tc := range []struct {
		script    string
		portTaken bool
	}{
		{`echo "listen tcp 127.0.0.1:2379: bind: address already in use" >&2; exit 1`, true},
		{`echo "Error: unknown flag: --bogus" >&2; exit 1`, false},
	} {
		c := &ControlPlane{dir: t.TempDir()}
		p, err := c.run("sh", "/bin/sh", "-c", tc.script)
		if err != nil {
			t.Fatal(err)
		}
		<-p.done
		err = p.exitError()
		if err == nil || errors.Is(err, errPortTaken) != tc.portTaken {
			t.Errorf("%q: exitError %v, want port taken %v", tc.script, err, tc.portTaken)
		}
		if err != nil && !strings.Contains(err.Error(), "exit status 1") {
			t.Errorf("%q: exitError %v does not give the exit status", tc.script, err)
		}
	}
}
