package executor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ark-gpu/ark/exporter/procstat"
)

// procStat is what the executor reads from /proc/<pid>/stat.
type procStat struct {
	state     byte
	startTime uint64 // field 22: clock ticks since boot
}

// readStat reads /proc/<pid>/stat under procfs. The command name (field 2)
// may hold spaces and parentheses, so fields are counted after the last ')'.
func readStat(procfs string, pid int64) (procStat, error) {
	raw, err := os.ReadFile(filepath.Join(procfs, strconv.FormatInt(pid, 10), "stat"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			return procStat{}, fmt.Errorf("%w: pid %d", ErrNoSuchProcess, pid)
		}
		return procStat{}, fmt.Errorf("reading stat of pid %d: %w", pid, err)
	}
	st, err := procstat.Parse(raw)
	if err != nil {
		return procStat{}, fmt.Errorf("parsing stat of pid %d: %w", pid, err)
	}
	return procStat{state: st.State, startTime: st.StartTime}, nil
}

// target is a verified process to act on. With a pidfd (Linux 5.3+) a
// signal can only reach the process that was verified: if it exits and its
// pid is reused, pidfd_send_signal fails with ESRCH instead of hitting the
// newcomer. Without pidfd the start time is re-read right before each kill,
// which narrows the race to microseconds but cannot close it.
type target struct {
	procfs    string
	pid       int64
	startTime uint64
	fd        int // pidfd, or -1
}

// pidfdOpen is unix.PidfdOpen; tests replace it to exercise the fallback.
var pidfdOpen = unix.PidfdOpen

// openTarget pins pid and checks, after pinning, that it is still the
// process with startTime.
func openTarget(procfs string, pid int64, startTime uint64) (*target, error) {
	t := &target{procfs: procfs, pid: pid, startTime: startTime, fd: -1}
	fd, err := pidfdOpen(int(pid), 0)
	switch {
	case err == nil:
		t.fd = fd
	case errors.Is(err, unix.ESRCH):
		return nil, fmt.Errorf("%w: pid %d", ErrNoSuchProcess, pid)
	case errors.Is(err, unix.ENOSYS):
		// Old kernel: fall back to kill(2) with a re-check before each signal.
	default:
		return nil, fmt.Errorf("opening pidfd of pid %d: %w", pid, err)
	}
	if err := t.recheck(); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// recheck fails unless pid is still the live process with startTime.
func (t *target) recheck() error {
	st, err := readStat(t.procfs, t.pid)
	if err != nil {
		return err
	}
	if st.startTime != t.startTime {
		return fmt.Errorf("%w: pid %d now has start time %d, verified %d", ErrStartTimeMismatch, t.pid, st.startTime, t.startTime)
	}
	if st.state == 'Z' {
		return fmt.Errorf("%w: pid %d has exited", ErrNoSuchProcess, t.pid)
	}
	return nil
}

func (t *target) signal(sig unix.Signal) error {
	var err error
	if t.fd >= 0 {
		err = unix.PidfdSendSignal(t.fd, sig, nil, 0)
	} else {
		if err := t.recheck(); err != nil {
			return err
		}
		err = unix.Kill(int(t.pid), sig)
	}
	if errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("%w: pid %d exited before %s", ErrNoSuchProcess, t.pid, unix.SignalName(sig))
	}
	if err != nil {
		return fmt.Errorf("sending %s to pid %d: %w", unix.SignalName(sig), t.pid, err)
	}
	return nil
}

// waitStep bounds one wait so a cancelled context is noticed promptly; with
// a pidfd the exit itself wakes the wait at once.
const waitStep = 50 * time.Millisecond

// waitExit waits up to d for the process to exit (become a zombie or go).
func (t *target) waitExit(ctx context.Context, d time.Duration) (bool, error) {
	deadline := time.Now().Add(d)
	for {
		if t.exited() {
			return true, nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false, nil
		}
		if err := ctx.Err(); err != nil {
			return false, err
		}
		step := min(left, waitStep)
		if t.fd < 0 {
			timer := time.NewTimer(step)
			select {
			case <-ctx.Done():
				timer.Stop()
				return false, ctx.Err()
			case <-timer.C:
			}
			continue
		}
		fds := []unix.PollFd{{Fd: int32(t.fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, int(step.Milliseconds())+1); err != nil && !errors.Is(err, unix.EINTR) {
			return false, fmt.Errorf("waiting for pid %d: %w", t.pid, err)
		}
	}
}

// exited reports whether the pinned process has exited.
func (t *target) exited() bool {
	if t.fd >= 0 {
		fds := []unix.PollFd{{Fd: int32(t.fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 0)
		return err == nil && n > 0
	}
	return t.recheck() != nil
}

// Close releases the pidfd.
func (t *target) Close() {
	if t.fd >= 0 {
		_ = unix.Close(t.fd)
		t.fd = -1
	}
}
