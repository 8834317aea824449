package rules

import (
	"testing"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/graph"
)

// BenchmarkEvaluateDefaultRules evaluates the default rules on the events
// that reach a condition. "drop" is the typical case: one CEL program run
// per event, no match (the rule fired earlier and is cooling down, or the
// drop count is zero).
func BenchmarkEvaluateDefaultRules(b *testing.B) {
	g := &fakeGraph{waits: map[string][]string{"node-3/pid-42": {"network-ib0"}}}
	edge := Edge{Type: graph.WaitsOn, From: "node-3/pid-42", To: "node-3/network-ib0"}
	proc := Process{PID: 42, JobID: "llama", State: "R", Rank: "3"}
	for _, bc := range []struct {
		name string
		ev   *event.Event
	}{
		{"drop", drop(42, "0")},
		{"drop-cooling", drop(42, "12")},
		{"qdepth", &event.Event{Type: event.StorageQDepth, EntityID: "storage-nvme0n1", NodeID: "node-3", PID: 42, Value: "12"}},
		{"xid-transient", xidEvent("13")},
		{"state-stalled", &event.Event{Type: event.ProcessState, EntityID: "pid-42", NodeID: "node-3", PID: 42, Value: "stalled"}},
		{"util-no-rule", &event.Event{Type: event.ComputeUtil, EntityID: "gpu-0", NodeID: "node-3", PID: 42, Value: "97"}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			rs := Defaults()
			in := Input{Event: bc.ev, Edge: edge, Process: proc, Graph: g}
			rs.Evaluate(in) // start the cooldown of a matching rule
			b.ReportAllocs()
			for b.Loop() {
				rs.Evaluate(in)
			}
		})
	}
}
