package graph

import (
	"testing"

	"github.com/ark-gpu/ark/event"
)

// stall adds the flow probe's stall signal: pid's flow to peer made no
// progress (zero window).
func (r *rec) stall(ts int64, node string, pid int64, peer string) {
	r.add(ts, event.TransportBW, node, "network-eth0", "0", pid, "",
		event.AttrPeer, peer, event.AttrStalledForMS, "2000", event.AttrZeroWindow, "true", event.AttrReason, "zero_window")
}

func TestStalledFlowOfAStuckRankWaitsOnThePeer(t *testing.T) {
	for _, tc := range []struct {
		name       string
		stuckFirst bool
	}{{"stall then stuck", false}, {"stuck then stall", true}} {
		t.Run(tc.name, func(t *testing.T) {
			var r rec
			r.job(t0, "j", []string{"a", "b"}, 1, 1) // a/pid-1 on 10.0.0.1:29500, b/pid-101 on 10.0.1.1:29500
			r.add(t0+1000, event.ErrorHW, "b", "gpu-0", "Xid 79: GPU has fallen off the bus.", 101, "", "xid", "79")
			if tc.stuckFirst {
				r.add(t0+2000, event.ProcessState, "a", "pid-1", "stalled", 1, "j")
				r.stall(t0+3000, "a", 1, "10.0.1.1:29500")
			} else {
				r.stall(t0+2000, "a", 1, "10.0.1.1:29500")
				r.add(t0+3000, event.ProcessState, "a", "pid-1", "stalled", 1, "j")
			}
			g := r.graph(Options{})
			a, b := g.hosts["a"].procs[1], g.hosts["b"].procs[101]
			if a.findOut(b, WaitsOn) == nil {
				t.Fatal("the stuck rank with a stalled flow to b must wait on b")
			}
			res := mustWhy(t, g, Target{JobID: "j"}, 0)
			if len(res.Causes) == 0 || res.Causes[0].NodeID != "b" || res.Causes[0].XID != 79 {
				t.Fatalf("why must name b's GPU first: %+v", res.Causes)
			}
		})
	}
}

func TestStalledFlowOfAHealthyRankIsNotAWait(t *testing.T) {
	var r rec
	r.job(t0, "j", []string{"a", "b"}, 1, 1)
	r.add(t0+1000, event.ProcessState, "a", "pid-1", "R", 1, "j")
	// An idle phase: the flow pauses while the rank computes.
	r.stall(t0+2000, "a", 1, "10.0.1.1:29500")
	r.stall(t0+3000, "a", 1, "10.0.1.1:29500")
	// Traffic with a zero bandwidth sample but no stall attribute is no stall either.
	r.add(t0+3000, event.TransportBW, "a", "network-eth0", "0", 1, "j", event.AttrPeer, "10.0.1.1:29500")
	g := r.graph(Options{})
	a, b := g.hosts["a"].procs[1], g.hosts["b"].procs[101]
	if a.findOut(b, WaitsOn) != nil {
		t.Fatal("a running rank's paused flow must not become a wait")
	}
	if got := g.Stats().UnresolvedPeer; got != 0 {
		t.Fatalf("unresolved peers = %d, want 0: nothing waited", got)
	}
}

func TestStaleFlowStallIsNotAWaitWhenTheRankGetsStuckLater(t *testing.T) {
	var r rec
	r.job(t0, "j", []string{"a", "b"}, 1, 1)
	r.stall(t0+1000, "a", 1, "10.0.1.1:29500")
	// The flow moved again long ago; the rank gets stuck for another reason.
	r.add(t0+1000+stallFresh+5000, event.ProcessState, "a", "pid-1", "stalled", 1, "j")
	g := r.graph(Options{})
	if g.hosts["a"].procs[1].findOut(g.hosts["b"].procs[101], WaitsOn) != nil {
		t.Fatal("a stall report older than stallFresh must not link")
	}
}

func TestIsFlowStall(t *testing.T) {
	base := event.Event{Type: event.TransportBW, Value: "0", Attrs: event.Attrs{{Key: event.AttrPeer, Value: "10.0.0.1:1"}, {Key: event.AttrStalledForMS, Value: "1000"}}}
	if !IsFlowStall(&base) {
		t.Fatal("the probe's stall signal")
	}
	for name, mut := range map[string]func(*event.Event){
		"drop type":  func(e *event.Event) { e.Type = event.TransportDrop },
		"traffic":    func(e *event.Event) { e.Value = "5" },
		"no peer":    func(e *event.Event) { e.Attrs = e.Attrs[1:] },
		"no stalled": func(e *event.Event) { e.Attrs = e.Attrs[:1] },
	} {
		ev := base.Clone()
		mut(&ev)
		if IsFlowStall(&ev) {
			t.Errorf("%s: not a stall", name)
		}
	}
}

func TestStalledPeersPerProcessAreBounded(t *testing.T) {
	var r rec
	r.job(t0, "j", []string{"a"}, 1, 1)
	for i := range 3 * maxStalledPeers {
		r.stall(t0+int64(i), "a", 1, "10.9.9.9:"+string(rune('a'+i%26))+string(rune('a'+i/26)))
	}
	g := r.graph(Options{})
	if n := len(g.hosts["a"].procs[1].proc.stalled); n != maxStalledPeers {
		t.Fatalf("%d stalled peers kept, want %d", n, maxStalledPeers)
	}
}
