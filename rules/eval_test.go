package rules

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/graph"
	"github.com/ark-gpu/ark/internal/fakeclock"
)

// fakeGraph answers the graph helpers from fixed tables, keyed by
// "node/pid". It tests the engine only; the agent implements Graph over
// the real causal graph.
type fakeGraph struct {
	errs  map[string][]ErrorInfo
	waits map[string][]string // entity ids waited on
}

func procKey(node string, pid int64) string {
	return node + "/pid-" + itoa(pid)
}

func itoa(n int64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

func (f *fakeGraph) ErrorsReachable(node string, pid int64) []ErrorInfo {
	return f.errs[procKey(node, pid)]
}

func (f *fakeGraph) WaitsOn(node string, pid int64, prefix string) bool {
	for _, e := range f.waits[procKey(node, pid)] {
		if strings.HasPrefix(e, prefix) {
			return true
		}
	}
	return false
}

func mustParse(t testing.TB, yaml string) *RuleSet {
	t.Helper()
	rs, errs := Parse("test.yaml", []byte(yaml))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	return rs
}

func matched(ms []Match) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Rule)
	}
	return out
}

func drop(pid int64, value string) *event.Event {
	return &event.Event{TS: 1_700_000_000_000, Type: event.TransportDrop, EntityID: "network-ib0",
		NodeID: "node-3", JobID: "llama", PID: pid, Value: value,
		Attrs: event.Attrs{{Key: "peer", Value: "10.0.0.2:4791"}}}
}

func TestConditionsSeeEventEdgeAndNode(t *testing.T) {
	rs := mustParse(t, `
name: All
triggers:
  - event_type: transport.drop
    condition: >-
      event.ts == 1700000000000 && event.event_type == "transport.drop" &&
      event.entity_id == "network-ib0" && event.node_id == "node-3" && event.job_id == "llama" &&
      event.pid == 42 && event.value == "12" && event.num == 12.0 && event.num > 11 &&
      event.attrs.peer == "10.0.0.2:4791" && "peer" in event.attrs && !("xid" in event.attrs) &&
      event.attrs.size() == 1 && event.attrs.exists(k, k == "peer") &&
      edge.type == "WaitsOn" && edge.from == "node-3/pid-42" && edge.to.endsWith("/network-ib0") &&
      node.pid == 42 && node.rank == "3" && node.state == "R" && node.job_id == "llama"
`)
	in := Input{
		Event:   drop(42, "12"),
		Edge:    Edge{Type: graph.WaitsOn, From: "node-3/pid-42", To: "node-3/network-ib0"},
		Process: Process{PID: 42, JobID: "llama", State: "R", Rank: "3"},
	}
	if got := matched(rs.Evaluate(in)); len(got) != 1 {
		t.Fatalf("matched %v, eval errors %d", got, rs.EvalErrors())
	}
	in.Edge.Type = graph.Consumes
	if got := matched(rs.Evaluate(in)); len(got) != 0 {
		t.Fatalf("matched %v with a Consumes edge", got)
	}
}

func TestGraphHelpers(t *testing.T) {
	g := &fakeGraph{
		errs: map[string][]ErrorInfo{
			"node-3/pid-42": {{EntityID: "gpu-0", EventType: event.ErrorHW, Severity: "fatal", XID: 79, Summary: "fell off the bus"}},
			"node-3/pid-43": {{EntityID: "gpu-1", EventType: event.ErrorHW, Severity: "transient", XID: 13}},
		},
		waits: map[string][]string{"node-3/pid-42": {"network-ib0"}},
	}
	for _, tc := range []struct {
		cond string
		pid  int64
		want bool
	}{
		{`graph.fatal_error_reachable(event.pid)`, 42, true},
		{`graph.fatal_error_reachable(event.pid)`, 43, false},
		{`graph.fatal_error_reachable(event.pid)`, 44, false},
		{`graph.errors(event.pid).exists(e, e.xid == 79 && e.entity_id == "gpu-0" && e.severity == "fatal")`, 42, true},
		{`graph.errors(event.pid).size() == 0`, 44, true},
		{`graph.waits_on(event.pid, "network")`, 42, true},
		{`graph.waits_on(event.pid, "storage")`, 42, false},
		{`graph.waits_on(event.pid, "network")`, 43, false},
		{`xid_severity("79") == "fatal" && xid_severity(13) == "transient" && xid_severity("x") == "unknown"`, 42, true},
		{`resource_class("node-3/network-ib0") == "nic" && resource_class("nvme0n1") == "storage"`, 42, true},
		{`is_stuck("D") && !is_stuck("R")`, 42, true},
	} {
		rs := mustParse(t, "name: G\ntriggers:\n  - event_type: transport.drop\n    condition: '"+tc.cond+"'\n")
		got := len(rs.Evaluate(Input{Event: drop(tc.pid, "1"), Graph: g})) == 1
		if got != tc.want || rs.EvalErrors() != 0 {
			t.Errorf("%s on pid %d: got %v, want %v (eval errors %d)", tc.cond, tc.pid, got, tc.want, rs.EvalErrors())
		}
	}
}

func TestGraphHelpersWithoutAGraphFindNothing(t *testing.T) {
	rs := mustParse(t, `
name: G
triggers:
  - event_type: transport.drop
    condition: 'graph.fatal_error_reachable(event.pid) || graph.waits_on(event.pid, "") || graph.errors(event.pid).size() > 0'
`)
	if got := rs.Evaluate(Input{Event: drop(42, "1")}); len(got) != 0 || rs.EvalErrors() != 0 {
		t.Fatalf("matched %v, eval errors %d", matched(got), rs.EvalErrors())
	}
}

func TestOnlyRulesTriggeredByTheEventTypeAreEvaluated(t *testing.T) {
	rs := mustParse(t, `
name: OnStorage
triggers:
  - event_type: storage.qdepth
    condition: 'event.attrs.missing == "x"'
---
name: OnAny
triggers:
  - event_type: '*'
    condition: 'event.pid == 42'
---
name: Unconditional
triggers:
  - event_type: transport.drop
`)
	got := matched(rs.Evaluate(Input{Event: drop(42, "1")}))
	equalStrings(t, "matches", got, []string{"OnAny", "Unconditional"})
	if n := rs.EvalErrors(); n != 0 {
		t.Errorf("a storage rule was evaluated on a transport event: %d eval errors", n)
	}
	rs.Evaluate(Input{Event: &event.Event{Type: event.StorageQDepth, EntityID: "nvme0n1", Value: "1"}})
	if n := rs.EvalErrors(); n != 1 {
		t.Errorf("a missing attr should count one eval error, got %d", n)
	}
}

func TestARuleWithSeveralTriggersFiresOncePerEvent(t *testing.T) {
	rs := mustParse(t, `
name: Twice
cooldown: 0s
triggers:
  - event_type: transport.drop
  - event_type: '*'
`)
	if got := matched(rs.Evaluate(Input{Event: drop(42, "1")})); len(got) != 1 {
		t.Fatalf("matched %v", got)
	}
}

func TestCooldownIsPerRuleAndTarget(t *testing.T) {
	rs := mustParse(t, `
name: Drops
cooldown: 30s
severity: critical
description: drops
triggers:
  - event_type: transport.drop
actions:
  - type: Signal
    params: {signal: SIGUSR1}
`)
	clock := fakeclock.New(time.Unix(1000, 0))
	rs.SetClock(clock.Now)
	ms := rs.Evaluate(Input{Event: drop(42, "5")})
	if len(ms) != 1 {
		t.Fatalf("first event: matched %v", matched(ms))
	}
	m := ms[0]
	if m.Severity != SeverityCritical || m.Target != (graph.Target{Node: "node-3", PID: 42, JobID: "llama"}) ||
		m.EntityID != "network-ib0" || m.EventType != event.TransportDrop || len(m.Actions) != 1 ||
		m.Actions[0].Signal() != "SIGUSR1" {
		t.Errorf("match: %+v", m)
	}
	if want := `Drops (drops): transport.drop on network-ib0 value "5" pid 42 job llama node node-3`; m.Message != want {
		t.Errorf("message %q, want %q", m.Message, want)
	}
	clock.Advance(29 * time.Second)
	if got := rs.Evaluate(Input{Event: drop(42, "5")}); len(got) != 0 {
		t.Errorf("fired again inside the cooldown")
	}
	if got := rs.Evaluate(Input{Event: drop(43, "5")}); len(got) != 1 {
		t.Errorf("another target is not cooling down, got %v", matched(got))
	}
	clock.Advance(time.Second)
	if got := rs.Evaluate(Input{Event: drop(42, "5")}); len(got) != 1 {
		t.Errorf("did not fire after the cooldown")
	}
}

func TestCooldownKeysDeviceEventsByEntity(t *testing.T) {
	rs := mustParse(t, "name: HW\ntriggers: [{event_type: error.hw}]\n")
	clock := fakeclock.New(time.Unix(1000, 0))
	rs.SetClock(clock.Now)
	xidOn := func(gpu string) Input {
		return Input{Event: &event.Event{Type: event.ErrorHW, EntityID: gpu, NodeID: "node-3", Value: "xid"}}
	}
	for i, tc := range []struct {
		in   Input
		want int
	}{{xidOn("gpu-0"), 1}, {xidOn("gpu-1"), 1}, {xidOn("gpu-0"), 0}} {
		if got := len(rs.Evaluate(tc.in)); got != tc.want {
			t.Errorf("event %d: %d matches, want %d", i, got, tc.want)
		}
	}
}

func TestNilRuleSetAndEventMatchNothing(t *testing.T) {
	var rs *RuleSet
	if rs.Evaluate(Input{Event: drop(1, "1")}) != nil || rs.Len() != 0 {
		t.Fatal("nil set matched")
	}
	if Defaults().Evaluate(Input{}) != nil {
		t.Fatal("nil event matched")
	}
}

func TestEvaluateIsSafeForConcurrentUse(t *testing.T) {
	rs := mustParse(t, "name: C\ncooldown: 0s\ntriggers:\n  - event_type: transport.drop\n    condition: 'event.num > 0.0 && node.rank == \"1\"'\n")
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				ev := drop(int64(i), itoa(int64(i%2)))
				got := len(rs.Evaluate(Input{Event: ev, Process: Process{Rank: "1"}}))
				if want := i % 2; got != want {
					t.Errorf("value %d: %d matches", i%2, got)
					return
				}
			}
		}()
	}
	wg.Wait()
}
