package kmsg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
	"time"

	"github.com/ark-gpu/ark/exporter/probe"
)

// sourceKind is how the kernel log is read.
type sourceKind int

const (
	// kindRecords is /dev/kmsg: each read returns one record
	// "prio,seq,usec,flags;message\n" with optional " KEY=value\n" lines.
	kindRecords sourceKind = iota
	// kindFIFO is a named pipe of lines.
	kindFIFO
	// kindFile is a regular file of lines, followed like tail -f.
	kindFile
)

func (k sourceKind) String() string {
	switch k {
	case kindRecords:
		return "kmsg"
	case kindFIFO:
		return "fifo"
	}
	return "file"
}

const (
	// recordBufSize holds the longest /dev/kmsg record (the kernel's
	// CONSOLE_EXT_LOG_MAX is 8 KiB); a smaller buffer makes read fail
	// with EINVAL.
	recordBufSize = 16 << 10
	// lineBufSize is the longest line read from a file or FIFO; longer
	// lines are skipped and counted as too_long.
	lineBufSize = 64 << 10
	// followInterval is how often a regular file is re-read at its end.
	followInterval = 250 * time.Millisecond
)

// source is the opened kernel log.
type source struct {
	f    *os.File
	path string
	kind sourceKind
}

// openSource opens path by what it is: a character device is /dev/kmsg,
// read from its end so that old boot messages are not replayed; a FIFO or a
// regular file is read as lines from the start. A missing or forbidden path
// is probe.ErrNoData.
func openSource(path string) (*source, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, openErr(path, err)
	}
	s := &source{path: path}
	mode := fi.Mode()
	flag := os.O_RDONLY
	switch {
	case mode&os.ModeCharDevice != 0:
		s.kind = kindRecords
	case mode&os.ModeNamedPipe != 0:
		// Opened read-write, the FIFO neither blocks the open until a
		// writer comes nor reads EOF when a writer leaves: a log has no
		// end. Go polls it, so closing the file wakes a pending read.
		s.kind, flag = kindFIFO, os.O_RDWR
	case mode.IsRegular():
		s.kind = kindFile
	default:
		return nil, fmt.Errorf("opening kernel log %s: not a character device, FIFO or regular file (%s)", path, mode)
	}
	s.f, err = os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, openErr(path, err)
	}
	if s.kind == kindRecords {
		if _, err := s.f.Seek(0, io.SeekEnd); err != nil {
			_ = s.f.Close()
			return nil, fmt.Errorf("seeking to the end of %s: %w", path, err)
		}
	}
	return s, nil
}

func openErr(path string, err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("opening kernel log: %w: %w", probe.ErrNoData, err)
	}
	return fmt.Errorf("opening kernel log %s: %w", path, err)
}

// Close closes the file; it wakes a read blocked on it.
func (s *source) Close() error { return s.f.Close() }

// lineHandler receives what the source reads.
type lineHandler interface {
	// line is one log line or /dev/kmsg record, without its newline;
	// it is valid only during the call.
	line(b []byte)
	// read counts lines read since the last call.
	read(n int)
	// ignored counts a line skipped for reason.
	ignored(reason string)
}

// follow reads until the file is closed or fails. It returns the read
// error; the caller tells a close on cancel from a failure.
func (s *source) follow(ctx context.Context, h lineHandler) error {
	if s.kind == kindRecords {
		return s.followRecords(h)
	}
	return s.followLines(ctx, h)
}

func (s *source) followRecords(h lineHandler) error {
	buf := make([]byte, recordBufSize)
	for {
		n, err := s.f.Read(buf)
		switch {
		case errors.Is(err, syscall.EPIPE):
			// The kernel overwrote records before we read them; the
			// next read returns the oldest one left.
			h.ignored("overrun")
			continue
		case err == nil && n == 0, errors.Is(err, io.EOF):
			return fmt.Errorf("reading %s: unexpected end of file (not /dev/kmsg?)", s.path)
		case err != nil:
			return fmt.Errorf("reading %s: %w", s.path, err)
		}
		rec := buf[:n]
		if i := bytes.IndexByte(rec, '\n'); i >= 0 {
			rec = rec[:i]
		}
		h.read(1)
		h.line(rec)
	}
}

func (s *source) followLines(ctx context.Context, h lineHandler) error {
	buf := make([]byte, lineBufSize)
	end := 0
	discarding := false // inside a line longer than buf
	var tick *time.Ticker
	defer func() {
		if tick != nil {
			tick.Stop()
		}
	}()
	for {
		n, err := s.f.Read(buf[end:])
		end += n
		start, lines := 0, 0
		for {
			i := bytes.IndexByte(buf[start:end], '\n')
			if i < 0 {
				break
			}
			if discarding {
				discarding = false
			} else {
				h.line(buf[start : start+i])
			}
			start += i + 1
			lines++
		}
		if lines > 0 {
			h.read(lines)
		}
		end = copy(buf, buf[start:end])
		if end == len(buf) {
			if !discarding {
				h.ignored("too_long")
			}
			discarding, end = true, 0
		}
		switch {
		case err == nil:
			continue
		case errors.Is(err, io.EOF) && s.kind == kindFile:
			// At the end of a regular file: wait for it to grow.
			if tick == nil {
				tick = time.NewTicker(followInterval)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-tick.C:
			}
		default:
			return fmt.Errorf("reading %s: %w", s.path, err)
		}
	}
}
