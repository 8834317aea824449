package arkreceiver

import (
	"maps"
	"slices"
	"sync"

	"github.com/ark-gpu/ark/event"
)

// maxTracked bounds each of the job index's maps; past it, entries not
// refreshed for staleAfterMS of event time are forgotten.
const (
	maxTracked   = 1 << 16
	staleAfterMS = 10 * 60 * 1000
)

// jobIndex learns which job each rank belongs to (intent.run) and which
// ranks use each device (compute, transport and storage events with a
// pid), so that a fault on a device can be sent once per job using it.
type jobIndex struct {
	mu    sync.Mutex
	jobOf map[procKey]seen           // rank → its job
	users map[devKey]map[int64]int64 // device → pid → last use (ms)
}

type procKey struct {
	node string
	pid  int64
}

type devKey struct{ node, entity string }

type seen struct {
	job string
	ts  int64
}

func newJobIndex() *jobIndex {
	return &jobIndex{jobOf: map[procKey]seen{}, users: map[devKey]map[int64]int64{}}
}

// isHostEvent reports whether ev is a fault of a device rather than of a
// job: it has no job of its own.
func isHostEvent(ev *event.Event) bool {
	switch ev.Type {
	case event.ErrorHW, event.ErrorNet, event.TopoLinkDown:
		return ev.JobID == ""
	}
	return false
}

// expand learns from evs, then returns them with each host-level fault
// replaced by one copy per job whose ranks use the device (or whose rank
// the fault names by pid), tagged with that job. A fault no known job uses
// stays as it is. The whole batch is learnt first: a batch is a window,
// not a causal order.
func (x *jobIndex) expand(evs []event.Event) []event.Event {
	x.mu.Lock()
	defer x.mu.Unlock()
	faults := 0
	for i := range evs {
		ev := &evs[i]
		ts := event.NormalizeTS(ev.TS)
		switch ev.Type {
		case event.IntentRun:
			if ev.JobID != "" && ev.PID != 0 {
				x.jobOf[procKey{ev.NodeID, ev.PID}] = seen{ev.JobID, ts}
			}
		case event.ComputeUtil, event.ComputeMem, event.TransportBW, event.TransportDrop,
			event.StorageIOPS, event.StorageQDepth:
			if ev.PID != 0 {
				k := devKey{ev.NodeID, ev.EntityID}
				u := x.users[k]
				if u == nil {
					u = map[int64]int64{}
					x.users[k] = u
				}
				u[ev.PID] = max(u[ev.PID], ts)
			}
		default:
			if isHostEvent(ev) {
				faults++
			}
		}
	}
	x.pruneLocked()
	if faults == 0 {
		return evs
	}
	out := make([]event.Event, 0, len(evs)+faults)
	for i := range evs {
		ev := &evs[i]
		if !isHostEvent(ev) {
			out = append(out, *ev)
			continue
		}
		jobs := x.jobsLocked(ev)
		if len(jobs) == 0 {
			out = append(out, *ev)
			continue
		}
		for _, j := range jobs {
			c := ev.Clone()
			c.JobID = j
			out = append(out, c)
		}
	}
	return out
}

// jobsLocked lists, sorted, the jobs of the ranks that use ev's device.
func (x *jobIndex) jobsLocked(ev *event.Event) []string {
	set := map[string]bool{}
	if ev.PID != 0 {
		if s, ok := x.jobOf[procKey{ev.NodeID, ev.PID}]; ok {
			set[s.job] = true
		}
	}
	for pid := range x.users[devKey{ev.NodeID, ev.EntityID}] {
		if s, ok := x.jobOf[procKey{ev.NodeID, pid}]; ok {
			set[s.job] = true
		}
	}
	return slices.Sorted(maps.Keys(set))
}

// pruneLocked forgets what was not refreshed lately once a map is full.
func (x *jobIndex) pruneLocked() {
	if len(x.jobOf) <= maxTracked && len(x.users) <= maxTracked {
		return
	}
	var newest int64
	for _, s := range x.jobOf {
		newest = max(newest, s.ts)
	}
	for _, u := range x.users {
		for _, ts := range u {
			newest = max(newest, ts)
		}
	}
	cutoff := newest - staleAfterMS
	maps.DeleteFunc(x.jobOf, func(_ procKey, s seen) bool { return s.ts < cutoff })
	maps.DeleteFunc(x.users, func(_ devKey, u map[int64]int64) bool {
		maps.DeleteFunc(u, func(_, ts int64) bool { return ts < cutoff })
		return len(u) == 0
	})
	if len(x.jobOf) > maxTracked || len(x.users) > maxTracked {
		// Everything is recent: start over rather than grow without bound.
		clear(x.jobOf)
		clear(x.users)
	}
}
