package kmsg

import (
	"testing"
	"time"

	"github.com/ark-gpu/ark/event"
)

func TestDeduperFoldsRepeatsIntoOneSummaryPerWindow(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	d := newDeduper(10 * time.Second)
	var summaries []event.Event
	collect := func(ev *event.Event) { summaries = append(summaries, *ev) }
	k := dedupKey{bus: "0000:9b:00", code: 79}
	ev := &event.Event{EntityID: "gpu-2", Attrs: event.Attrs{{Key: event.AttrXID, Value: "79"}}}

	if !d.observe(k, ev, t0, collect) {
		t.Fatal("the first XID of a pair was folded")
	}
	ev.Attrs[0].Value = "changed after observe" // the window keeps its own copy
	for i := 1; i < 10_000; i++ {
		if d.observe(k, ev, t0.Add(time.Duration(i)*time.Millisecond/10), collect) {
			t.Fatalf("repeat %d inside the window was emitted", i)
		}
	}
	if d.observe(dedupKey{bus: "0000:9b:00", code: 48}, ev, t0.Add(time.Second), collect) != true {
		t.Error("another XID code on the same bus was folded")
	}
	if d.observe(dedupKey{bus: "0000:17:00", code: 79}, ev, t0.Add(time.Second), collect) != true {
		t.Error("the same XID on another bus was folded")
	}
	d.expire(t0.Add(10*time.Second-time.Nanosecond), collect)
	if len(summaries) != 0 {
		t.Fatalf("summary before the window ended: %+v", summaries)
	}
	d.expire(t0.Add(10*time.Second), collect)
	if len(summaries) != 1 {
		t.Fatalf("got %d summaries, want 1 (windows without repeats have none): %+v", len(summaries), summaries)
	}
	s := summaries[0]
	if s.Attrs.Get(attrCount) != "10000" || s.Attrs.Get(attrWindow) != "10s" || s.Attrs.Get(event.AttrXID) != "79" {
		t.Errorf("summary attrs = %v", s.Attrs)
	}
	if s.TS != t0.Add(10*time.Second).UnixMilli() {
		t.Errorf("summary ts = %d, want the window's end", s.TS)
	}
	if !d.observe(k, ev, t0.Add(11*time.Second), collect) {
		t.Error("the first XID after the window was folded")
	}
}

func TestDeduperSummaryPrecedesTheNextWindow(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	d := newDeduper(time.Second)
	var order []string
	collect := func(ev *event.Event) { order = append(order, "summary:"+ev.Attrs.Get(attrCount)) }
	k := dedupKey{bus: "0000:9b:00", code: 79}
	ev := &event.Event{}
	d.observe(k, ev, t0, collect)
	d.observe(k, ev, t0.Add(time.Millisecond), collect)
	if d.observe(k, ev, t0.Add(2*time.Second), collect) {
		order = append(order, "event")
	}
	if len(order) != 2 || order[0] != "summary:2" || order[1] != "event" {
		t.Errorf("order = %v, want [summary:2 event]", order)
	}
}

func TestDeduperFlushEmitsOpenSummaries(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	d := newDeduper(time.Minute)
	var n int
	collect := func(*event.Event) { n++ }
	k := dedupKey{bus: "0000:9b:00", code: 79}
	d.observe(k, &event.Event{}, t0, collect)
	d.observe(k, &event.Event{}, t0, collect)
	d.flush(t0.Add(time.Second), collect)
	if n != 1 || len(d.open) != 0 {
		t.Errorf("flush emitted %d summaries and left %d windows, want 1 and 0", n, len(d.open))
	}
}

func TestDeduperZeroWindowEmitsEverything(t *testing.T) {
	d := newDeduper(0)
	k := dedupKey{bus: "0000:9b:00", code: 79}
	for i := range 3 {
		if !d.observe(k, &event.Event{}, time.Unix(0, 0), func(*event.Event) {}) {
			t.Fatalf("XID %d folded with de-duplication off", i)
		}
	}
}
