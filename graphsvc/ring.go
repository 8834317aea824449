package graphsvc

import (
	"sync"

	"github.com/ark-gpu/ark/event"
)

// ring keeps the most recent events for GET /api/v1/events, overwriting
// the oldest: its size bounds its memory.
type ring struct {
	mu   sync.Mutex
	buf  []event.Event
	next int  // where the next event goes
	full bool // buf has wrapped
}

func newRing(n int) *ring { return &ring{buf: make([]event.Event, n)} }

// add copies evs into the ring.
func (r *ring) add(evs []event.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(evs) > len(r.buf) {
		evs = evs[len(evs)-len(r.buf):]
	}
	for i := range evs {
		r.buf[r.next] = evs[i].Clone()
		r.next++
		if r.next == len(r.buf) {
			r.next, r.full = 0, true
		}
	}
}

// recent returns up to limit of the newest events that match keep, oldest
// first.
func (r *ring) recent(limit int, keep func(*event.Event) bool) []event.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.next
	if r.full {
		n = len(r.buf)
	}
	out := make([]event.Event, 0, min(limit, n))
	for k := 1; k <= n && len(out) < limit; k++ {
		i := (r.next - k + len(r.buf)) % len(r.buf)
		if keep(&r.buf[i]) {
			out = append(out, r.buf[i])
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}
