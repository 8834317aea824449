package execprobe

import (
	"errors"
	"io"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// pollPipe is the read end of a program's stdout, read with poll(2) on a
// blocking descriptor instead of through Go's network poller. The poller
// registers descriptors edge-triggered, so every small write by the program
// wakes the agent even while the reader rests; here a write wakes nothing
// unless the reader is waiting for it. Together with resting after a short
// read, a program writing a few lines a hundred times a second costs the
// agent a few wake-ups a second.
type pollPipe struct {
	fd       int
	linger   time.Duration
	deadline atomic.Int64 // unix ns; 0: none
	closed   atomic.Bool
}

// newPollPipe returns the read end and the write end (for the child).
func newPollPipe(linger time.Duration) (*pollPipe, *os.File, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		return nil, nil, err
	}
	return &pollPipe{fd: fds[0], linger: linger}, os.NewFile(uintptr(fds[1]), "stdout-w"), nil
}

// pollSlice bounds one poll(2) wait, so a deadline or Close is noticed.
const pollSlice = 500 * time.Millisecond

func (p *pollPipe) Read(b []byte) (int, error) {
	for {
		if p.closed.Load() {
			return 0, os.ErrClosed
		}
		wait := pollSlice
		if d := p.deadline.Load(); d != 0 {
			left := time.Until(time.Unix(0, d))
			if left <= 0 {
				return 0, os.ErrDeadlineExceeded
			}
			wait = min(wait, left)
		}
		fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(wait.Milliseconds())+1)
		if errors.Is(err, unix.EINTR) || (err == nil && n == 0) {
			continue
		}
		if err != nil {
			return 0, err
		}
		n, err = unix.Read(p.fd, b)
		switch {
		case errors.Is(err, unix.EINTR), errors.Is(err, unix.EAGAIN):
			continue
		case err != nil:
			return 0, err
		case n == 0:
			return 0, io.EOF
		}
		if n < len(b)/4 {
			time.Sleep(p.linger)
		}
		return n, nil
	}
}

// SetReadDeadline makes Read return os.ErrDeadlineExceeded after t.
func (p *pollPipe) SetReadDeadline(t time.Time) error {
	p.deadline.Store(t.UnixNano())
	return nil
}

// Close closes the descriptor; call it once no Read is running.
func (p *pollPipe) Close() error {
	if p.closed.Swap(true) {
		return nil
	}
	return unix.Close(p.fd)
}
