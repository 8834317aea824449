// Package deploy_test renders every kustomize overlay of deploy/ and has
// a real kube-apiserver validate each object with a server-side dry run and
// strict field validation, as `kubectl apply --dry-run=server
// --validate=strict` would, with prometheus-operator's CRDs installed.
package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"github.com/ark-gpu/ark/internal/kubetest"
)

// targets are the kustomizations a user can apply.
var targets = []string{"base", "overlays/with-remediation", "overlays/dry-run"}

func kustomize(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("../hack/tools.sh", "kustomize").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("hack/tools.sh kustomize: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("hack/tools.sh kustomize: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// render runs kustomize build on dir and decodes the objects.
func render(t *testing.T, bin, dir string) []*unstructured.Unstructured {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "build", dir)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kustomize build %s: %v\n%s", dir, err, stderr.String())
	}
	return decode(t, dir, out)
}

func decode(t *testing.T, what string, b []byte) []*unstructured.Unstructured {
	t.Helper()
	var objs []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	for {
		var m map[string]any
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if m == nil {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
	return objs
}

// TestEveryOverlayPassesServerSideDryRun applies every rendered object
// server-side with dryRun=All and fieldValidation=Strict: unknown or duplicate fields,
// invalid values, a kind the server does not serve all fail.
func TestEveryOverlayPassesServerSideDryRun(t *testing.T) {
	bin := kustomize(t)
	rendered := map[string][]*unstructured.Unstructured{}
	for _, target := range targets {
		rendered[target] = render(t, bin, target)
	}

	cp := kubetest.Start(t, kubetest.Options{})
	ctx := t.Context()
	dyn, err := dynamic.NewForConfig(cp.Admin)
	if err != nil {
		t.Fatal(err)
	}
	disco, err := discovery.NewDiscoveryClientForConfig(cp.Admin)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disco))

	// prometheus-operator's CRDs (testdata/crds, from its release) first,
	// for real, and served before anything uses them.
	crds, err := filepath.Glob("testdata/crds/*.yaml")
	if err != nil || len(crds) == 0 {
		t.Fatalf("no CRDs under testdata/crds: %v", err)
	}
	crdGVR := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	for _, f := range crds {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range decode(t, f, b) {
			if _, err := dyn.Resource(crdGVR).Create(ctx, o, metav1.CreateOptions{}); err != nil {
				t.Fatalf("installing %s: %v", f, err)
			}
		}
	}
	for _, kind := range []string{"ServiceMonitor", "PodMonitor", "PrometheusRule"} {
		gk := schema.GroupKind{Group: "monitoring.coreos.com", Kind: kind}
		deadline := time.Now().Add(60 * time.Second)
		for {
			mapper.Reset()
			if _, err := mapper.RESTMapping(gk, "v1"); err == nil {
				break
			} else if time.Now().After(deadline) {
				t.Fatalf("CRD of %s not served: %v", kind, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	// A namespaced dry run needs its namespace to exist: dry-run the
	// Namespace like the rest, then create it.
	var created bool
	for _, target := range targets {
		t.Run(target, func(t *testing.T) {
			objs := rendered[target]
			kinds := map[string]int{}
			for _, o := range objs {
				kinds[o.GetKind()]++
				if err := dryRun(ctx, dyn, mapper, o); err != nil {
					t.Errorf("%s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
				}
				if o.GetKind() == "Namespace" && !created {
					o := o.DeepCopy()
					if _, err := dyn.Resource(schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}).Create(ctx, o, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
						t.Fatal(err)
					}
					created = true
				}
			}
			for _, k := range []string{"Namespace", "DaemonSet", "Deployment", "Service", "ServiceAccount", "ClusterRole",
				"ClusterRoleBinding", "Role", "RoleBinding", "ConfigMap", "NetworkPolicy", "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule"} {
				if kinds[k] == 0 {
					t.Errorf("no %s rendered", k)
				}
			}
			t.Logf("%d objects: %v", len(objs), kinds)
		})
	}
}

// dryRun applies o server-side (kubectl apply --server-side
// --dry-run=server --validate=strict) with dryRun=All and strict field
// validation. Objects are sorted by kustomize so that a Namespace comes
// before what it holds.
func dryRun(ctx context.Context, dyn dynamic.Interface, mapper meta.RESTMapper, o *unstructured.Unstructured) error {
	gvk := o.GroupVersionKind()
	m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return fmt.Errorf("mapping %s: %w", gvk, err)
	}
	var r dynamic.ResourceInterface = dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		if o.GetNamespace() == "" {
			return errors.New("namespaced object without a namespace")
		}
		r = dyn.Resource(m.Resource).Namespace(o.GetNamespace())
	}
	data, err := json.Marshal(o)
	if err != nil {
		return err
	}
	force := true
	_, err = r.Patch(ctx, o.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{
		DryRun: []string{metav1.DryRunAll}, Force: &force, FieldManager: "ark-deploy-test", FieldValidation: "Strict",
	})
	return err
}

// TestAlertmanagerExampleRoutesFaultsToTheHub: amtool accepts the example
// configuration, and it sends the alerts with a fault_class to the hub and
// to people, the others to people only.
func TestAlertmanagerExampleRoutesFaultsToTheHub(t *testing.T) {
	out, err := exec.Command("../hack/prometheus.sh", "amtool").Output()
	if err != nil {
		t.Fatalf("installing amtool (hack/prometheus.sh): %v", err)
	}
	amtool := strings.TrimSpace(string(out))
	const cfg = "alertmanager/alertmanager.yaml"
	if out, err := exec.Command(amtool, "check-config", cfg).CombinedOutput(); err != nil {
		t.Fatalf("amtool check-config: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		labels []string
		want   string
	}{
		{[]string{"alertname=ArkGPUFellOffBus", "fault_class=PersistentXidError", "node=node-3", "severity=critical"}, "ark-hub,humans"},
		{[]string{"alertname=ArkNicLinkFlapping", "fault_class=RdmaLinkDown", "node=node-1", "severity=warning"}, "ark-hub,humans"},
		{[]string{"alertname=ArkJobStalled", "job_id=train/llama", "severity=critical"}, "humans"},
		{[]string{"alertname=ArkAgentDown", "node=node-2", "severity=warning"}, "humans"},
	} {
		args := append([]string{"config", "routes", "test", "--config.file=" + cfg}, tc.labels...)
		out, err := exec.Command(amtool, args...).Output()
		if err != nil {
			t.Fatalf("amtool %v: %v", args, err)
		}
		if got := strings.TrimSpace(string(out)); got != tc.want {
			t.Errorf("%v: routed to %q, want %q", tc.labels, got, tc.want)
		}
	}
}
