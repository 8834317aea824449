package agents

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"

	"github.com/ark-gpu/ark/internal/auth"
	"github.com/ark-gpu/ark/link"
)

// session is one agent's connection.
type session struct {
	s    *Server
	ws   *websocket.Conn
	raw  net.Conn // the connection under ws (set by the Hijack it needs), for write deadlines
	node string
	seen atomic.Int64  // unix ns of the last frame or ping
	done chan struct{} // closed when the session has ended
	// ctx is the session's own, cancelled when the server's ends: reads
	// and writes derive per-call contexts from it, which on the server's
	// context would make 10,000 links queue on its one mutex.
	ctx    context.Context
	cancel context.CancelFunc

	// The frame a worker handles for the read loop, and its answer.
	frame   *bytes.Buffer
	verdict verdict
	handled chan struct{}

	mu      sync.Mutex
	ended   bool
	pending map[string]chan link.Result

	ackBuf [48]byte // the ack being written; only the read loop writes acks
}

func (ss *session) touch() { ss.seen.Store(ss.s.opts.Now().UnixNano()) }

func (ss *session) lastSeen() time.Time { return time.Unix(0, ss.seen.Load()) }

// stop closes the link with a reason, without waiting: the close handshake
// runs on a goroutine the server waits for, and the session's read loop
// ends when it completes.
func (ss *session) stop(code websocket.StatusCode, reason string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.ended {
		return
	}
	ss.s.wg.Add(1) // the session holds the server's WaitGroup, so this is safe
	go func() {
		defer ss.s.wg.Done()
		_ = ss.ws.Close(code, truncate(reason))
	}()
}

// stopSync closes the link with a reason from the read loop itself.
func (ss *session) stopSync(code websocket.StatusCode, reason string) {
	_ = ss.ws.Close(code, truncate(reason))
}

// run is the session's read loop, from hello to the end of the link.
func (ss *session) run(identity auth.Identity, remote string) {
	s := ss.s
	defer close(ss.done)
	defer ss.cancel()
	defer func() { _ = ss.ws.CloseNow() }()
	defer func() {
		ss.mu.Lock()
		ss.ended = true
		ss.mu.Unlock()
	}()
	log := s.log.With("remote", remote)

	hello := time.AfterFunc(s.opts.HelloTimeout, func() {
		s.m.rejected.WithLabelValues("no_hello").Inc()
		ss.stop(websocket.StatusPolicyViolation, fmt.Sprintf("no hello within %s", s.opts.HelloTimeout))
	})
	_, b, err := ss.ws.Read(ss.ctx)
	hello.Stop()
	if err != nil {
		ss.rejectRead(err)
		log.Debug("agent left before hello", "err", err)
		return
	}
	f, err := link.Decode(b)
	switch {
	case err != nil:
		ss.reject(decodeReason(err), err.Error())
		return
	case f.Type != link.TypeHello:
		ss.reject("unexpected", fmt.Sprintf("expected hello, got %s", f.Type))
		return
	case !validNode(f.Node):
		ss.reject("bad_node", fmt.Sprintf("invalid node name %q", f.Node))
		return
	case !identity.Allows(f.Node):
		// Before register: the node's real link stays.
		ss.reject("node_mismatch", fmt.Sprintf("the credential of node %q may not connect as node %q", identity.Node, f.Node))
		return
	}
	ss.node = strings.Clone(f.Node)
	log = log.With("node", ss.node)
	ss.touch()
	old, ok := s.register(ss, identity.Name, &f)
	if !ok {
		ss.stopSync(websocket.StatusGoingAway, "hub shutting down")
		return
	}
	if old != nil {
		log.Warn("a new link replaces the node's previous one")
		old.stop(websocket.StatusPolicyViolation, "replaced by a newer link from the same node")
	}
	defer func() {
		if s.unregister(ss) && s.opts.OnDisconnect != nil {
			s.opts.OnDisconnect(ss.node)
		}
		log.Info("agent disconnected")
	}()
	if err := ss.write(ss.ctx, &link.Frame{Type: link.TypeWelcome, V: link.Version}); err != nil {
		log.Warn("could not welcome an agent", "err", err)
		return
	}
	log.Info("agent connected", "addrs", f.Addrs, "version", f.Version, "identity", identity.Name)
	if s.opts.OnConnect != nil {
		s.opts.OnConnect(ss.node, slicesClone(f.Addrs))
	}

	idle := ss.watchIdle()
	defer idle.Stop()
	// The work a worker does for this session, bound once.
	ss.handled = make(chan struct{}, 1)
	handle := func() {
		defer func() {
			// A frame that makes the hub panic ends its own link only.
			if p := recover(); p != nil {
				log.Error("handling an agent's frame panicked", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
				ss.verdict = verdict{rejectReason: "internal", rejectMsg: "the hub failed to handle a frame"}
			}
			ss.handled <- struct{}{}
		}()
		ss.verdict = ss.handleFrame(ss.frame.Bytes(), log)
	}
	for {
		buf, err := ss.readFrame()
		if err != nil {
			ss.rejectRead(err)
			log.Debug("agent link closed", "err", err)
			return
		}
		ss.touch()
		// Decoding and applying run on the server's few workers: this
		// goroutine, one of thousands, only waits on the socket and keeps
		// a small stack.
		ss.frame = buf
		ok := s.offload(handle, ss.handled)
		putFrameBuffer(buf)
		ss.frame = nil
		if !ok {
			return
		}
		v := ss.verdict
		switch {
		case v.rejectReason != "":
			ss.reject(v.rejectReason, v.rejectMsg)
			return
		case v.ack:
			if err := ss.writeAck(v.seq); err != nil {
				// An agent that went away mid-batch is not the hub's
				// problem; it resends what was not acknowledged.
				lvl := slog.LevelWarn
				if errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) {
					lvl = slog.LevelDebug
				}
				log.Log(ss.ctx, lvl, "could not acknowledge an agent's events", "err", err)
				return
			}
		}
	}
}

// Frames and their buffers are reused: at 10,000 links, reading each
// frame into a new buffer and decoding it into a new slice was most of
// what the hub allocated, and so most of its GC work.
var (
	bufferPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}
	framePool  = sync.Pool{New: func() any { return new(link.Frame) }}
)

// maxPooledBuffer keeps a rare huge frame's buffer out of the pool.
const maxPooledBuffer = 1 << 20

func putFrameBuffer(b *bytes.Buffer) {
	if b.Cap() <= maxPooledBuffer {
		bufferPool.Put(b)
	}
}

// readFrame reads the next data message into a pooled buffer; the caller
// returns it with putFrameBuffer.
func (ss *session) readFrame() (*bytes.Buffer, error) {
	_, r, err := ss.ws.Reader(context.Background())
	if err != nil {
		return nil, err
	}
	buf := bufferPool.Get().(*bytes.Buffer)
	buf.Reset()
	if _, err := buf.ReadFrom(r); err != nil {
		putFrameBuffer(buf)
		return nil, err
	}
	return buf, nil
}

// verdict is what the read loop does after a frame was handled.
type verdict struct {
	ack                     bool
	seq                     uint64
	rejectReason, rejectMsg string
}

// handleFrame decodes and applies one frame; it runs on a worker and never
// blocks on the agent.
func (ss *session) handleFrame(b []byte, log *slog.Logger) verdict {
	s := ss.s
	f := framePool.Get().(*link.Frame)
	defer func() {
		// Drop what the frame refers to before it waits in the pool; an
		// oversized batch (refused, but decoded first) is not kept.
		if cap(f.Events) > link.MaxBatch {
			return
		}
		f.Reset()
		framePool.Put(f)
	}()
	err := link.DecodeInto(b, f)
	if err != nil {
		return verdict{rejectReason: decodeReason(err), rejectMsg: err.Error()}
	}
	switch f.Type {
	case link.TypeSnapshot, link.TypeEvents:
		for i := range f.Events {
			f.Events[i].NodeID = ss.node
		}
		s.m.received.Add(float64(len(f.Events)))
		if len(f.Events) > 0 {
			s.opts.OnEvents(ss.node, f.Events)
		}
		if f.Type == link.TypeSnapshot {
			if f.Done {
				log.Debug("agent snapshot received")
			}
			return verdict{}
		}
		return verdict{ack: true, seq: f.Seq}
	case link.TypeResult:
		ss.deliver(*f.Result)
		return verdict{}
	}
	return verdict{rejectReason: "unexpected", rejectMsg: fmt.Sprintf("unexpected %s frame from an agent", f.Type)}
}

// watchIdle closes the link when nothing, not even a ping, arrived for
// IdleTimeout. The timer re-arms itself for the time left, so a busy
// link costs no timer reset per frame.
func (ss *session) watchIdle() *stoppableTimer {
	idle := ss.s.opts.IdleTimeout
	st := &stoppableTimer{}
	var check func()
	check = func() {
		left := idle - ss.s.opts.Now().Sub(ss.lastSeen())
		if left > 0 {
			st.reset(left, check)
			return
		}
		ss.s.m.rejected.WithLabelValues("idle").Inc()
		ss.stop(websocket.StatusPolicyViolation, fmt.Sprintf("nothing from the agent for %s", idle))
	}
	st.reset(idle, check)
	return st
}

// stoppableTimer is a self-rearming timer that Stop ends for good.
type stoppableTimer struct {
	mu      sync.Mutex
	t       *time.Timer
	stopped bool
}

func (st *stoppableTimer) reset(d time.Duration, f func()) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if !st.stopped {
		st.t = time.AfterFunc(d, f)
	}
}

// Stop stops the timer.
func (st *stoppableTimer) Stop() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.stopped = true
	if st.t != nil {
		st.t.Stop()
	}
}

func (ss *session) write(ctx context.Context, f *link.Frame) error {
	b, err := link.Encode(f)
	if err != nil {
		return fmt.Errorf("encoding a %s frame: %w", f.Type, err)
	}
	wctx, cancel := context.WithTimeout(ctx, ss.s.opts.WriteTimeout)
	defer cancel()
	if err := ss.ws.Write(wctx, websocket.MessageText, b); err != nil {
		return fmt.Errorf("writing a %s frame: %w", f.Type, err)
	}
	return nil
}

// writeAck acknowledges the agent's batches up to seq. It is the link's
// hot path, one write per batch: the frame is encoded by hand and the
// write is bounded by a deadline on the connection, where a context would
// cost a timer and a registration on every ack.
func (ss *session) writeAck(seq uint64) error {
	b := link.AppendAck(ss.ackBuf[:0], seq)
	_ = ss.raw.SetWriteDeadline(time.Now().Add(ss.s.opts.WriteTimeout))
	err := ss.ws.Write(context.Background(), websocket.MessageText, b)
	// Cleared again: the websocket library's own pongs and close frames
	// must not meet a deadline that passed while the link was quiet.
	_ = ss.raw.SetWriteDeadline(time.Time{})
	if err != nil {
		return fmt.Errorf("writing an ack frame: %w", err)
	}
	return nil
}

// dispatch sends cmd on this link and waits for its result.
func (ss *session) dispatch(ctx context.Context, cmd link.Command) (link.Result, error) {
	ch := make(chan link.Result, 1)
	ss.mu.Lock()
	if ss.ended {
		ss.mu.Unlock()
		return link.Result{}, fmt.Errorf("%w: %s", ErrNoAgent, ss.node)
	}
	ss.pending[cmd.ID] = ch
	ss.mu.Unlock()
	defer func() {
		ss.mu.Lock()
		delete(ss.pending, cmd.ID)
		ss.mu.Unlock()
	}()
	if err := ss.write(ctx, &link.Frame{Type: link.TypeCommand, Command: &cmd}); err != nil {
		if ctx.Err() != nil {
			return link.Result{}, fmt.Errorf("%w: %w", ErrTimeout, ctx.Err())
		}
		return link.Result{}, fmt.Errorf("%w: sending the command to %s: %w", ErrNoAgent, ss.node, err)
	}
	select {
	case res := <-ch:
		return res, nil
	case <-ctx.Done():
		return link.Result{}, fmt.Errorf("%w: %w", ErrTimeout, ctx.Err())
	case <-ss.done:
		return link.Result{}, fmt.Errorf("%w: the link to %s closed before the agent answered", ErrNoAgent, ss.node)
	}
}

// deliver hands a result to the Dispatch waiting for it.
func (ss *session) deliver(res link.Result) {
	ss.mu.Lock()
	ch := ss.pending[res.ID]
	delete(ss.pending, res.ID)
	ss.mu.Unlock()
	if ch == nil {
		ss.s.log.Debug("a result nobody waits for", "node", ss.node, "id", res.ID)
		return
	}
	ch <- res // buffered, one result per id
}

// register makes ss the node's session and returns the one it replaces;
// false when the server is closed.
func (s *Server) register(ss *session, identity string, hello *link.Frame) (*session, bool) {
	now := s.opts.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, false
	}
	a := s.agents[ss.node]
	if a == nil {
		a = &agent{}
		s.agents[ss.node] = a
	}
	old := a.sess
	a.sess = ss
	a.info = AgentInfo{Node: ss.node, Addrs: slicesClone(hello.Addrs), Version: hello.Version, Identity: identity, Since: now, LastSeen: now}
	return old, true
}

// unregister marks the node disconnected when ss is still its session,
// and reports whether it was.
func (s *Server) unregister(ss *session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.agents[ss.node]
	if a == nil || a.sess != ss {
		return false
	}
	a.sess = nil
	a.info.LastSeen = ss.lastSeen()
	return true
}

func slicesClone(s []string) []string {
	if s == nil {
		return nil
	}
	out := make([]string, len(s))
	for i := range s {
		out[i] = strings.Clone(s[i])
	}
	return out
}

// truncate keeps a close reason within the 123 bytes a close frame allows.
func truncate(s string) string {
	if len(s) > 120 {
		return s[:120]
	}
	return s
}
