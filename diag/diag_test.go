package diag

import (
	"os"
	"strings"
	"testing"

	"github.com/ark-gpu/ark/event"
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
	ts := int64(1_764_300_000_000)
	rank := func(pid int64, r string) event.Event {
		return event.Event{TS: ts, Type: event.IntentRun, EntityID: "pid-" + r, NodeID: "h1", PID: pid, JobID: "j", Value: "running",
			Attrs: event.Attrs{{Key: "rank", Value: r}}}
	}
	g := graph.New(graph.Options{})
	g.ApplyBatch([]event.Event{
		rank(10, "0"), rank(11, "1"),
		{TS: ts + 1000, Type: event.ComputeUtil, EntityID: "gpu-0", NodeID: "h1", PID: 10, JobID: "j", Value: "90"},
		{TS: ts + 1000, Type: event.StorageIOPS, EntityID: "nvme0n1", NodeID: "h1", PID: 11, JobID: "j", Value: "900"},
		{TS: ts + 2000, Type: event.ErrorHW, EntityID: "nvme0n1", NodeID: "h1", Value: "I/O error, dev nvme0n1"},
		{TS: ts + 3000, Type: event.ProcessState, EntityID: "pid-11", NodeID: "h1", PID: 11, JobID: "j", Value: "D"},
		{TS: ts + 3000, Type: event.ProcessState, EntityID: "pid-10", NodeID: "h1", PID: 10, JobID: "j", Value: "stalled"},
	})
	g.Settle()
	rep, err := Diagnose(g, graph.Target{JobID: "j"}, Options{At: ts + 2000 + msPerHour/2})
	if err != nil {
		t.Fatal(err)
	}
	b := rep.Blast
	if b == nil || b.EntityID != "nvme0n1" || b.Ranks != 2 || b.GPUs != 2 || b.GPUsAssumed != 1 || b.GPUHoursPerHour != 2 || b.GPUHoursLost != 1 {
		t.Fatalf("blast radius %+v causes %+v", b, rep.Causes)
	}
}

func TestFixCommandQuotesWhatTheShellWouldSplit(t *testing.T) {
	got := FixCommand(Fix{PID: 42, Node: "gpu 7", Action: "RunHook", Params: map[string]string{"hook": "drain it", "timeout_seconds": "5"}}, "http://hub:9465")
	want := `ark fix 42 --hub http://hub:9465 --node 'gpu 7' --action RunHook --param 'hook=drain it' --param timeout_seconds=5`
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}
