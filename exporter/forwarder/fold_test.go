package forwarder

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/ark-gpu/ark/event"
)

const t0 = int64(1_700_000_000_000) // ms

func ev(sec int, typ event.Type, entity string, pid int64, value string, attrs ...event.Attr) event.Event {
	return event.Event{TS: t0 + int64(sec)*1000, Type: typ, EntityID: entity, PID: pid, Value: value, NodeID: "n1", Attrs: attrs}
}

func peer(p string) event.Attr { return event.Attr{Key: event.AttrPeer, Value: p} }

func TestFoldKeepsWhatChangesTheGraph(t *testing.T) {
	type step struct {
		ev   event.Event
		keep bool
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"errors and topology always pass", []step{
			{ev(0, event.ErrorHW, "gpu-0", 0, "Xid 79"), true},
			{ev(1, event.ErrorHW, "gpu-0", 0, "Xid 79"), true},
			{ev(1, event.ErrorNet, "network-ib0", 0, "flap"), true},
			{ev(2, event.TopoLinkDown, "network-ib0", 0, "1"), true},
			{ev(3, event.TopoLinkDown, "network-ib0", 0, "0"), true},
			{ev(3, event.ActionExec, "pid-7", 7, "success"), true},
		}},
		{"process state passes when it changes", []step{
			{ev(0, event.ProcessState, "pid-7", 7, "R"), true},
			{ev(1, event.ProcessState, "pid-7", 7, "R"), false},
			{ev(2, event.ProcessState, "pid-7", 7, "D"), true},
			{ev(3, event.ProcessState, "pid-7", 7, "D"), false},
			{ev(4, event.ProcessState, "pid-7", 7, "R"), true},
			{ev(4, event.ProcessState, "pid-8", 8, "R"), true},
		}},
		{"intent.run passes the first time per pid and on change", []step{
			{event.Event{TS: t0, Type: event.IntentRun, EntityID: "pid-7", PID: 7, JobID: "j1", Value: "1", Attrs: event.Attrs{{Key: "rank", Value: "0"}}}, true},
			{event.Event{TS: t0 + 1000, Type: event.IntentRun, EntityID: "pid-7", PID: 7, JobID: "j1", Value: "1", Attrs: event.Attrs{{Key: "rank", Value: "0"}}}, false},
			{event.Event{TS: t0 + 2000, Type: event.IntentRun, EntityID: "pid-7", PID: 7, JobID: "j1", Value: "1", Attrs: event.Attrs{{Key: "rank", Value: "3"}}}, true},
			{event.Event{TS: t0 + 3000, Type: event.IntentRun, EntityID: "pid-7", PID: 7, JobID: "j2", Value: "1", Attrs: event.Attrs{{Key: "rank", Value: "3"}}}, true},
		}},
		{"transport.drop passes when it crosses zero or the peer is new", []step{
			{ev(0, event.TransportDrop, "network-ib0", 7, "0", peer("10.0.0.2:1")), true},
			{ev(1, event.TransportDrop, "network-ib0", 7, "0", peer("10.0.0.2:1")), false},
			{ev(2, event.TransportDrop, "network-ib0", 7, "5", peer("10.0.0.2:1")), true},
			{ev(3, event.TransportDrop, "network-ib0", 7, "9", peer("10.0.0.2:1")), false},
			{ev(4, event.TransportDrop, "network-ib0", 7, "9", peer("10.0.0.3:1")), true},
			{ev(5, event.TransportDrop, "network-ib0", 7, "0", peer("10.0.0.2:1")), true},
		}},
		{"storage.qdepth passes when it crosses the threshold", []step{
			{ev(0, event.StorageQDepth, "storage-nvme0n1", 7, "4"), true},
			{ev(1, event.StorageQDepth, "storage-nvme0n1", 7, "30"), false},
			{ev(2, event.StorageQDepth, "storage-nvme0n1", 7, "33"), true},
			{ev(3, event.StorageQDepth, "storage-nvme0n1", 7, "200"), false},
			{ev(4, event.StorageQDepth, "storage-nvme0n1", 7, "32"), true},
		}},
		{"usage passes on zero crossings and moves over 25%", []step{
			{ev(0, event.ComputeUtil, "gpu-0", 7, "80"), true},
			{ev(1, event.ComputeUtil, "gpu-0", 7, "95"), false}, // +19%
			{ev(2, event.ComputeUtil, "gpu-0", 7, "101"), true}, // +26% of the last forwarded
			{ev(3, event.ComputeUtil, "gpu-0", 7, "0"), true},   // to zero
			{ev(4, event.ComputeUtil, "gpu-0", 7, "0"), false},  // still zero
			{ev(5, event.ComputeUtil, "gpu-0", 7, "0.5"), true}, // from zero
			{ev(6, event.TransportBW, "network-ib0", 7, "1e9"), true},
			{ev(7, event.TransportBW, "network-ib0", 7, "7.6e8"), false}, // -24%
			{ev(8, event.TransportBW, "network-ib0", 7, "7.4e8"), true},  // -26%
			{ev(9, event.StorageIOPS, "storage-nvme0n1", 7, "n/a"), true},
			{ev(10, event.StorageIOPS, "storage-nvme0n1", 7, "n/a"), false},
			{ev(11, event.StorageIOPS, "storage-nvme0n1", 7, "100"), true},
		}},
		{"a key not forwarded for the keep-alive goes again", []step{
			{ev(0, event.ComputeMem, "gpu-0", 7, "1000"), true},
			{ev(60, event.ComputeMem, "gpu-0", 7, "1000"), false},
			{ev(119, event.ComputeMem, "gpu-0", 7, "1000"), false},
			{ev(120, event.ComputeMem, "gpu-0", 7, "1000"), true},
			{ev(121, event.ComputeMem, "gpu-0", 7, "1000"), false},
			{ev(240, event.ComputeMem, "gpu-0", 7, "1000"), true},
			{ev(10, event.ComputeMem, "gpu-0", 7, "1000"), true}, // the clock went back
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := NewFolder(FoldOptions{})
			for i, s := range tt.steps {
				if got := f.Keep(&s.ev); got != s.keep {
					t.Errorf("step %d (%s %s %q): Keep = %v, want %v", i, s.ev.Type, s.ev.EntityID, s.ev.Value, got, s.keep)
				}
			}
		})
	}
}

func TestFoldStateIsBounded(t *testing.T) {
	f := NewFolder(FoldOptions{MaxKeys: 100})
	for i := range 1000 {
		e := ev(0, event.ComputeUtil, "gpu-0", int64(i+1), "50")
		f.Keep(&e)
	}
	if f.Len() != 100 {
		t.Fatalf("keys = %d, want the limit 100", f.Len())
	}
	// The least recently seen went first: the newest pid is still known.
	e := ev(1, event.ComputeUtil, "gpu-0", 1000, "50")
	if f.Keep(&e) {
		t.Error("the most recent key was forgotten")
	}

	// Keys not seen for Forget (10m) are dropped by the sweep.
	f = NewFolder(FoldOptions{})
	for i := range 500 {
		e := ev(0, event.ComputeUtil, "gpu-0", int64(i+1), "50")
		f.Keep(&e)
	}
	for i := range 2048 { // one fresh key, seen after the others expired
		e := ev(601+i/100, event.ComputeUtil, "gpu-1", 9999, "50")
		f.Keep(&e)
	}
	if f.Len() != 1 {
		t.Fatalf("keys = %d after 10 minutes of silence, want 1", f.Len())
	}
}

// steadyLoad is one node at work: 8 GPUs sampled at 1 Hz, 64 ranks whose
// state is read at 1 Hz, 1,000 network events a second over 2 NICs and 4
// peers per rank, a disk, with noise under the folding threshold. Every
// so often a rank blocks in D for a few seconds, a peer drops packets and
// a GPU reports an XID. emit gets each event and whether the hub must see
// it (an error or a change of state).
type steadyLoad struct {
	rng   *rand.Rand
	state map[int64]string
	drops map[string]bool
}

func newSteadyLoad() *steadyLoad {
	return &steadyLoad{rng: rand.New(rand.NewPCG(1, 2)), state: map[int64]string{}, drops: map[string]bool{}}
}

func (l *steadyLoad) noise(base float64) string {
	return strconv.FormatFloat(base*(0.92+0.16*l.rng.Float64()), 'f', 0, 64)
}

func (l *steadyLoad) second(sec int, emit func(e *event.Event, must bool)) {
	ts := t0 + int64(sec)*1000
	pidOf := func(rank int) int64 { return int64(1000 + rank) }
	if sec == 0 {
		for r := range 64 {
			e := event.Event{TS: ts, Type: event.IntentRun, EntityID: fmt.Sprintf("pid-%d", pidOf(r)), PID: pidOf(r), JobID: "llama",
				Value: "1", Attrs: event.Attrs{{Key: event.AttrRank, Value: strconv.Itoa(r)}, {Key: event.AttrAddr, Value: fmt.Sprintf("10.0.%d.%d", r/8, r%8)}}}
			emit(&e, true)
		}
	}
	for g := range 8 {
		gpu := "gpu-" + strconv.Itoa(g)
		e := event.Event{TS: ts, Type: event.ComputeUtil, EntityID: gpu, PID: pidOf(g * 8), Value: l.noise(90)}
		emit(&e, false)
		e = event.Event{TS: ts, Type: event.ComputeMem, EntityID: gpu, PID: pidOf(g * 8), Value: l.noise(60e9)}
		emit(&e, false)
	}
	for r := range 64 {
		st := "R"
		if (sec+r*7)%97 < 3 { // each rank blocks for 3 s every 97 s
			st = "D"
		}
		e := event.Event{TS: ts, Type: event.ProcessState, EntityID: fmt.Sprintf("pid-%d", pidOf(r)), PID: pidOf(r), Value: st}
		emit(&e, l.state[pidOf(r)] != st)
		l.state[pidOf(r)] = st
	}
	for i := range 1000 {
		r := i % 64
		nic := "network-ib" + strconv.Itoa((i/64)%2)
		if i%2 == 0 {
			e := event.Event{TS: ts, Type: event.TransportBW, EntityID: nic, PID: pidOf(r), Value: l.noise(12e9)}
			emit(&e, false)
			continue
		}
		p := fmt.Sprintf("10.0.%d.%d:29500", (r+1+(i/128)%4)%8, r%8)
		key := nic + p + strconv.Itoa(r)
		drop := (sec+r)%113 == 0 // a short burst of drops now and then
		v := "0"
		if drop {
			v = strconv.Itoa(1 + l.rng.IntN(50))
		}
		e := event.Event{TS: ts, Type: event.TransportDrop, EntityID: nic, PID: pidOf(r), Value: v, Attrs: event.Attrs{{Key: event.AttrPeer, Value: p}}}
		prev, seen := l.drops[key]
		emit(&e, !seen || prev != drop)
		l.drops[key] = drop
	}
	e := event.Event{TS: ts, Type: event.StorageIOPS, EntityID: "storage-nvme0n1", PID: pidOf(0), Value: l.noise(3000)}
	emit(&e, false)
	e = event.Event{TS: ts, Type: event.StorageQDepth, EntityID: "storage-nvme0n1", PID: pidOf(0), Value: l.noise(4)}
	emit(&e, false)
	if sec%60 == 30 {
		e := event.Event{TS: ts, Type: event.ErrorHW, EntityID: "gpu-3", Value: "Xid 94: contained ECC error", Attrs: event.Attrs{{Key: event.AttrXID, Value: "94"}}}
		emit(&e, true)
	}
}

// foldSteadyLoad folds minutes of the steady load and returns the events
// in and forwarded, and how many that had to be forwarded were not.
func foldSteadyLoad(minutes int) (in, out, missed int) {
	f := NewFolder(FoldOptions{})
	l := newSteadyLoad()
	for sec := range minutes * 60 {
		l.second(sec, func(e *event.Event, must bool) {
			in++
			keep := f.Keep(e)
			if keep {
				out++
			} else if must {
				missed++
			}
		})
	}
	return in, out, missed
}

func TestFoldSteadyLoadForwardsAHundredTimesFewerEvents(t *testing.T) {
	in, out, missed := foldSteadyLoad(10)
	ratio := float64(in) / float64(out)
	t.Logf("10 simulated minutes: %d events in, %d forwarded, %.0f:1", in, out, ratio)
	if ratio < 100 {
		t.Errorf("folding ratio %.1f:1, want at least 100:1", ratio)
	}
	if missed > 0 {
		t.Errorf("%d errors or state changes were folded away", missed)
	}
	if in < 600*1000 {
		t.Errorf("the load made only %d events in 10 minutes", in)
	}
}

func TestFoldKeepAliveIsShorterThanTheGraphTTL(t *testing.T) {
	// The hub's graph forgets an edge after 5 minutes without an event;
	// the keep-alive must refresh it well before.
	if d := NewFolder(FoldOptions{}).opts.KeepAlive; d >= 5*time.Minute {
		t.Fatalf("keep-alive %s is not shorter than the graph's 5m TTL", d)
	}
}

// BenchmarkFoldSteadyLoad folds 10 simulated minutes of a steady node
// (generated once, outside the timing) per iteration and reports the ratio
// of events in to events forwarded, and the folding cost per event.
func BenchmarkFoldSteadyLoad(b *testing.B) {
	var load []event.Event
	l := newSteadyLoad()
	for sec := range 10 * 60 {
		l.second(sec, func(e *event.Event, _ bool) { load = append(load, *e) })
	}
	var in, out int
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		f := NewFolder(FoldOptions{})
		for i := range load {
			if f.Keep(&load[i]) {
				out++
			}
		}
		in += len(load)
	}
	b.ReportMetric(float64(in)/float64(out), "in/forwarded")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(in), "ns/event")
}
