package graph

import (
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ark-gpu/ark/event"
)

const t0 = int64(1764300000000)

// rec builds events tersely for tests.
type rec struct{ evs []event.Event }

func (r *rec) add(ts int64, typ event.Type, node, entity, value string, pid int64, job string, attrs ...string) {
	ev := event.Event{TS: ts, Type: typ, NodeID: node, EntityID: entity, Value: value, PID: pid, JobID: job}
	for i := 0; i+1 < len(attrs); i += 2 {
		ev.Attrs = append(ev.Attrs, event.Attr{Key: attrs[i], Value: attrs[i+1]})
	}
	r.evs = append(r.evs, ev)
}

// job places ranks on hosts: ranks[host] = number of ranks; pid = base+i.
func (r *rec) job(ts int64, job string, hosts []string, perHost int, base int64) {
	rank := 0
	for hi, h := range hosts {
		for i := range perHost {
			pid := base + int64(hi*100+i)
			r.add(ts, event.IntentRun, h, "pid-"+strconv.FormatInt(pid, 10), "running", pid, job,
				"rank", strconv.Itoa(rank), "addr", fmt.Sprintf("10.0.%d.1:%d", hi, 29500+i))
			rank++
		}
	}
}

// steady emits healthy samples for every rank from..to.
func (r *rec) steady(from, to int64, job string, hosts []string, perHost int, base int64) {
	for ts := from; ts <= to; ts += 2000 {
		for hi, h := range hosts {
			for i := range perHost {
				pid := base + int64(hi*100+i)
				r.add(ts, event.ComputeUtil, h, "gpu-"+strconv.Itoa(i), "95", pid, job)
				r.add(ts, event.TransportBW, h, "network-ib0", "2e10", pid, job)
				r.add(ts, event.ProcessState, h, "pid-"+strconv.FormatInt(pid, 10), "R", pid, job)
			}
		}
	}
}

func (r *rec) graph(opts Options) *Graph {
	g := New(opts)
	g.ApplyBatch(r.evs)
	return g
}

func mustWhy(t *testing.T, g *Graph, tg Target, at int64) Result {
	t.Helper()
	res, err := g.Why(tg, at)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

var hosts4 = []string{"h1", "h2", "h3", "h4"}

// stallOn makes every rank not on failHost drop toward the rank on failHost
// with the same local index, and go stalled.
func (r *rec) stallOn(from, to int64, job string, hosts []string, perHost int, base int64, failHost int) {
	for ts := from; ts <= to; ts += 2000 {
		for hi, h := range hosts {
			for i := range perHost {
				pid := base + int64(hi*100+i)
				if hi != failHost {
					r.add(ts, event.TransportDrop, h, "network-ib0", "12", pid, job, "peer", fmt.Sprintf("10.0.%d.1:%d", failHost, 29500+i))
				}
				r.add(ts, event.ProcessState, h, "pid-"+strconv.FormatInt(pid, 10), "stalled", pid, job)
			}
		}
	}
}

func TestWhyNamesTheFaultyGPUAcrossHosts(t *testing.T) {
	var r rec
	r.job(t0, "j", hosts4, 2, 1000)
	r.steady(t0, t0+60_000, "j", hosts4, 2, 1000)
	r.add(t0+61_000, event.ErrorHW, "h3", "gpu-1", "Xid 79: GPU has fallen off the bus.", 1201, "", "xid", "79")
	r.stallOn(t0+62_000, t0+80_000, "j", hosts4, 2, 1000, 2)
	g := r.graph(Options{})
	res := mustWhy(t, g, Target{JobID: "j"}, 0)
	if len(res.Causes) == 0 {
		t.Fatal("no cause")
	}
	c := res.Causes[0]
	if c.NodeID != "h3" || c.EntityID != "gpu-1" || c.XID != 79 || c.Severity != "fatal" {
		t.Fatalf("first cause %+v", c)
	}
	if c.AffectedRanks != 8 || c.TotalRanks != 8 {
		// Local index 1 on every host: h3/pid-1201 uses gpu-1 and the other
		// three wait on it. Index 0 ranks wait on h3/pid-1200, stuck beside
		// the dead GPU with nothing else to explain it: linked through the
		// host to its job's faulty device.
		t.Fatalf("affected %d/%d, want 8/8", c.AffectedRanks, c.TotalRanks)
	}
	// The chain starts on another host and crosses to h3 over a WaitsOn.
	if len(c.Chain) < 3 || c.Chain[0].Type != "WaitsOn" || c.Chain[0].To != "h3/pid-1201" {
		t.Fatalf("chain %+v", c.Chain)
	}
	last := c.Chain[len(c.Chain)-1]
	if last.Type != "BlockedBy" || last.From != "h3/gpu-1" {
		t.Fatalf("chain must end at the error: %+v", c.Chain)
	}
	if res.At != t0+80_000 {
		t.Fatalf("evaluated at %d, want the last event", res.At)
	}
}

func TestCrossNodeEdgeFromPeerAddress(t *testing.T) {
	var r rec
	r.job(t0, "j", []string{"a", "b"}, 1, 1)
	r.add(t0+1000, event.TransportDrop, "a", "network-ib0", "5", 1, "j", "peer", "10.0.1.1:29500")
	// An ephemeral port matches by ip.
	r.add(t0+1000, event.TransportDrop, "b", "network-ib0", "5", 101, "j", "peer", "10.0.0.1:40123")
	// An unknown peer is counted, not linked.
	r.add(t0+1000, event.TransportDrop, "b", "network-ib0", "5", 101, "j", "peer", "192.168.9.9:1")
	g := r.graph(Options{})
	a := g.hosts["a"].procs[1]
	b := g.hosts["b"].procs[101]
	if a.findOut(b, WaitsOn) == nil {
		t.Fatal("a/pid-1 must wait on b/pid-101 (exact ip:port)")
	}
	if b.findOut(a, WaitsOn) == nil {
		t.Fatal("b/pid-101 must wait on a/pid-1 (same ip, other port)")
	}
	if got := g.Stats().UnresolvedPeer; got != 1 {
		t.Fatalf("unresolved peers = %d, want 1", got)
	}
}

func TestZeroDropsAreNotAWait(t *testing.T) {
	var r rec
	r.job(t0, "j", []string{"a", "b"}, 1, 1)
	r.add(t0+1000, event.TransportDrop, "a", "network-ib0", "0", 1, "j", "peer", "10.0.1.1:29500")
	g := r.graph(Options{})
	if g.hosts["a"].procs[1].findOut(g.hosts["b"].procs[101], WaitsOn) != nil {
		t.Fatal("a drop count of 0 must not create a wait")
	}
	if g.Stats().Edges[WaitsOn] != 0 {
		t.Fatal("no WaitsOn edge expected")
	}
}

func TestHealthyJobHasNoCauses(t *testing.T) {
	var r rec
	r.job(t0, "sick", hosts4, 2, 1000)
	r.job(t0, "fine", hosts4, 2, 5000)
	r.steady(t0, t0+60_000, "sick", hosts4, 2, 1000)
	r.steady(t0, t0+90_000, "fine", hosts4, 2, 5000)
	// sick's GPUs are gpu-0/1; fine uses the same names on the same hosts,
	// so put the fault on a GPU index only sick uses.
	r.add(t0+61_000, event.ErrorHW, "h2", "gpu-7", "Xid 48: DBE", 1107, "", "xid", "48")
	r.add(t0+61_000, event.ComputeUtil, "h2", "gpu-7", "0", 1101, "sick")
	r.stallOn(t0+62_000, t0+90_000, "sick", hosts4, 2, 1000, 1)
	g := r.graph(Options{})
	if res := mustWhy(t, g, Target{JobID: "fine"}, 0); len(res.Causes) != 0 || !res.Found {
		t.Fatalf("healthy job: found=%v causes %+v", res.Found, res.Causes)
	}
	if res := mustWhy(t, g, Target{JobID: "sick"}, 0); len(res.Causes) == 0 || res.Causes[0].EntityID != "gpu-7" {
		t.Fatalf("sick job: %+v", res.Causes)
	}
	if res := mustWhy(t, g, Target{JobID: "nope"}, 0); res.Found || len(res.Causes) != 0 {
		t.Fatalf("unknown job: %+v", res)
	}
}

func TestLinkDownClearsWhenItComesBackUp(t *testing.T) {
	var r rec
	r.job(t0, "j", hosts4, 1, 1)
	r.steady(t0, t0+30_000, "j", hosts4, 1, 1)
	r.add(t0+10_000, event.TopoLinkDown, "h2", "network-ib0", "1", 0, "")
	g := r.graph(Options{})
	res := mustWhy(t, g, Target{JobID: "j"}, t0+20_000)
	if len(res.Causes) == 0 || res.Causes[0].EventType != event.TopoLinkDown {
		t.Fatalf("a down link is a cause while down: %+v", res.Causes)
	}
	g.Apply(&event.Event{TS: t0 + 25_000, Type: event.TopoLinkDown, NodeID: "h2", EntityID: "network-ib0", Value: "0"})
	if res := mustWhy(t, g, Target{JobID: "j"}, t0+30_000); len(res.Causes) != 0 {
		t.Fatalf("a link back up is not a current cause: %+v", res.Causes)
	}
	// Evaluated before it came back, it still is.
	if res := mustWhy(t, g, Target{JobID: "j"}, t0+20_000); len(res.Causes) == 0 {
		t.Fatal("at a time before the link came back it is still a cause")
	}
}

func TestFlappingLinkStaysACauseWhileBrieflyUp(t *testing.T) {
	var r rec
	r.job(t0, "j", hosts4, 1, 1)
	r.steady(t0, t0+60_000, "j", hosts4, 1, 1)
	for i := range int64(4) {
		r.add(t0+10_000+i*8000, event.TopoLinkDown, "h2", "network-ib0", "1", 0, "")
		r.add(t0+14_000+i*8000, event.TopoLinkDown, "h2", "network-ib0", "0", 0, "")
	}
	g := r.graph(Options{})
	res := mustWhy(t, g, Target{JobID: "j"}, t0+60_000)
	if len(res.Causes) == 0 || !res.Causes[0].Flapping {
		t.Fatalf("a link that flapped 4 times and is up for 22s is flapping: %+v", res.Causes)
	}
	// Long after the last flap it is over.
	if res := mustWhy(t, g, Target{JobID: "j"}, t0+60_000+6*60_000); len(res.Causes) != 0 {
		t.Fatalf("flapping ended: %+v", res.Causes)
	}
}

func TestWhyTerminatesOnWaitCycles(t *testing.T) {
	var r rec
	hosts := []string{"a", "b", "c"}
	r.job(t0, "j", hosts, 1, 1)
	r.steady(t0, t0+10_000, "j", hosts, 1, 1)
	for ts := t0 + 12_000; ts < t0+30_000; ts += 2000 {
		r.add(ts, event.TransportDrop, "a", "network-ib0", "3", 1, "j", "peer", "10.0.1.1:29500")
		r.add(ts, event.TransportDrop, "b", "network-ib0", "3", 101, "j", "peer", "10.0.2.1:29500")
		r.add(ts, event.TransportDrop, "c", "network-ib0", "3", 201, "j", "peer", "10.0.0.1:29500")
		for _, p := range []struct {
			h   string
			pid int64
		}{{"a", 1}, {"b", 101}, {"c", 201}} {
			r.add(ts, event.ProcessState, p.h, "pid-"+strconv.FormatInt(p.pid, 10), "stalled", p.pid, "j")
		}
	}
	g := r.graph(Options{})
	res := mustWhy(t, g, Target{JobID: "j"}, 0)
	// No error anywhere: the cause is a symptom, and the walk ended.
	for _, c := range res.Causes {
		if c.Kind != "symptom" {
			t.Fatalf("no error exists, got %+v", c)
		}
	}
	r.add(t0+30_000, event.ErrorHW, "b", "gpu-0", "Xid 79", 101, "", "xid", "79")
	g = r.graph(Options{})
	res = mustWhy(t, g, Target{JobID: "j"}, 0)
	if len(res.Causes) == 0 || res.Causes[0].NodeID != "b" || res.Causes[0].AffectedRanks != 3 {
		t.Fatalf("cycle with a fault: %+v", res.Causes)
	}
}

func TestFatalBeatsTransientAndSympathetic(t *testing.T) {
	var r rec
	r.job(t0, "j", hosts4, 2, 1000)
	r.steady(t0, t0+60_000, "j", hosts4, 2, 1000)
	r.add(t0+61_000, event.ErrorHW, "h3", "gpu-0", "Xid 119: GSP RPC timeout", 1200, "", "xid", "119")
	r.stallOn(t0+62_000, t0+80_000, "j", hosts4, 2, 1000, 2)
	// Other hosts' GPUs report what follows their ranks' aborts.
	r.add(t0+64_000, event.ErrorHW, "h1", "gpu-0", "Xid 45: preemptive cleanup", 1000, "", "xid", "45")
	r.add(t0+64_500, event.ErrorHW, "h2", "gpu-1", "Xid 13: graphics exception", 1101, "", "xid", "13")
	r.add(t0+65_000, event.ErrorHW, "h4", "gpu-0", "Xid 43: stopped processing", 1300, "", "xid", "43")
	g := r.graph(Options{})
	res := mustWhy(t, g, Target{JobID: "j"}, 0)
	if len(res.Causes) < 3 {
		t.Fatalf("want the fatal and the sympathetic errors listed: %+v", res.Causes)
	}
	if c := res.Causes[0]; c.NodeID != "h3" || c.XID != 119 {
		t.Fatalf("first cause %+v", c)
	}
	for _, c := range res.Causes[1:] {
		if c.XID == 45 && !c.Sympathetic {
			t.Fatalf("XID 45 after a primary error is sympathetic: %+v", c)
		}
	}
}

func TestSoloXID45IsACause(t *testing.T) {
	var r rec
	r.job(t0, "j", hosts4, 1, 1)
	r.steady(t0, t0+20_000, "j", hosts4, 1, 1)
	r.add(t0+10_000, event.ErrorHW, "h1", "gpu-0", "Xid 45", 1, "", "xid", "45")
	res := mustWhy(t, r.graph(Options{}), Target{JobID: "j"}, 0)
	if len(res.Causes) != 1 || res.Causes[0].Sympathetic {
		t.Fatalf("a solo XID 45 stands on its own: %+v", res.Causes)
	}
}

func TestIgnorableXIDIsNotACauseForAHealthyJob(t *testing.T) {
	var r rec
	r.job(t0, "j", hosts4, 1, 1)
	r.steady(t0, t0+20_000, "j", hosts4, 1, 1)
	r.add(t0+10_000, event.ErrorHW, "h1", "gpu-0", "Xid 63: row remapping", 1, "", "xid", "63")
	if res := mustWhy(t, r.graph(Options{}), Target{JobID: "j"}, 0); len(res.Causes) != 0 {
		t.Fatalf("XID 63 (IGNORE) on a running job: %+v", res.Causes)
	}
}

func TestWhyForPIDAndHost(t *testing.T) {
	var r rec
	r.job(t0, "j", hosts4, 2, 1000)
	r.steady(t0, t0+60_000, "j", hosts4, 2, 1000)
	r.add(t0+61_000, event.ErrorHW, "h3", "gpu-1", "Xid 79", 1201, "", "xid", "79")
	r.stallOn(t0+62_000, t0+80_000, "j", hosts4, 2, 1000, 2)
	g := r.graph(Options{})
	res := mustWhy(t, g, Target{Node: "h1", PID: 1001}, 0)
	if !res.Found || len(res.Causes) == 0 || res.Causes[0].NodeID != "h3" {
		t.Fatalf("pid on h1 waits on h3: %+v", res)
	}
	res = mustWhy(t, g, Target{Node: "h3"}, 0)
	if len(res.Causes) == 0 || res.Causes[0].EntityID != "gpu-1" {
		t.Fatalf("host h3: %+v", res.Causes)
	}
	if res := mustWhy(t, g, Target{Node: "h1", PID: 424242}, 0); res.Found {
		t.Fatal("an unknown pid is not found")
	}
	if _, err := g.Why(Target{}, 0); err == nil {
		t.Fatal("an empty target is an error")
	}
}

func TestTTLExpiresEdgesAndNodes(t *testing.T) {
	var r rec
	r.job(t0, "j", hosts4, 2, 1000)
	r.steady(t0, t0+10_000, "j", hosts4, 2, 1000)
	g := r.graph(Options{TTL: time.Minute})
	before := g.Stats()
	if before.Nodes[KindProcess] != 8 || before.Edges[Consumes] != 16 {
		t.Fatalf("before: %+v", before)
	}
	nodes, edges := g.Expire(t0 + 10_000 + 2*60_000)
	after := g.Stats()
	if edges != 16+8 || after.Edges[Consumes] != 0 || after.Edges[MemberOf] != 0 {
		t.Fatalf("expired %d edges, after %+v", edges, after.Edges)
	}
	if nodes == 0 || after.Nodes[KindProcess] != 0 || after.Nodes[KindResource] != 0 || after.Nodes[KindJob] != 0 {
		t.Fatalf("expired %d nodes, after %+v", nodes, after.Nodes)
	}
	if after.ExpiredEdges != uint64(edges) || after.ExpiredNodes != uint64(nodes) {
		t.Fatalf("expiry counters %+v", after)
	}
	// The graph is usable after a full expiry.
	r.evs = nil
	r.job(t0+200_000, "j", hosts4, 1, 1000)
	g.ApplyBatch(r.evs)
	if res := mustWhy(t, g, Target{JobID: "j"}, 0); !res.Found || res.Ranks != 4 {
		t.Fatalf("after expiry: %+v", res)
	}
}

func TestFatalErrorOutlivesTheTTL(t *testing.T) {
	var r rec
	r.job(t0, "j", hosts4, 1, 1)
	r.steady(t0, t0+10_000, "j", hosts4, 1, 1)
	r.add(t0+11_000, event.ErrorHW, "h2", "gpu-0", "Xid 79", 101, "", "xid", "79")
	// Everyone else keeps reporting; the dead GPU and its rank go silent.
	r.steady(t0+12_000, t0+12_000+10*60_000, "j", []string{"h1"}, 1, 1)
	r.stallOn(t0+12_000, t0+12_000+10*60_000, "j", []string{"h1"}, 1, 1, 1)
	g := r.graph(Options{})
	g.Expire(g.Clock())
	res := mustWhy(t, g, Target{JobID: "j"}, 0)
	if len(res.Causes) == 0 || res.Causes[0].EntityID != "gpu-0" || res.Causes[0].NodeID != "h2" {
		t.Fatalf("10 minutes after an XID 79 it is still the cause: %+v", res.Causes)
	}
}

func TestCapsEvictOldestFirstAndCount(t *testing.T) {
	g := New(Options{MaxNodes: 50, MaxEdges: 40})
	for i := range 200 {
		g.Apply(&event.Event{TS: t0 + int64(i), Type: event.ComputeUtil, NodeID: "h", EntityID: "gpu-" + strconv.Itoa(i%8),
			Value: "1", PID: int64(1000 + i)})
	}
	s := g.Stats()
	nodes := 0
	for _, n := range s.Nodes {
		nodes += n
	}
	edges := 0
	for _, n := range s.Edges {
		edges += n
	}
	if edges > 40 || s.EvictedEdges == 0 {
		t.Fatalf("edges %d evicted %d", edges, s.EvictedEdges)
	}
	if nodes > 51 || s.EvictedNodes == 0 { // + the host node, kept outside the LRU
		t.Fatalf("nodes %d evicted %d", nodes, s.EvictedNodes)
	}
	// The newest process survived, the oldest did not.
	if g.hosts["h"].procs[1199] == nil || g.hosts["h"].procs[1000] != nil {
		t.Fatal("eviction must take the least recently touched first")
	}
}

func TestConcurrentReadersAndOneWriter(t *testing.T) {
	var r rec
	r.job(t0, "j", hosts4, 2, 1000)
	g := r.graph(Options{})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := g.Why(Target{JobID: "j"}, 0); err != nil {
					t.Error(err)
					return
				}
				_ = g.Stats()
			}
		}()
	}
	var w rec
	w.steady(t0, t0+200_000, "j", hosts4, 2, 1000)
	w.stallOn(t0+100_000, t0+200_000, "j", hosts4, 2, 1000, 1)
	for i := range w.evs {
		g.Apply(&w.evs[i])
	}
	close(stop)
	wg.Wait()
	if res := mustWhy(t, g, Target{JobID: "j"}, 0); res.Ranks != 8 {
		t.Fatalf("ranks %d", res.Ranks)
	}
}

// Some probes report per-GPU utilization without pids and faults without
// the process: the fault still explains a stuck job whose rank is on that
// host, through the host, and does not touch a healthy one.
func TestUnattributedFaultOnAStuckRanksHost(t *testing.T) {
	var r rec
	r.job(t0, "j", hosts4, 2, 1000)
	r.job(t0, "ok", []string{"h9"}, 2, 9000)
	for ts := t0; ts <= t0+60_000; ts += 2000 {
		for hi, h := range hosts4 {
			for i := range 2 {
				pid := 1000 + int64(hi*100+i)
				r.add(ts, event.ComputeUtil, h, "gpu-"+strconv.Itoa(i), "95", 0, "") // no pid
				r.add(ts, event.ProcessState, h, "pid-"+strconv.FormatInt(pid, 10), "R", pid, "j")
			}
		}
		r.add(ts, event.ProcessState, "h9", "pid-9000", "R", 9000, "ok")
	}
	r.add(t0+61_000, event.ErrorHW, "h2", "gpu-1", "Xid 79", 0, "", "xid", "79")
	r.add(t0+61_000, event.ErrorHW, "h9", "gpu-1", "Xid 79", 0, "", "xid", "79")
	r.stallOn(t0+62_000, t0+80_000, "j", hosts4, 2, 1000, 1)
	g := r.graph(Options{})
	res := mustWhy(t, g, Target{JobID: "j"}, 0)
	if len(res.Causes) == 0 || res.Causes[0].NodeID != "h2" || res.Causes[0].EntityID != "gpu-1" {
		t.Fatalf("first cause: %+v", res.Causes)
	}
	c := res.Causes[0]
	if got := c.Chain[len(c.Chain)-2].Type; got != SameHost {
		t.Fatalf("the inferred link must say so in the chain: %+v", c.Chain)
	}
	if res := mustWhy(t, g, Target{JobID: "ok"}, 0); len(res.Causes) != 0 {
		t.Fatalf("a running job is not blamed on an unattributed fault: %+v", res.Causes)
	}
}

func TestProcessesAndPidReuse(t *testing.T) {
	g := New(Options{})
	g.Apply(&event.Event{TS: t0, Type: event.IntentRun, NodeID: "h", EntityID: "pid-5", PID: 5, JobID: "a", Value: "running",
		Attrs: event.Attrs{{Key: "rank", Value: "3"}}})
	g.Apply(&event.Event{TS: t0 + 1, Type: event.ProcessState, NodeID: "h", EntityID: "pid-5", PID: 5, JobID: "a", Value: "S",
		Attrs: event.Attrs{{Key: AttrStartTime, Value: "1000"}}})
	g.Apply(&event.Event{TS: t0 + 2, Type: event.ComputeUtil, NodeID: "h", EntityID: "gpu-0", PID: 5, JobID: "a", Value: "90"})
	ps := g.Processes(ProcessFilter{Node: "h"})
	if len(ps) != 1 || ps[0].JobID != "a" || ps[0].Rank != "3" || ps[0].StartTime != 1000 || len(ps[0].Resources) != 1 {
		t.Fatalf("%+v", ps)
	}
	if j, ok := g.JobOf("h", 5); !ok || j != "a" {
		t.Fatalf("JobOf: %q %v", j, ok)
	}
	// Another process gets pid 5: the old one's job and edges are gone.
	g.Apply(&event.Event{TS: t0 + 3, Type: event.ProcessState, NodeID: "h", EntityID: "pid-5", PID: 5, Value: "R",
		Attrs: event.Attrs{{Key: AttrStartTime, Value: "2000"}}})
	ps = g.Processes(ProcessFilter{Node: "h"})
	if len(ps) != 1 || ps[0].JobID != "" || ps[0].StartTime != 2000 || len(ps[0].Resources) != 0 {
		t.Fatalf("after reuse: %+v", ps)
	}
	if res := mustWhy(t, g, Target{JobID: "a"}, 0); res.Ranks != 0 {
		t.Fatalf("job a lost its only rank: %+v", res)
	}
}

// A discovered rank's GPUs (attrs.gpus) are resources it consumes, so an
// XID on one reaches the job with no per-process GPU metric at all.
func TestIntentRunGPUsAreConsumed(t *testing.T) {
	g := New(Options{})
	g.Apply(&event.Event{TS: t0, Type: event.IntentRun, NodeID: "h", EntityID: "pid-5", PID: 5, JobID: "a", Value: "running",
		Attrs: event.Attrs{{Key: event.AttrRank, Value: "0"}, {Key: event.AttrGPUs, Value: "1,3,GPU-0f1e2d3c"}}})
	ps := g.Processes(ProcessFilter{Node: "h"})
	if len(ps) != 1 || len(ps[0].Resources) != 2 || ps[0].Resources[0].ID != "h/gpu-1" || ps[0].Resources[1].ID != "h/gpu-3" ||
		ps[0].Resources[0].Type != "Consumes" {
		t.Fatalf("%+v, want Consumes gpu-1 and gpu-3 (the UUID left out)", ps)
	}
	g.Apply(&event.Event{TS: t0 + 1, Type: event.ErrorHW, NodeID: "h", EntityID: "gpu-3", Value: "Xid 79: GPU has fallen off the bus.",
		Attrs: event.Attrs{{Key: event.AttrXID, Value: "79"}}})
	g.Apply(&event.Event{TS: t0 + 2, Type: event.ProcessState, NodeID: "h", EntityID: "pid-5", PID: 5, JobID: "a", Value: "stalled"})
	res := mustWhy(t, g, Target{JobID: "a"}, 0)
	if len(res.Causes) == 0 || res.Causes[0].EntityID != "gpu-3" {
		t.Fatalf("causes %+v, want gpu-3 first", res.Causes)
	}
}

// Hosts' events arrive in any order: a wait on a peer whose rank is not
// announced yet is remembered and linked when the announcement comes.
func TestWaitOnAPeerAnnouncedLaterIsLinked(t *testing.T) {
	g := New(Options{})
	g.Apply(&event.Event{TS: t0, Type: event.IntentRun, NodeID: "a", EntityID: "pid-1", PID: 1, JobID: "j", Value: "running",
		Attrs: event.Attrs{{Key: "addr", Value: "10.0.0.1:29500"}}})
	g.Apply(&event.Event{TS: t0 + 1000, Type: event.TransportDrop, NodeID: "a", EntityID: "network-ib0", PID: 1, JobID: "j", Value: "9",
		Attrs: event.Attrs{{Key: "peer", Value: "10.0.0.2:29500"}}})
	g.Apply(&event.Event{TS: t0 + 1500, Type: event.TransportDrop, NodeID: "a", EntityID: "network-ib0", PID: 1, JobID: "j", Value: "9",
		Attrs: event.Attrs{{Key: "peer", Value: "10.0.0.3:51234"}}}) // an ephemeral port
	if g.Stats().Edges[WaitsOn] != 1 { // only the NIC so far
		t.Fatalf("waits before the peers are known: %d", g.Stats().Edges[WaitsOn])
	}
	g.Apply(&event.Event{TS: t0 + 500, Type: event.IntentRun, NodeID: "b", EntityID: "pid-2", PID: 2, JobID: "j", Value: "running",
		Attrs: event.Attrs{{Key: "addr", Value: "10.0.0.2:29500"}}})
	g.Apply(&event.Event{TS: t0 + 500, Type: event.IntentRun, NodeID: "c", EntityID: "pid-3", PID: 3, JobID: "j", Value: "running",
		Attrs: event.Attrs{{Key: "addr", Value: "10.0.0.3:29500"}}})
	a, b, c := g.hosts["a"].procs[1], g.hosts["b"].procs[2], g.hosts["c"].procs[3]
	e := a.findOut(b, WaitsOn)
	if e == nil || e.first != t0+1000 {
		t.Fatalf("exact peer linked on announcement with the wait's own time: %+v", e)
	}
	if a.findOut(c, WaitsOn) != nil {
		t.Fatal("an ephemeral port is not matched until settled")
	}
	g.Settle()
	if a.findOut(c, WaitsOn) == nil {
		t.Fatal("settling matches an ephemeral port by ip")
	}
	if g.npending != 0 {
		t.Fatalf("pending left: %d", g.npending)
	}
}

// A hub that restarts rebuilds an agent's view from its snapshot: the
// snapshot replayed into an empty graph gives the same answer.
func TestSnapshotRebuildsTheSameAnswer(t *testing.T) {
	var r rec
	r.job(t0, "j", hosts4, 2, 1000)
	r.steady(t0, t0+60_000, "j", hosts4, 2, 1000)
	r.add(t0+61_000, event.ErrorHW, "h3", "gpu-1", "Xid 79: GPU has fallen off the bus.", 1201, "", "xid", "79")
	r.stallOn(t0+62_000, t0+80_000, "j", hosts4, 2, 1000, 2)
	g := r.graph(Options{})
	want := mustWhy(t, g, Target{JobID: "j"}, 0)
	snap := g.Snapshot()
	if len(snap) == 0 || len(snap) >= len(r.evs) {
		t.Fatalf("snapshot of %d events from %d", len(snap), len(r.evs))
	}
	g2 := New(Options{})
	g2.ApplyBatch(snap)
	got := mustWhy(t, g2, Target{JobID: "j"}, 0)
	if len(got.Causes) == 0 || got.Causes[0].NodeID != want.Causes[0].NodeID || got.Causes[0].EntityID != want.Causes[0].EntityID ||
		got.Causes[0].AffectedRanks != want.Causes[0].AffectedRanks || got.Ranks != want.Ranks {
		t.Fatalf("from the snapshot: %+v\nfrom the events: %+v", got.Causes, want.Causes)
	}
}

// A network error a process reports is its own: on a NIC shared by two
// jobs, the broken job's NCCL timeouts do not become the healthy job's
// cause.
func TestProcessNetworkErrorsStayWithTheProcess(t *testing.T) {
	var r rec
	r.job(t0, "sick", hosts4, 2, 1000) // gpu-0 and gpu-1 on every host
	r.job(t0, "fine", hosts4, 1, 5000) // gpu-0 on every host, same NIC
	r.steady(t0, t0+60_000, "sick", hosts4, 2, 1000)
	r.steady(t0, t0+90_000, "fine", hosts4, 1, 5000)
	r.add(t0+61_000, event.ErrorHW, "h2", "gpu-1", "Xid 79", 1101, "", "xid", "79")
	r.stallOn(t0+62_000, t0+90_000, "sick", hosts4, 2, 1000, 1)
	for hi, h := range hosts4 {
		r.add(t0+85_000, event.ErrorNet, h, "network-ib0", "NCCL WARN Watchdog caught collective operation timeout", int64(1000+hi*100), "sick",
			"reason", "nccl_timeout")
	}
	g := r.graph(Options{})
	if res := mustWhy(t, g, Target{JobID: "fine"}, 0); len(res.Causes) != 0 {
		t.Fatalf("the healthy job shares the NIC only: %+v", res.Causes)
	}
	res := mustWhy(t, g, Target{JobID: "sick"}, 0)
	if len(res.Causes) == 0 || res.Causes[0].EntityID != "gpu-1" || res.Causes[0].NodeID != "h2" {
		t.Fatalf("the sick job's cause is the GPU, not its own timeouts: %+v", res.Causes)
	}
}

// Ranks that announce no address (a launcher that does not say) are still
// reached through the addresses their host's agent announced: a drop
// toward 10.0.0.2 is a wait on host b's ranks, the same job first.
func TestPeerOnAnAnnouncedHostAddressIsLinked(t *testing.T) {
	g := New(Options{})
	run := func(node string, pid int64, job string) {
		g.Apply(&event.Event{TS: t0, Type: event.IntentRun, NodeID: node, EntityID: fmt.Sprintf("pid-%d", pid), PID: pid, JobID: job, Value: "running"})
	}
	run("a", 1, "j")
	run("b", 2, "j")
	run("b", 3, "other") // another job on b: not a wait of j's rank
	g.SetHostAddrs("b", []string{"10.0.0.2", "fd00::2"})
	g.Apply(&event.Event{TS: t0 + 1000, Type: event.TransportDrop, NodeID: "a", EntityID: "network-ib0", PID: 1, JobID: "j", Value: "4",
		Attrs: event.Attrs{{Key: "peer", Value: "10.0.0.2:41234"}}})
	a, b2, b3 := g.hosts["a"].procs[1], g.hosts["b"].procs[2], g.hosts["b"].procs[3]
	if a.findOut(b2, WaitsOn) == nil {
		t.Fatal("a/pid-1 must wait on b/pid-2 through b's announced address")
	}
	if a.findOut(b3, WaitsOn) != nil {
		t.Fatal("a rank of another job on the same host is not a wait")
	}

	// A drop that came before the host announced itself is linked when it
	// does; an address the host no longer announces links nothing.
	g.Apply(&event.Event{TS: t0 + 2000, Type: event.TransportDrop, NodeID: "b", EntityID: "network-ib0", PID: 2, JobID: "j", Value: "4",
		Attrs: event.Attrs{{Key: "peer", Value: "[fd00::1]:29500"}}})
	if b2.findOut(a, WaitsOn) != nil || g.npending != 1 {
		t.Fatalf("a wait on an unknown address is remembered, not linked (pending %d)", g.npending)
	}
	g.SetHostAddrs("a", []string{"fd00::1"})
	if b2.findOut(a, WaitsOn) == nil || g.npending != 0 {
		t.Fatalf("the remembered wait is linked when a announces fd00::1 (pending %d)", g.npending)
	}
	g.SetHostAddrs("b", nil)
	g.Apply(&event.Event{TS: t0 + 3000, Type: event.TransportDrop, NodeID: "a", EntityID: "network-ib0", PID: 1, JobID: "j", Value: "4",
		Attrs: event.Attrs{{Key: "peer", Value: "10.0.0.2:41235"}}})
	if g.npending != 1 {
		t.Fatalf("b's withdrawn address must not resolve: pending %d", g.npending)
	}
}

// Walk state is pooled: a walk must give the same answer whatever walks
// ran before it on the same walker — bigger ones, ones over other graphs,
// ones that inferred same-host links (which keep per-host state).
func TestPooledWalksAnswerAsFreshOnes(t *testing.T) {
	var small rec
	small.job(t0, "j", hosts4, 2, 1000)
	for ts := t0; ts <= t0+60_000; ts += 2000 {
		for hi, h := range hosts4 {
			for i := range 2 {
				pid := 1000 + int64(hi*100+i)
				small.add(ts, event.ComputeUtil, h, "gpu-"+strconv.Itoa(i), "95", 0, "") // no pid: same-host inference
				small.add(ts, event.ProcessState, h, "pid-"+strconv.FormatInt(pid, 10), "R", pid, "j")
			}
		}
	}
	small.add(t0+61_000, event.ErrorHW, "h2", "gpu-1", "Xid 79", 0, "", "xid", "79")
	small.stallOn(t0+62_000, t0+80_000, "j", hosts4, 2, 1000, 1)
	var big rec
	bigHosts := make([]string, 32)
	for i := range bigHosts {
		bigHosts[i] = "b" + strconv.Itoa(i)
	}
	big.job(t0, "big", bigHosts, 8, 1000)
	big.steady(t0, t0+20_000, "big", bigHosts, 8, 1000)
	big.add(t0+21_000, event.ErrorHW, "b7", "gpu-3", "Xid 79", 0, "", "xid", "79")
	big.stallOn(t0+22_000, t0+40_000, "big", bigHosts, 8, 1000, 7)

	gs, gb := small.graph(Options{}), big.graph(Options{})
	type q struct {
		g *Graph
		t Target
	}
	queries := []q{{gs, Target{JobID: "j"}}, {gb, Target{JobID: "big"}}, {gs, Target{Node: "h2"}}, {gb, Target{Node: "b7", PID: 1703}}}
	first := make([]string, len(queries))
	for i, qq := range queries {
		first[i] = fmt.Sprintf("%+v", mustWhy(t, qq.g, qq.t, 0))
	}
	if r := mustWhy(t, gs, Target{JobID: "j"}, 0); len(r.Causes) == 0 || len(r.Causes[0].Chain) < 2 || r.Causes[0].Chain[len(r.Causes[0].Chain)-2].Type != SameHost {
		t.Fatalf("the small job's cause must come through a same-host link: %+v", r.Causes)
	}
	// Every order of the queries, many times over, on pooled walkers.
	for round := range 50 {
		for k := range queries {
			i := (k*7 + round) % len(queries)
			if got := fmt.Sprintf("%+v", mustWhy(t, queries[i].g, queries[i].t, 0)); got != first[i] {
				t.Fatalf("round %d, %v: the answer changed on a reused walker:\n got  %s\n want %s", round, queries[i].t, got, first[i])
			}
		}
	}
}
