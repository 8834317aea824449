package forwarder

import "github.com/ark-gpu/ark/event"

// queue holds the events waiting for the hub, bounded: when full it drops
// the oldest event that is not an error, and an error only when nothing
// else is left. Errors and the rest wait in two rings; a sequence number
// puts them back in arrival order on the way out. Not safe for concurrent
// use.
type queue struct {
	limit  int
	errs   ring
	others ring
	seq    uint64
}

type entry struct {
	seq uint64
	ev  event.Event
}

func newQueue(limit int) *queue {
	if limit <= 0 {
		limit = 1
	}
	return &queue{limit: limit}
}

func (q *queue) len() int { return q.errs.len() + q.others.len() }

func isError(ev *event.Event) bool { return ev.Type.IsError() }

// push adds ev and returns how many events it dropped to make room.
func (q *queue) push(ev event.Event) int {
	q.seq++
	dropped := q.makeRoom(1)
	if isError(&ev) {
		q.errs.pushBack(entry{q.seq, ev})
	} else {
		q.others.pushBack(entry{q.seq, ev})
	}
	return dropped
}

// requeue puts entries that were sent but never acknowledged back at the
// front, in their original order, and returns how many events it dropped.
func (q *queue) requeue(es []entry) int {
	dropped := 0
	for i := len(es) - 1; i >= 0; i-- {
		dropped += q.makeRoom(1)
		if isError(&es[i].ev) {
			q.errs.pushFront(es[i])
		} else {
			q.others.pushFront(es[i])
		}
	}
	return dropped
}

func (q *queue) makeRoom(n int) int {
	dropped := 0
	for q.len()+n > q.limit {
		if q.others.len() > 0 {
			q.others.popFront()
		} else {
			q.errs.popFront()
		}
		dropped++
	}
	return dropped
}

// pop removes up to n events, oldest first, appending them to dst.
func (q *queue) pop(dst []entry, n int) []entry {
	for ; n > 0; n-- {
		e, o := q.errs.front(), q.others.front()
		switch {
		case e == nil && o == nil:
			return dst
		case o == nil || (e != nil && e.seq < o.seq):
			dst = append(dst, q.errs.popFront())
		default:
			dst = append(dst, q.others.popFront())
		}
	}
	return dst
}

// ring is a growable FIFO with a front insert.
type ring struct {
	buf  []entry
	head int
	n    int
}

func (r *ring) len() int { return r.n }

func (r *ring) grow() {
	nb := make([]entry, max(16, 2*len(r.buf)))
	for i := 0; i < r.n; i++ {
		nb[i] = r.buf[(r.head+i)%len(r.buf)]
	}
	r.buf, r.head = nb, 0
}

func (r *ring) pushBack(e entry) {
	if r.n == len(r.buf) {
		r.grow()
	}
	r.buf[(r.head+r.n)%len(r.buf)] = e
	r.n++
}

func (r *ring) pushFront(e entry) {
	if r.n == len(r.buf) {
		r.grow()
	}
	r.head = (r.head - 1 + len(r.buf)) % len(r.buf)
	r.buf[r.head] = e
	r.n++
}

func (r *ring) front() *entry {
	if r.n == 0 {
		return nil
	}
	return &r.buf[r.head]
}

func (r *ring) popFront() entry {
	e := r.buf[r.head]
	r.buf[r.head] = entry{} // let the event's strings go
	r.head = (r.head + 1) % len(r.buf)
	r.n--
	if r.n == 0 {
		r.head = 0
		if len(r.buf) > 4096 {
			r.buf = nil // give a drained backlog's memory back
		}
	}
	return e
}
