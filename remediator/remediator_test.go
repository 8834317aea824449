package remediator_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ark-gpu/ark/internal/audit"
	"github.com/ark-gpu/ark/internal/fullfs"
	"github.com/ark-gpu/ark/internal/kubetest"
	"github.com/ark-gpu/ark/remediator"
)

// memAudit keeps entries in memory.
type memAudit struct {
	mu sync.Mutex
	es []audit.Entry
}

func (m *memAudit) Write(_ context.Context, e audit.Entry) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.es = append(m.es, e)
	return nil
}

func (m *memAudit) find(action, node string) []audit.Entry {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []audit.Entry
	for _, e := range m.es {
		if e.Action == action && e.Node == node && e.Result != audit.Intent {
			out = append(out, e)
		}
	}
	return out
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rig runs a remediator with policy against the control plane.
func rig(t *testing.T, cp *kubetest.ControlPlane, policy string) (*memAudit, func(node, class string)) {
	t.Helper()
	al := &memAudit{}
	return al, rigWith(t, cp, policy, al)
}

// rigWith is rig writing its audit entries to al.
func rigWith(t *testing.T, cp *kubetest.ControlPlane, policy string, al remediator.Auditor) func(node, class string) {
	t.Helper()
	p, err := remediator.Load([]byte(policy))
	if err != nil {
		t.Fatal(err)
	}
	r, err := remediator.New(remediator.Options{Policy: p, Client: cp.Client, Audit: al,
		Auth: func(_, _, bearer string) bool { return bearer == "t" }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = r.Run(ctx); close(done) }()
	srv := httptest.NewServer(r)
	t.Cleanup(func() { srv.Close(); cancel(); <-done })
	post := func(node, class string) {
		t.Helper()
		body := fmt.Sprintf(`{"version":"4","status":"firing","alerts":[{"status":"firing","labels":{"alertname":"Hw","node":%q,"fault_class":%q}}]}`, node, class)
		req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer t")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("webhook for %s: %s", node, resp.Status)
		}
	}
	return post
}

func TestBreakerAndEvictionLimits(t *testing.T) {
	cp := kubetest.Start(t, kubetest.Options{})
	for i := 1; i <= 5; i++ {
		cp.CreateNode(t, fmt.Sprintf("n%d", i), nil)
	}

	t.Run("a small cluster may always quarantine one node", func(t *testing.T) {
		// 10% of 5 nodes is 0.5: the first node is still allowed, the
		// second is not.
		al, post := rig(t, cp, `
routes: [{matchers: ['fault_class="OtherHardwareFailure"'], class: OtherHardwareFailure}]
classes: {OtherHardwareFailure: {steps: [{type: taint}]}}
`)
		post("n1", "OtherHardwareFailure")
		waitFor(t, "n1 tainted", func() bool { return len(al.find("taint", "n1")) == 1 })
		post("n2", "OtherHardwareFailure")
		waitFor(t, "n2 refused", func() bool { return len(al.find("circuit_breaker", "n2")) == 1 })
		if e := al.find("circuit_breaker", "n2")[0]; e.Result != audit.Failure || !strings.Contains(e.Details, "1 of 5 nodes") {
			t.Fatalf("breaker entry %+v", e)
		}
	})

	t.Run("max_nodes_per_hour counts the annotations", func(t *testing.T) {
		// n1 was remediated a moment ago (its annotation says so); with a
		// limit of 2 per hour, n3 passes and n4 does not.
		al, post := rig(t, cp, `
circuit_breaker: {max_tainted_ratio: 1, max_nodes_per_hour: 2}
routes: [{matchers: ['fault_class="OtherHardwareFailure"'], class: OtherHardwareFailure}]
classes: {OtherHardwareFailure: {steps: [{type: taint}]}}
`)
		post("n3", "OtherHardwareFailure")
		waitFor(t, "n3 tainted", func() bool { return len(al.find("taint", "n3")) == 1 })
		post("n4", "OtherHardwareFailure")
		waitFor(t, "n4 refused", func() bool { return len(al.find("circuit_breaker", "n4")) == 1 })
		if e := al.find("circuit_breaker", "n4")[0]; !strings.Contains(e.Details, "2 nodes remediated in the last hour, max_nodes_per_hour is 2") {
			t.Fatalf("breaker entry %+v", e)
		}
	})

	t.Run("a PDB that never allows is reported partial_failure at the eviction timeout, and wait is audited", func(t *testing.T) {
		cp.CreatePod(t, "default", "free", "n5", map[string]string{"app": "free"}, nil)
		cp.CreatePod(t, "default", "guarded", "n5", map[string]string{"app": "guarded"}, nil)
		cp.CreatePDB(t, "default", "guarded", map[string]string{"app": "guarded"}, 1)
		cp.WaitForDisruptionsAllowed(t, "default", "guarded", 0)
		al, post := rig(t, cp, `
circuit_breaker: {max_tainted_ratio: 1, max_nodes_per_hour: 0}
eviction: {timeout: 2s, initial_backoff: 100ms, max_backoff: 200ms}
routes: [{matchers: ['fault_class="StorageDeviceFailure"'], class: StorageDeviceFailure}]
classes:
  StorageDeviceFailure:
    steps: [{type: taint}, {type: wait, duration: 100ms}, {type: evict}]
`)
		post("n5", "StorageDeviceFailure")
		waitFor(t, "the evict step", func() bool { return len(al.find("evict", "n5")) == 1 })
		if w := al.find("wait", "n5"); len(w) != 1 || w[0].Result != audit.Success {
			t.Errorf("wait entries %+v", w)
		}
		e := al.find("evict", "n5")[0]
		if e.Result != audit.PartialFailure || !strings.Contains(e.Details, "evicted 1 of 2 pods") ||
			!strings.Contains(e.Details, "default/guarded") {
			t.Fatalf("evict entry %+v", e)
		}
	})
}

// triedAudit writes to a real audit log and remembers every entry it was
// asked to write, with the error the log gave.
type triedAudit struct {
	log *audit.Log
	mu  sync.Mutex
	es  []audit.Entry
	err []error
}

func (a *triedAudit) Write(ctx context.Context, e audit.Entry) error {
	err := a.log.Write(ctx, e)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.es = append(a.es, e)
	a.err = append(a.err, err)
	return err
}

// refused returns the failed-to-write refusals of action on node.
func (a *triedAudit) refused(action, node string) []audit.Entry {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []audit.Entry
	for i, e := range a.es {
		if e.Action == action && e.Node == node && e.Result == audit.Failure &&
			strings.Contains(e.Details, "refused: the audit log cannot record the intent") && errors.Is(a.err[i], syscall.ENOSPC) {
			out = append(out, e)
		}
	}
	return out
}

// With the audit log's disk full the remediator records no intent, so it
// taints nothing, records nothing on the node and evicts nothing.
func TestRemediationIsRefusedWhenTheAuditLogCannotRecordIt(t *testing.T) {
	dir := fullfs.Mount(t, 64<<10)
	log, err := audit.Open(audit.Config{Path: filepath.Join(dir, "audit.log")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = log.Close() })
	cp := kubetest.Start(t, kubetest.Options{})
	cp.CreateNode(t, "full-1", nil)
	cp.CreatePod(t, "default", "victim", "full-1", map[string]string{"app": "victim"}, nil)
	fullfs.Fill(t, dir)

	al := &triedAudit{log: log}
	post := rigWith(t, cp, `
circuit_breaker: {max_tainted_ratio: 1, max_nodes_per_hour: 0}
routes: [{matchers: ['fault_class="OtherHardwareFailure"'], class: OtherHardwareFailure}]
classes: {OtherHardwareFailure: {steps: [{type: taint}, {type: condition}, {type: evict}]}}
`, al)
	post("full-1", "OtherHardwareFailure")
	waitFor(t, "the taint refused", func() bool { return len(al.refused("taint", "full-1")) == 1 })

	ctx := context.Background()
	n, err := cp.Client.CoreV1().Nodes().Get(ctx, "full-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	arkTaint := false
	for _, taint := range n.Spec.Taints {
		arkTaint = arkTaint || taint.Key == remediator.TaintKey
	}
	if arkTaint || n.Annotations[remediator.AnnotationRemediatedAt] != "" {
		t.Fatalf("node changed although nothing could be audited: taints %v, annotations %v", n.Spec.Taints, n.Annotations)
	}
	for _, c := range n.Status.Conditions {
		if c.Type == remediator.ConditionType {
			t.Fatalf("condition %s set although nothing could be audited", c.Type)
		}
	}
	p, err := cp.Client.CoreV1().Pods("default").Get(ctx, "victim", metav1.GetOptions{})
	if err != nil || p.DeletionTimestamp != nil {
		t.Fatalf("the pod was evicted although nothing could be audited: %v", err)
	}
}
