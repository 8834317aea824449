package arkreceiver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"

	"github.com/ark-gpu/ark/event"
)

// socketInput accepts JSONL on a TCP or unix socket, any number of
// connections at once, one event per line.
type socketInput struct {
	r  *arkReceiver
	ln net.Listener

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

func listen(ctx context.Context, r *arkReceiver) (*socketInput, error) {
	l := r.cfg.Listen
	if l.Transport == "unix" {
		// A socket file left by an earlier run would make Listen fail.
		if st, err := os.Lstat(l.Endpoint); err == nil && st.Mode()&os.ModeSocket != 0 {
			_ = os.Remove(l.Endpoint)
		}
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, l.Transport, l.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("listening on %s %s: %w", l.Transport, l.Endpoint, err)
	}
	return &socketInput{r: r, ln: ln, conns: map[net.Conn]struct{}{}}, nil
}

// Addr is where the socket listens.
func (s *socketInput) Addr() net.Addr { return s.ln.Addr() }

// serve accepts connections until close, then waits for their readers.
func (s *socketInput) serve(ctx context.Context) {
	defer s.wg.Wait()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.r.logger.Error("accepting a connection", "err", err)
			}
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			_ = c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Go(func() { s.read(ctx, c) })
	}
}

// read decodes one connection's lines into the receiver's buffer.
func (s *socketInput) read(ctx context.Context, c net.Conn) {
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		_ = c.Close()
	}()
	dec := event.NewDecoder(c, event.WithMaxLineBytes(s.r.cfg.MaxLineBytes))
	var ev event.Event
	for {
		err := dec.Decode(&ev)
		var re *event.RejectError
		switch {
		case err == nil:
			if !s.r.buf.addWait(ctx, &ev) {
				return
			}
		case errors.As(err, &re):
			s.r.reject(ctx, re.Reason, err)
		case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
			return
		default:
			s.r.logger.Warn("reading a connection", "remote", c.RemoteAddr().String(), "err", err)
			return
		}
	}
}

// close stops accepting and ends the open connections.
func (s *socketInput) close() {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	_ = s.ln.Close()
}
