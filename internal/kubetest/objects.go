package kubetest

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// waitTimeout bounds the helpers' waits for a controller.
const waitTimeout = 30 * time.Second

// ServiceAccountConfig returns a config that authenticates as the
// ServiceAccount namespace/name, so that RBAC applies to it as it would to
// a pod's. It creates the namespace and the account when missing and gets a
// token, valid for an hour, through the TokenRequest API.
func (c *ControlPlane) ServiceAccountConfig(t testing.TB, namespace, name string) *rest.Config {
	t.Helper()
	ctx := t.Context()
	if err := c.ensureNamespace(ctx, namespace); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace}}
	_, err := c.Client.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("kubetest: creating serviceaccount %s/%s: %v", namespace, name, err)
	}
	expiry := int64(3600)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry}}
	tr, err := c.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, req, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("kubetest: requesting a token for serviceaccount %s/%s: %v", namespace, name, err)
	}
	cfg := rest.CopyConfig(c.Admin)
	cfg.BearerToken = tr.Status.Token
	return cfg
}

// Kubeconfig writes a kubeconfig file for cfg (server, CA, token or client
// certificate) into t.TempDir() and returns its path, for a child process's
// --kubeconfig or $KUBECONFIG.
func (c *ControlPlane) Kubeconfig(t testing.TB, cfg *rest.Config) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig") // a new directory each call
	if err := writeKubeconfig(path, cfg); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	return path
}

func writeKubeconfig(path string, cfg *rest.Config) error {
	const name = "kubetest"
	kc := clientcmdapi.NewConfig()
	kc.Clusters[name] = &clientcmdapi.Cluster{
		Server:                   cfg.Host,
		CertificateAuthority:     cfg.CAFile,
		CertificateAuthorityData: cfg.CAData,
		InsecureSkipTLSVerify:    cfg.Insecure,
	}
	kc.AuthInfos[name] = &clientcmdapi.AuthInfo{
		Token:                 cfg.BearerToken,
		TokenFile:             cfg.BearerTokenFile,
		ClientCertificate:     cfg.CertFile,
		ClientCertificateData: cfg.CertData,
		ClientKey:             cfg.KeyFile,
		ClientKeyData:         cfg.KeyData,
	}
	kc.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name}
	kc.CurrentContext = name
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return fmt.Errorf("writing kubeconfig %s: %w", path, err)
	}
	return nil
}

// CreateNode creates a Node with labels and a Ready condition, as a kubelet
// would have registered it.
func (c *ControlPlane) CreateNode(t testing.TB, name string, labels map[string]string) *corev1.Node {
	t.Helper()
	ctx := t.Context()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	node, err := c.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("kubetest: creating node %s: %v", name, err)
	}
	now := metav1.Now()
	node.Status.Conditions = []corev1.NodeCondition{{
		Type:               corev1.NodeReady,
		Status:             corev1.ConditionTrue,
		Reason:             "KubeletReady",
		Message:            "kubetest: no kubelet; set Ready by CreateNode",
		LastHeartbeatTime:  now,
		LastTransitionTime: now,
	}}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: name}}
	node, err = c.Client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("kubetest: setting node %s Ready: %v", name, err)
	}
	return node
}

// CreatePod creates a pod bound to node (spec.nodeName, no scheduler
// involved) and then sets its status, through the status subresource, to
// Running with every container ready and condition Ready=True, as a kubelet
// would. Only such a pod counts as healthy for a PodDisruptionBudget: the
// Eviction API ignores budgets for pods that are not Running. owner, when
// not nil, becomes the pod's only owner reference. The namespace is created
// when missing.
func (c *ControlPlane) CreatePod(t testing.TB, namespace, name, node string, labels map[string]string, owner *metav1.OwnerReference) *corev1.Pod {
	t.Helper()
	ctx := t.Context()
	if err := c.ensureNamespace(ctx, namespace); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	// The ServiceAccount admission plugin refuses pods until the
	// controller-manager has made the namespace's "default" account.
	wait, cancel := context.WithTimeout(ctx, waitTimeout)
	defer cancel()
	if err := c.waitServiceAccount(wait, namespace); err != nil {
		t.Fatalf("kubetest: %v", err)
	}

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:   node,
			Containers: []corev1.Container{{Name: "main", Image: "registry.k8s.io/pause:3.10"}},
		},
	}
	if owner != nil {
		pod.OwnerReferences = []metav1.OwnerReference{*owner}
	}
	pod, err := c.Client.CoreV1().Pods(namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("kubetest: creating pod %s/%s: %v", namespace, name, err)
	}
	now := metav1.Now()
	pod.Status.Phase = corev1.PodRunning
	pod.Status.StartTime = &now
	pod.Status.Conditions = nil
	for _, cond := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
		pod.Status.Conditions = append(pod.Status.Conditions, corev1.PodCondition{
			Type: cond, Status: corev1.ConditionTrue, LastTransitionTime: now,
		})
	}
	started := true
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{{
		Name:    "main",
		Image:   pod.Spec.Containers[0].Image,
		Ready:   true,
		Started: &started,
		State:   corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
	}}
	pod, err = c.Client.CoreV1().Pods(namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("kubetest: setting pod %s/%s Running and Ready: %v", namespace, name, err)
	}
	return pod
}

// CreatePDB creates a PodDisruptionBudget over the pods matching selector
// that keeps minAvailable of them. Its status is the disruption
// controller's to fill: see WaitForDisruptionsAllowed.
func (c *ControlPlane) CreatePDB(t testing.TB, namespace, name string, selector map[string]string, minAvailable int32) *policyv1.PodDisruptionBudget {
	t.Helper()
	ctx := t.Context()
	if err := c.ensureNamespace(ctx, namespace); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	keep := intstr.FromInt32(minAvailable)
	pdb := &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: policyv1.PodDisruptionBudgetSpec{
			MinAvailable: &keep,
			Selector:     &metav1.LabelSelector{MatchLabels: selector},
		},
	}
	pdb, err := c.Client.PolicyV1().PodDisruptionBudgets(namespace).Create(ctx, pdb, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("kubetest: creating poddisruptionbudget %s/%s: %v", namespace, name, err)
	}
	return pdb
}

// WaitForDisruptionsAllowed waits until the disruption controller has seen
// the budget's latest spec and reports want disruptions allowed, and returns
// the budget. Until it has, the Eviction API refuses every eviction the
// budget covers.
func (c *ControlPlane) WaitForDisruptionsAllowed(t testing.TB, namespace, name string, want int32) *policyv1.PodDisruptionBudget {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	var last string
	for {
		pdb, err := c.Client.PolicyV1().PodDisruptionBudgets(namespace).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			if pdb.Status.ObservedGeneration == pdb.Generation && pdb.Status.DisruptionsAllowed == want {
				return pdb
			}
			last = fmt.Sprintf("generation %d, observed %d, disruptionsAllowed %d, currentHealthy %d, desiredHealthy %d, expectedPods %d",
				pdb.Generation, pdb.Status.ObservedGeneration, pdb.Status.DisruptionsAllowed,
				pdb.Status.CurrentHealthy, pdb.Status.DesiredHealthy, pdb.Status.ExpectedPods)
		} else {
			last = err.Error()
		}
		if err := c.pause(ctx); err != nil {
			t.Fatalf("kubetest: waiting for poddisruptionbudget %s/%s to allow %d disruptions (last: %s): %v", namespace, name, want, last, err)
		}
	}
}
