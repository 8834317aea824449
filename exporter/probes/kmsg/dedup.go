package kmsg

import (
	"strconv"
	"time"

	"github.com/ark-gpu/ark/event"
)

// maxWindows bounds the open de-duplication windows; past it an XID is
// emitted without folding rather than growing memory on a log full of
// distinct buses.
const maxWindows = 4096

// Attribute keys of a flood summary.
const (
	attrCount  = "count"
	attrWindow = "window"
)

type dedupKey struct {
	bus  string
	code int
}

type dedupWindow struct {
	start time.Time
	count int         // lines of the pair in the window, the first included
	first event.Event // what was emitted when the window opened
}

// deduper folds repeats of the same (pci bus, xid) inside a window. It is
// not safe for concurrent use; the probe holds its lock around it.
type deduper struct {
	window time.Duration
	open   map[dedupKey]*dedupWindow
}

func newDeduper(window time.Duration) *deduper {
	return &deduper{window: window, open: map[dedupKey]*dedupWindow{}}
}

// observe records one XID at now and reports whether ev is to be emitted
// (it opens a window) or folded (a repeat inside one). Windows that ended
// by now are closed first, their summaries passed to emit, so a summary
// always goes out before the event that opens the next window.
func (d *deduper) observe(k dedupKey, ev *event.Event, now time.Time, emit func(*event.Event)) bool {
	if d.window <= 0 {
		return true
	}
	d.expire(now, emit)
	if w, ok := d.open[k]; ok {
		w.count++
		return false
	}
	if len(d.open) >= maxWindows {
		return true
	}
	w := &dedupWindow{start: now, count: 1, first: *ev}
	w.first.Attrs = append(event.Attrs(nil), ev.Attrs...)
	d.open[k] = w
	return true
}

// expire closes the windows that ended by now and passes a summary of each
// one that saw repeats to emit.
func (d *deduper) expire(now time.Time, emit func(*event.Event)) {
	for k, w := range d.open {
		if now.Sub(w.start) < d.window {
			continue
		}
		delete(d.open, k)
		d.summarize(w, now, emit)
	}
}

// flush closes every window, as when the probe stops.
func (d *deduper) flush(now time.Time, emit func(*event.Event)) {
	for k, w := range d.open {
		delete(d.open, k)
		d.summarize(w, now, emit)
	}
}

func (d *deduper) summarize(w *dedupWindow, now time.Time, emit func(*event.Event)) {
	if w.count < 2 {
		return
	}
	ev := w.first
	ev.TS = now.UnixMilli()
	ev.Attrs.Set(attrCount, strconv.Itoa(w.count))
	ev.Attrs.Set(attrWindow, d.window.String())
	emit(&ev)
}
