package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/link"
)

// agent is one simulated host's link to the hub: hello, snapshot, then
// event batches with at most window of them waiting for the hub's ack, as
// the forwarder sends them. It answers commands with a result.
type agent struct {
	s    *sim
	h    *host
	ws   *websocket.Conn
	kick chan struct{}
	rng  *rand.Rand // the sender's own: the host's belongs to the driver

	mu       sync.Mutex
	pending  []event.Event
	inflight []sent // batches not acknowledged yet, oldest first
	seq      uint64
	closed   bool
}

type sent struct {
	seq uint64
	n   int
}

// connect dials the hub, says hello, waits for the welcome and sends the
// snapshot.
func (a *agent) connect(ctx context.Context) error {
	s := a.s
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, s.wsURL, &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + s.token}},
		HTTPClient: s.dialClient,
	})
	if resp != nil && resp.Body != nil {
		_ = resp.Body.Close()
	}
	if err != nil {
		return fmt.Errorf("dialing the hub: %w", err)
	}
	a.ws = ws
	if err := a.write(ctx, &link.Frame{Type: link.TypeHello, V: link.Version, Node: a.h.name, Addrs: a.h.addrs(), Version: "hubsim"}); err != nil {
		return err
	}
	_, b, err := ws.Read(ctx)
	if err != nil {
		return fmt.Errorf("waiting for the welcome: %w", err)
	}
	f, err := link.Decode(b)
	if err != nil {
		return fmt.Errorf("expected a welcome: %w", err)
	}
	if f.Type != link.TypeWelcome {
		return fmt.Errorf("expected a welcome, got %s: %s", f.Type, f.Message)
	}
	snap := a.h.snapshot(time.Now().UnixMilli())
	for len(snap) > 0 {
		n := min(len(snap), link.MaxBatch)
		f := frameBytes(s.bufs.get(), link.TypeSnapshot, 0, n == len(snap), snap[:n])
		err := ws.Write(ctx, websocket.MessageText, f)
		s.bufs.put(f)
		if err != nil {
			return fmt.Errorf("sending the snapshot: %w", err)
		}
		s.snapshotEvents.Add(int64(n))
		snap = snap[n:]
	}
	return nil
}

func (a *agent) write(ctx context.Context, f *link.Frame) error {
	b, err := link.Encode(f)
	if err != nil {
		return fmt.Errorf("encoding a %s frame: %w", f.Type, err)
	}
	if err := a.ws.Write(ctx, websocket.MessageText, b); err != nil {
		return fmt.Errorf("writing a %s frame: %w", f.Type, err)
	}
	return nil
}

// frameBytes appends an events or snapshot frame to dst, encoding the
// events with the wire codec.
func frameBytes(dst []byte, typ string, seq uint64, done bool, evs []event.Event) []byte {
	dst = append(dst, `{"type":"`...)
	dst = append(dst, typ...)
	dst = append(dst, '"')
	if seq > 0 {
		dst = append(dst, `,"seq":`...)
		dst = strconv.AppendUint(dst, seq, 10)
	}
	if done {
		dst = append(dst, `,"done":true`...)
	}
	dst = append(dst, `,"events":[`...)
	for i := range evs {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = event.AppendJSON(dst, &evs[i])
	}
	return append(dst, "]}"...)
}

// queue adds folded events for the next batch.
func (a *agent) queue(evs []event.Event) {
	if len(evs) == 0 {
		return
	}
	a.mu.Lock()
	a.pending = append(a.pending, evs...)
	a.mu.Unlock()
	a.poke()
}

func (a *agent) poke() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// send runs until ctx ends or the link fails, sending what is pending
// (and, while the simulation overloads the hub, raw samples as fast as
// the acks allow).
func (a *agent) send(ctx context.Context) {
	s := a.s
	var batch []event.Event
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.kick:
		}
		for {
			over := s.overloading(a)
			window := 8 // the forwarder's default
			if over {
				window = s.cfg.OverloadWindow
			}
			a.mu.Lock()
			if a.closed || len(a.inflight) >= window || len(a.pending) == 0 && !over {
				a.mu.Unlock()
				break
			}
			n := min(len(a.pending), link.MaxBatch)
			batch = append(batch[:0], a.pending[:n]...)
			a.pending = append(a.pending[:0], a.pending[n:]...)
			a.seq++
			seq := a.seq
			a.mu.Unlock()
			now := time.Now().UnixMilli()
			if over && len(batch) < s.cfg.OverloadBatch {
				batch = a.usage(s.cfg.OverloadBatch-len(batch), now, batch)
			}
			a.mu.Lock()
			a.inflight = append(a.inflight, sent{seq: seq, n: len(batch)})
			a.mu.Unlock()
			f := frameBytes(s.bufs.get(), link.TypeEvents, seq, false, batch)
			wctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
			err := a.ws.Write(wctx, websocket.MessageText, f)
			cancel()
			s.bufs.put(f)
			if err != nil {
				a.fail(ctx, fmt.Errorf("sending a batch: %w", err))
				return
			}
			s.framesSent.Add(1)
		}
	}
}

// read takes acks and commands until ctx ends or the link fails.
func (a *agent) read(ctx context.Context) {
	s := a.s
	for {
		_, b, err := a.ws.Read(ctx)
		if err != nil {
			a.fail(ctx, fmt.Errorf("reading from the hub: %w", err))
			return
		}
		f, err := link.Decode(b)
		if err != nil {
			a.fail(ctx, err)
			return
		}
		switch f.Type {
		case link.TypeAck:
			var n int
			a.mu.Lock()
			for len(a.inflight) > 0 && a.inflight[0].seq <= f.Seq {
				n += a.inflight[0].n
				a.inflight = a.inflight[1:]
			}
			a.mu.Unlock()
			s.eventsAcked.Add(int64(n))
			a.poke()
		case link.TypeCommand:
			s.commands.Add(1)
			c := f.Command
			res := link.Result{ID: c.ID, Node: a.h.name, PID: c.PID, JobID: c.JobID, Action: c.Action, Result: "success",
				Details: "hubsim: nothing was done"}
			if res.Action == "" {
				res.Action = "reset_gpu"
			}
			if c.DryRun {
				res.Result = "dry_run"
			}
			wctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
			err := a.write(wctx, &link.Frame{Type: link.TypeResult, Result: &res})
			cancel()
			if err != nil {
				a.fail(ctx, err)
				return
			}
		default:
			a.fail(ctx, fmt.Errorf("unexpected %s frame from the hub", f.Type))
			return
		}
	}
}

// fail records a link that broke while the simulation still ran.
func (a *agent) fail(ctx context.Context, err error) {
	a.mu.Lock()
	already := a.closed
	a.closed = true
	a.mu.Unlock()
	if already || ctx.Err() != nil {
		return
	}
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		err = fmt.Errorf("the hub closed the link: %d %s", ce.Code, ce.Reason)
	}
	if s := a.s; s.linkFailures.Add(1) <= 5 {
		s.log.Warn("agent link failed", "node", a.h.name, "err", err)
	}
	_ = a.ws.CloseNow()
}

// close ends the link with a normal close.
func (a *agent) close() {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	if a.ws != nil {
		_ = a.ws.Close(websocket.StatusNormalClosure, "simulation over")
	}
}

// bufPool recycles frame buffers, so memory holds only the frames being
// written, not one per agent.
type bufPool struct{ p sync.Pool }

func (b *bufPool) get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return (*v)[:0]
	}
	return make([]byte, 0, 4096)
}

func (b *bufPool) put(buf []byte) {
	if cap(buf) > 1<<20 {
		return
	}
	b.p.Put(&buf)
}

// usage appends n raw usage samples of the host's ranks, as an agent
// without folding would send them (the overload phase). It reads only what
// never changes of the host, so it may run beside the driver.
func (a *agent) usage(n int, now int64, out []event.Event) []event.Event {
	h := a.h
	for i := range n {
		g := i % gpusPerHost
		ev := event.Event{TS: now, PID: h.pid(g), JobID: h.job.id}
		if i/gpusPerHost%2 == 0 {
			ev.Type, ev.EntityID = event.ComputeUtil, h.gpu(g)
			ev.Value = strconv.Itoa(83 + a.rng.IntN(15))
		} else {
			ev.Type, ev.EntityID = event.TransportBW, h.nic(g)
			ev.Value = strconv.FormatInt(11e9+a.rng.Int64N(2e9), 10)
		}
		out = append(out, ev)
	}
	return out
}
