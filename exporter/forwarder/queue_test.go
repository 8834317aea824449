package forwarder

import (
	"testing"

	"github.com/ark-gpu/ark/event"
)

func TestQueueKeepsErrorsWhenFull(t *testing.T) {
	q := newQueue(10)
	dropped := 0
	for i := range 30 {
		typ := event.ComputeUtil
		if i%5 == 0 {
			typ = event.ErrorHW
		}
		dropped += q.push(event.Event{TS: int64(i + 1), Type: typ, EntityID: "gpu-0"})
	}
	if q.len() != 10 || dropped != 20 {
		t.Fatalf("len %d dropped %d, want 10 and 20", q.len(), dropped)
	}
	got := q.pop(nil, 100)
	var errs, last int64
	for _, e := range got {
		if e.ev.TS <= last {
			t.Fatalf("out of order: ts %d after %d", e.ev.TS, last)
		}
		last = e.ev.TS
		if e.ev.Type == event.ErrorHW {
			errs++
		}
	}
	if errs != 6 {
		t.Errorf("kept %d of the 6 errors", errs)
	}
	// The newest of the rest stayed.
	if got[len(got)-1].ev.TS != 30 {
		t.Errorf("last kept ts %d, want 30", got[len(got)-1].ev.TS)
	}

	// Only errors: the oldest error goes.
	q = newQueue(3)
	for i := range 5 {
		q.push(event.Event{TS: int64(i + 1), Type: event.ErrorNet, EntityID: "network-ib0"})
	}
	if got := q.pop(nil, 10); len(got) != 3 || got[0].ev.TS != 3 {
		t.Errorf("kept %+v, want ts 3..5", got)
	}
}

func TestQueueRequeuePutsUnackedEventsFirst(t *testing.T) {
	q := newQueue(100)
	for i := range 6 {
		typ := event.TransportBW
		if i == 2 {
			typ = event.TopoLinkDown
		}
		q.push(event.Event{TS: int64(i + 1), Type: typ, EntityID: "network-ib0"})
	}
	sent := q.pop(nil, 4) // ts 1..4 in flight
	q.push(event.Event{TS: 7, Type: event.ErrorNet, EntityID: "network-ib0"})
	q.requeue(sent)
	got := q.pop(nil, 100)
	for i, e := range got {
		if e.ev.TS != int64(i+1) {
			t.Fatalf("position %d has ts %d: %+v", i, e.ev.TS, got)
		}
	}
	if len(got) != 7 {
		t.Fatalf("got %d events, want 7", len(got))
	}
}

func TestRingGrowsAcrossTheWrap(t *testing.T) {
	var r ring
	next := 0
	want := 0
	for round := range 100 {
		for range round % 7 {
			r.pushBack(entry{seq: uint64(next)})
			next++
		}
		for range round % 5 {
			if r.len() == 0 {
				break
			}
			if e := r.popFront(); e.seq != uint64(want) {
				t.Fatalf("popped %d, want %d", e.seq, want)
			}
			want++
		}
	}
	for r.len() > 0 {
		if e := r.popFront(); e.seq != uint64(want) {
			t.Fatalf("popped %d, want %d", e.seq, want)
		}
		want++
	}
	if want != next {
		t.Fatalf("popped %d of %d", want, next)
	}
}
