package graph

import (
	"cmp"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/xid"
)

// errInfo is what an error node knows about its fault.
type errInfo struct {
	typ      event.Type
	xid      int
	weight   float64
	action   string // the XID catalog's immediate action, or ""
	mnemonic string
	sympath  bool // NVIDIA calls this code sympathetic to another error
	summary  string
	count    int
	onset    int64   // first event
	lastSeen int64   // latest event saying the fault is present
	cleared  int64   // latest event saying it ended, 0 if none
	downs    []int64 // link-down transitions, for flap detection
	evidence []event.Event
	on       *node // the resource or process it blocks
}

// sticky errors outlive the plain TTL: a broken device or a down link stays
// broken without repeating itself. Network errors (RDMA retries, timeouts)
// are reported while they happen and are not sticky.
func (e *errInfo) sticky() bool { return e.typ != event.ErrorNet && e.weight >= 0.55 }

func (g *Graph) apply(ev *event.Event) {
	g.applied++
	g.sinceGC++
	ts := g.advance(ev.TS)
	h := g.hostFor(ev.NodeID)
	if h.node != nil {
		g.touch(h.node, ts)
	}
	pid := ev.PID
	if pid == 0 {
		if p, ok := pidEntity(ev.EntityID); ok {
			pid = p
		}
	}
	var proc *node
	if pid > 0 {
		proc = g.process(h, pid, ts)
		if st, ok := parseStartTime(ev); ok {
			if old := proc.proc.startTime; old != 0 && old != st {
				// The pid was reused: what we knew was another process.
				g.removeNode(proc)
				proc = g.process(h, pid, ts)
			}
			proc.proc.startTime = st
		}
		if ev.JobID != "" && ev.Type != event.IntentRun {
			g.member(proc, ev.JobID, ts)
		}
	}

	switch ev.Type {
	case event.ComputeUtil, event.ComputeMem, event.TransportBW, event.StorageIOPS:
		if proc == nil {
			g.stats.Ignored++
			return
		}
		r := g.resource(h, ev.EntityID, ts)
		if r != proc {
			g.use(proc, r, ts)
		}
		if IsFlowStall(ev) {
			g.noteStall(proc, ev.Attrs.Get(event.AttrPeer), ts)
		}
	case event.TransportDrop:
		if proc == nil {
			g.stats.Ignored++
			return
		}
		r := g.resource(h, ev.EntityID, ts)
		n, _ := ev.Num()
		if n > 0 {
			if r != proc {
				g.link(proc, r, WaitsOn, ts)
				g.noteWait(r, ev)
			}
			if peer := ev.Attrs.Get(event.AttrPeer); peer != "" {
				g.waitOnPeer(proc, peer, ts)
			}
		} else if r != proc {
			g.use(proc, r, ts)
		}
	case event.StorageQDepth:
		if proc == nil {
			g.stats.Ignored++
			return
		}
		r := g.resource(h, ev.EntityID, ts)
		if r == proc {
			return
		}
		if n, _ := ev.Num(); n > g.opts.QDepthThreshold {
			g.link(proc, r, WaitsOn, ts)
			g.noteWait(r, ev)
		} else {
			g.use(proc, r, ts)
		}
	case event.ProcessState:
		if proc == nil {
			g.stats.Ignored++
			return
		}
		p := proc.proc
		current := ts >= p.stateTS
		if current {
			stuck := IsStuckState(ev.Value)
			switch {
			case stuck && (p.stuckSince == 0 || !IsStuckState(p.state)):
				p.stuckSince = ts
			case !stuck:
				p.stuckSince = 0
			}
			p.state = strings.Clone(ev.Value)
			p.stateTS = ts
		}
		if current && IsStuckState(ev.Value) && p.lastRes.alive() {
			g.link(proc, p.lastRes, WaitsOn, ts)
		}
		if current && IsStuckState(ev.Value) {
			g.stuckWithStalls(proc, ts)
		}
	case event.IntentRun:
		if proc == nil || ev.JobID == "" {
			g.stats.Ignored++
			return
		}
		g.member(proc, ev.JobID, ts)
		if r := ev.Attrs.Get(event.AttrRank); r != "" {
			proc.proc.rank = strings.Clone(r)
		}
		if a := ev.Attrs.Get(event.AttrAddr); a != "" && a != proc.proc.addr {
			if proc.proc.addr != "" {
				g.unindexAddr(proc)
			}
			proc.proc.addr = strings.Clone(a)
			g.indexAddr(proc)
		}
		// The GPUs the rank was given: Consumes edges, so a fault on one
		// reaches the ranks using it before any utilisation is reported.
		// The rank's last-used resource is left alone: a stall still waits
		// on what it last did.
		for gpus := ev.Attrs.Get(event.AttrGPUs); gpus != ""; {
			var idx string
			idx, gpus, _ = strings.Cut(gpus, ",")
			if isIndex(idx) {
				g.link(proc, g.resource(h, "gpu-"+idx, ts), Consumes, ts)
			}
		}
	case event.ErrorNet:
		// A network error a process reports (an NCCL timeout, a
		// retry-exceeded completion) is that process's trouble, often the
		// echo of a fault elsewhere: it blocks the process, not the NIC
		// every other job on the host shares. Without a pid it is the
		// device's.
		if proc != nil {
			g.use(proc, g.resource(h, ev.EntityID, ts), ts)
			g.fault(h, proc, ev, ts)
			return
		}
		g.fault(h, g.resource(h, ev.EntityID, ts), ev, ts)
	case event.ErrorHW, event.TopoLinkDown:
		target := g.resource(h, ev.EntityID, ts)
		if proc != nil && target != proc && target.kind == KindResource {
			g.use(proc, target, ts)
		}
		g.fault(h, target, ev, ts)
	case event.ActionExec:
		// Recorded (counted), no causal edge.
	}
}

// aheadRunLimit consecutive events beyond MaxSkew are a real jump in time
// (a replay across a gap), not one host with a wrong clock.
const aheadRunLimit = 64

// advance moves the clock and returns the timestamp to apply the event at.
func (g *Graph) advance(ts int64) int64 {
	switch {
	case g.clock == 0 || ts <= g.clock:
		g.aheadRun = 0
	case ts-g.clock <= g.skew:
		g.aheadRun = 0
	default:
		g.aheadRun++
		if g.aheadRun < aheadRunLimit {
			g.stats.FutureClamped++
			return g.clock
		}
		g.aheadRun = 0
	}
	if ts > g.clock {
		g.clock = ts
	}
	return ts
}

// IsStuckState reports whether a process.state value means the process is
// not making progress.
func IsStuckState(v string) bool {
	v = strings.TrimSpace(v)
	// EqualFold: the walk asks this of every waiting rank, and ToLower of
	// "D" allocates.
	for _, s := range [...]string{"d", "stalled", "stuck", "hung"} {
		if strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}

func (g *Graph) use(proc, r *node, ts int64) {
	g.link(proc, r, Consumes, ts)
	if ts >= proc.proc.lastUsed {
		proc.proc.lastRes = r
		proc.proc.lastUsed = ts
	}
}

func (g *Graph) member(proc *node, jobID string, ts int64) {
	j := g.job(jobID, ts)
	g.link(proc, j, MemberOf, ts)
	if !proc.proc.job.alive() || proc.proc.job != j {
		proc.proc.job = j
	}
}

const maxWaitEvidence = 4

func (g *Graph) noteWait(r *node, ev *event.Event) {
	ri := r.res
	if ri == nil {
		return
	}
	ri.waitSeen++
	if len(ri.waits) < maxWaitEvidence {
		ri.waits = append(ri.waits, ev.Clone())
		return
	}
	copy(ri.waits, ri.waits[1:])
	ri.waits[len(ri.waits)-1] = ev.Clone()
}

// ---- cross-node edges ----

func splitHost(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return strings.Trim(addr, "[]")
}

func (g *Graph) indexAddr(p *node) {
	a := p.proc.addr
	g.addrs[a] = append(g.addrs[a], p)
	ip := splitHost(a)
	g.ips[ip] = append(g.ips[ip], p)
	g.resolvePending(a, p)
	if ip != a {
		g.resolvePending(ip, p)
	}
}

func dropNode(s []*node, n *node) []*node {
	for i, x := range s {
		if x == n {
			s[i] = s[len(s)-1]
			s[len(s)-1] = nil
			return s[:len(s)-1]
		}
	}
	return s
}

func (g *Graph) unindexAddr(p *node) {
	a := p.proc.addr
	if s := dropNode(g.addrs[a], p); len(s) > 0 {
		g.addrs[a] = s
	} else {
		delete(g.addrs, a)
	}
	ip := splitHost(a)
	if s := dropNode(g.ips[ip], p); len(s) > 0 {
		g.ips[ip] = s
	} else {
		delete(g.ips, ip)
	}
}

// maxPeerFanout bounds the WaitsOn edges one peer address can create when it
// only matches by ip.
const maxPeerFanout = 16

// waitOnPeer links proc to the rank(s) behind peer: the exact ip:port first,
// else the ranks on that ip, the same job preferred.
func (g *Graph) waitOnPeer(proc *node, peer string, ts int64) {
	cands := g.peerCandidates(peer)
	if len(cands) == 0 {
		// The peer's rank may not be announced yet (events from hosts
		// arrive in any order): remember the wait and link it when an
		// intent.run brings that address.
		g.stats.UnresolvedPeer++
		g.addPending(peer, proc, ts)
		return
	}
	g.linkPeers(proc, cands, ts, ts)
}

// peerCandidates returns the ranks behind a peer address: the exact
// ip:port, else the ranks that announced that ip, else the ranks of the
// host whose agent announced it (sorted by pid, so the choice among many
// is stable).
func (g *Graph) peerCandidates(peer string) []*node {
	if c := g.addrs[peer]; len(c) > 0 {
		return c
	}
	ip := splitHost(peer)
	if c := g.ips[ip]; len(c) > 0 {
		return c
	}
	name, ok := g.hostIPs[ip]
	if !ok {
		return nil
	}
	h := g.hosts[name]
	if h == nil || len(h.procs) == 0 {
		return nil
	}
	out := make([]*node, 0, len(h.procs))
	for _, p := range h.procs {
		if p.alive() {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b *node) int { return cmp.Compare(a.proc.pid, b.proc.pid) })
	return out
}

// SetHostAddrs records the addresses host's agent announced (the hub's
// link hello), replacing earlier ones, and links the waits remembered for
// peers on them.
func (g *Graph) SetHostAddrs(host string, addrs []string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, ip := range g.hostAddrs[host] {
		if g.hostIPs[ip] == host {
			delete(g.hostIPs, ip)
		}
	}
	ips := make([]string, 0, len(addrs))
	for _, a := range addrs {
		ip := splitHost(strings.TrimSpace(a))
		if ip == "" {
			continue
		}
		ip = strings.Clone(ip)
		g.hostIPs[ip] = host
		ips = append(ips, ip)
	}
	if len(ips) == 0 {
		delete(g.hostAddrs, host)
		return
	}
	g.hostAddrs[strings.Clone(host)] = ips
	for _, ip := range ips {
		for peer := range g.pendingIPs[ip] {
			if cands := g.peerCandidates(peer); len(cands) > 0 {
				g.linkPending(peer, cands)
			}
		}
	}
}

// linkPeers links proc to the ranks in cands, the same job preferred.
func (g *Graph) linkPeers(proc *node, cands []*node, first, last int64) {
	job := proc.proc.job
	sameJob := 0
	if job.alive() {
		for _, c := range cands {
			if c.proc.job == job && c != proc {
				sameJob++
			}
		}
	}
	n := 0
	for _, c := range cands {
		if c == proc || (sameJob > 0 && c.proc.job != job) {
			continue
		}
		e := g.link(proc, c, WaitsOn, last)
		e.first = min(e.first, first)
		if n++; n >= maxPeerFanout {
			break
		}
	}
}

// pendingWait is a wait on a peer address no known rank has yet.
type pendingWait struct {
	from        *node
	first, last int64
}

// Bounds on remembered unresolved waits.
const (
	maxPendingPerPeer = 64
	maxPending        = 100_000
)

func (g *Graph) addPending(peer string, proc *node, ts int64) {
	ws := g.pending[peer]
	for i := range ws {
		if ws[i].from == proc {
			ws[i].first = min(ws[i].first, ts)
			ws[i].last = max(ws[i].last, ts)
			return
		}
	}
	if len(ws) >= maxPendingPerPeer || g.npending >= maxPending {
		g.stats.PendingDropped++
		return
	}
	if len(ws) == 0 {
		peer = strings.Clone(peer)
		ip := splitHost(peer)
		if g.pendingIPs[ip] == nil {
			g.pendingIPs[ip] = map[string]struct{}{}
		}
		g.pendingIPs[ip][peer] = struct{}{}
	}
	g.pending[peer] = append(ws, pendingWait{from: proc, first: ts, last: ts})
	g.npending++
}

// dropPending forgets the waits remembered for peer.
func (g *Graph) dropPending(peer string) {
	g.npending -= len(g.pending[peer])
	delete(g.pending, peer)
	ip := splitHost(peer)
	if m := g.pendingIPs[ip]; m != nil {
		delete(m, peer)
		if len(m) == 0 {
			delete(g.pendingIPs, ip)
		}
	}
}

// linkPending links the waits remembered for peer to cands and forgets
// them.
func (g *Graph) linkPending(peer string, cands []*node) {
	ws := g.pending[peer]
	g.dropPending(peer)
	for _, w := range ws {
		if w.from.alive() {
			g.linkPeers(w.from, cands, w.first, w.last)
		}
	}
}

// resolvePending links the waits remembered for addr to p, now that p
// announced it.
func (g *Graph) resolvePending(addr string, p *node) {
	ws, ok := g.pending[addr]
	if !ok {
		return
	}
	g.dropPending(addr)
	for _, w := range ws {
		if w.from.alive() && w.from != p {
			g.linkPeers(w.from, []*node{p}, w.first, w.last)
		}
	}
}

// settlePending resolves remembered waits by ip for peers whose exact
// address never appeared (ephemeral ports), and forgets waits older than
// the TTL.
func (g *Graph) settlePending(now int64) {
	for peer, ws := range g.pending {
		if cands := g.peerCandidates(peer); len(cands) > 0 {
			g.linkPending(peer, cands)
			continue
		}
		keep := ws[:0]
		for _, w := range ws {
			if w.from.alive() && w.last >= now-g.ttl {
				keep = append(keep, w)
			}
		}
		if len(keep) == 0 {
			g.dropPending(peer)
			continue
		}
		g.npending -= len(ws) - len(keep)
		g.pending[peer] = keep
	}
}

// ---- faults ----

// errorKey names the fault an event reports, so repeats fold into one node.
func errorKey(ev *event.Event) string {
	if x := ev.Attrs.Get(event.AttrXID); x != "" {
		return "xid-" + x
	}
	if ev.Type == event.TopoLinkDown {
		return "link-down"
	}
	if r := ev.Attrs.Get(event.AttrReason); r != "" {
		return string(ev.Type) + ":" + r
	}
	return string(ev.Type)
}

// clears reports whether the event says a fault has ended.
func clears(ev *event.Event) bool {
	if ev.Type == event.TopoLinkDown {
		switch strings.ToLower(strings.TrimSpace(ev.Value)) {
		case "0", "up", "false", "cleared":
			return true
		}
		return false
	}
	switch strings.ToLower(ev.Attrs.Get("cleared")) {
	case "true", "1", "yes":
		return true
	}
	return strings.EqualFold(ev.Attrs.Get("state"), "cleared")
}

func (g *Graph) fault(h *host, target *node, ev *event.Event, ts int64) {
	key := errorKey(ev)
	var en, oldest *node
	faults := 0
	for _, e := range target.out {
		if e.typ != BlockedBy {
			continue
		}
		faults++
		if e.to.entity == key {
			en = e.to
		}
		if oldest == nil || e.to.last < oldest.last {
			oldest = e.to
		}
	}
	clear := clears(ev)
	if clear && ev.Type == event.TopoLinkDown {
		// The link is back: that also ends the network errors it logged
		// while it was down.
		for _, e := range target.out {
			if e.typ == BlockedBy && e.to != en && e.to.err.typ == event.ErrorNet && e.to.err.lastSeen <= ts && ts > e.to.err.cleared {
				e.to.err.cleared = ts
			}
		}
	}
	if en == nil {
		if clear {
			return // nothing to clear
		}
		if faults >= g.opts.MaxErrorsPerEntity {
			g.removeNode(oldest)
			g.stats.EvictedNodes++
		}
		en = g.newNode(target.id+"#"+key, KindError, h, strings.Clone(key))
		en.err = newErrInfo(ev, target, ts)
		g.errs[en] = struct{}{}
	}
	ei := en.err
	g.touch(en, ts)
	g.link(target, en, BlockedBy, ts)
	ei.addEvidence(ev, g.opts.MaxEvidence)
	if clear {
		if ts > ei.cleared {
			ei.cleared = ts
		}
		return
	}
	ei.count++
	// A down that follows an up (or the first one) is a transition; a
	// probe re-reporting "still down" is not a flap.
	transition := ei.count == 1 || ei.cleared >= ei.lastSeen
	if ts < ei.onset {
		ei.onset = ts
	}
	if ts > ei.lastSeen {
		ei.lastSeen = ts
	}
	if ev.Type == event.TopoLinkDown && transition {
		ei.downs = append(ei.downs, ts)
		if cut := ts - g.opts.FlapWindow.Milliseconds(); len(ei.downs) > 1 {
			i := 0
			for i < len(ei.downs) && ei.downs[i] < cut {
				i++
			}
			ei.downs = append(ei.downs[:0], ei.downs[i:]...)
		}
	}
	// A later message can carry a stronger verdict (XID 154's recovery
	// action, a severity attr).
	if w := eventWeight(ev); w > ei.weight {
		ei.weight = w
	}
}

func newErrInfo(ev *event.Event, on *node, ts int64) *errInfo {
	ei := &errInfo{typ: ev.Type, onset: ts, lastSeen: ts, on: on, weight: eventWeight(ev)}
	if x, err := strconv.Atoi(ev.Attrs.Get(event.AttrXID)); err == nil {
		ei.xid = x
		if entry, ok := xid.Lookup(x); ok {
			ei.action = entry.ImmediateAction
			ei.mnemonic = entry.Mnemonic
			ei.sympath = entry.Sympathetic()
		}
	}
	ei.summary = summarize(ev, ei)
	return ei
}

func summarize(ev *event.Event, ei *errInfo) string {
	msg := strings.TrimSpace(strings.Clone(ev.Value))
	switch {
	case ei.xid > 0:
		if entry, ok := xid.Lookup(ei.xid); ok && (msg == "" || isNumber(msg)) {
			msg = entry.Description
		}
		if !strings.HasPrefix(strings.ToLower(msg), "xid") {
			msg = "Xid " + strconv.Itoa(ei.xid) + ": " + msg
		}
	case ev.Type == event.TopoLinkDown:
		msg = "link down"
		if r := ev.Attrs.Get(event.AttrReason); r != "" {
			msg += ": " + strings.Clone(r)
		}
	case msg == "" || isNumber(msg):
		msg = string(ev.Type)
		if r := ev.Attrs.Get(event.AttrReason); r != "" {
			msg += ": " + strings.Clone(r)
		}
	}
	return msg
}

func isNumber(s string) bool {
	_, err := strconv.ParseFloat(s, 64)
	return err == nil
}

// eventWeight is how strongly one fault event explains a stall, in [0,1].
func eventWeight(ev *event.Event) float64 {
	if sev := ev.Attrs.Get(event.AttrSeverity); sev != "" {
		if w, ok := severityWeight(sev); ok {
			return w
		}
	}
	if x, err := strconv.Atoi(ev.Attrs.Get(event.AttrXID)); err == nil {
		if x == 154 {
			if w, ok := xid.RecoveryActionWeight(ev.Value); ok {
				return w
			}
		}
		if entry, ok := xid.Lookup(x); ok {
			return entry.Weight()
		}
		return 0.5 // an XID the catalog does not know
	}
	switch ev.Type {
	case event.TopoLinkDown:
		return 0.8 // a down link stops every collective that crosses it
	case event.ErrorNet:
		return 0.7
	default:
		return 0.75 // a hardware error that is not an XID: ECC, AER, disk I/O
	}
}

func severityWeight(s string) (float64, bool) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "fatal", "critical", "emergency", "alert":
		return 0.95, true
	case "error", "err", "major":
		return 0.75, true
	case "warning", "warn", "minor":
		return 0.4, true
	case "info", "notice", "debug", "informational":
		return 0.1, true
	}
	return 0, false
}

func (e *errInfo) addEvidence(ev *event.Event, limit int) {
	if len(e.evidence) < limit {
		e.evidence = append(e.evidence, ev.Clone())
		return
	}
	if limit < 2 {
		return // only the onset fits
	}
	// Keep the first event (the onset) and slide the rest.
	copy(e.evidence[1:], e.evidence[2:])
	e.evidence[len(e.evidence)-1] = ev.Clone()
}

// Liveness of faults has three readings, chosen by a hold argument:
//
//   - holdNone: strictly current at the time asked;
//   - a stall start (ms): also a fault that was current when the target's
//     stall began, began no later than stallGrace after it, and has not
//     cleared: a stall that goes on keeps its cause, even one that reported
//     once (an XID 94 that killed a rank) or a network error;
//   - holdAny: any fault not cleared, for expiry, so the edges a stall
//     query may need are not swept away before the error itself.
const (
	holdNone   int64 = 0
	holdAny    int64 = -1
	stallGrace int64 = 60_000
)

// activeHold reports whether the fault is current at at (ms), read as hold
// says.
func (g *Graph) activeHold(ei *errInfo, at, hold int64) bool {
	if ei.onset > at {
		return false
	}
	cleared := ei.cleared >= ei.lastSeen && ei.cleared <= at
	if cleared {
		// A link that went down FlapCount times recently is flapping: it
		// stays a cause for FlapHold after it came back.
		return g.flapping(ei, at)
	}
	ttl := g.ttl
	if ei.sticky() {
		ttl = g.etl
	}
	switch {
	case ei.lastSeen >= at-ttl:
		return true
	case hold == holdAny:
		return ei.lastSeen >= at-g.etl
	case hold > 0:
		return ei.onset <= hold+stallGrace && ei.lastSeen >= hold-g.ttl
	}
	return false
}

func (g *Graph) flapping(ei *errInfo, at int64) bool {
	if len(ei.downs) < g.opts.FlapCount || at-ei.cleared > g.opts.FlapHold.Milliseconds() {
		return false
	}
	cut := at - g.opts.FlapWindow.Milliseconds()
	n := 0
	for _, d := range ei.downs {
		if d >= cut && d <= at {
			n++
		}
	}
	return n >= g.opts.FlapCount
}

// ---- expiry ----

// faulted reports whether resource n has a fault current at ts: edges into
// it outlive the TTL while it does, so a GPU that went silent after falling
// off the bus stays linked to the ranks that used it.
func (g *Graph) faulted(n *node, at int64) bool { return g.faultedHold(n, at, holdNone) }

func (g *Graph) faultedHold(n *node, at, hold int64) bool {
	for _, e := range n.out {
		if e.typ == BlockedBy && g.activeHold(e.to.err, at, hold) {
			return true
		}
	}
	return false
}

// edgeAlive reports whether e holds at time at.
func (g *Graph) edgeAlive(e *edge, at int64) bool { return g.edgeAliveHold(e, at, holdNone) }

func (g *Graph) edgeAliveHold(e *edge, at, hold int64) bool {
	if e.first > at {
		return false
	}
	if e.typ == MemberOf && e.from.proc.job != e.to {
		return false // the pid has since joined another job
	}
	if e.last >= at-g.ttl {
		return true
	}
	switch e.typ {
	case BlockedBy:
		return g.activeHold(e.to.err, at, hold)
	case MemberOf:
		// Membership lasts as long as the process is heard from.
		return e.from.last >= at-g.ttl || g.usesFaultedHold(e.from, at, hold)
	default:
		// A wait on a broken device, or on a rank whose device broke,
		// lasts as long as the fault: hung ranks stop reporting.
		if e.to.kind == KindProcess {
			return g.usesFaultedHold(e.to, at, hold)
		}
		return g.faultedHold(e.to, at, hold)
	}
}

func (g *Graph) usesFaulted(p *node, at int64) bool { return g.usesFaultedHold(p, at, holdNone) }

func (g *Graph) usesFaultedHold(p *node, at, hold int64) bool {
	for _, e := range p.out {
		if (e.typ == Consumes || e.typ == WaitsOn) && e.to.kind == KindResource && g.faultedHold(e.to, at, hold) {
			return true
		}
	}
	return false
}

// freshRun fresh entries in a row end an expiry walk.
const freshRun = 256

func (g *Graph) expire(now int64) (nodes, edges int) {
	g.settlePending(now)
	// Edges, oldest first; one that must live is moved to the front. The
	// walk visits each edge at most once.
	// Arrival order is not timestamp order: skip over a bounded run of
	// fresh entries before deciding the rest is fresh too.
	fresh := 0
	for e, left := g.edges.tail, g.edges.len; e != nil && left > 0 && fresh < freshRun; left-- {
		prev := e.prev
		if e.last >= now-g.ttl {
			fresh++
		} else if fresh = 0; g.edgeAliveHold(e, now, holdAny) {
			g.edges.moveToFront(e)
		} else {
			g.removeEdge(e)
			edges++
		}
		e = prev
	}
	// Errors by their own TTL.
	for en := range g.errs {
		ei := en.err
		// Uncleared faults stay in memory for the error TTL even when no
		// longer current, so a long stall can still name its cause.
		ttl := g.ttl
		if ei.cleared < ei.lastSeen {
			ttl = g.etl
		}
		if en.last < now-ttl {
			g.removeNode(en)
			nodes++
		}
	}
	// Nodes, oldest first; a node that still has edges is kept.
	fresh = 0
	for n, left := g.nodes.tail, g.nodes.len; n != nil && left > 0 && fresh < freshRun; left-- {
		prev := n.prev
		if n.last >= now-g.ttl {
			fresh++
		} else if fresh = 0; len(n.out) == 0 && len(n.in) == 0 {
			g.removeNode(n)
			nodes++
		} else {
			g.nodes.moveToFront(n)
		}
		n = prev
	}
	g.stats.ExpiredNodes += uint64(nodes)
	g.stats.ExpiredEdges += uint64(edges)
	return nodes, edges
}

// isIndex: a GPU index, digits only (not a UUID).
func isIndex(s string) bool {
	if s == "" || len(s) > 4 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
