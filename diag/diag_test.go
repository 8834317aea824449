package diag

import (
	"os"
	"strings"
	"testing"

	"github.com/ark-gpu/ark/graph"
	"github.com/ark-gpu/ark/graph/analyze"
	"github.com/ark-gpu/ark/rules"
)

func load(t *testing.T, file string) *graph.Graph {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	g, _, err := analyze.Load(f, analyze.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func TestDiagnoseNamesTheGPUTheCatalogsActionTheRanksAndTheGPUHours(t *testing.T) {
	g := load(t, "../testdata/scenarios/xid79-4node.jsonl")
	rep, err := Diagnose(g, graph.Target{JobID: "train/example"}, Options{Rules: rules.Defaults()})
	if err != nil {
		t.Fatal(err)
	}
	top := rep.Causes[0]
	if top.NodeID != "node-3" || top.EntityID != "gpu-6" || top.Catalog == nil || top.Catalog.ImmediateAction != "RESTART_BM" {
		t.Fatalf("top cause %+v catalog %+v", top.Cause, top.Catalog)
	}
	b := rep.Blast
	// The XID at 03:20:00, the recording ends at 03:20:29: 32 GPUs idle
	// for 29 s.
	if b.Onset != 1764300000000 || b.At != 1764300029000 {
		t.Fatalf("onset %d at %d", b.Onset, b.At)
	}
	if len(b.Jobs) != 1 || b.Ranks != 32 || b.Stuck != 31 || b.Hosts != 4 || b.GPUs != 32 || b.GPUsAssumed != 0 ||
		b.GPUHoursPerHour != 32 || b.GPUHoursLost != 0.26 {
		t.Fatalf("blast radius %+v", b)
	}
	if got := rankList(b.Jobs[0].Ranks); got != "0-31" {
		t.Fatalf("ranks %q", got)
	}
	var text strings.Builder
	if err := WriteText(&text, rep); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"ROOT CAUSE: fatal gpu-6 on node-3",
		"immediate action:     RESTART_BM — reboot the node (bare metal)",
		"investigatory action: CONTACT_SUPPORT",
		"ranks: 32 on 4 host(s), 31 stuck",
		"GPU-hours lost: 0.26 so far, 32.00 per hour while it lasts",
		"job train/example: ranks 0-31 on node-1,node-2,node-3,node-4",
		"XidFatal critical",
		"ark fix 3000 --action Signal --param signal=SIGUSR1",
		"quarantine node-3 as PersistentXidError",
	} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("the diagnosis does not say %q:\n%s", want, text.String())
		}
	}
}

func TestBlastRadiusCountsOneGPUForARankWithNoneKnown(t *testing.T) {
	g := load(t, "../testdata/scenarios/storage-stall.jsonl")
	rep, err := Diagnose(g, graph.Target{JobID: jobOf(t, g)}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	b := rep.Blast
	if b == nil || b.Ranks == 0 {
		t.Fatalf("blast radius %+v", b)
	}
	known := 0
	for _, r := range b.Jobs[0].Ranks {
		if len(r.GPUs) == 0 {
			known--
		}
	}
	if b.GPUsAssumed != -known || b.GPUs != len(b.Jobs[0].GPUs)+b.GPUsAssumed || b.GPUHoursPerHour != float64(b.GPUs) {
		t.Fatalf("blast radius %+v", b)
	}
}

func jobOf(t *testing.T, g *graph.Graph) string {
	t.Helper()
	for _, p := range g.Processes(graph.ProcessFilter{}) {
		if p.JobID != "" {
			return p.JobID
		}
	}
	t.Fatal("no job in the recording")
	return ""
}

func TestFixCommandQuotesWhatTheShellWouldSplit(t *testing.T) {
	got := FixCommand(Fix{PID: 42, Node: "gpu 7", Action: "RunHook", Params: map[string]string{"hook": "drain it", "timeout_seconds": "5"}}, "http://hub:9465")
	want := `ark fix 42 --hub http://hub:9465 --node 'gpu 7' --action RunHook --param 'hook=drain it' --param timeout_seconds=5`
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}
