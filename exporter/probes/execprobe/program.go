package execprobe

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"golang.org/x/time/rate"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probe"
)

const (
	// rejectLogEvery is the least time between two log lines about rejected
	// stdout lines of one program; the lines in between are only counted.
	rejectLogEvery = 10 * time.Second
	// maxStderrLine is the longest stderr line logged; the rest is cut.
	maxStderrLine = 4096
	// drainTimeout bounds how long the readers may go on after the process
	// group is gone: a descendant that left the group (setsid) may still
	// hold the pipes open.
	drainTimeout = 2 * time.Second
	// groupPollInterval is how often a stopping group is checked for
	// survivors.
	groupPollInterval = 20 * time.Millisecond
	// killWait bounds the wait for the group to vanish after SIGKILL: the
	// killed descendants are zombies until init reaps them, which some
	// inits do only every second or so.
	killWait = 2 * time.Second
)

// program supervises one configured program: start, read, restart, stop.
type program struct {
	cfg     ProgramConfig
	logger  *slog.Logger
	observe func(time.Duration, error)
	// countReject feeds the agent's ark_events_rejected_total; may be nil.
	countReject func(reason string)
	// rec keeps the record of the running program for the next agent.
	rec *records
	m   *metrics
	pm  programMetrics
	// events and stderr are shared by all runs, so a restart does not
	// refill the budget.
	events *rate.Limiter
	stderr *rate.Limiter

	// Rejected-line log limiting: only the stdout reader touches these,
	// and runs are sequential.
	lastRejectLog     time.Time
	suppressedRejects int
}

func newProgram(cfg ProgramConfig, logger *slog.Logger, observe func(time.Duration, error), m *metrics) *program {
	return &program{
		rec:     newRecords("", "", logger),
		cfg:     cfg,
		logger:  logger.With("program", cfg.Name),
		observe: observe,
		m:       m,
		pm:      m.forProgram(cfg.Name),
		events:  rate.NewLimiter(rate.Limit(cfg.MaxEventsPerSecond), cfg.MaxEventsPerSecond),
		stderr:  rate.NewLimiter(rate.Limit(cfg.MaxStderrLinesPerSecond), cfg.MaxStderrLinesPerSecond),
	}
}

// supervise runs the program until ctx ends, restarting it per its policy.
func (p *program) supervise(ctx context.Context, sink probe.Sink) {
	delay := p.cfg.Backoff.Initial
	for ctx.Err() == nil {
		started := time.Now()
		err := p.runOnce(ctx, sink)
		if ctx.Err() != nil {
			return
		}
		if !p.restarts(err) {
			p.logger.Info("program ended, not restarting", "restart", string(p.cfg.Restart))
			return
		}
		if time.Since(started) >= p.cfg.Backoff.ResetAfter {
			delay = p.cfg.Backoff.Initial
		}
		wait := jitter(delay)
		p.pm.backoff.Set(wait.Seconds())
		p.logger.Info("restarting program", "backoff", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		p.pm.restarts.Inc()
		delay = min(2*delay, p.cfg.Backoff.Max)
	}
}

// restarts says whether the policy restarts a program whose run ended with
// err (nil: a clean exit).
func (p *program) restarts(err error) bool {
	switch p.cfg.Restart {
	case RestartAlways:
		return true
	case RestartOnFailure:
		return err != nil
	default:
		return false
	}
}

// jitter returns a random duration in [d/2, d]. Consecutive waits with d
// doubling never shrink, and parallel programs spread out.
func jitter(d time.Duration) time.Duration {
	half := d / 2
	return half + rand.N(d-half+1)
}

// runOnce starts the program, feeds its events to sink until it exits or
// ctx ends, and returns once its process group and readers are gone. It
// returns nil for a clean exit or a stop by ctx, an error when the program
// failed to start, exited non-zero or was killed.
func (p *program) runOnce(ctx context.Context, sink probe.Sink) error {
	cmd := exec.Command(p.cfg.Command, p.cfg.Args...)
	cmd.Dir = p.cfg.Dir
	// Environ is the agent's environment with PWD matching Dir, and the
	// run's mark, which its children inherit.
	run := newRun()
	cmd.Env = append(append(cmd.Environ(), p.cfg.Env...), runEnv+"="+run)
	// Its own process group, so a stop reaches the children it spawned;
	// the leader dies with the agent, even by SIGKILL (the next agent ends
	// the rest of the group from the record).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	outR, outW, err := newPollPipe(readLinger)
	if err != nil {
		return p.startFailed(fmt.Errorf("creating stdout pipe: %w", err))
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		closeAll(outR, outW)
		return p.startFailed(fmt.Errorf("creating stderr pipe: %w", err))
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	err = cmd.Start()
	// The child holds its own copies of the write ends; ours must go so
	// the readers see EOF once the group is gone.
	closeAll(outW, errW)
	if err != nil {
		closeAll(outR, errR)
		return p.startFailed(fmt.Errorf("starting %s: %w", p.cfg.Command, err))
	}
	started := time.Now()
	pgid := cmd.Process.Pid
	if err := p.rec.write(p.cfg.Name, pgid, run); err != nil {
		p.logger.Warn("a restarted agent will not find this program if this one is killed", "err", err)
	}
	defer p.rec.remove(p.cfg.Name)
	p.pm.up.Set(1)
	p.observe(0, nil)
	p.logger.Info("program started", "pid", pgid)

	var readers sync.WaitGroup
	readers.Go(func() { p.readEvents(outR, sink) })
	readers.Go(func() { p.readStderr(errR) })
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	var waitErr error
	stopped := false
	select {
	case waitErr = <-exited:
		p.pm.up.Set(0)
		p.stopLeftovers(pgid)
	case <-ctx.Done():
		stopped = true
		waitErr = p.stopGroup(pgid, exited)
		p.pm.up.Set(0)
	}
	deadline := time.Now().Add(drainTimeout)
	_ = outR.SetReadDeadline(deadline)
	_ = errR.SetReadDeadline(deadline)
	readers.Wait()
	closeAll(outR, errR)

	ran := time.Since(started)
	switch {
	case stopped:
		p.observe(ran, nil)
		p.logger.Info("program stopped", "pid", pgid, "ran", ran, "exit", exitText(waitErr))
		return nil
	case waitErr != nil:
		err := fmt.Errorf("program %s (pid %d) failed after %s: %w", p.cfg.Name, pgid, ran.Round(time.Millisecond), waitErr)
		p.observe(ran, err)
		p.logger.Warn("program failed", "pid", pgid, "ran", ran, "err", waitErr)
		return err
	default:
		p.observe(ran, nil)
		p.logger.Info("program exited", "pid", pgid, "ran", ran)
		return nil
	}
}

func (p *program) startFailed(err error) error {
	p.observe(0, err)
	p.logger.Error("cannot start program", "err", err)
	return err
}

func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// stopGroup ends process group pgid whose leader is still running:
// SIGTERM to the group, SIGKILL to whatever is left after the grace period.
// It returns the leader's Wait result, from exited.
func (p *program) stopGroup(pgid int, exited <-chan error) error {
	grace := p.cfg.ShutdownGrace
	deadline := time.Now().Add(grace)
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	var err error
	select {
	case err = <-exited:
	case <-t.C:
		p.logger.Warn("program outlived its shutdown grace, killing its process group", "pgid", pgid, "grace", grace)
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		err = <-exited
		waitGroupGone(pgid, time.Now().Add(killWait))
		return err
	}
	// The leader is gone; the rest of the group gets what is left of the
	// grace period.
	p.killGroupAfter(pgid, deadline)
	return err
}

// stopLeftovers ends what a leader that exited by itself left running in
// its group (background children), SIGTERM first.
func (p *program) stopLeftovers(pgid int) {
	if !groupAlive(pgid) {
		return
	}
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	p.killGroupAfter(pgid, time.Now().Add(p.cfg.ShutdownGrace))
}

// killGroupAfter waits until process group pgid is empty or deadline
// passes, then SIGKILLs what is left and waits (a bounded while) for it to
// go.
func (p *program) killGroupAfter(pgid int, deadline time.Time) {
	if waitGroupGone(pgid, deadline) {
		return
	}
	p.logger.Warn("killing what is left of the program's process group", "pgid", pgid)
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	waitGroupGone(pgid, time.Now().Add(killWait))
}

// closeAll closes pipe ends; a pipe's close error carries nothing to act on.
func closeAll(files ...io.Closer) {
	for _, f := range files {
		_ = f.Close()
	}
}

// groupAlive reports whether process group pgid has a member (a zombie not
// yet reaped counts).
func groupAlive(pgid int) bool {
	err := syscall.Kill(-pgid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// waitGroupGone polls until process group pgid is empty or deadline
// passes, and reports whether it is empty.
func waitGroupGone(pgid int, deadline time.Time) bool {
	t := time.NewTicker(groupPollInterval)
	defer t.Stop()
	for groupAlive(pgid) {
		if !time.Now().Before(deadline) {
			return false
		}
		<-t.C
	}
	return true
}

// readEvents decodes the program's stdout until EOF, handing accepted
// events to sink. It never stops reading because of a bad line or the rate
// limit, so the program never blocks on a full pipe for long.
func (p *program) readEvents(r io.Reader, sink probe.Sink) {
	dec := event.NewDecoder(r, event.WithMaxLineBytes(p.cfg.MaxLineBytes))
	var ev event.Event
	for {
		err := dec.Decode(&ev)
		if err == nil {
			switch {
			case !p.events.Allow():
				p.pm.rateLimited.Inc()
			case sink.Emit(&ev):
				p.pm.events.Inc()
			default:
				p.pm.busFull.Inc()
			}
			continue
		}
		var re *event.RejectError
		if errors.As(err, &re) {
			p.reject(re)
			continue
		}
		if !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrDeadlineExceeded) {
			p.logger.Warn("reading program stdout", "err", err)
		}
		return
	}
}

// reject counts a bad line and logs the first one, then at most one every
// rejectLogEvery with the number left unlogged in between.
func (p *program) reject(re *event.RejectError) {
	p.pm.reject(p.m, p.cfg.Name, re.Reason)
	if p.countReject != nil {
		p.countReject(re.Reason)
	}
	now := time.Now()
	if !p.lastRejectLog.IsZero() && now.Sub(p.lastRejectLog) < rejectLogEvery {
		p.suppressedRejects++
		return
	}
	p.logger.Warn("rejected line from program", "line", re.Line, "reason", re.Reason,
		"detail", re.Detail, "suppressed", p.suppressedRejects)
	p.lastRejectLog = now
	p.suppressedRejects = 0
}

// readStderr copies the program's stderr into the log line by line, at
// most MaxStderrLinesPerSecond; the rest is counted.
func (p *program) readStderr(r io.Reader) {
	br := bufio.NewReaderSize(r, maxStderrLine)
	for {
		line, err := br.ReadSlice('\n')
		truncated := errors.Is(err, bufio.ErrBufferFull)
		p.logStderr(line, truncated)
		for errors.Is(err, bufio.ErrBufferFull) {
			_, err = br.ReadSlice('\n')
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrDeadlineExceeded) {
				p.logger.Warn("reading program stderr", "err", err)
			}
			return
		}
	}
}

func (p *program) logStderr(line []byte, truncated bool) {
	line = bytes.TrimRight(line, "\r\n")
	if len(line) == 0 {
		return
	}
	if !p.stderr.Allow() {
		p.pm.stderrDropped.Inc()
		return
	}
	if truncated {
		p.logger.Info("program stderr", "line", string(line), "truncated", true)
		return
	}
	p.logger.Info("program stderr", "line", string(line))
}

// readLinger is how long the stdout reader rests after a short read, so a
// program's small writes gather in the pipe (64 KiB) between reads.
const readLinger = 500 * time.Millisecond
