package graph

import (
	"errors"
	"math"
	"slices"
	"sort"
	"strconv"
	"sync"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/xid"
)

// Target is what Why explains: a job, a process on a host, or a host.
type Target struct {
	JobID string `json:"job_id,omitempty"`
	Node  string `json:"node,omitempty"`
	PID   int64  `json:"pid,omitempty"`
}

func (t Target) String() string {
	switch {
	case t.JobID != "":
		return "job " + t.JobID
	case t.PID != 0:
		return "pid " + strconv.FormatInt(t.PID, 10) + " on " + t.Node
	}
	return "node " + t.Node
}

// ErrNoTarget is returned when a Target names nothing.
var ErrNoTarget = errors.New("target needs a job id, a node, or a node and a pid")

// Hop is one edge of a cause's chain.
type Hop struct {
	From string `json:"from"`
	To   string `json:"to"`
	Type string `json:"type"`
}

// Cause is one ranked root cause.
type Cause struct {
	NodeID        string        `json:"node_id"`
	EntityID      string        `json:"entity_id"`
	EventType     event.Type    `json:"event_type"`
	Kind          string        `json:"kind"` // "error" or "symptom"
	Summary       string        `json:"summary"`
	Score         float64       `json:"score"`
	Severity      string        `json:"severity"`
	Weight        float64       `json:"weight"`
	XID           int           `json:"xid,omitempty"`
	Action        string        `json:"action,omitempty"` // XID catalog immediate action
	Sympathetic   bool          `json:"sympathetic,omitempty"`
	Flapping      bool          `json:"flapping,omitempty"`
	Downstream    bool          `json:"downstream,omitempty"` // likely a consequence of a higher-ranked fault
	FirstSeen     int64         `json:"first_seen"`
	LastSeen      int64         `json:"last_seen"`
	Count         int           `json:"count"`
	AffectedRanks int           `json:"affected_ranks"`
	TotalRanks    int           `json:"total_ranks"`
	Related       []string      `json:"related,omitempty"` // other faults of the same device
	Chain         []Hop         `json:"chain"`
	Evidence      []event.Event `json:"evidence"`
}

// Result is the answer of Why.
type Result struct {
	Target Target  `json:"target"`
	At     int64   `json:"at"`
	Found  bool    `json:"found"` // the target exists in the graph
	Ranks  int     `json:"ranks"` // processes of the target considered
	Causes []Cause `json:"causes"`
}

// Score weights: how bad the fault is, how much of the target reaches it,
// how early it began. Severity dominates so a fatal XID on one GPU beats a
// transient one everywhere; fan-in separates the root from the errors each
// rank's own death leaves behind.
const (
	wSeverity = 0.55
	wFanIn    = 0.30
	wOnset    = 0.15

	symptomWeight   = 0.3  // a saturated or dropping resource without an error
	infoWeightFloor = 0.25 // below this an error is reported only for a stuck target
	maxCandidates   = 256
	maxCauses       = 20
)

// Why explains target at time at (ms; 0 means the latest event seen). It
// walks from the target's processes along WaitsOn, Consumes and BlockedBy
// edges, collects the faults reachable, and ranks them.
func (g *Graph) Why(t Target, at int64) (Result, error) {
	if t.JobID == "" && t.Node == "" && t.PID == 0 {
		return Result{}, ErrNoTarget
	}
	g.mu.RLock()
	defer g.mu.RUnlock()
	if at == 0 {
		at = g.clock
	}
	res := Result{Target: t, At: at, Causes: []Cause{}}
	w := walkers.Get().(*walker)
	defer w.release()
	w.g, w.at = g, at
	w.sources(t)
	res.Found = w.found
	res.Ranks = w.ranks
	if len(w.src) == 0 {
		return res, nil
	}
	w.forward()
	res.Causes = w.rank()
	return res, nil
}

type walker struct {
	g     *Graph
	at    int64
	found bool
	src   []*node // start nodes; they are seen[:len(src)]
	ranks int     // processes among them
	// visited nodes in BFS order, with their index in idx
	seen []*node
	idx  map[*node]int32
	// stuck reports whether any source process is stalled, stall since
	// when the first of them has been; hold is the fault liveness the walk
	// uses (see activeHold).
	stuck bool
	stall int64
	hold  int64
	// scratch for reverse walks, reused across candidates
	queue []int32
	// inferred same-host links: resource seen index → process seen indexes
	virtIn map[int32][]int32
	// storage reused across walks: candidates, and an arena for the
	// per-candidate index slices (waiters, reverse walks)
	cands []candidate
	ints  []int32
	// more scratch: which seen nodes reach an error, hosts done
	reach    []bool
	hostDone map[*host]bool
}

// walkers recycles walk state: Why runs often on a large heap, and its
// garbage would otherwise drive GC cycles that mark the whole graph.
var walkers = sync.Pool{New: func() any { return &walker{idx: make(map[*node]int32, 1024)} }}

func (w *walker) release() {
	clear(w.idx)
	clear(w.seen)
	clear(w.src)
	clear(w.cands[:cap(w.cands)])
	clear(w.hostDone)
	*w = walker{idx: w.idx, seen: w.seen[:0], src: w.src[:0], queue: w.queue[:0], cands: w.cands[:0], ints: w.ints[:0],
		reach: w.reach[:0], hostDone: w.hostDone}
	walkers.Put(w)
}

// alloc returns n zeroed int32s from the walk's arena. A full arena is
// replaced by a bigger one; slices already handed out keep the old one
// alive until the walk ends, and the pool keeps the newest.
func (w *walker) alloc(n int) []int32 {
	if cap(w.ints)-len(w.ints) < n {
		w.ints = make([]int32, 0, max(2*cap(w.ints), 2*n, 4096))
	}
	i := len(w.ints)
	w.ints = w.ints[:i+n]
	s := w.ints[i : i+n : i+n]
	clear(s)
	return s
}

// isSrc reports whether seen index i is a source: sources are visited first.
func (w *walker) isSrc(i int32) bool { return int(i) < len(w.src) }

func (w *walker) sources(t Target) {
	g := w.g
	add := func(n *node) {
		if _, dup := w.idx[n]; dup {
			return
		}
		w.idx[n] = -1 // placeholder until forward() numbers the sources
		w.src = append(w.src, n)
		if n.kind == KindProcess {
			w.ranks++
			if IsStuckState(n.proc.state) && n.proc.stateTS >= w.at-g.ttl && n.proc.stateTS <= w.at {
				w.stuck = true
				if s := n.proc.stuckSince; s > 0 && (w.stall == 0 || s < w.stall) {
					w.stall = s
				}
			}
		}
	}
	switch {
	case t.JobID != "":
		j := g.jobs[t.JobID]
		if j == nil {
			return
		}
		w.found = true
		for _, e := range j.in {
			if e.typ == MemberOf && g.edgeAliveHold(e, w.at, holdAny) {
				add(e.from)
			}
		}
	case t.PID != 0:
		h := g.hosts[t.Node]
		if h == nil {
			return
		}
		if p := h.procs[t.PID]; p != nil && (p.last >= w.at-g.ttl || g.usesFaultedHold(p, w.at, holdAny)) {
			w.found = true
			add(p)
		}
	default:
		h := g.hosts[t.Node]
		if h == nil {
			return
		}
		w.found = true
		for _, p := range h.procs {
			if p.first <= w.at && (p.last >= w.at-g.ttl || g.usesFaultedHold(p, w.at, holdAny)) {
				add(p)
			}
		}
		for _, r := range h.res {
			if r.first <= w.at {
				add(r)
			}
		}
	}
	// Deterministic order: map iteration above is random.
	sort.Slice(w.src, func(i, j int) bool { return w.src[i].id < w.src[j].id })
	if w.stuck {
		w.hold = w.stall
		if w.hold == 0 {
			w.hold = w.at
		}
	}
}

// walkable reports whether the walk follows edge e forward.
func (w *walker) walkable(e *edge) bool {
	return e.typ != MemberOf && w.g.edgeAliveHold(e, w.at, w.hold)
}

func (w *walker) forward() {
	clear(w.idx)
	for _, s := range w.src {
		w.visit(s)
	}
	w.bfs(0)
	if w.stuck {
		// Recordings do not always say which process uses which device
		// (per-GPU samples without pids, storage without per-process I/O).
		// For a stuck target, a fault on a host where a reached process
		// runs, on a device nobody is known to use, is linked to that
		// process through the host.
		from := len(w.seen)
		w.sameHost(w.reachingErrors())
		w.bfs(from)
	}
}

func (w *walker) bfs(from int) {
	for i := from; i < len(w.seen); i++ {
		n := w.seen[i]
		for _, e := range n.out {
			if w.walkable(e) {
				w.visit(e.to)
			}
		}
	}
}

// reachingErrors marks the seen processes that already reach a current
// error through real edges: one reverse walk from all of them.
func (w *walker) reachingErrors() []bool {
	reach := slices.Grow(w.reach[:0], len(w.seen))[:len(w.seen)]
	clear(reach)
	w.reach = reach
	queue := w.queue[:0]
	defer func() { w.queue = queue[:0] }()
	for i, n := range w.seen {
		if n.kind == KindError && w.g.activeHold(n.err, w.at, w.hold) {
			reach[i] = true
			queue = append(queue, int32(i))
		}
	}
	for q := 0; q < len(queue); q++ {
		for _, e := range w.seen[queue[q]].in {
			fi, ok := w.idx[e.from]
			if !ok || reach[fi] || !w.walkable(e) {
				continue
			}
			reach[fi] = true
			queue = append(queue, fi)
		}
	}
	return reach
}

// sameHost adds virtual edges from stuck processes that reach no error to
// the unowned faulted resources of their host.
func (w *walker) sameHost(explained []bool) {
	g := w.g
	if w.hostDone == nil {
		w.hostDone = make(map[*host]bool)
	}
	done := w.hostDone
	n := len(w.seen)
	for i := 0; i < n; i++ {
		p := w.seen[i]
		if p.kind != KindProcess || p.host == nil || done[p.host] {
			continue
		}
		done[p.host] = true
		for _, r := range p.host.res {
			if !g.faultedHold(r, w.at, w.hold) {
				continue
			}
			jobs := w.ownerJobs(r)
			// Every stuck process of the host that nothing else explains
			// gets the link: to a device nobody is known to use, or to one
			// a rank of its own job uses (ranks on one host talk over
			// NVLink or shared memory, which leaves no drops to follow).
			for j := 0; j < n; j++ {
				q := w.seen[j]
				if q.kind != KindProcess || q.host != p.host || explained[j] || !IsStuckState(q.proc.state) {
					continue
				}
				if jobs != nil && (!q.proc.job.alive() || !jobs[q.proc.job]) {
					continue
				}
				w.visit(r)
				ri := w.idx[r]
				if w.virtIn == nil {
					w.virtIn = make(map[int32][]int32)
				}
				w.virtIn[ri] = append(w.virtIn[ri], int32(j))
			}
		}
	}
}

// ownerJobs returns the jobs of the processes known to use r right now, or
// nil when nobody is.
func (w *walker) ownerJobs(r *node) map[*node]bool {
	var jobs map[*node]bool
	for _, e := range r.in {
		if (e.typ == Consumes || e.typ == WaitsOn) && e.from.kind == KindProcess && w.g.edgeAliveHold(e, w.at, w.hold) {
			if jobs == nil {
				jobs = map[*node]bool{}
			}
			if j := e.from.proc.job; j.alive() {
				jobs[j] = true
			}
		}
	}
	return jobs
}

// SameHost is the chain hop type of an inferred same-host link.
const SameHost = "SameHost"

func (w *walker) visit(n *node) {
	if _, ok := w.idx[n]; ok {
		return
	}
	w.idx[n] = int32(len(w.seen))
	w.seen = append(w.seen, n)
}

type candidate struct {
	n       *node // error node, or the resource for a symptom
	weight  float64
	onset   int64
	last    int64
	sym     bool // a symptom, not an error
	flap    bool
	waiters []int32 // for a symptom: the stuck processes waiting on it directly
}

func (w *walker) candidates() []candidate {
	g := w.g
	cs := w.cands[:0]
	defer func() { w.cands = cs[:0] }()
	for _, n := range w.seen {
		switch {
		case n.kind == KindError:
			ei := n.err
			if !g.activeHold(ei, w.at, w.hold) {
				continue
			}
			c := candidate{n: n, weight: ei.weight, onset: ei.onset, last: ei.lastSeen,
				flap: ei.cleared >= ei.lastSeen}
			if c.weight < infoWeightFloor && !w.stuck {
				continue
			}
			cs = append(cs, c)
		case n.kind == KindResource && w.stuck:
			if c, ok := w.symptom(n); ok {
				cs = append(cs, c)
			}
		}
	}
	w.demoteSympathetic(cs)
	if len(cs) > maxCandidates {
		sort.Slice(cs, func(i, j int) bool { return cs[i].weight > cs[j].weight })
		cs = cs[:maxCandidates]
	}
	return cs
}

// symptom makes a candidate of a resource that stuck processes wait on and
// that has no current fault of its own (a fault would be the better cause).
func (w *walker) symptom(r *node) (candidate, bool) {
	g := w.g
	// Only a resource with direct evidence of waiting (drops, a saturated
	// queue) is a symptom; a stuck process's inferred wait on the GPU it
	// last used is not.
	if r.res == nil || r.res.waitSeen == 0 || g.faultedHold(r, w.at, w.hold) {
		return candidate{}, false
	}
	var first, last int64
	queue := w.queue[:0] // scratch: reverse walks come later
	for _, e := range r.in {
		if e.typ != WaitsOn || !g.edgeAliveHold(e, w.at, w.hold) {
			continue
		}
		p := e.from
		pi, ok := w.idx[p]
		if !ok || p.kind != KindProcess || !IsStuckState(p.proc.state) {
			continue
		}
		queue = append(queue, pi)
		if first == 0 || e.first < first {
			first = e.first
		}
		if e.last > last {
			last = e.last
		}
	}
	w.queue = queue
	if len(queue) == 0 {
		return candidate{}, false
	}
	waiters := w.alloc(len(queue))
	copy(waiters, queue)
	return candidate{n: r, weight: symptomWeight, onset: first, last: last, sym: true, waiters: waiters}, true
}

// demoteSympathetic lowers the weight of errors NVIDIA documents as
// sympathetic (XID 45 "not solo", 94/95 "sympathetic") when a primary error
// began no later than they did.
func (w *walker) demoteSympathetic(cs []candidate) {
	for i := range cs {
		ci := &cs[i]
		if ci.sym || !ci.n.err.sympath {
			continue
		}
		for j := range cs {
			cj := &cs[j]
			if i == j || cj.sym || cj.n.err.sympath {
				continue
			}
			if cj.weight >= xid.ActionWeight("RESTART_APP") && cj.onset <= ci.onset {
				ci.weight *= 0.3
				break
			}
		}
	}
}

func (w *walker) rank() []Cause {
	cs := w.candidates()
	if len(cs) == 0 {
		return []Cause{}
	}
	minOnset, maxOnset := int64(math.MaxInt64), int64(0)
	for _, c := range cs {
		minOnset = min(minOnset, c.onset)
		maxOnset = max(maxOnset, c.onset)
	}
	span := float64(max(w.at-minOnset, 1))
	total := max(w.ranks, 1)
	type scored struct {
		candidate
		score      float64
		next, dist []int32 // see reverse
		ranks      int
		down       bool // a consequence of another fault
	}
	// Most symptoms are explained by an error and dropped below: out
	// starts small rather than at len(cs), which can be hundreds.
	out := make([]scored, 0, min(len(cs), 8))
	// Errors first, so a symptom they already explain can be dropped.
	sort.SliceStable(cs, func(i, j int) bool { return !cs[i].sym && cs[j].sym })
	var actionable [][]int32
	for _, c := range cs {
		if c.sym && explained(c.waiters, actionable) {
			continue
		}
		next, dist, n := w.reverse(c.n)
		if !c.sym && c.weight >= xid.ActionWeight("RESTART_APP") {
			actionable = append(actionable, next)
		}
		out = append(out, scored{candidate: c, next: next, dist: dist, ranks: n})
	}
	for i := range out {
		if w.downstream(out[i].candidate, func(j int) (candidate, []int32, bool) {
			if j >= len(out) {
				return candidate{}, nil, false
			}
			return out[j].candidate, out[j].next, true
		}) {
			out[i].weight *= 0.5
			out[i].down = true
		}
	}
	for i := range out {
		c := &out[i]
		fan := float64(c.ranks) / float64(total)
		onset := 1 - float64(c.onset-minOnset)/span
		if w.stuck && w.stall > 0 {
			onset = stallTiming(c.onset, w.stall)
		}
		c.score = wSeverity*c.weight + wFanIn*fan + wOnset*onset
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.score != b.score {
			return a.score > b.score
		}
		if a.onset != b.onset {
			return a.onset < b.onset
		}
		return a.n.id < b.n.id
	})
	// One cause per device: a disk that times out, errors and resets is one
	// fault with three messages. The best-scored error leads; the others
	// add their counts, summaries and evidence.
	causes := make([]Cause, 0, min(len(out), maxCauses))
	byEntity := make(map[*node]int, len(out))
	for _, s := range out {
		on := s.n
		if !s.sym {
			on = s.n.err.on
		}
		if i, ok := byEntity[on]; ok {
			causes[i].absorb(s.n.err, w.g.opts.MaxEvidence)
			continue
		}
		if len(causes) == maxCauses {
			continue
		}
		byEntity[on] = len(causes)
		c := w.cause(s.candidate, math.Round(s.score*1000)/1000, s.ranks, total, s.next, s.dist)
		c.Downstream = s.down
		causes = append(causes, c)
	}
	return causes
}

// maxRelated bounds the extra summaries listed on one cause.
const maxRelated = 5

// absorb folds another error of the same device into c.
func (c *Cause) absorb(ei *errInfo, maxEvidence int) {
	c.Count += ei.count
	c.FirstSeen = min(c.FirstSeen, ei.onset)
	c.LastSeen = max(c.LastSeen, ei.lastSeen)
	if len(c.Related) < maxRelated {
		c.Related = append(c.Related, ei.summary)
	}
	for _, ev := range ei.evidence {
		if len(c.Evidence) >= 2*maxEvidence {
			break
		}
		c.Evidence = append(c.Evidence, ev)
	}
	sort.SliceStable(c.Evidence, func(i, j int) bool { return c.Evidence[i].TS < c.Evidence[j].TS })
}

// downstream reports whether error c is most likely a consequence of
// another fault: it is not fatal, and every process known to use its device
// already reaches a different, earlier fault of at least degraded severity
// (an RDMA retry error on the hosts that talk to a flapping link, an NCCL
// timeout after a GPU fell off the bus).
func (w *walker) downstream(c candidate, other func(int) (candidate, []int32, bool)) bool {
	if c.sym || c.weight >= 0.85 {
		return false
	}
	on := c.n.err.on
	var users []int32
	for _, e := range on.in {
		if e.typ != Consumes && e.typ != WaitsOn {
			continue
		}
		if ui, ok := w.idx[e.from]; ok && e.from.kind == KindProcess && w.g.edgeAliveHold(e, w.at, w.hold) {
			users = append(users, ui)
		}
	}
	if len(users) == 0 {
		return false
	}
	for j := 0; ; j++ {
		o, next, ok := other(j)
		if !ok {
			return false
		}
		if o.sym || o.n == c.n || o.n.err.on == on || o.weight < 0.55 || o.onset > c.onset {
			continue
		}
		all := true
		for _, ui := range users {
			if next[ui] < 0 {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
}

// stallTiming scores when a fault began against when the target's stall
// began: a cause comes shortly before the stall. A fault long before it was
// survived, and one after it is more likely a consequence.
func stallTiming(onset, stall int64) float64 {
	const before, after = 120_000.0, 30_000.0 // ms scales
	d := float64(stall - onset)
	if d >= 0 {
		return math.Exp(-d / before)
	}
	return 0.5 * math.Exp(d/after)
}

// explained reports whether every waiter of a symptom reaches an actionable
// error: the symptom is then that error's consequence, not a cause.
func explained(waiters []int32, actionable [][]int32) bool {
	if len(actionable) == 0 {
		return false
	}
	for _, wi := range waiters {
		reached := false
		for _, next := range actionable {
			if next[wi] >= 0 {
				reached = true
				break
			}
		}
		if !reached {
			return false
		}
	}
	return true
}

// reverse walks back from c along the edges the forward walk used, counting
// the target's processes that reach c. next[i] is the index of the node one
// hop closer to c from seen[i] (-1: does not reach it); dist[i] the hops.
func (w *walker) reverse(c *node) (next, dist []int32, reached int) {
	next, dist = w.alloc(len(w.seen)), w.alloc(len(w.seen))
	for i := range next {
		next[i] = -1
	}
	ci := w.idx[c]
	next[ci] = ci
	queue := append(w.queue[:0], ci)
	for q := 0; q < len(queue); q++ {
		x := queue[q]
		n := w.seen[x]
		if w.isSrc(x) && n.kind == KindProcess {
			reached++
		}
		for _, e := range n.in {
			fi, ok := w.idx[e.from]
			if !ok || next[fi] >= 0 || !w.walkable(e) {
				continue
			}
			next[fi] = x
			dist[fi] = dist[x] + 1
			queue = append(queue, fi)
		}
		for _, from := range w.virtIn[x] {
			if next[from] < 0 {
				next[from] = x
				// An inferred hop costs more when a chain is picked: a
				// path of real edges tells more.
				dist[from] = dist[x] + inferredHopCost
				queue = append(queue, from)
			}
		}
	}
	w.queue = queue
	if reached == 0 && c.kind == KindError {
		// A fault on one of a host target's own (idle) resources.
		if oi, ok := w.idx[c.err.on]; ok && w.isSrc(oi) {
			reached = 1
		}
	}
	return next, dist, reached
}

// inferredHopCost is what a SameHost hop adds to a path's length when the
// chain to show is chosen.
const inferredHopCost = 1000

// cause builds the output for one candidate, with the chain from the most
// telling source: a process on another host if any reaches it (that shows
// the cross-node wait), else the nearest one.
func (w *walker) cause(c candidate, score float64, ranks, total int, next, dist []int32) Cause {
	n := c.n
	out := Cause{Score: score, FirstSeen: c.onset, LastSeen: c.last, AffectedRanks: ranks, TotalRanks: total,
		Weight: math.Round(c.weight*1000) / 1000, Severity: xid.WeightSeverity(c.weight).String(), Chain: []Hop{}}
	target := n
	if c.sym {
		out.Kind = "symptom"
		ri := n.res
		out.Summary = strconv.Itoa(ranks) + " stuck process(es) wait on " + n.entity
		out.Count = ri.waitSeen
		out.Evidence = append([]event.Event{}, ri.waits...)
		out.EventType = event.ProcessState
		if len(ri.waits) > 0 {
			last := ri.waits[len(ri.waits)-1]
			out.EventType = last.Type
			out.Summary += " (" + string(last.Type) + " " + last.Value + ")"
		}
		out.Severity = "symptom"
	} else {
		ei := n.err
		target = ei.on
		out.Kind = "error"
		out.EventType = ei.typ
		out.Summary = ei.summary
		out.XID = ei.xid
		out.Action = ei.action
		out.Sympathetic = ei.sympath && c.weight < ei.weight
		out.Flapping = c.flap
		out.Count = ei.count
		out.Evidence = append([]event.Event{}, ei.evidence...)
	}
	out.EntityID = target.entity
	if target.host != nil {
		out.NodeID = target.host.name
	}
	// Pick the source for the chain.
	best := int32(-1)
	bestRemote := false
	for si, s := range w.src {
		if next[si] < 0 {
			continue
		}
		remote := s.host != nil && target.host != nil && s.host != target.host
		if best < 0 || (remote && !bestRemote) || (remote == bestRemote && dist[si] < dist[best]) {
			best, bestRemote = int32(si), remote
		}
	}
	for x := best; x >= 0 && next[x] != x; x = next[x] {
		from, to := w.seen[x], w.seen[next[x]]
		typ := SameHost
		for _, e := range from.out {
			if e.to == to && w.walkable(e) {
				typ = e.typ.String()
				break
			}
		}
		out.Chain = append(out.Chain, Hop{From: from.id, To: to.id, Type: typ})
	}
	return out
}
