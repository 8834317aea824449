package forwarder

import (
	"math"
	"strings"
	"time"

	"github.com/ark-gpu/ark/event"
)

// FoldOptions configures a Folder. Zero values take the defaults.
type FoldOptions struct {
	// KeepAlive forwards a key again when it has not been forwarded for
	// this long (default 2m), so the hub's edges, which expire after the
	// graph TTL (5m), stay alive while the agent still sees them.
	KeepAlive time.Duration
	// Forget drops the state of a key not seen for this long (default 10m).
	Forget time.Duration
	// MaxKeys bounds the keys remembered (default 100,000); past it the
	// least recently seen key is forgotten.
	MaxKeys int
	// QDepthThreshold is the storage queue depth above which the graph
	// draws a WaitsOn edge (default 32, as graph.Options).
	QDepthThreshold float64
	// Change is the relative move of a usage sample that is forwarded
	// (default 0.25).
	Change float64
}

func (o FoldOptions) withDefaults() FoldOptions {
	if o.KeepAlive <= 0 {
		o.KeepAlive = 2 * time.Minute
	}
	if o.Forget <= 0 {
		o.Forget = 10 * time.Minute
	}
	if o.MaxKeys <= 0 {
		o.MaxKeys = 100_000
	}
	if o.QDepthThreshold <= 0 {
		o.QDepthThreshold = 32
	}
	if o.Change <= 0 {
		o.Change = 0.25
	}
	return o
}

// Folder decides which events go to the hub ("edge folding"). The hub
// builds edges, not time series: a process that keeps consuming a GPU at
// about the same rate needs one event per keep-alive period, not one per
// second. Errors, topology changes and actions always pass; state changes
// pass when they change something the graph draws. A Folder is not safe
// for concurrent use.
type Folder struct {
	opts      FoldOptions
	keepAlive int64 // ms
	forget    int64 // ms
	keys      map[foldKey]*foldState
	// lru is a ring of the states, most recently seen first, so
	// forgetting the stalest keys costs only what it removes.
	lru  foldState
	now  int64 // the latest event time seen, ms
	seen int   // events since the last sweep
}

// foldKey names the edge an event feeds.
type foldKey struct {
	pid    int64
	typ    event.Type
	entity string
	job    string
	peer   string // transport.drop only
}

type foldState struct {
	key        foldKey
	lastFwd    int64   // ts of the last forwarded event
	lastSeen   int64   // ts of the last event
	num        float64 // last forwarded value, numeric types
	isNum      bool
	str        string // last forwarded value, text types and non-numeric values
	prev, next *foldState
}

// NewFolder returns a Folder.
func NewFolder(opts FoldOptions) *Folder {
	o := opts.withDefaults()
	f := &Folder{
		opts: o, keepAlive: o.KeepAlive.Milliseconds(), forget: o.Forget.Milliseconds(),
		keys: make(map[foldKey]*foldState),
	}
	f.lru.prev, f.lru.next = &f.lru, &f.lru
	return f
}

// Len returns how many keys the Folder remembers.
func (f *Folder) Len() int { return len(f.keys) }

// Keep reports whether ev goes to the hub, and remembers what it needs to
// decide on the next event of the same key. Time is the events' own ts, so
// a replay folds as the live stream did.
func (f *Folder) Keep(ev *event.Event) bool {
	switch ev.Type {
	case event.ErrorHW, event.ErrorNet, event.TopoLinkDown, event.ActionExec:
		return true
	case event.ComputeUtil, event.ComputeMem, event.TransportBW, event.StorageIOPS,
		event.TransportDrop, event.StorageQDepth, event.ProcessState, event.IntentRun:
	default:
		return true // a type the folder does not know: let the hub decide
	}
	if ev.TS > f.now {
		f.now = ev.TS
	}
	k := foldKey{pid: ev.PID, typ: ev.Type, entity: ev.EntityID, job: ev.JobID}
	switch ev.Type {
	case event.TransportDrop:
		k.peer = ev.Attrs.Get(event.AttrPeer)
	case event.IntentRun:
		// One placement per process: a new job, rank or address is a
		// change of the same key, not a new one.
		if ev.PID > 0 {
			k.entity, k.job = "", ""
		}
	}
	s, ok := f.keys[k]
	if !ok {
		s = &foldState{key: k}
		f.keys[k] = s
		f.pushFront(s)
		f.record(s, ev)
		f.maybeSweep()
		return true
	}
	s.lastSeen = ev.TS
	f.moveToFront(s)
	keep := f.changed(s, ev) || ev.TS-s.lastFwd >= f.keepAlive || ev.TS < s.lastFwd-f.keepAlive
	if keep {
		f.record(s, ev)
	}
	f.maybeSweep()
	return keep
}

// changed reports whether ev says something new about its key since the
// last event forwarded.
func (f *Folder) changed(s *foldState, ev *event.Event) bool {
	switch ev.Type {
	case event.ProcessState:
		return strings.TrimSpace(ev.Value) != s.str
	case event.IntentRun:
		return intentPrint(ev) != s.str
	}
	v, ok := ev.Num()
	if !ok || !s.isNum {
		return ok != s.isNum || ev.Value != s.str
	}
	last := s.num
	switch ev.Type {
	case event.TransportDrop:
		return (v > 0) != (last > 0)
	case event.StorageQDepth:
		return (v > f.opts.QDepthThreshold) != (last > f.opts.QDepthThreshold)
	}
	// Usage samples: crossing zero starts or ends the edge; a move of
	// more than Change (relative) changes how much it weighs.
	if (v == 0) != (last == 0) {
		return true
	}
	return math.Abs(v-last) > f.opts.Change*math.Abs(last)
}

func (f *Folder) record(s *foldState, ev *event.Event) {
	s.lastFwd, s.lastSeen = ev.TS, ev.TS
	switch ev.Type {
	case event.ProcessState:
		s.str = strings.TrimSpace(ev.Value)
		return
	case event.IntentRun:
		s.str = intentPrint(ev)
		return
	}
	s.num, s.isNum = ev.Num()
	if !s.isNum {
		s.str = ev.Value
	}
}

// intentPrint is what an intent.run says: the job, rank and address of
// the process.
func intentPrint(ev *event.Event) string {
	var b strings.Builder
	b.WriteString(ev.JobID)
	b.WriteByte(0)
	b.WriteString(ev.EntityID)
	b.WriteByte(0)
	b.WriteString(ev.Value)
	for _, a := range ev.Attrs {
		b.WriteByte(0)
		b.WriteString(a.Key)
		b.WriteByte('=')
		b.WriteString(a.Value)
	}
	return b.String()
}

// maybeSweep forgets keys not seen for Forget, and the least recently seen
// beyond MaxKeys. The expiry sweep runs every 1024 events; it stops at the
// first fresh key, so it costs what it removes.
func (f *Folder) maybeSweep() {
	for len(f.keys) > f.opts.MaxKeys {
		f.remove(f.lru.prev)
	}
	f.seen++
	if f.seen < 1024 {
		return
	}
	f.seen = 0
	for s := f.lru.prev; s != &f.lru && f.now-s.lastSeen > f.forget; s = f.lru.prev {
		f.remove(s)
	}
}

func (f *Folder) remove(s *foldState) {
	s.prev.next, s.next.prev = s.next, s.prev
	s.prev, s.next = nil, nil
	delete(f.keys, s.key)
}

func (f *Folder) pushFront(s *foldState) {
	s.prev, s.next = &f.lru, f.lru.next
	f.lru.next.prev = s
	f.lru.next = s
}

func (f *Folder) moveToFront(s *foldState) {
	if f.lru.next == s {
		return
	}
	s.prev.next, s.next.prev = s.next, s.prev
	f.pushFront(s)
}
