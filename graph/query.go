package graph

import (
	"sort"
	"strconv"

	"github.com/ark-gpu/ark/event"
)

// AttrStartTime is the process.state / intent.run attribute carrying the
// process start time (clock ticks since boot, /proc/<pid>/stat field 22),
// which lets an executor tell a reused pid from the process the graph saw.
const AttrStartTime = "start_time"

// ResourceUse is one resource a process uses or waits on.
type ResourceUse struct {
	ID       string `json:"id"`
	Type     string `json:"type"` // Consumes or WaitsOn
	LastSeen int64  `json:"last_seen"`
	Count    uint32 `json:"count"`
	Faulted  bool   `json:"faulted,omitempty"`
}

// Process is what the graph knows of one process.
type Process struct {
	Node      string        `json:"node"`
	PID       int64         `json:"pid"`
	JobID     string        `json:"job_id,omitempty"`
	Rank      string        `json:"rank,omitempty"`
	Addr      string        `json:"addr,omitempty"`
	State     string        `json:"state,omitempty"`
	StateTS   int64         `json:"state_ts,omitempty"`
	Stuck     bool          `json:"stuck"`
	StartTime uint64        `json:"start_time,omitempty"`
	FirstSeen int64         `json:"first_seen"`
	LastSeen  int64         `json:"last_seen"`
	Resources []ResourceUse `json:"resources"`
}

// ProcessFilter selects processes; zero fields match all.
type ProcessFilter struct {
	Node  string
	JobID string
	PID   int64
}

// Processes returns the live processes matching f at the graph's clock,
// sorted by node then pid.
func (g *Graph) Processes(f ProcessFilter) []Process {
	g.mu.RLock()
	defer g.mu.RUnlock()
	at := g.clock
	var out []Process
	add := func(n *node) {
		if f.PID != 0 && n.proc.pid != f.PID {
			return
		}
		if f.Node != "" && (n.host == nil || n.host.name != f.Node) {
			return
		}
		if g.procLive(n, at) {
			out = append(out, g.process0(n, at))
		}
	}
	switch {
	case f.JobID != "":
		// A job's ranks are its MemberOf edges (kept while the rank is
		// live), not a scan of every process of every host.
		g.jobRanks(g.jobs[f.JobID], add)
	case f.Node != "":
		if h := g.hosts[f.Node]; h != nil {
			for _, n := range h.procs {
				add(n)
			}
		}
	default:
		for _, h := range g.hosts {
			for _, n := range h.procs {
				add(n)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Node != out[j].Node {
			return out[i].Node < out[j].Node
		}
		return out[i].PID < out[j].PID
	})
	return out
}

// JobHosts returns the hosts the live ranks of a job run on, unsorted.
func (g *Graph) JobHosts(jobID string) []string {
	g.mu.RLock()
	defer g.mu.RUnlock()
	at := g.clock
	var out []string
	seen := map[*host]bool{}
	g.jobRanks(g.jobs[jobID], func(n *node) {
		if n.host != nil && !seen[n.host] && g.procLive(n, at) {
			seen[n.host] = true
			out = append(out, n.host.name)
		}
	})
	return out
}

// jobRanks calls f for each process whose job is j (nil: none): its
// MemberOf edges, which last while the rank is heard from.
func (g *Graph) jobRanks(j *node, f func(*node)) {
	if j == nil {
		return
	}
	for _, e := range j.in {
		if e.typ == MemberOf && e.from.proc.job == j {
			f(e.from)
		}
	}
}

// procLive reports whether process n is current at at: heard from within
// the TTL, or using a device that is still faulted (hung ranks go quiet).
func (g *Graph) procLive(n *node, at int64) bool {
	return n.last >= at-g.ttl || g.usesFaulted(n, at)
}

func (g *Graph) process0(n *node, at int64) Process {
	pi := n.proc
	p := Process{
		PID: pi.pid, Rank: pi.rank, Addr: pi.addr, State: pi.state, StateTS: pi.stateTS,
		Stuck: IsStuckState(pi.state), StartTime: pi.startTime, FirstSeen: n.first, LastSeen: n.last,
		Resources: []ResourceUse{},
	}
	if n.host != nil {
		p.Node = n.host.name
	}
	if pi.job.alive() {
		p.JobID = pi.job.entity
	}
	for _, e := range n.out {
		if (e.typ != Consumes && e.typ != WaitsOn) || !g.edgeAlive(e, at) {
			continue
		}
		p.Resources = append(p.Resources, ResourceUse{ID: e.to.id, Type: e.typ.String(), LastSeen: e.last, Count: e.count,
			Faulted: e.to.kind == KindResource && g.faulted(e.to, at)})
	}
	sort.Slice(p.Resources, func(i, j int) bool {
		a, b := p.Resources[i], p.Resources[j]
		if a.Type != b.Type {
			return a.Type == WaitsOn.String() // waits first: they matter most
		}
		if a.LastSeen != b.LastSeen {
			return a.LastSeen > b.LastSeen
		}
		return a.ID < b.ID
	})
	return p
}

// JobOf returns the job a process on node belongs to.
func (g *Graph) JobOf(node string, pid int64) (string, bool) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	h := g.hosts[node]
	if h == nil {
		return "", false
	}
	n := h.procs[pid]
	if n == nil || !n.proc.job.alive() {
		return "", false
	}
	return n.proc.job.entity, true
}

func parseStartTime(ev *event.Event) (uint64, bool) {
	v := ev.Attrs.Get(AttrStartTime)
	if v == "" {
		return 0, false
	}
	st, err := strconv.ParseUint(v, 10, 64)
	return st, err == nil
}

// EdgeFor names the edge an event makes in the graph (docs/events.md, "what
// it adds to the graph"), with namespaced ids, for rules that look at it;
// the type is 0 when the event makes none. A cross-node wait on a peer is not
// included: which rank the peer is depends on the graph.
func EdgeFor(ev *event.Event, qdepthThreshold float64) (t EdgeType, from, to string) {
	h := &host{name: ev.NodeID}
	pid := ev.PID
	if pid == 0 {
		pid, _ = pidEntity(ev.EntityID)
	}
	proc := ""
	if pid > 0 {
		proc = nsID(h, "pid-"+strconv.FormatInt(pid, 10))
	}
	res := nsID(h, ev.EntityID)
	n, _ := ev.Num()
	switch ev.Type {
	case event.ComputeUtil, event.ComputeMem, event.TransportBW, event.StorageIOPS:
		t = Consumes
	case event.TransportDrop:
		t = Consumes
		if n > 0 {
			t = WaitsOn
		}
	case event.StorageQDepth:
		t = Consumes
		if n > qdepthThreshold {
			t = WaitsOn
		}
	case event.IntentRun:
		if proc == "" || ev.JobID == "" {
			return 0, "", ""
		}
		return MemberOf, proc, "job/" + ev.JobID
	case event.ErrorHW, event.ErrorNet, event.TopoLinkDown:
		if clears(ev) {
			return 0, "", ""
		}
		if ev.Type == event.ErrorNet && proc != "" {
			res = proc // a process's network error blocks the process
		}
		return BlockedBy, res, res + "#" + errorKey(ev)
	case event.ProcessState:
		if proc == "" || !IsStuckState(ev.Value) {
			return 0, "", ""
		}
		return WaitsOn, proc, ""
	default:
		return 0, "", ""
	}
	if proc == "" || proc == res {
		return 0, "", ""
	}
	return t, proc, res
}

// ProcessInfo is the little Processes says of one process, found in O(1)
// for callers on the event path.
func (g *Graph) ProcessInfo(node string, pid int64) (jobID, state, rank string, ok bool) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	h := g.hosts[node]
	if h == nil {
		return "", "", "", false
	}
	n := h.procs[pid]
	if n == nil {
		return "", "", "", false
	}
	if n.proc.job.alive() {
		jobID = n.proc.job.entity
	}
	return jobID, n.proc.state, n.proc.rank, true
}

// Snapshot returns events that rebuild what the graph knows now of its live
// processes, their use of resources, their waits and the current faults:
// what an agent sends a hub that just (re)connected. Samples carry the
// edge's last time; values are placeholders, except for faults, which are
// their latest evidence. A wait on a peer goes out with the peer's address
// (as the transport.drop that made it), whether the peer is a process this
// graph knows or a remote rank it only has the address of: the hub links
// the remote ones, and a hub that restarts must get every one of them back.
func (g *Graph) Snapshot() []event.Event {
	g.mu.RLock()
	defer g.mu.RUnlock()
	at := g.clock
	var out []event.Event
	for _, h := range g.hosts {
		for pid, n := range h.procs {
			if n.last < at-g.ttl && !g.usesFaultedHold(n, at, holdAny) {
				continue
			}
			pi := n.proc
			job := ""
			if pi.job.alive() {
				job = pi.job.entity
			}
			base := event.Event{NodeID: h.name, PID: pid, JobID: job, EntityID: n.entity}
			if job != "" {
				ev := base
				ev.TS, ev.Type, ev.Value = n.first, event.IntentRun, "running"
				if pi.rank != "" {
					ev.Attrs = append(ev.Attrs, event.Attr{Key: event.AttrRank, Value: pi.rank})
				}
				if pi.addr != "" {
					ev.Attrs = append(ev.Attrs, event.Attr{Key: event.AttrAddr, Value: pi.addr})
				}
				out = append(out, ev)
			}
			if pi.state != "" {
				ev := base
				ev.TS, ev.Type, ev.Value = pi.stateTS, event.ProcessState, pi.state
				if pi.startTime != 0 {
					ev.Attrs = event.Attrs{{Key: AttrStartTime, Value: strconv.FormatUint(pi.startTime, 10)}}
				}
				out = append(out, ev)
			}
			for _, e := range n.out {
				if (e.typ != Consumes && e.typ != WaitsOn) || !g.edgeAliveHold(e, at, holdAny) {
					continue
				}
				ev := base
				ev.TS = e.last
				switch e.to.kind {
				case KindProcess:
					peer := g.peerAddr(e.to)
					if peer == "" {
						continue
					}
					// The process's own entity: the NIC the wait went
					// through has its own edge, so the peer edge makes no
					// resource of its own.
					ev.Type, ev.Value = event.TransportDrop, "1"
					ev.Attrs = event.Attrs{{Key: event.AttrPeer, Value: peer}}
				case KindResource:
					ev.EntityID = e.to.entity
					ev.Type, ev.Value = snapshotSample(e.to.res.class, e.typ, g.opts.QDepthThreshold)
				default:
					continue
				}
				out = append(out, ev)
			}
		}
	}
	out = g.appendPendingWaits(out, at)
	for en := range g.errs {
		ei := en.err
		if !g.activeHold(ei, at, holdAny) || len(ei.evidence) == 0 {
			continue
		}
		out = append(out, ei.evidence[len(ei.evidence)-1].Clone())
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].TS < out[j].TS })
	return out
}

// peerAddr is an address that leads a hub to process p: the one its rank
// announced, else one its host's agent announced.
func (g *Graph) peerAddr(p *node) string {
	if p.proc.addr != "" {
		return p.proc.addr
	}
	if ips := g.hostAddrs[p.host.name]; len(ips) > 0 {
		return ips[0]
	}
	return ""
}

// appendPendingWaits appends a transport.drop toward the peer for each
// wait on an address no process of this graph has (a rank on another host,
// as an agent sees it), at the wait's first and last time so the hub keeps
// its onset.
func (g *Graph) appendPendingWaits(out []event.Event, at int64) []event.Event {
	for peer, ws := range g.pending {
		for _, w := range ws {
			p := w.from
			if !p.alive() || (w.last < at-g.ttl && !g.usesFaultedHold(p, at, holdAny)) {
				continue
			}
			job := ""
			if p.proc.job.alive() {
				job = p.proc.job.entity
			}
			for _, ts := range [2]int64{w.first, w.last} {
				if ts == w.first && w.first == w.last {
					continue
				}
				out = append(out, event.Event{TS: ts, NodeID: p.host.name, PID: p.proc.pid, JobID: job, EntityID: p.entity,
					Type: event.TransportDrop, Value: "1", Attrs: event.Attrs{{Key: event.AttrPeer, Value: peer}}})
			}
		}
	}
	return out
}

// snapshotSample picks an event type and value that make the same edge.
func snapshotSample(class string, t EdgeType, qdepth float64) (event.Type, string) {
	switch {
	case class == "storage" && t == WaitsOn:
		return event.StorageQDepth, strconv.FormatFloat(qdepth+1, 'f', -1, 64)
	case class == "storage":
		return event.StorageIOPS, "1"
	case t == WaitsOn:
		return event.TransportDrop, "1"
	case class == "nic":
		return event.TransportBW, "1"
	}
	return event.ComputeUtil, "1"
}
