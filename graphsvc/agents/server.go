// Package agents is the hub's side of the agent↔hub link (link package,
// docs/README.md): it authenticates agents, takes their hello, applies
// their snapshot and event batches through a callback with each event
// pinned to the agent's own host, acknowledges them, and dispatches
// commands to an agent and waits for the result.
package agents

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"runtime/debug"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/internal/auth"
	"github.com/ark-gpu/ark/link"
)

// anyone accepts every agent (Options.Insecure).
type anyone struct{}

func (anyone) Authenticate(*http.Request) (auth.Identity, error) {
	return auth.Identity{Name: "anonymous"}, nil
}

// Errors of Dispatch.
var (
	// ErrNoAgent: the node has no live link, or it closed before the
	// agent answered (the command may then have run).
	ErrNoAgent = errors.New("no agent connected for this node")
	// ErrTimeout: the context ended before the agent answered; it is
	// wrapped together with the context's error.
	ErrTimeout = errors.New("the agent did not answer in time")
)

// Options configures a Server. One of Token, Auth or Insecure is required.
type Options struct {
	// Token is the bearer token agents present; it speaks for any node.
	Token string
	// Auth, when set, authenticates agents instead of Token. An identity
	// bound to a node (auth.Identity.Node) may only say hello as that node.
	Auth auth.Authenticator
	// Insecure accepts agents without any token (tests, trusted networks).
	Insecure bool
	// Logger defaults to discarding.
	Logger *slog.Logger
	// Registerer gets the link's metrics (nil: not registered).
	Registerer prometheus.Registerer
	// OnEvents applies a snapshot or events frame; every event's NodeID is
	// node. It is called from the server's few workers, one frame of an
	// agent at a time, and the batch is acknowledged when it returns. It
	// may modify evs but not keep the slice (the events' strings and
	// attributes are its own).
	OnEvents func(node string, evs []event.Event)
	// OnConnect and OnDisconnect report a node's link coming up and going
	// down. A connection that replaces an older one of the same node
	// reports only its own connect.
	OnConnect    func(node string, addrs []string)
	OnDisconnect func(node string)
	// HelloTimeout bounds the wait for hello (default 10s).
	HelloTimeout time.Duration
	// IdleTimeout closes a link with no frame or ping for that long
	// (default 2m; agents ping every 30s).
	IdleTimeout time.Duration
	// WriteTimeout bounds each write to an agent (default 10s).
	WriteTimeout time.Duration
	// CommandTimeout bounds Dispatch when its context has no deadline
	// (default 1m).
	CommandTimeout time.Duration
	// Forget drops a disconnected agent from Agents after that long
	// (default 1h).
	Forget time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// AgentInfo is what the link knows of one node's agent.
type AgentInfo struct {
	Node      string    `json:"node"`
	Addrs     []string  `json:"addrs,omitempty"`
	Version   string    `json:"version,omitempty"`
	Identity  string    `json:"identity,omitempty"` // who the authenticator said connected
	Connected bool      `json:"connected"`
	Since     time.Time `json:"since"`     // when the current (or last) link came up
	LastSeen  time.Time `json:"last_seen"` // the last frame or ping received
}

// Server is the hub's agent link endpoint; mount it at link.Path.
type Server struct {
	opts Options
	auth auth.Authenticator
	log  *slog.Logger
	m    *metrics

	ctx     context.Context // ends at Close
	cancel  context.CancelFunc
	wg      sync.WaitGroup // sessions and their closers
	work    chan func()    // frames to decode and apply, for the workers
	workers sync.WaitGroup

	mu     sync.Mutex
	closed bool
	agents map[string]*agent
}

// agent is one node's record; sess is nil while it is disconnected.
type agent struct {
	info AgentInfo
	sess *session
}

// NewServer returns a Server.
func NewServer(opts Options) (*Server, error) {
	var authn auth.Authenticator
	switch {
	case opts.Auth != nil:
		authn = opts.Auth
	case opts.Token != "":
		authn = auth.Token(opts.Token)
	case opts.Insecure:
		authn = anyone{}
	default:
		return nil, errors.New("agents: a token, an authenticator or Insecure is required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.HelloTimeout <= 0 {
		opts.HelloTimeout = 10 * time.Second
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = 2 * time.Minute
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = 10 * time.Second
	}
	if opts.CommandTimeout <= 0 {
		opts.CommandTimeout = time.Minute
	}
	if opts.Forget <= 0 {
		opts.Forget = time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.OnEvents == nil {
		opts.OnEvents = func(string, []event.Event) {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{opts: opts, auth: authn, log: opts.Logger, ctx: ctx, cancel: cancel, agents: map[string]*agent{},
		work: make(chan func())}
	for range max(4, 2*runtime.GOMAXPROCS(0)) {
		s.workers.Go(s.worker)
	}
	s.m = newMetrics(s)
	if opts.Registerer != nil {
		if err := s.m.register(opts.Registerer); err != nil {
			cancel()
			return nil, fmt.Errorf("agents: registering metrics: %w", err)
		}
	}
	return s, nil
}

// Close closes every agent link, refuses new ones and waits for the
// sessions to end.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	var open []*session
	for _, a := range s.agents {
		if a.sess != nil {
			open = append(open, a.sess)
		}
	}
	s.mu.Unlock()
	for _, ss := range open {
		ss.stop(websocket.StatusGoingAway, "hub shutting down")
	}
	// Give the close handshakes a moment, then cut what is left (links
	// still in hello, agents that do not answer the close).
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	t := time.NewTimer(closeGrace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
	s.cancel()
	<-done
	s.workers.Wait()
	return nil
}

// closeGrace is how long Close waits for agents to answer the close.
const closeGrace = 2 * time.Second

// Agents lists the agents the link knows, connected or not, by node.
func (s *Server) Agents() []AgentInfo {
	now := s.opts.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]AgentInfo, 0, len(s.agents))
	for node, a := range s.agents {
		if a.sess == nil && now.Sub(a.info.LastSeen) > s.opts.Forget {
			delete(s.agents, node)
			continue
		}
		out = append(out, s.infoLocked(a))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

func (s *Server) infoLocked(a *agent) AgentInfo {
	info := a.info
	info.Addrs = slices.Clone(info.Addrs)
	info.Connected = a.sess != nil
	if a.sess != nil {
		info.LastSeen = a.sess.lastSeen()
	}
	return info
}

// Dispatch sends cmd to node's agent and waits for its result, until ctx
// ends (or CommandTimeout when ctx has no deadline). A cmd without an ID
// gets one.
func (s *Server) Dispatch(ctx context.Context, node string, cmd link.Command) (link.Result, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.opts.CommandTimeout)
		defer cancel()
	}
	if cmd.ID == "" {
		cmd.ID = newID()
	}
	s.mu.Lock()
	var ss *session
	if a := s.agents[node]; a != nil {
		ss = a.sess
	}
	s.mu.Unlock()
	if ss == nil {
		s.m.commands.WithLabelValues("no_agent").Inc()
		return link.Result{}, fmt.Errorf("%w: %s", ErrNoAgent, node)
	}
	res, err := ss.dispatch(ctx, cmd)
	switch {
	case errors.Is(err, ErrNoAgent):
		s.m.commands.WithLabelValues("no_agent").Inc()
	case errors.Is(err, ErrTimeout):
		s.m.commands.WithLabelValues("timeout").Inc()
	case err != nil:
		s.m.commands.WithLabelValues("error").Inc()
	default:
		s.m.commands.WithLabelValues(resultLabel(res.Result)).Inc()
	}
	return res, err
}

// resultLabel bounds the label's values to the results the link defines.
func resultLabel(r string) string {
	switch r {
	case "success", "partial_failure", "failure", "dry_run":
		return r
	}
	return "other"
}

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// worker runs frames handed over by sessions until the server closes.
func (s *Server) worker() {
	for {
		select {
		case f := <-s.work:
			f() // f recovers its own panics (session.run)
			// The link f woke runs next on this P and inherits its time
			// slice, and the next link handed to this worker would too: a
			// chain of hand-offs could hold the P for a whole 10 ms slice
			// while a why query waits in the run queue. Yield after each
			// frame (bench-hub: why p99 14–20 ms with, 21 ms without).
			runtime.Gosched()
		case <-s.ctx.Done():
			return
		}
	}
}

// offload hands f to a worker and waits until f signals done; false when
// the server closed first (f did not run). Thousands of links then share a
// few deep stacks instead of each growing its own. f and done are the
// session's own, reused for every frame.
func (s *Server) offload(f func(), done <-chan struct{}) bool {
	select {
	case s.work <- f:
	case <-s.ctx.Done():
		return false
	}
	<-done
	return true
}

// smallBuffers hands the websocket library a hijacked connection with
// small buffers: net/http's are 4 KiB each way, 80 MB at 10,000 links,
// while link frames are read straight into their own buffer and the hub
// writes only acks and commands.
type smallBuffers struct {
	http.ResponseWriter
	conn *net.Conn // set by Hijack: the raw connection, for a hard close
}

const (
	linkReadBuffer  = 1024
	linkWriteBuffer = 512
)

func (w smallBuffers) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	if w.conn != nil {
		*w.conn = conn
	}
	if err := brw.Flush(); err != nil {
		_ = conn.Close()
		return nil, nil, err
	}
	var r io.Reader = conn
	size := linkReadBuffer
	n := brw.Reader.Buffered()
	if n > 0 {
		// Bytes the agent sent after its request: keep them, in the
		// buffer, where the library looks for them.
		left, _ := brw.Peek(n)
		r = io.MultiReader(bytes.NewReader(bytes.Clone(left)), conn)
		size = max(size, n)
	}
	br := bufio.NewReaderSize(r, size)
	if n > 0 {
		if _, err := br.Peek(n); err != nil {
			_ = conn.Close()
			return nil, nil, err
		}
	}
	return conn, bufio.NewReadWriter(br, bufio.NewWriterSize(conn, linkWriteBuffer)), nil
}

// ServeHTTP authenticates an agent, upgrades its connection and runs the
// link until either side closes it.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	identity, err := s.auth.Authenticate(r)
	if err != nil {
		s.m.authFailures.Inc()
		s.log.Warn("agent refused", "remote", r.RemoteAddr, "err", err)
		switch code := auth.StatusCode(err); code {
		case http.StatusForbidden:
			http.Error(w, "forbidden: "+err.Error(), code)
		case http.StatusUnauthorized:
			w.Header().Set("WWW-Authenticate", auth.Challenge)
			http.Error(w, "unauthorized: "+err.Error(), code)
		default: // the hub could not check (TokenReview unreachable): retry
			http.Error(w, "cannot authenticate now: "+err.Error(), code)
		}
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		http.Error(w, "hub shutting down", http.StatusServiceUnavailable)
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	handedOff := false
	defer func() {
		if !handedOff {
			s.wg.Done()
		}
	}()

	ss := &session{s: s, pending: map[string]chan link.Result{}, done: make(chan struct{})}
	ss.ctx, ss.cancel = context.WithCancel(context.Background())
	stopAfter := func() bool { return false }
	defer func() {
		if !handedOff {
			stopAfter()
			ss.cancel()
		}
	}()
	ss.touch()
	var raw net.Conn
	ws, err := websocket.Accept(smallBuffers{ResponseWriter: w, conn: &raw}, r, &websocket.AcceptOptions{
		OnPingReceived: func(context.Context, []byte) bool { ss.touch(); return true },
		// Frames are small JSON on a datacentre network; per-connection
		// deflate state would cost more memory than it saves at 10,000 links.
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		s.log.Debug("agent upgrade failed", "remote", r.RemoteAddr, "err", err)
		return
	}
	ws.SetReadLimit(link.MaxFrameBytes)
	ss.ws, ss.raw = ws, raw
	// Frames are read without a context (a context per read costs an
	// allocation and a registration each): the server's end closes the
	// connection instead, which ends the read.
	stopAfter = context.AfterFunc(s.ctx, func() {
		ss.cancel()
		// Cut the connection itself first: while a close handshake is
		// pending (an agent that never answers it) CloseNow only waits.
		if raw != nil {
			_ = raw.Close()
		}
		_ = ws.CloseNow()
	})
	// The link outlives this handler: net/http's goroutine, with its deep
	// stack, the request and its headers, goes now, and the session runs
	// on a goroutine of its own whose stack stays small.
	handedOff = true
	remote := r.RemoteAddr
	go func() {
		defer s.wg.Done()
		defer stopAfter() // unregister from the server's context
		defer func() {
			// net/http no longer recovers for this goroutine: a panic ends
			// this link, not the hub.
			if p := recover(); p != nil {
				s.log.Error("agent link panicked", "remote", remote, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
				_ = ws.CloseNow()
			}
		}()
		ss.run(identity, remote)
	}()
}

// reject counts a refused frame and closes the link with the reason.
func (ss *session) reject(reason, msg string) {
	ss.s.m.rejected.WithLabelValues(reason).Inc()
	ss.s.log.Warn("closing an agent link", "node", ss.node, "reason", reason, "err", msg)
	ss.stopSync(websocket.StatusPolicyViolation, msg)
}

// rejectRead counts a failed read that was the agent's fault.
func (ss *session) rejectRead(err error) {
	if errors.Is(err, websocket.ErrMessageTooBig) {
		// The websocket library has already closed the link with
		// StatusMessageTooBig and its reason.
		ss.s.m.rejected.WithLabelValues("too_big").Inc()
		ss.s.log.Warn("closing an agent link", "node", ss.node, "reason", "too_big", "err", err)
	}
}

func decodeReason(err error) string {
	var re *event.RejectError
	switch {
	case errors.Is(err, link.ErrUnknownType):
		return "unknown_type"
	case errors.As(err, &re) && re.Reason == event.ReasonTooManyAttrs:
		return event.ReasonTooManyAttrs
	}
	return "malformed"
}

// validNode reports whether name can be a namespace in the graph: "/"
// separates a host from its ids, so an agent naming itself "a/b" could
// write into host a's namespace.
func validNode(name string) bool {
	if name == "" || len(name) > 253 {
		return false
	}
	for _, r := range name {
		if r == '/' || r <= ' ' || r == 0x7f {
			return false
		}
	}
	return true
}
