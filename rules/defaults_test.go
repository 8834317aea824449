package rules

import (
	"testing"
	"time"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/internal/fakeclock"
)

func TestDefaultsLoad(t *testing.T) {
	equalStrings(t, "default rules", ruleNames(Defaults()),
		[]string{"RankStalledOnNetwork", "StorageQueueSaturated", "XidFatal"})
	if errs := Check("defaults"); len(errs) > 0 {
		t.Fatal(errs)
	}
}

func xidEvent(code string) *event.Event {
	ev := &event.Event{TS: 1_700_000_000_000, Type: event.ErrorHW, EntityID: "gpu-0", NodeID: "node-3",
		Value: "NVRM: Xid (PCI:0000:3b:00): " + code}
	if code != "" {
		ev.Attrs = event.Attrs{{Key: event.AttrXID, Value: code}}
	}
	return ev
}

func TestXidFatalSuggestsQuarantineForAFatalXid(t *testing.T) {
	ms := Defaults().Evaluate(Input{Event: xidEvent("79")}) // fell off the bus: RESTART_BM
	if len(ms) != 1 || ms[0].Rule != "XidFatal" {
		t.Fatalf("matched %v", matched(ms))
	}
	m := ms[0]
	if m.Severity != SeverityCritical || len(m.Actions) != 2 ||
		m.Actions[0].Type != ActionQuarantine || m.Actions[0].Class() != "PersistentXidError" ||
		m.Actions[1].Type != ActionReportOnly || m.Target.Node != "node-3" {
		t.Errorf("match %+v", m)
	}
}

func TestXidFatalStaysQuietForTransientOrMissingXids(t *testing.T) {
	rs := Defaults()
	for _, ev := range []*event.Event{
		xidEvent("13"),  // graphics engine exception: RESTART_APP
		xidEvent("43"),  // IGNORE
		xidEvent("abc"), // not a code
		xidEvent(""),    // an ECC or disk error without an XID
	} {
		if ms := rs.Evaluate(Input{Event: ev}); len(ms) != 0 {
			t.Errorf("xid %q: matched %v", ev.Attrs.Get(event.AttrXID), matched(ms))
		}
	}
	if n := rs.EvalErrors(); n != 0 {
		t.Errorf("%d eval errors", n)
	}
}

func TestRankStalledOnNetworkFiresOnDropsAndSignalsCheckpoint(t *testing.T) {
	ms := Defaults().Evaluate(Input{Event: drop(42, "17")})
	if len(ms) != 1 || ms[0].Rule != "RankStalledOnNetwork" {
		t.Fatalf("matched %v", matched(ms))
	}
	if a := ms[0].Actions; len(a) != 1 || a[0].Type != ActionSignal || a[0].Signal() != "SIGUSR1" || ms[0].Target.PID != 42 {
		t.Errorf("match %+v", ms[0])
	}
}

func TestRankStalledOnNetworkFiresOnAStalledRankWaitingOnTheNetwork(t *testing.T) {
	g := &fakeGraph{waits: map[string][]string{"node-3/pid-42": {"network-ib0"}, "node-3/pid-43": {"storage-nvme0n1"}}}
	state := func(pid int64, v string) Input {
		return Input{Event: &event.Event{Type: event.ProcessState, EntityID: "pid-" + itoa(pid), NodeID: "node-3", PID: pid, Value: v}, Graph: g}
	}
	rs := Defaults()
	if ms := rs.Evaluate(state(43, "stalled")); len(ms) != 0 {
		t.Errorf("a rank stalled on storage matched %v", matched(ms))
	}
	if ms := rs.Evaluate(state(42, "R")); len(ms) != 0 {
		t.Errorf("a running rank matched %v", matched(ms))
	}
	if ms := rs.Evaluate(state(42, "stalled")); len(ms) != 1 || ms[0].Rule != "RankStalledOnNetwork" {
		t.Errorf("a rank stalled on the network matched %v", matched(ms))
	}
}

func TestRankStalledOnNetworkStaysQuietWithoutDropsOrAProcess(t *testing.T) {
	rs := Defaults()
	noPID := drop(0, "17")
	notNIC := drop(42, "17")
	notNIC.EntityID = "gpu-0"
	for name, ev := range map[string]*event.Event{"zero drops": drop(42, "0"), "no pid": noPID, "not a nic": notNIC} {
		if ms := rs.Evaluate(Input{Event: ev}); len(ms) != 0 {
			t.Errorf("%s: matched %v", name, matched(ms))
		}
	}
}

func TestStorageQueueSaturatedAboveDepth64(t *testing.T) {
	rs := Defaults()
	qd := func(v string) Input {
		return Input{Event: &event.Event{Type: event.StorageQDepth, EntityID: "storage-nvme0n1", NodeID: "node-3", PID: 7, Value: v}}
	}
	if ms := rs.Evaluate(qd("64")); len(ms) != 0 {
		t.Errorf("depth 64 matched %v", matched(ms))
	}
	ms := rs.Evaluate(qd("65"))
	if len(ms) != 1 || ms[0].Rule != "StorageQueueSaturated" || ms[0].Actions[0].Type != ActionReportOnly {
		t.Errorf("depth 65 matched %v", matched(ms))
	}
}

func TestDefaultsReplayARecordedStall(t *testing.T) {
	// One rank's NIC drops, then a GPU falls off the bus on another host:
	// each rule fires once per target, the cooldown holds the repeats.
	rs := Defaults()
	clock := fakeclock.New(time.Time{})
	rs.SetClock(clock.Now)
	var got []string
	for _, ev := range []*event.Event{drop(42, "0"), drop(42, "3"), drop(42, "9"), xidEvent("79"), xidEvent("79"), xidEvent("13")} {
		got = append(got, matched(rs.Evaluate(Input{Event: ev}))...)
	}
	equalStrings(t, "fired", got, []string{"RankStalledOnNetwork", "XidFatal"})
}
