package remediator_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ark-gpu/ark/internal/audit"
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
		if e.Action == action && e.Target.Node == node {
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
	p, err := remediator.Load([]byte(policy))
	if err != nil {
		t.Fatal(err)
	}
	al := &memAudit{}
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
	return al, post
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
