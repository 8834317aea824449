package diag

import (
	"os"
	"testing"

	"github.com/ark-gpu/ark/graph"
	"github.com/ark-gpu/ark/graph/analyze"
	"github.com/ark-gpu/ark/rules"
)

// BenchmarkDiagnoseJob is one `ark diag --job` of the 32-rank incident:
// why, the blast radius and the default rules on the evidence.
func BenchmarkDiagnoseJob(b *testing.B) {
	f, err := os.Open("../testdata/scenarios/xid79-4node.jsonl")
	if err != nil {
		b.Fatal(err)
	}
	g, _, err := analyze.Load(f, analyze.Options{})
	_ = f.Close()
	if err != nil {
		b.Fatal(err)
	}
	rs := rules.Defaults()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Diagnose(g, graph.Target{JobID: "train/example"}, Options{Rules: rs}); err != nil {
			b.Fatal(err)
		}
	}
}
