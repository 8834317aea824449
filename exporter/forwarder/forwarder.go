// Package forwarder is the agent's side of the agent↔hub link
// (docs/README.md, link package): it folds the agent's events down to
// the ones that change the hub's graph, streams them over a WebSocket with
// acknowledged batches, keeps them in a bounded buffer while the hub is
// away, and runs the commands the hub sends.
package forwarder

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/link"
)

// CommandHandler runs a command from the hub, such as a fix; the agent's
// control plane implements it. HandleCommand may be called concurrently.
type CommandHandler interface {
	HandleCommand(ctx context.Context, cmd link.Command) link.Result
}

// Options configures a Client. URL and Node are required; the rest have
// defaults.
type Options struct {
	// URL is the hub's agent endpoint, ws:// or wss://, usually ending in
	// link.Path.
	URL string
	// TokenFile holds the bearer token, read at each connect so a rotated
	// token is picked up; "" or an empty file sends none.
	TokenFile string
	// Node is this host's name, the namespace of its events on the hub.
	Node string
	// Addrs are the addresses this host's ranks talk on, for the hub's
	// cross-node edges.
	Addrs []string
	// Version is the agent's version, sent in hello.
	Version string
	// Logger defaults to discarding.
	Logger *slog.Logger
	// Registerer gets the forwarder's metrics (nil: not registered).
	Registerer prometheus.Registerer
	// Snapshot returns the agent's current graph as events, sent first on
	// each connection so the hub starts from the agent's state.
	Snapshot func() []event.Event
	// Commands runs the hub's commands (nil: every command fails).
	Commands CommandHandler
	// HTTPClient dials the hub (default http.DefaultClient); set it for TLS.
	HTTPClient *http.Client

	// Fold configures the edge folding.
	Fold FoldOptions
	// Buffer bounds the events waiting for the hub (default 100,000).
	Buffer int
	// FlushEvery and FlushAt say when a batch goes: every 250ms, or as
	// soon as 512 events wait.
	FlushEvery time.Duration
	FlushAt    int
	// Window is how many batches may wait for the hub's ack (default 8).
	Window int
	// BackoffMin and BackoffMax bound the reconnect delay (1s, 30s).
	BackoffMin, BackoffMax time.Duration
	// PingEvery pings the hub so a dead link is noticed (default 30s).
	PingEvery time.Duration
	// Timeout bounds the dial, the welcome and each write (default 10s).
	Timeout time.Duration
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Buffer <= 0 {
		o.Buffer = 100_000
	}
	if o.FlushEvery <= 0 {
		o.FlushEvery = 250 * time.Millisecond
	}
	if o.FlushAt <= 0 {
		o.FlushAt = 512
	}
	if o.Window <= 0 {
		o.Window = 8
	}
	if o.BackoffMin <= 0 {
		o.BackoffMin = time.Second
	}
	if o.BackoffMax < o.BackoffMin {
		o.BackoffMax = max(30*time.Second, o.BackoffMin)
	}
	if o.PingEvery <= 0 {
		o.PingEvery = 30 * time.Second
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	return o
}

// Client is the agent's link to the hub. Subscribe Sink to the agent's bus
// and call Run.
type Client struct {
	opts Options
	log  *slog.Logger

	mu              sync.Mutex
	fold            *Folder
	queue           *queue
	kick            chan struct{} // FlushAt events wait
	lastDropLog     time.Time
	droppedSinceLog int

	forwarded, folded, dropped prometheus.Counter
	connected                  prometheus.Gauge
	buffered                   prometheus.GaugeFunc
	connects                   *prometheus.CounterVec
}

// ErrClosedByHub wraps the hub's reason when it closes the link.
var ErrClosedByHub = errors.New("hub closed the link")

// New returns a Client.
func New(opts Options) (*Client, error) {
	if opts.URL == "" {
		return nil, errors.New("forwarder: the hub URL is required")
	}
	if !strings.HasPrefix(opts.URL, "ws://") && !strings.HasPrefix(opts.URL, "wss://") &&
		!strings.HasPrefix(opts.URL, "http://") && !strings.HasPrefix(opts.URL, "https://") {
		return nil, fmt.Errorf("forwarder: hub URL %q: want ws://, wss://, http:// or https://", opts.URL)
	}
	if opts.Node == "" {
		return nil, errors.New("forwarder: the node name is required")
	}
	o := opts.withDefaults()
	events := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ark_forwarder_events_total",
		Help: "Events the hub forwarder handled, by outcome: forwarded to the hub, folded (the hub's graph already has what they say) or dropped (the buffer was full).",
	}, []string{"outcome"})
	c := &Client{
		opts:      o,
		log:       o.Logger,
		fold:      NewFolder(o.Fold),
		queue:     newQueue(o.Buffer),
		kick:      make(chan struct{}, 1),
		forwarded: events.WithLabelValues("forwarded"),
		folded:    events.WithLabelValues("folded"),
		dropped:   events.WithLabelValues("dropped"),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ark_forwarder_connected",
			Help: "Whether the forwarder has a link to the hub (1) or not (0).",
		}),
		connects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ark_forwarder_connects_total",
			Help: "Attempts to connect to the hub, by result (success, failure).",
		}, []string{"result"}),
	}
	c.buffered = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ark_forwarder_buffered_events",
		Help: "Events waiting to be sent to the hub.",
	}, func() float64 { return float64(c.Buffered()) })
	if o.Registerer != nil {
		for _, col := range []prometheus.Collector{events, c.connected, c.buffered, c.connects} {
			if err := o.Registerer.Register(col); err != nil {
				return nil, fmt.Errorf("forwarder: registering metrics: %w", err)
			}
		}
	}
	return c, nil
}

// Buffered returns how many events wait to be sent.
func (c *Client) Buffered() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.queue.len()
}

// Sink folds a batch from the agent's bus and queues what goes to the
// hub. It never blocks on the network: when the buffer is full it drops
// the oldest event that is not an error, counting it.
func (c *Client) Sink(batch []event.Event) {
	var fwd, fold, drop int
	c.mu.Lock()
	for i := range batch {
		if !c.fold.Keep(&batch[i]) {
			fold++
			continue
		}
		fwd++
		drop += c.queue.push(batch[i])
	}
	n := c.queue.len()
	c.noteDropsLocked(drop)
	c.mu.Unlock()
	c.forwarded.Add(float64(fwd))
	c.folded.Add(float64(fold))
	if n >= c.opts.FlushAt {
		select {
		case c.kick <- struct{}{}:
		default:
		}
	}
}

// noteDropsLocked counts dropped events and logs them at most every 10s.
func (c *Client) noteDropsLocked(n int) {
	if n == 0 {
		return
	}
	c.dropped.Add(float64(n))
	c.droppedSinceLog += n
	if now := time.Now(); now.Sub(c.lastDropLog) >= 10*time.Second {
		c.log.Warn("hub forwarder buffer full, dropped the oldest events (errors are kept first)",
			"dropped", c.droppedSinceLog, "buffer", c.opts.Buffer)
		c.lastDropLog, c.droppedSinceLog = now, 0
	}
}

// Run connects to the hub and streams events until ctx ends, reconnecting
// with jittered exponential backoff. It returns nil when ctx ends.
func (c *Client) Run(ctx context.Context) error {
	backoff := c.opts.BackoffMin
	for {
		welcomed, err := c.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if welcomed {
			backoff = c.opts.BackoffMin
		}
		// Full jitter in [backoff/2, backoff): agents that lost the same
		// hub do not all come back at once.
		d := backoff/2 + rand.N(backoff/2+1)
		c.log.Warn("hub link down, reconnecting", "err", err, "in", d)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(d):
		}
		backoff = min(2*backoff, c.opts.BackoffMax)
	}
}

func (c *Client) token() (string, error) {
	if c.opts.TokenFile == "" {
		return "", nil
	}
	b, err := os.ReadFile(c.opts.TokenFile)
	if err != nil {
		return "", fmt.Errorf("reading the hub token: %w", err)
	}
	return string(bytes.TrimSpace(b)), nil
}

// conn is one connection's state.
type conn struct {
	ws  *websocket.Conn
	seq uint64

	mu       sync.Mutex
	inflight []batch // sent, not acknowledged, oldest first
	acked    chan struct{}
}

type batch struct {
	seq     uint64
	entries []entry
}

// session runs one connection and reports whether the hub welcomed it.
func (c *Client) session(ctx context.Context) (welcomed bool, err error) {
	ws, err := c.dial(ctx)
	if err != nil {
		c.connects.WithLabelValues("failure").Inc()
		return false, err
	}
	defer func() { _ = ws.CloseNow() }()
	c.connects.WithLabelValues("success").Inc()
	c.connected.Set(1)
	defer c.connected.Set(0)
	c.log.Info("connected to the hub", "url", c.opts.URL)

	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	cn := &conn{ws: ws, acked: make(chan struct{}, 1)}
	var wg sync.WaitGroup
	defer func() {
		// Batches the hub never acknowledged go out again on the next
		// link, after its snapshot.
		cn.mu.Lock()
		var es []entry
		for _, b := range cn.inflight {
			es = append(es, b.entries...)
		}
		cn.inflight = nil
		cn.mu.Unlock()
		if len(es) > 0 {
			c.mu.Lock()
			c.noteDropsLocked(c.queue.requeue(es))
			c.mu.Unlock()
		}
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		cancel(c.read(sctx, cn, &wg))
	}()
	err = c.stream(sctx, cn)
	cancel(err)
	_ = ws.CloseNow() // ends the reader
	wg.Wait()
	if cause := context.Cause(sctx); cause != nil && !errors.Is(cause, context.Canceled) {
		err = cause
	}
	return true, err
}

// dial connects, says hello and waits for the welcome.
func (c *Client) dial(ctx context.Context) (*websocket.Conn, error) {
	tok, err := c.token()
	if err != nil {
		return nil, err
	}
	h := http.Header{}
	if tok != "" {
		h.Set("Authorization", "Bearer "+tok)
	}
	dctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	ws, resp, err := websocket.Dial(dctx, c.opts.URL, &websocket.DialOptions{HTTPClient: c.opts.HTTPClient, HTTPHeader: h,
		CompressionMode: websocket.CompressionDisabled})
	if resp != nil && resp.Body != nil {
		_ = resp.Body.Close()
	}
	if err != nil {
		if resp != nil && resp.StatusCode == http.StatusUnauthorized {
			return nil, fmt.Errorf("connecting to the hub: unauthorized (check the token file): %w", err)
		}
		return nil, fmt.Errorf("connecting to the hub: %w", err)
	}
	ws.SetReadLimit(link.MaxFrameBytes)
	if err := write(dctx, ws, &link.Frame{Type: link.TypeHello, V: link.Version, Node: c.opts.Node, Addrs: c.opts.Addrs, Version: c.opts.Version}); err != nil {
		_ = ws.CloseNow()
		return nil, fmt.Errorf("saying hello: %w", err)
	}
	_, b, err := ws.Read(dctx)
	if err != nil {
		_ = ws.CloseNow()
		return nil, fmt.Errorf("waiting for the welcome: %w", closeReason(err))
	}
	f, err := link.Decode(b)
	if err != nil || f.Type != link.TypeWelcome {
		_ = ws.Close(websocket.StatusPolicyViolation, "expected welcome")
		if err == nil {
			err = fmt.Errorf("%w: got %q", link.ErrBadFrame, f.Type)
		}
		return nil, fmt.Errorf("waiting for the welcome: %w", err)
	}
	if f.Message != "" {
		c.log.Info("hub says", "message", f.Message)
	}
	return ws, nil
}

// closeReason makes the hub's close reason part of the error.
func closeReason(err error) error {
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		return fmt.Errorf("%w: %s (%d)", ErrClosedByHub, ce.Reason, ce.Code)
	}
	return err
}

func write(ctx context.Context, ws *websocket.Conn, f *link.Frame) error {
	b, err := link.Encode(f)
	if err != nil {
		return fmt.Errorf("encoding a %s frame: %w", f.Type, err)
	}
	return ws.Write(ctx, websocket.MessageText, b)
}

// read handles the hub's frames: acks and commands. Commands run on their
// own goroutines, counted in wg.
func (c *Client) read(ctx context.Context, cn *conn, wg *sync.WaitGroup) error {
	for {
		_, b, err := cn.ws.Read(ctx)
		if err != nil {
			return fmt.Errorf("reading from the hub: %w", closeReason(err))
		}
		f, err := link.Decode(b)
		if err != nil {
			_ = cn.ws.Close(websocket.StatusPolicyViolation, truncate(err.Error()))
			return fmt.Errorf("reading from the hub: %w", err)
		}
		switch f.Type {
		case link.TypeAck:
			cn.mu.Lock()
			i := 0
			for i < len(cn.inflight) && cn.inflight[i].seq <= f.Seq {
				i++
			}
			cn.inflight = append(cn.inflight[:0], cn.inflight[i:]...)
			cn.mu.Unlock()
			select {
			case cn.acked <- struct{}{}:
			default:
			}
		case link.TypeCommand:
			cmd := *f.Command
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.command(ctx, cn, cmd)
			}()
		default:
			c.log.Debug("ignoring a frame from the hub", "type", f.Type)
		}
	}
}

func (c *Client) command(ctx context.Context, cn *conn, cmd link.Command) {
	var res link.Result
	if c.opts.Commands == nil {
		res = link.Result{PID: cmd.PID, JobID: cmd.JobID, Action: cmd.Action, Result: "failure", Error: "this agent takes no commands from the hub"}
	} else {
		res = c.opts.Commands.HandleCommand(ctx, cmd)
	}
	res.ID = cmd.ID
	if res.Node == "" {
		res.Node = c.opts.Node
	}
	c.log.Info("ran a command from the hub", "id", cmd.ID, "intent", cmd.Intent, "pid", cmd.PID, "user", cmd.User, "result", res.Result)
	wctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	if err := write(wctx, cn.ws, &link.Frame{Type: link.TypeResult, Result: &res}); err != nil {
		c.log.Warn("could not send a command's result to the hub", "id", cmd.ID, "err", err)
	}
}

// stream sends the snapshot, then batches from the queue, until ctx ends
// or a write fails.
func (c *Client) stream(ctx context.Context, cn *conn) error {
	if err := c.sendSnapshot(ctx, cn); err != nil {
		return err
	}
	flush := time.NewTicker(c.opts.FlushEvery)
	defer flush.Stop()
	ping := time.NewTicker(c.opts.PingEvery)
	defer ping.Stop()
	var buf []entry
	for {
		// Send while the window has room and events wait.
		for {
			cn.mu.Lock()
			room := len(cn.inflight) < c.opts.Window
			cn.mu.Unlock()
			if !room {
				break
			}
			c.mu.Lock()
			buf = c.queue.pop(buf[:0], link.MaxBatch)
			c.mu.Unlock()
			if len(buf) == 0 {
				break
			}
			if err := c.sendBatch(ctx, cn, buf); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-flush.C:
		case <-c.kick:
		case <-cn.acked:
		case <-ping.C:
			pctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
			err := cn.ws.Ping(pctx)
			cancel()
			if err != nil {
				return fmt.Errorf("pinging the hub: %w", err)
			}
		}
	}
}

// sendBatch sends entries as one events frame, or several when one frame
// would exceed link.MaxFrameBytes, each taking a place in the window.
func (c *Client) sendBatch(ctx context.Context, cn *conn, es []entry) error {
	evs := make([]event.Event, len(es))
	for i := range es {
		evs[i] = es[i].ev
	}
	cn.seq++
	f := link.Frame{Type: link.TypeEvents, Seq: cn.seq, Events: evs}
	b, err := link.Encode(&f)
	if err != nil {
		return fmt.Errorf("encoding events: %w", err)
	}
	if len(b) > link.MaxFrameBytes {
		cn.seq--
		if len(es) == 1 {
			// One event larger than a frame cannot be sent; the hub's
			// decoder would reject it anyway.
			c.log.Warn("dropping an event larger than a link frame", "type", es[0].ev.Type, "entity", es[0].ev.EntityID, "bytes", len(b))
			c.dropped.Inc()
			return nil
		}
		if err := c.sendBatch(ctx, cn, es[:len(es)/2]); err != nil {
			return err
		}
		return c.sendBatch(ctx, cn, es[len(es)/2:])
	}
	// In flight before the write, so an ack that beats the write's return
	// finds it.
	cn.mu.Lock()
	cn.inflight = append(cn.inflight, batch{seq: f.Seq, entries: append([]entry(nil), es...)})
	cn.mu.Unlock()
	wctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	if err := cn.ws.Write(wctx, websocket.MessageText, b); err != nil {
		return fmt.Errorf("sending events: %w", err)
	}
	return nil
}

// sendSnapshot sends the agent's graph, in frames of at most
// link.MaxBatch events and link.MaxFrameBytes bytes; the last says done.
func (c *Client) sendSnapshot(ctx context.Context, cn *conn) error {
	var evs []event.Event
	if c.opts.Snapshot != nil {
		evs = c.opts.Snapshot()
	}
	if len(evs) == 0 {
		return c.sendSnapshotPart(ctx, cn, nil, true)
	}
	for i := 0; i < len(evs); i += link.MaxBatch {
		j := min(i+link.MaxBatch, len(evs))
		if err := c.sendSnapshotPart(ctx, cn, evs[i:j], j == len(evs)); err != nil {
			return err
		}
	}
	return nil
}

// sendSnapshotPart sends part in one frame, or halves it until each half
// fits in link.MaxFrameBytes.
func (c *Client) sendSnapshotPart(ctx context.Context, cn *conn, part []event.Event, last bool) error {
	b, err := link.Encode(&link.Frame{Type: link.TypeSnapshot, Events: part, Done: last})
	if err != nil {
		return fmt.Errorf("encoding the snapshot: %w", err)
	}
	if len(b) > link.MaxFrameBytes {
		if len(part) > 1 {
			h := len(part) / 2
			if err := c.sendSnapshotPart(ctx, cn, part[:h], false); err != nil {
				return err
			}
			return c.sendSnapshotPart(ctx, cn, part[h:], last)
		}
		c.log.Warn("leaving out of the snapshot an event larger than a link frame", "type", part[0].Type, "entity", part[0].EntityID, "bytes", len(b))
		if !last {
			return nil
		}
		b, _ = link.Encode(&link.Frame{Type: link.TypeSnapshot, Done: true})
	}
	wctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	if err := cn.ws.Write(wctx, websocket.MessageText, b); err != nil {
		return fmt.Errorf("sending the snapshot: %w", err)
	}
	return nil
}

// truncate keeps a close reason within the 123 bytes a close frame allows.
func truncate(s string) string {
	if len(s) > 120 {
		return s[:120]
	}
	return s
}
