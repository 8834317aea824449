package jobs

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probe"
	"github.com/ark-gpu/ark/internal/kubetest"
)

// podCase is a pod of one job convention and the job it must resolve to.
type podCase struct {
	name   string
	labels map[string]string
	annots map[string]string
	owner  *metav1.OwnerReference
	job    string
	rank   int
}

var isController = true

var podCases = []podCase{
	{name: "kubeflow-master", labels: map[string]string{LabelKubeflowJob: "llama", LabelKubeflowType: "master", LabelKubeflowIndex: "0"},
		job: "k8s/train/llama", rank: 0},
	{name: "kubeflow-worker", labels: map[string]string{LabelKubeflowJob: "llama", LabelKubeflowType: "worker", LabelKubeflowIndex: "2"},
		job: "k8s/train/llama", rank: 3},
	{name: "jobset", labels: map[string]string{LabelJobSet: "gpt", "jobset.sigs.k8s.io/replicatedjob-name": "workers",
		LabelBatchJob: "gpt-workers-0", LabelBatchIndex: "5"}, job: "k8s/train/gpt", rank: 5},
	{name: "volcano", labels: map[string]string{LabelVolcanoJob: "vc"}, annots: map[string]string{AnnotationVolcanoTask: "4"},
		job: "k8s/train/vc", rank: 4},
	{name: "batch-indexed", labels: map[string]string{LabelBatchJob: "bert", LabelBatchIndex: "6"}, job: "k8s/train/bert", rank: 6},
	{name: "lws", labels: map[string]string{LabelLWS: "serve", LabelLWSGroup: "1", LabelLWSWorker: "2"}, job: "k8s/train/serve-1", rank: 2},
	{name: "owner-only", owner: &metav1.OwnerReference{APIVersion: "kubeflow.org/v2beta1", Kind: "MPIJob", Name: "resnet", UID: "5c6d7e8f-0000-4000-8000-000000000001", Controller: &isController},
		job: "k8s/train/resnet", rank: -1},
	{name: "bare", job: "", rank: -1},
}

func TestJobOfPodFollowsEachConvention(t *testing.T) {
	for _, c := range podCases {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "train", Name: c.name, Labels: c.labels, Annotations: c.annots}}
		if c.owner != nil {
			p.OwnerReferences = []metav1.OwnerReference{*c.owner}
		}
		if got := JobOfPod(p); got.JobID != c.job || got.Rank != c.rank {
			t.Errorf("%s: job %q rank %d, want %q %d", c.name, got.JobID, got.Rank, c.job, c.rank)
		}
	}
}

// agentClient returns a client that authenticates as the agent's
// ServiceAccount with only pods get, list and watch, the RBAC the agent's
// manifests must grant.
func agentClient(t *testing.T, cp *kubetest.ControlPlane) kubernetes.Interface {
	t.Helper()
	cs, err := kubernetes.NewForConfig(agentClientConfig(t, cp))
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func agentClientConfig(t *testing.T, cp *kubetest.ControlPlane) *rest.Config {
	t.Helper()
	ctx := t.Context()
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "ark-agent"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}}}}
	if _, err := cp.Client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rc := cp.ServiceAccountConfig(t, "ark-system", "ark-agent")
	bind := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "ark-agent"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "ark-agent"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "ark-system", Name: "ark-agent"}}}
	if _, err := cp.Client.RbacV1().ClusterRoleBindings().Create(ctx, bind, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return rc
}

func TestPodsFromTheAPIServerResolveRanksToTheirJobs(t *testing.T) {
	cp := kubetest.Start(t, kubetest.Options{})
	const node = "gpu-node-1"
	uids := map[string]string{}
	for _, c := range podCases {
		p := cp.CreatePod(t, "train", c.name, node, c.labels, c.owner)
		if c.annots != nil {
			p.Annotations = c.annots
			if _, err := cp.Client.CoreV1().Pods("train").Update(t.Context(), p, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		uids[c.name] = string(p.UID)
	}
	elsewhere := cp.CreatePod(t, "train", "on-another-node", "gpu-node-2", map[string]string{LabelBatchJob: "other"}, nil)

	pods, err := NewPods(agentClient(t, cp), node, 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); pods.Run(ctx) }()
	defer func() { cancel(); wg.Wait() }()

	eventually(t, "the informer to hold every pod of the node with its annotations", func() bool {
		if !pods.Synced() {
			return false
		}
		for _, c := range podCases {
			pj, ok := pods.Lookup(uids[c.name])
			if !ok || pj.JobID != c.job || pj.Rank != c.rank {
				return false
			}
		}
		return true
	})
	if _, ok := pods.Lookup(string(elsewhere.UID)); ok {
		t.Error("a pod of another node is in the cache: the field selector is not applied")
	}

	// Processes in those pods, found through their cgroups.
	root := t.TempDir()
	devDir := t.TempDir()
	gpu := filepath.Join(devDir, "nvidia6")
	if err := os.WriteFile(gpu, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cg := func(name string) string {
		u := uids[name]
		return "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + strings.ReplaceAll(u, "-", "_") +
			".slice/cri-containerd-4e8a1c3b7d2f9e6a5b0c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a.scope\n"
	}
	procs := []fakeProc{
		// torchrun in a Kubeflow worker: the job from the pod, the rank
		// from the operator's RANK.
		{pid: 200, start: 1, cgroup: cg("kubeflow-worker"), environ: env("RANK=3", "MASTER_ADDR=llama-master-0", "MASTER_PORT=23456", "TORCHELASTIC_RUN_ID=none")},
		// No launcher variables, a GPU open: the rank from the pod's
		// completion index.
		{pid: 201, start: 1, cgroup: cg("batch-indexed"), environ: env("HOME=/")},
		// No launcher variables and no GPU: a sidecar, ignored.
		{pid: 202, start: 1, cgroup: cg("lws"), environ: env("HOME=/")},
	}
	for _, p := range procs {
		writeProc(t, root, p)
	}
	if err := os.Symlink(gpu, filepath.Join(root, "201", "fd", "5")); err != nil {
		t.Fatal(err)
	}
	ts := newTestScanner(t, root, Config{DevicePrefix: filepath.Join(devDir, "nvidia")}, pods)
	sk := &sink{}
	ts.mustScan(t, time.Now(), sk)
	evs := sk.take()
	want := map[int64][3]string{200: {"k8s/train/llama", "3", "torchrun"}, 201: {"k8s/train/bert", "6", LauncherK8s}}
	if len(evs) != len(want) {
		t.Fatalf("events %+v, want intent.run of pids 200 and 201", evs)
	}
	for _, ev := range evs {
		w := want[ev.PID]
		if ev.Type != event.IntentRun || ev.JobID != w[0] || ev.Attrs.Get(event.AttrRank) != w[1] || ev.Attrs.Get(event.AttrLauncher) != w[2] ||
			ev.Attrs.Get(AttrNamespace) != "train" || ev.Attrs.Get(AttrPod) == "" {
			t.Errorf("pid %d: %+v, want job %s rank %s launcher %s in namespace train", ev.PID, ev, w[0], w[1], w[2])
		}
	}
	if g := byPID(evs, 201)[0].Attrs.Get(event.AttrGPUs); g != "6" {
		t.Errorf("pid 201 gpus %q, want 6 (the device it holds)", g)
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestProbeRunsAndStopsItsInformer: the probe built from a kubeconfig
// watches the node's pods while it runs and leaves no goroutine behind.
func TestProbeRunsAndStopsItsInformer(t *testing.T) {
	cp := kubetest.Start(t, kubetest.Options{})
	pod := cp.CreatePod(t, "train", "w0", "gpu-node-1", map[string]string{LabelBatchJob: "bert", LabelBatchIndex: "0"}, nil)
	root := t.TempDir()
	writeProc(t, root, fakeProc{pid: 1, start: 1, environ: env("HOME=/")})
	writeProc(t, root, fakeProc{pid: 300, start: 5, environ: env("SLURM_JOB_ID=5", "SLURM_PROCID=1"),
		cgroup: "0::/kubepods/besteffort/pod" + string(pod.UID) + "/crio-4e8a1c3b7d2f9e6a5b0c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a\n"})
	if err := os.MkdirAll(filepath.Join(root, "self"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "self", "stat"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	kubeconfig := cp.Kubeconfig(t, agentClientConfig(t, cp))
	p, err := New(probe.Env{
		Paths: probe.Paths{ProcFS: root}, NodeName: "gpu-node-1", Registerer: prometheus.NewRegistry(),
		Config: func(v any) error {
			c := v.(*Config)
			c.Interval, c.Kubernetes, c.Kubeconfig = 50*time.Millisecond, KubeOn, kubeconfig
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	sk := &sink{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, sk) }()
	var got []event.Event
	eventually(t, "the rank in the pod", func() bool {
		got = append(got, sk.take()...)
		return len(got) > 0
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got[0].JobID != "k8s/train/bert" || got[0].Attrs.Get(event.AttrRank) != "1" || got[0].Attrs.Get(AttrPod) != "w0" {
		t.Errorf("%+v, want rank 1 (SLURM_PROCID) of k8s/train/bert in pod w0", got[0])
	}
}
