// Package graphsvc is Ark's hub: the global causal graph of every host, the
// host state the agent link reports, OTLP/HTTP ingest and the HTTP API
// (ps, why, diag, graph, fix, events) that the CLI, Grafana and the remediator
// read (docs/README.md, docs/events.md). The agent link itself lives in
// graphsvc/agents and meets the hub through Ingest, AgentConnected,
// AgentDisconnected and the Dispatcher interface.
package graphsvc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/graph"
	"github.com/ark-gpu/ark/internal/auth"
	"github.com/ark-gpu/ark/link"
)

// Dispatcher sends a command to the agent of one host and waits for its
// result; the agent link server implements it.
type Dispatcher interface {
	// Dispatch sends cmd to node's agent and returns its result. It returns
	// an error wrapping ErrNotConnected when node has no live link, and the
	// context's error when ctx ends first.
	Dispatch(ctx context.Context, node string, cmd link.Command) (link.Result, error)
	// Agents lists the agents the link knows, connected or not.
	Agents() []AgentInfo
}

// AgentInfo is what the agent link knows of one host's agent.
type AgentInfo struct {
	Node      string    `json:"node"`
	Addrs     []string  `json:"addrs,omitempty"`
	Connected bool      `json:"connected"`
	Since     time.Time `json:"since"`     // when the current (or last) link came up
	LastSeen  time.Time `json:"last_seen"` // the last frame received
}

// ErrNotConnected is what a Dispatcher wraps when the node has no live link.
var ErrNotConnected = errors.New("agent not connected")

// Options configure a Hub. Zero fields take the defaults.
type Options struct {
	// Graph bounds and tunes the global graph; its MaxNodes and MaxEdges
	// bound the hub's memory.
	Graph graph.Options
	// Token is the shared bearer token: POST /api/v1/fix needs it, and
	// without Auth it also authenticates OTLP ingest. Empty refuses every
	// such call.
	Token string
	// Auth authenticates writes into the graph (OTLP ingest) instead of
	// Token; an identity bound to a node may only send that node's events.
	Auth auth.Authenticator
	// Logger defaults to discarding.
	Logger *slog.Logger
	// Registerer receives the hub's metrics; Gatherer serves /metrics. When
	// both are nil the hub uses a registry of its own; when only Registerer
	// is set and it is also a Gatherer (a *prometheus.Registry), it serves
	// /metrics too.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	// Dispatcher reaches the agents for fix; nil answers fix with 503.
	Dispatcher Dispatcher
	// Now is the wall clock for host state (default time.Now).
	Now func() time.Time
	// FixTimeout bounds one dispatched command (default 30s).
	FixTimeout time.Duration
	// RecentEvents is the size of the ring GET /api/v1/events reads
	// (default 10,000).
	RecentEvents int
	// StaleAfter marks a host without a link stale when nothing arrived from
	// it for that long, e.g. a host that only sends over OTLP (default 5m).
	// A host whose agent link is down is stale at once.
	StaleAfter time.Duration
	// SettleEvery is how often Run settles cross-node waits on peers whose
	// exact address never appeared (default 5s).
	SettleEvery time.Duration
	// MaxBodyBytes bounds an OTLP request body, before and after gzip
	// (default 16 MiB).
	MaxBodyBytes int64
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.FixTimeout <= 0 {
		o.FixTimeout = 30 * time.Second
	}
	if o.RecentEvents <= 0 {
		o.RecentEvents = 10_000
	}
	if o.StaleAfter <= 0 {
		o.StaleAfter = 5 * time.Minute
	}
	if o.SettleEvery <= 0 {
		o.SettleEvery = 5 * time.Second
	}
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = 16 << 20
	}
	if o.Auth == nil {
		o.Auth = auth.Token(o.Token)
	}
	return o
}

// Hub is the global causal graph plus what the hub knows of each host. It
// is safe for concurrent use: the graph has one writer lock and many
// readers, host state and the event ring have their own locks.
type Hub struct {
	opts     Options
	g        *graph.Graph
	log      *slog.Logger
	gatherer prometheus.Gatherer
	m        *metrics
	mux      *http.ServeMux
	ready    atomic.Bool

	// ingestMu orders whole batches into the graph, so one host's batch is
	// applied and recorded together.
	ingestMu sync.Mutex
	recent   *ring

	mu    sync.Mutex
	hosts map[string]*hostState
	// unlinked holds the hosts without a live agent link, the only ones
	// that can be stale: why and ps check these, not every host.
	unlinked map[string]*hostState
}

// hostState is the hub's view of one host.
type hostState struct {
	addrs     []string
	viaLink   bool // an agent link has connected at least once
	connected bool
	since     time.Time
	lastSeen  time.Time
	events    uint64
}

// New returns a Hub with an empty graph, its metrics registered.
func New(opts Options) (*Hub, error) {
	o := opts.withDefaults()
	reg, gat := o.Registerer, o.Gatherer
	if reg == nil && gat == nil {
		r := prometheus.NewRegistry()
		reg, gat = r, r
	}
	if gat == nil {
		if g, ok := reg.(prometheus.Gatherer); ok {
			gat = g
		}
	}
	h := &Hub{
		opts:     o,
		g:        graph.New(o.Graph),
		log:      o.Logger,
		gatherer: gat,
		recent:   newRing(o.RecentEvents),
		hosts:    make(map[string]*hostState),
		unlinked: make(map[string]*hostState),
	}
	m := newMetrics(h)
	if reg != nil {
		if err := m.register(reg); err != nil {
			return nil, fmt.Errorf("registering hub metrics: %w", err)
		}
	}
	h.m = m
	h.mux = h.routes()
	return h, nil
}

// Graph returns the global graph, for in-process readers such as the
// remediator. Writers go through Ingest.
func (h *Hub) Graph() *graph.Graph { return h.g }

// Ingest applies one batch of events from node's agent link. Events without
// a node_id, or with another one, are attributed to node: an agent speaks
// for its own host only. Ingest may modify evs in place and does not keep
// it after it returns.
func (h *Hub) Ingest(node string, evs []event.Event) {
	if node == "" {
		h.m.dropped(sourceLink, event.ReasonMissingField, len(evs))
		return
	}
	kept := evs[:0]
	for i := range evs {
		ev := &evs[i]
		if reason, ok := check(ev); !ok {
			h.m.dropped(sourceLink, reason, 1)
			continue
		}
		ev.NodeID = node
		kept = append(kept, *ev)
	}
	h.apply(kept, sourceLink)
}

// check reports whether ev has what the graph needs, or the reason (one of
// event.Reasons) it does not.
func check(ev *event.Event) (string, bool) {
	switch {
	case ev.Type == "":
		return event.ReasonMissingField, false
	case !ev.Type.Valid():
		return event.ReasonUnknownType, false
	case ev.TS <= 0:
		return event.ReasonMissingField, false
	case ev.EntityID == "":
		return event.ReasonMissingField, false
	}
	ev.TS = event.NormalizeTS(ev.TS)
	return "", true
}

// apply puts a checked batch into the graph, the ring and the counters.
func (h *Hub) apply(evs []event.Event, source string) {
	if len(evs) == 0 {
		return
	}
	h.ingestMu.Lock()
	h.g.ApplyBatch(evs)
	h.recent.add(evs)
	h.ingestMu.Unlock()
	h.m.received.WithLabelValues(source).Add(float64(len(evs)))

	now := h.opts.Now()
	h.mu.Lock()
	node := ""
	var st *hostState
	for i := range evs {
		if evs[i].NodeID != node || st == nil {
			node = evs[i].NodeID
			st = h.host(node)
		}
		st.events++
		st.lastSeen = now
	}
	h.mu.Unlock()
}

// host returns the state of node, creating it. h.mu must be held.
func (h *Hub) host(node string) *hostState {
	st := h.hosts[node]
	if st == nil {
		st = &hostState{}
		node = strings.Clone(node)
		h.hosts[node] = st
		h.unlinked[node] = st
	}
	return st
}

// AgentConnected records that node's agent link came up, with the
// addresses the host announced.
func (h *Hub) AgentConnected(node string, addrs []string) {
	now := h.opts.Now()
	h.mu.Lock()
	st := h.host(node)
	st.viaLink, st.connected = true, true
	delete(h.unlinked, node)
	st.addrs = slices.Clone(addrs)
	st.since, st.lastSeen = now, now
	h.mu.Unlock()
	// A peer on one of these addresses is one of this host's ranks, even
	// when the ranks announced no address of their own.
	h.g.SetHostAddrs(node, addrs)
	h.log.Debug("agent connected", "node", node, "addrs", addrs)
}

// AgentDisconnected records that node's agent link went down. The host and
// its part of the graph stay, marked stale, until the graph's TTL ends them.
func (h *Hub) AgentDisconnected(node string) {
	h.mu.Lock()
	if st := h.hosts[node]; st != nil {
		st.connected = false
		h.unlinked[strings.Clone(node)] = st
	}
	h.mu.Unlock()
	h.log.Debug("agent disconnected", "node", node)
}

// staleLocked reports whether the hub cannot currently trust what it knows
// of a host. h.mu must be held.
func (h *Hub) staleLocked(st *hostState, now time.Time) bool {
	if st == nil || st.connected {
		return false
	}
	return st.viaLink || now.Sub(st.lastSeen) > h.opts.StaleAfter
}

// StaleHosts returns the stale hosts among nodes (all stale hosts when
// nodes is nil), sorted.
func (h *Hub) StaleHosts(nodes map[string]bool) []string {
	now := h.opts.Now()
	out := []string{}
	h.mu.Lock()
	if nodes != nil && len(nodes) < len(h.unlinked) {
		// A few hosts asked about in a partition of thousands.
		for name := range nodes {
			if st, ok := h.unlinked[name]; ok && h.staleLocked(st, now) {
				out = append(out, name)
			}
		}
	} else {
		for name, st := range h.unlinked {
			if nodes != nil && !nodes[name] {
				continue
			}
			if h.staleLocked(st, now) {
				out = append(out, name)
			}
		}
	}
	h.mu.Unlock()
	sort.Strings(out)
	return out
}

// Agents lists every host the hub knows, merged with what the Dispatcher
// says of its links, sorted by node.
func (h *Hub) Agents() []HostInfo {
	var links map[string]AgentInfo
	if h.opts.Dispatcher != nil {
		as := h.opts.Dispatcher.Agents()
		links = make(map[string]AgentInfo, len(as))
		for _, a := range as {
			links[a.Node] = a
		}
	}
	now := h.opts.Now()
	h.mu.Lock()
	out := make([]HostInfo, 0, len(h.hosts))
	for name, st := range h.hosts {
		hi := HostInfo{AgentInfo: AgentInfo{Node: name, Addrs: slices.Clone(st.addrs), Connected: st.connected,
			Since: st.since, LastSeen: st.lastSeen}, Stale: h.staleLocked(st, now), Events: st.events}
		if a, ok := links[name]; ok {
			hi.Connected, hi.Since, hi.Addrs = a.Connected, a.Since, a.Addrs
			if a.LastSeen.After(hi.LastSeen) {
				hi.LastSeen = a.LastSeen
			}
		}
		out = append(out, hi)
	}
	h.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

// HostInfo is one host in GET /api/v1/agents.
type HostInfo struct {
	AgentInfo
	Stale  bool   `json:"stale"`
	Events uint64 `json:"events"` // events received from the host
}

// agentCounts returns how many hosts are connected and how many stale.
func (h *Hub) agentCounts() (connected, stale int) {
	now := h.opts.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, st := range h.unlinked {
		if h.staleLocked(st, now) {
			stale++
		}
	}
	return len(h.hosts) - len(h.unlinked), stale
}

// Run keeps the graph settled until ctx ends; the hub reports ready while
// it runs.
func (h *Hub) Run(ctx context.Context) error {
	h.ready.Store(true)
	defer h.ready.Store(false)
	t := time.NewTicker(h.opts.SettleEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			h.g.Settle()
		}
	}
}

// Handle mounts another handler on the hub's mux, e.g. the agent link
// server at link.Path.
func (h *Hub) Handle(pattern string, handler http.Handler) { h.mux.Handle(pattern, handler) }

// Handler returns the hub's HTTP handler: /api/v1, /v1/traces, /v1/logs,
// /metrics, /healthz, /readyz and whatever was mounted with Handle.
func (h *Hub) Handler() http.Handler { return h.mux }

// shutdownGrace bounds how long ListenAndServe waits for requests in flight.
const shutdownGrace = 10 * time.Second

// ListenAndServe serves the hub on addr, with TLS when certFile and keyFile
// are both set, and runs it (Run) until ctx ends; then it shuts the server
// down gracefully and returns nil.
func (h *Hub) ListenAndServe(ctx context.Context, addr, certFile, keyFile string) error {
	if (certFile == "") != (keyFile == "") {
		return errTLSPair
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	return h.Serve(ctx, ln, certFile, keyFile)
}

var errTLSPair = errors.New("TLS needs both a certificate and a key file")

// Serve is ListenAndServe on a listener the caller opened; it closes ln.
func (h *Hub) Serve(ctx context.Context, ln net.Listener, certFile, keyFile string) error {
	if (certFile == "") != (keyFile == "") {
		_ = ln.Close()
		return errTLSPair
	}
	addr := ln.Addr().String()
	srv := &http.Server{
		Handler:           h.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(h.log.Handler(), slog.LevelWarn),
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	wg.Go(func() { _ = h.Run(runCtx) }) // Run ends only with its context
	serveErr := make(chan error, 1)
	go func() {
		if certFile != "" {
			serveErr <- srv.ServeTLS(ln, certFile, keyFile)
			return
		}
		serveErr <- srv.Serve(ln)
	}()
	h.log.Info("hub listening", "addr", addr, "tls", certFile != "")
	select {
	case err := <-serveErr:
		stop()
		wg.Wait()
		return fmt.Errorf("serving the hub on %s: %w", addr, err)
	case <-ctx.Done():
	}
	stop()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		h.log.Warn("hub shutdown", "err", err)
	}
	if err := <-serveErr; err != nil && !errors.Is(err, http.ErrServerClosed) {
		h.log.Warn("hub server", "err", err)
	}
	wg.Wait()
	return nil
}
