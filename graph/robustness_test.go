package graph

import (
	"strconv"
	"testing"

	"github.com/ark-gpu/ark/event"
)

// Regression tests for robustness problems found in review: bounded size,
// clocks, pid reuse, flaps, and waits on hung ranks.

const T = t0

func ev(ts int64, typ event.Type, node, entity, value string, pid int64, job string, attrs ...string) event.Event {
	e := event.Event{TS: ts, Type: typ, NodeID: node, EntityID: entity, Value: value, PID: pid, JobID: job}
	for i := 0; i+1 < len(attrs); i += 2 {
		e.Attrs = append(e.Attrs, event.Attr{Key: attrs[i], Value: attrs[i+1]})
	}
	return e
}

// check verifies the graph's bookkeeping: every indexed node is live and in
// its list, and the per-kind counters match.
func (g *Graph) check(t *testing.T) {
	t.Helper()
	var cnt [KindHost + 1]int
	seen := map[*node]bool{}
	for n := g.nodes.head; n != nil; n = n.next {
		if n.dead {
			t.Errorf("dead node %s in LRU", n.id)
		}
		cnt[n.kind]++
		seen[n] = true
	}
	for en := range g.errs {
		cnt[KindError]++
		seen[en] = true
	}
	for name, h := range g.hosts {
		if h.node != nil {
			cnt[KindHost]++
		}
		for _, p := range h.procs {
			if !seen[p] {
				t.Errorf("host %s proc %s not in LRU", name, p.id)
			}
		}
		for _, r := range h.res {
			if !seen[r] {
				t.Errorf("host %s res %s not in LRU", name, r.id)
			}
		}
	}
	for n := range seen {
		if n.host != nil && g.hosts[n.host.name] != n.host {
			t.Errorf("node %s belongs to orphan host %q", n.id, n.host.name)
		}
	}
	for k := range cnt {
		if cnt[k] != g.nodeCount[k] {
			t.Errorf("kind %v: counted %d, nodeCount %d", Kind(k), cnt[k], g.nodeCount[k])
		}
	}
}

func TestEvidenceLimitOfOneKeepsTheOnset(t *testing.T) {
	defer func() {
		if r := recover(); r != nil {
			t.Errorf("panic: %v", r)
		}
	}()
	g := New(Options{MaxEvidence: 1})
	g.Apply(&[]event.Event{ev(T, event.ErrorHW, "a", "gpu-0", "x", 0, "", "xid", "79")}[0])
	g.Apply(&[]event.Event{ev(T+1, event.ErrorHW, "a", "gpu-0", "x", 0, "", "xid", "79")}[0])
	r, _ := g.Why(Target{Node: "a"}, 0)
	if len(r.Causes) != 1 || len(r.Causes[0].Evidence) != 1 || r.Causes[0].Evidence[0].TS != T || r.Causes[0].Count != 2 {
		t.Fatalf("%+v", r.Causes)
	}
}

func TestEvictionNeverOrphansTheHostBeingFilled(t *testing.T) {
	g := New(Options{MaxNodes: 2})
	evs := []event.Event{
		ev(T, event.ComputeUtil, "a", "gpu-0", "50", 0, ""),           // ignored but creates host a, no nodes
		ev(T, event.ErrorHW, "a", "gpu-0", "x", 0, "", "xid", "31"),   // res gpu-0 (+ error)
		ev(T+1, event.ErrorHW, "b", "gpu-0", "x", 0, "", "xid", "31"), // res b/gpu-0
		ev(T+2, event.ComputeUtil, "a", "gpu-1", "50", 7, ""),         // proc a/7 evicts a/gpu-0 ...
	}
	for i := range evs {
		g.Apply(&evs[i])
		g.check(t)
	}
	if p := g.hosts["a"]; p == nil || p.procs[7] == nil {
		t.Fatal("a/pid-7 must be registered on host a")
	}
}

func applyAll(g *Graph, evs []event.Event) {
	for i := range evs {
		g.Apply(&evs[i])
	}
}

func TestReusedPidLeavesItsOldJob(t *testing.T) {
	g := New(Options{})
	const m = 60_000
	var evs []event.Event
	evs = append(evs, ev(T, event.IntentRun, "a", "pid-100", "running", 100, "jobA", "rank", "0"))
	// jobA ends; pid 100 reused by jobB on the same host, sampled every minute
	evs = append(evs, ev(T+1*m, event.IntentRun, "a", "pid-100", "running", 100, "jobB", "rank", "0"))
	for i := int64(2); i < 30; i++ {
		evs = append(evs, ev(T+i*m, event.ComputeUtil, "a", "gpu-0", "90", 100, "jobB"))
	}
	evs = append(evs, ev(T+30*m, event.ErrorHW, "a", "gpu-0", "fell off", 0, "", "xid", "79"))
	applyAll(g, evs)
	g.Expire(g.Clock())
	r, _ := g.Why(Target{JobID: "jobA"}, 0)
	if r.Ranks != 0 || len(r.Causes) != 0 {
		t.Errorf("jobA (ended 29 min ago) still has ranks=%d causes=%d", r.Ranks, len(r.Causes))
	}
	if r, _ := g.Why(Target{JobID: "jobB"}, 0); r.Ranks != 1 || len(r.Causes) == 0 {
		t.Errorf("jobB owns pid 100 now: ranks=%d causes=%d", r.Ranks, len(r.Causes))
	}
}

func TestRepeatedDownReportsAreNotAFlap(t *testing.T) {
	g := New(Options{})
	var evs []event.Event
	evs = append(evs, ev(T, event.IntentRun, "a", "pid-1", "running", 1, "j", "rank", "0"))
	evs = append(evs, ev(T, event.TransportBW, "a", "network-ib0", "1e9", 1, "j"))
	// the probe reports the link down state every 10 s for 30 s, then up once
	for i := int64(0); i < 4; i++ {
		evs = append(evs, ev(T+1000+i*10_000, event.TopoLinkDown, "a", "network-ib0", "1", 0, ""))
	}
	evs = append(evs, ev(T+40_000, event.TopoLinkDown, "a", "network-ib0", "0", 0, ""))
	evs = append(evs, ev(T+60_000, event.TransportBW, "a", "network-ib0", "1e9", 1, "j"))
	applyAll(g, evs)
	r, _ := g.Why(Target{JobID: "j"}, 0)
	if len(r.Causes) > 0 {
		t.Errorf("one down/up reported as flapping cause")
	}
}

func TestWaitsOnAHungRankOutliveTheTTL(t *testing.T) {
	g := New(Options{})
	var evs []event.Event
	add := func(e event.Event) { evs = append(evs, e) }
	hosts := []string{"a", "b", "c", "d"}
	for hi, h := range hosts {
		pid := int64(100 + hi)
		add(ev(T, event.IntentRun, h, "pid-"+itoa(pid), "running", pid, "j", "rank", itoa(int64(hi)), "addr", "10.0.0."+itoa(int64(hi+1))+":29500"))
		add(ev(T+1000, event.ComputeUtil, h, "gpu-0", "99", pid, "j"))
		add(ev(T+1000, event.TransportBW, h, "network-ib0", "1e9", pid, "j"))
	}
	add(ev(T+10_000, event.ErrorHW, "d", "gpu-0", "GPU has fallen off the bus", 0, "", "xid", "79"))
	// a,b,c drop toward d's rank for 20 s; then they hang and only report state/util
	for s := int64(11); s < 30; s++ {
		for hi := 0; hi < 3; hi++ {
			add(ev(T+s*1000, event.TransportDrop, hosts[hi], "network-ib0", "5", int64(100+hi), "j", "peer", "10.0.0.4:29500"))
		}
	}
	// noise: a transient error.net on host a at stall, weight 0.7
	add(ev(T+25_000, event.ErrorNet, "a", "network-ib0", "NCCL WARN timeout", 0, "", "reason", "nccl-timeout"))
	for s := int64(30); s < 30+12*60; s += 15 {
		for hi := 0; hi < 3; hi++ {
			add(ev(T+s*1000, event.ProcessState, hosts[hi], "pid-"+itoa(int64(100+hi)), "stalled", int64(100+hi), "j"))
			add(ev(T+s*1000, event.ComputeUtil, hosts[hi], "gpu-0", "0", int64(100+hi), "j"))
		}
	}
	applyAll(g, evs)
	for _, at := range []int64{T + 60_000, T + 4*60_000, T + 6*60_000, T + 12*60_000} {
		r, _ := g.Why(Target{JobID: "j"}, at)
		if len(r.Causes) == 0 {
			t.Errorf("at +%ds: no cause", (at-T)/1000)
			continue
		}
		c := r.Causes[0]
		if c.NodeID != "d" || c.EntityID != "gpu-0" || c.AffectedRanks != 4 {
			t.Errorf("at +%ds: %s/%s score=%.3f ranks=%d/%d", (at-T)/1000, c.NodeID, c.EntityID, c.Score, c.AffectedRanks, c.TotalRanks)
		}
	}
}

func itoa(i int64) string { return strconv.FormatInt(i, 10) }

func TestOneFutureTimestampDoesNotMoveTheClock(t *testing.T) {
	g := New(Options{})
	var evs []event.Event
	evs = append(evs, ev(T, event.IntentRun, "a", "pid-1", "running", 1, "j", "rank", "0"))
	evs = append(evs, ev(T+1000, event.ComputeUtil, "a", "gpu-0", "0", 1, "j"))
	evs = append(evs, ev(T+2000, event.ErrorHW, "a", "gpu-0", "fell off", 0, "", "xid", "79"))
	evs = append(evs, ev(T+3000, event.ProcessState, "a", "pid-1", "stalled", 1, "j"))
	// one host with a clock a day ahead (or a bad probe) sends one event
	evs = append(evs, ev(T+86_400_000, event.ComputeUtil, "z", "gpu-0", "50", 9, "other"))
	applyAll(g, evs)
	r, _ := g.Why(Target{JobID: "j"}, 0)
	if len(r.Causes) == 0 {
		t.Errorf("future ts from an unrelated host hides the fault")
	}
	if g.Clock() != T+3000 || g.Stats().FutureClamped != 1 {
		t.Errorf("clock %d, clamped %d", g.Clock()-T, g.Stats().FutureClamped)
	}
	// A long run of later events is a real jump in time.
	for i := range int64(aheadRunLimit) {
		e := ev(T+86_400_000+i, event.ComputeUtil, "a", "gpu-0", "50", 1, "j")
		g.Apply(&e)
	}
	if g.Clock() < T+86_400_000 {
		t.Errorf("a run of %d later events must move the clock, at %d", aheadRunLimit, g.Clock()-T)
	}
}

func TestExpiryLooksPastOutOfOrderArrivals(t *testing.T) {
	g := New(Options{})
	var evs []event.Event
	// host b lags: its events arrive late but the edge is created first with a new ts
	evs = append(evs, ev(T+10*60_000, event.ComputeUtil, "b", "gpu-0", "50", 2, ""))
	for i := int64(0); i < 100; i++ {
		evs = append(evs, ev(T+i, event.ComputeUtil, "a", "gpu-"+itoa(i), "50", 1, ""))
	}
	applyAll(g, evs)
	_, e := g.Expire(T + 9*60_000)
	if e != 100 || g.edges.len != 1 {
		t.Errorf("expired %d edges, %d left; want 100 and 1", e, g.edges.len)
	}
}

func TestWhyDuringIngestAndEviction(t *testing.T) {
	g := New(Options{MaxNodes: 50, MaxEdges: 50})
	done := make(chan bool)
	go func() {
		for i := int64(0); i < 20000; i++ {
			h := "h" + itoa(i%5)
			e := ev(T+i*100, event.TransportDrop, h, "network-ib0", "3", 1+i%40, "j", "peer", "10.0.0."+itoa(i%5)+":1")
			g.Apply(&e)
			e2 := ev(T+i*100, event.IntentRun, h, "pid-1", "running", 1+i%40, "j", "addr", "10.0.0."+itoa(i%5)+":1")
			g.Apply(&e2)
			if i%100 == 0 {
				e3 := ev(T+i*100, event.ErrorHW, h, "gpu-0", "x", 1+i%40, "j", "xid", "79")
				g.Apply(&e3)
				e4 := ev(T+i*100, event.ProcessState, h, "pid-1", "D", 1+i%40, "j")
				g.Apply(&e4)
				g.Expire(T + i*100)
			}
		}
		close(done)
	}()
	for {
		select {
		case <-done:
			g.check(t)
			return
		default:
			g.Why(Target{JobID: "j"}, 0)
			g.Why(Target{Node: "h1"}, 0)
		}
	}
}

func TestEdgeBookkeepingUnderTinyCaps(t *testing.T) {
	for _, mn := range []int{2, 3, 5, 20} {
		g := New(Options{MaxNodes: mn, MaxEdges: 7})
		for i := int64(0); i < 3000; i++ {
			h := "h" + itoa(i%3)
			es := []event.Event{
				ev(T+i*1000, event.IntentRun, h, "x", "r", 1+i%7, "j"+itoa(i%2), "addr", "10.0.0."+itoa(i%3)+":1"),
				ev(T+i*1000, event.TransportDrop, h, "network-ib0", "3", 1+i%7, "j", "peer", "10.0.0."+itoa((i+1)%3)+":1"),
				ev(T+i*1000, event.ErrorHW, h, "gpu-"+itoa(i%4), "x", 1+i%7, "j", "xid", "79"),
				ev(T+i*1000, event.ProcessState, h, "pid-1", "D", 1+i%7, "j"),
			}
			applyAll(g, es)
			if i%50 == 0 {
				g.Expire(T + i*1000)
			}
			var cnt [MemberOf + 1]int
			for e := g.edges.head; e != nil; e = e.next {
				cnt[e.typ]++
				if e.from.dead || e.to.dead {
					t.Fatalf("mn=%d i=%d: edge %s->%s %v has dead endpoint", mn, i, e.from.id, e.to.id, e.typ)
				}
			}
			for k := Consumes; k <= MemberOf; k++ {
				if k != BlockedBy && cnt[k] != g.edgeCount[k] {
					t.Fatalf("mn=%d i=%d: %v counted %d vs %d", mn, i, k, cnt[k], g.edgeCount[k])
				}
			}
		}
	}
}

func TestHostTargetCountsItsIdleFaultyGPU(t *testing.T) {
	g := New(Options{})
	e := ev(T, event.ErrorHW, "a", "gpu-3", "fell off", 0, "", "xid", "79")
	g.Apply(&e)
	r, _ := g.Why(Target{Node: "a"}, 0)
	if len(r.Causes) != 1 || r.Causes[0].AffectedRanks != 1 || r.Causes[0].Score < 0.9 {
		t.Fatalf("%+v", r.Causes)
	}
}
