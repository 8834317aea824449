// Package graph is Ark's causal graph: processes, resources, errors, jobs and
// hosts joined by Consumes, WaitsOn, BlockedBy and MemberOf edges, built from
// events and walked by Why to name the root cause of a stalled target
// (ARCHITECTURE.md §4). The agent keeps one for its host, the hub one for
// every host, with ids namespaced by host ("node-7/gpu-3").
package graph

import (
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ark-gpu/ark/event"
)

// Kind is the kind of a graph node.
type Kind uint8

// Node kinds.
const (
	KindProcess Kind = iota + 1
	KindResource
	KindError
	KindJob
	KindHost
)

// Kinds lists every node kind.
var Kinds = []Kind{KindProcess, KindResource, KindError, KindJob, KindHost}

func (k Kind) String() string {
	switch k {
	case KindProcess:
		return "process"
	case KindResource:
		return "resource"
	case KindError:
		return "error"
	case KindJob:
		return "job"
	case KindHost:
		return "host"
	}
	return "unknown"
}

// EdgeType is the type of a graph edge.
type EdgeType uint8

// Edge types.
const (
	Consumes  EdgeType = iota + 1 // process → resource it uses
	WaitsOn                       // process → resource or remote process it is stuck on
	BlockedBy                     // resource or process → error
	MemberOf                      // process → job
)

// EdgeTypes lists every edge type.
var EdgeTypes = []EdgeType{Consumes, WaitsOn, BlockedBy, MemberOf}

func (t EdgeType) String() string {
	switch t {
	case Consumes:
		return "Consumes"
	case WaitsOn:
		return "WaitsOn"
	case BlockedBy:
		return "BlockedBy"
	case MemberOf:
		return "MemberOf"
	}
	return "unknown"
}

// Options bound and tune a Graph. Zero fields take the defaults.
type Options struct {
	// TTL expires nodes and edges without a new event (default 5m).
	TTL time.Duration
	// ErrorTTL keeps an uncleared error of at least degraded severity that
	// long after its last event (default 1h): a GPU that fell off the bus
	// sends one XID and stays broken.
	ErrorTTL time.Duration
	// MaxNodes and MaxEdges bound the graph; the least recently touched go
	// first (defaults 4,000,000 and 8,000,000).
	MaxNodes int
	MaxEdges int
	// QDepthThreshold is the storage queue depth above which a process
	// waits on the device (default 32).
	QDepthThreshold float64
	// FlapCount down transitions within FlapWindow make a link flapping:
	// it stays a cause while up for less than FlapHold (defaults 3, TTL, TTL).
	FlapCount  int
	FlapWindow time.Duration
	FlapHold   time.Duration
	// MaxEvidence events are kept per error (default 8: the first and the
	// most recent).
	MaxEvidence int
	// MaxErrors bounds error nodes (default 100,000) and MaxErrorsPerEntity
	// the distinct faults kept per resource (default 32); the least recently
	// reported go first.
	MaxErrors          int
	MaxErrorsPerEntity int
	// MaxSkew is how far past the graph's clock one event may move it
	// (default 10m). A later event is applied at the current clock and
	// counted, so one host with a wrong clock cannot expire everything
	// else; a run of them is a real jump and moves the clock.
	MaxSkew time.Duration
}

func (o Options) withDefaults() Options {
	if o.TTL <= 0 {
		o.TTL = 5 * time.Minute
	}
	if o.ErrorTTL <= 0 {
		o.ErrorTTL = time.Hour
	}
	if o.ErrorTTL < o.TTL {
		o.ErrorTTL = o.TTL
	}
	if o.MaxNodes <= 0 {
		o.MaxNodes = 4_000_000
	}
	if o.MaxEdges <= 0 {
		o.MaxEdges = 8_000_000
	}
	if o.QDepthThreshold <= 0 {
		o.QDepthThreshold = 32
	}
	if o.FlapCount <= 0 {
		o.FlapCount = 3
	}
	if o.FlapWindow <= 0 {
		o.FlapWindow = o.TTL
	}
	if o.FlapHold <= 0 {
		o.FlapHold = o.TTL
	}
	if o.MaxEvidence <= 0 {
		o.MaxEvidence = 8
	}
	if o.MaxErrors <= 0 {
		o.MaxErrors = 100_000
	}
	if o.MaxErrorsPerEntity <= 0 {
		o.MaxErrorsPerEntity = 32
	}
	if o.MaxSkew <= 0 {
		o.MaxSkew = 10 * time.Minute
	}
	return o
}

// Stats are counters and sizes for metrics.
type Stats struct {
	Nodes          map[Kind]int
	Edges          map[EdgeType]int
	Applied        uint64 // events applied
	Ignored        uint64 // events that changed nothing (e.g. no pid for a usage sample)
	EvictedNodes   uint64 // removed to stay under MaxNodes
	EvictedEdges   uint64 // removed to stay under MaxEdges
	ExpiredNodes   uint64 // removed by TTL
	ExpiredEdges   uint64 // removed by TTL
	UnresolvedPeer uint64 // transport events whose peer matched no known rank
	FutureClamped  uint64 // events too far ahead of the clock, applied at the clock
	PendingDropped uint64 // unresolved peer waits not remembered (bounds reached)
}

// Graph is the causal graph. It is safe for one writer and many concurrent
// readers.
type Graph struct {
	mu    sync.RWMutex
	opts  Options
	ttl   int64 // ms
	etl   int64 // ms, error TTL
	hosts map[string]*host
	jobs  map[string]*node
	addrs map[string][]*node // "ip:port" or "ip" → processes (intent.run attrs.addr)
	ips   map[string][]*node // ip of every addr → processes
	// hostIPs maps the addresses a host's agent announced to the host: a
	// peer on that ip whose rank announced no address is one of the
	// host's ranks.
	hostIPs   map[string]string
	hostAddrs map[string][]string // host → its announced ips
	errs      map[*node]struct{}  // error nodes, kept out of the LRU
	// waits on peers no known rank has announced yet, by peer address
	pending map[string][]pendingWait
	// pendingIPs indexes pending by the peer's ip, so an announced host
	// address resolves its own waits without a scan of all of them.
	pendingIPs map[string]map[string]struct{}
	npending   int

	nodes lruNodes
	edges lruEdges

	nodeCount [KindHost + 1]int
	edgeCount [MemberOf + 1]int
	clock     int64 // the latest event ts seen, within MaxSkew
	skew      int64 // MaxSkew in ms
	aheadRun  int   // consecutive events beyond MaxSkew
	applied   uint64
	stats     Stats
	sinceGC   int
}

type host struct {
	name  string
	node  *node
	res   map[string]*node
	procs map[int64]*node
}

// New returns an empty Graph.
func New(opts Options) *Graph {
	o := opts.withDefaults()
	return &Graph{
		opts:       o,
		ttl:        o.TTL.Milliseconds(),
		etl:        o.ErrorTTL.Milliseconds(),
		skew:       o.MaxSkew.Milliseconds(),
		hosts:      make(map[string]*host),
		jobs:       make(map[string]*node),
		addrs:      make(map[string][]*node),
		ips:        make(map[string][]*node),
		hostIPs:    make(map[string]string),
		hostAddrs:  make(map[string][]string),
		errs:       make(map[*node]struct{}),
		pending:    make(map[string][]pendingWait),
		pendingIPs: make(map[string]map[string]struct{}),
	}
}

// Options returns the effective options.
func (g *Graph) Options() Options { return g.opts }

// Clock returns the latest event timestamp applied, in ms.
func (g *Graph) Clock() int64 {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.clock
}

// Stats returns a snapshot of the graph's sizes and counters.
func (g *Graph) Stats() Stats {
	g.mu.RLock()
	defer g.mu.RUnlock()
	s := g.stats
	s.Applied = g.applied
	s.Nodes = make(map[Kind]int, len(Kinds))
	for _, k := range Kinds {
		s.Nodes[k] = g.nodeCount[k]
	}
	s.Edges = make(map[EdgeType]int, len(EdgeTypes))
	for _, t := range EdgeTypes {
		s.Edges[t] = g.edgeCount[t]
	}
	return s
}

// Apply adds one event to the graph.
func (g *Graph) Apply(ev *event.Event) {
	g.mu.Lock()
	g.apply(ev)
	g.enforceCaps()
	g.maybeGC()
	g.mu.Unlock()
}

// ApplyBatch adds events under one lock acquisition.
func (g *Graph) ApplyBatch(evs []event.Event) {
	g.mu.Lock()
	for i := range evs {
		g.apply(&evs[i])
		g.enforceCaps()
	}
	g.maybeGC()
	g.mu.Unlock()
}

// Expire removes what the TTL has ended as of now (ms) and returns how many
// nodes and edges went.
func (g *Graph) Expire(now int64) (nodes, edges int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.expire(now)
}

const gcEvery = 4096

func (g *Graph) maybeGC() {
	if g.sinceGC < gcEvery {
		return
	}
	g.sinceGC = 0
	g.expire(g.clock)
}

// ---- node and edge bookkeeping ----

type node struct {
	id     string
	kind   Kind
	host   *host
	entity string // resource entity, "pid-N", job id, or error key
	dead   bool   // removed from the graph
	first  int64
	last   int64
	out    []*edge
	in     []*edge
	outIdx map[edgeKey]*edge
	prev   *node
	next   *node
	proc   *procInfo
	err    *errInfo
	res    *resInfo
}

type procInfo struct {
	pid        int64
	startTime  uint64
	stuckSince int64 // when the current stuck state began, 0 when running
	rank       string
	addr       string
	job        *node
	state      string
	stateTS    int64
	lastRes    *node
	lastUsed   int64
	stalled    []stalledPeer // flows that stopped making progress (stall.go)
}

type resInfo struct {
	class    string // gpu, nic, storage, resource
	waits    []event.Event
	waitSeen int
}

type edgeKey struct {
	to  *node
	typ EdgeType
}

type edge struct {
	from, to    *node
	typ         EdgeType
	count       uint32
	first, last int64
	prev, next  *edge
}

const outIndexAt = 16

func (g *Graph) hostFor(name string) *host {
	h := g.hosts[name]
	if h != nil {
		return h
	}
	name = strings.Clone(name)
	h = &host{name: name, res: make(map[string]*node), procs: make(map[int64]*node)}
	if name != "" {
		h.node = g.newNode(name, KindHost, h, name)
	}
	g.hosts[name] = h
	return h
}

func nsID(h *host, local string) string {
	if h == nil || h.name == "" {
		return local
	}
	return h.name + "/" + local
}

func (g *Graph) newNode(id string, kind Kind, h *host, entity string) *node {
	n := &node{id: id, kind: kind, host: h, entity: entity}
	g.nodeCount[kind]++
	if inLRU(kind) {
		g.nodes.pushFront(n)
	}
	return n
}

// enforceCaps evicts the least recently touched nodes and edges beyond the
// limits. It runs after an event is fully applied, so it never takes a node
// the event is still wiring up.
func (g *Graph) enforceCaps() {
	for g.edges.len > g.opts.MaxEdges {
		g.removeEdge(g.edges.tail)
		g.stats.EvictedEdges++
	}
	for g.nodes.len > g.opts.MaxNodes {
		g.removeNode(g.nodes.tail)
		g.stats.EvictedNodes++
	}
	for len(g.errs) > g.opts.MaxErrors {
		var oldest *node
		for en := range g.errs {
			if oldest == nil || en.last < oldest.last {
				oldest = en
			}
		}
		g.removeNode(oldest)
		g.stats.EvictedNodes++
	}
}

func (g *Graph) touch(n *node, ts int64) {
	if n.first == 0 || ts < n.first {
		n.first = ts
	}
	if ts > n.last {
		n.last = ts
	}
	if inLRU(n.kind) {
		g.nodes.moveToFront(n)
	}
}

func (g *Graph) resource(h *host, entity string, ts int64) *node {
	n := h.res[entity]
	if n == nil {
		if pid, ok := pidEntity(entity); ok {
			return g.process(h, pid, ts)
		}
		entity = strings.Clone(entity)
		n = g.newNode(nsID(h, entity), KindResource, h, entity)
		n.res = &resInfo{class: ResourceClass(entity)}
		h.res[entity] = n
	}
	g.touch(n, ts)
	return n
}

func (g *Graph) process(h *host, pid int64, ts int64) *node {
	n := h.procs[pid]
	if n == nil {
		local := "pid-" + strconv.FormatInt(pid, 10)
		n = g.newNode(nsID(h, local), KindProcess, h, local)
		n.proc = &procInfo{pid: pid}
		h.procs[pid] = n
	}
	g.touch(n, ts)
	return n
}

func (g *Graph) job(id string, ts int64) *node {
	n := g.jobs[id]
	if n == nil {
		id = strings.Clone(id)
		n = g.newNode("job/"+id, KindJob, nil, id)
		g.jobs[id] = n
	}
	g.touch(n, ts)
	return n
}

// link adds or refreshes the edge from → to of type t.
func (g *Graph) link(from, to *node, t EdgeType, ts int64) *edge {
	e := from.findOut(to, t)
	if e == nil {
		e = &edge{from: from, to: to, typ: t, first: ts, last: ts}
		from.out = append(from.out, e)
		to.in = append(to.in, e)
		if from.outIdx != nil {
			from.outIdx[edgeKey{to, t}] = e
		} else if len(from.out) > outIndexAt {
			from.outIdx = make(map[edgeKey]*edge, len(from.out)*2)
			for _, x := range from.out {
				from.outIdx[edgeKey{x.to, x.typ}] = x
			}
		}
		g.edgeCount[t]++
		if t != BlockedBy {
			g.edges.pushFront(e)
		}
	} else if t != BlockedBy {
		g.edges.moveToFront(e)
	}
	e.count++
	if ts < e.first {
		e.first = ts
	}
	if ts > e.last {
		e.last = ts
	}
	return e
}

func (n *node) findOut(to *node, t EdgeType) *edge {
	if n.outIdx != nil {
		return n.outIdx[edgeKey{to, t}]
	}
	for _, e := range n.out {
		if e.to == to && e.typ == t {
			return e
		}
	}
	return nil
}

func removeFrom(s []*edge, e *edge) []*edge {
	for i, x := range s {
		if x == e {
			last := len(s) - 1
			s[i] = s[last]
			s[last] = nil
			return s[:last]
		}
	}
	return s
}

func (g *Graph) removeEdge(e *edge) {
	e.from.out = removeFrom(e.from.out, e)
	if e.from.outIdx != nil {
		delete(e.from.outIdx, edgeKey{e.to, e.typ})
	}
	e.to.in = removeFrom(e.to.in, e)
	if e.typ != BlockedBy {
		g.edges.remove(e)
	}
	g.edgeCount[e.typ]--
}

func (g *Graph) removeNode(n *node) {
	for len(n.out) > 0 {
		e := n.out[len(n.out)-1]
		g.removeEdge(e)
		if e.typ == BlockedBy && !e.to.dead {
			// An error belongs to what it blocks and goes with it.
			g.removeNode(e.to)
		}
	}
	for len(n.in) > 0 {
		g.removeEdge(n.in[len(n.in)-1])
	}
	n.dead = true
	switch n.kind {
	case KindProcess:
		delete(n.host.procs, n.proc.pid)
		if n.proc.addr != "" {
			g.unindexAddr(n)
		}
	case KindResource:
		delete(n.host.res, n.entity)
	case KindJob:
		delete(g.jobs, n.entity)
	case KindError:
		delete(g.errs, n)
	}
	if inLRU(n.kind) {
		g.nodes.remove(n)
	}
	g.nodeCount[n.kind]--
	if h := n.host; h != nil && n.kind != KindHost && len(h.res) == 0 && len(h.procs) == 0 && g.hosts[h.name] == h {
		if h.node != nil {
			h.node.dead = true
			g.nodeCount[KindHost]--
		}
		delete(g.hosts, h.name)
	}
}

// inLRU says whether nodes of kind k are evicted least-recently-used first.
// Errors live by their own TTL and hosts by their contents.
func inLRU(k Kind) bool { return k != KindError && k != KindHost }

// alive reports whether a pointer kept outside the adjacency lists still
// refers to a node of the graph.
func (n *node) alive() bool { return n != nil && !n.dead }

// ResourceClass names the class of a resource from its entity id.
func ResourceClass(entity string) string {
	e := strings.ToLower(entity)
	switch {
	case strings.HasPrefix(e, "gpu"), strings.HasPrefix(e, "nvlink"), strings.HasPrefix(e, "nvswitch"):
		return "gpu"
	case strings.HasPrefix(e, "network"), strings.HasPrefix(e, "nic"), strings.HasPrefix(e, "ib"),
		strings.HasPrefix(e, "eth"), strings.HasPrefix(e, "mlx"), strings.HasPrefix(e, "roce"), strings.HasPrefix(e, "en"):
		return "nic"
	case strings.HasPrefix(e, "storage"), strings.HasPrefix(e, "nvme"), strings.HasPrefix(e, "disk"),
		strings.HasPrefix(e, "sd"), strings.HasPrefix(e, "md"), strings.HasPrefix(e, "fs"):
		return "storage"
	}
	return "resource"
}

func pidEntity(entity string) (int64, bool) {
	rest, ok := strings.CutPrefix(entity, "pid-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.ParseInt(rest, 10, 64)
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, true
}

// ---- intrusive LRU lists: front is most recently touched ----

type lruNodes struct {
	head, tail *node
	len        int
}

func (l *lruNodes) pushFront(n *node) {
	n.prev, n.next = nil, l.head
	if l.head != nil {
		l.head.prev = n
	}
	l.head = n
	if l.tail == nil {
		l.tail = n
	}
	l.len++
}

func (l *lruNodes) remove(n *node) {
	if n.prev != nil {
		n.prev.next = n.next
	} else if l.head == n {
		l.head = n.next
	} else {
		return // not in the list
	}
	if n.next != nil {
		n.next.prev = n.prev
	} else {
		l.tail = n.prev
	}
	n.prev, n.next = nil, nil
	l.len--
}

func (l *lruNodes) moveToFront(n *node) {
	if l.head == n {
		return
	}
	l.remove(n)
	l.pushFront(n)
}

type lruEdges struct {
	head, tail *edge
	len        int
}

func (l *lruEdges) pushFront(e *edge) {
	e.prev, e.next = nil, l.head
	if l.head != nil {
		l.head.prev = e
	}
	l.head = e
	if l.tail == nil {
		l.tail = e
	}
	l.len++
}

func (l *lruEdges) remove(e *edge) {
	if e.prev != nil {
		e.prev.next = e.next
	} else if l.head == e {
		l.head = e.next
	} else {
		return
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		l.tail = e.prev
	}
	e.prev, e.next = nil, nil
	l.len--
}

func (l *lruEdges) moveToFront(e *edge) {
	if l.head == e {
		return
	}
	l.remove(e)
	l.pushFront(e)
}

// Settle links remembered waits on peers whose exact address never
// appeared to the ranks on the peer's ip, and forgets stale ones. Expiry
// does it as well; call it before a query when replaying a recording.
func (g *Graph) Settle() {
	g.mu.Lock()
	g.settlePending(g.clock)
	g.mu.Unlock()
}
