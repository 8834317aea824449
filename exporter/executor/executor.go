// Package executor carries out the allow-listed actions the agent may take on
// its node (signal a process, shut it down gracefully, run a configured hook,
// or just record a report) after verifying that the target is the process
// the caller saw, and writes one audit entry for every request, refused ones
// included.
package executor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ark-gpu/ark/internal/audit"
)

// The allow-listed actions; anything else is refused with ErrNotAllowed.
const (
	// ActionSignal sends params["signal"] to the pid.
	ActionSignal = "Signal"
	// ActionGracefulShutdown sends params["signal"] (default SIGTERM), waits
	// up to params["wait_seconds"] (default 10) for the exit, then SIGKILL.
	ActionGracefulShutdown = "GracefulShutdown"
	// ActionRunHook runs the configured hook params["hook"].
	ActionRunHook = "RunHook"
	// ActionReportOnly does nothing but write the audit entry.
	ActionReportOnly = "ReportOnly"
)

// Errors returned in Result.Err, wrapped with the specifics.
var (
	ErrNotAllowed        = errors.New("action not allowed")
	ErrInvalidParams     = errors.New("invalid action parameters")
	ErrProtectedProcess  = errors.New("protected process")
	ErrNoSuchProcess     = errors.New("no such process")
	ErrStartTimeMismatch = errors.New("process start time mismatch")
	ErrUnverified        = errors.New("process start time unknown")
	ErrNotInJob          = errors.New("process not in job")
	ErrUnknownHook       = errors.New("unknown hook")
	ErrHookFailed        = errors.New("hook failed")
	ErrHookTimeout       = errors.New("hook timed out")
	ErrEscalated         = errors.New("process needed SIGKILL")
	ErrStillAlive        = errors.New("process still alive")
	ErrAudit             = errors.New("audit entry not written")
)

// signals are the only signals an action may send.
var signals = map[string]unix.Signal{
	"SIGUSR1": unix.SIGUSR1,
	"SIGUSR2": unix.SIGUSR2,
	"SIGTERM": unix.SIGTERM,
	"SIGKILL": unix.SIGKILL,
	"SIGCONT": unix.SIGCONT,
	"SIGSTOP": unix.SIGSTOP,
}

// Auditor records one entry per request; *audit.Log implements it.
type Auditor interface {
	Write(ctx context.Context, e audit.Entry) error
}

// Membership tells which job a pid belongs to; the agent implements it over
// the causal graph.
type Membership interface {
	JobOf(pid int64) (string, bool)
}

// Request is one action to take.
type Request struct {
	Action string
	Params map[string]string
	PID    int64
	JobID  string // recorded as the audit target_job_id
	Node   string // recorded as the audit target_node; defaults to Options.Node
	User   string
	DryRun bool
	// ExpectedStartTime is the start time (clock ticks since boot) of the
	// process the caller saw; 0 means unknown, and then signals are refused
	// unless Config.AllowUnverified.
	ExpectedStartTime uint64
	// ExpectedJobID, when set, must be the job Membership reports for PID.
	ExpectedJobID string
}

// Result is what came of a request. Err is set when Result is
// audit.Failure (the reason) or audit.PartialFailure (ErrEscalated), and
// also carries ErrAudit when the audit entry could not be written.
type Result struct {
	Result  audit.Result
	Details string
	Err     error
}

// Options are what New needs besides the config.
type Options struct {
	Config  Config
	Auditor Auditor // required
	// Membership may be nil: requests with ExpectedJobID are then refused.
	Membership Membership
	Logger     *slog.Logger
	// ProcFS is the procfs mount point (default /proc).
	ProcFS string
	// Node is the target_node recorded when a request names none
	// (default: the host name).
	Node string
}

// Executor runs requests; it is safe for concurrent use.
type Executor struct {
	cfg     Config
	auditor Auditor
	members Membership
	logger  *slog.Logger
	procfs  string
	node    string
	self    int64
}

// New validates the config, applies defaults and returns an Executor.
func New(opts Options) (*Executor, error) {
	if err := opts.Config.Validate(); err != nil {
		return nil, err
	}
	if opts.Auditor == nil {
		return nil, errors.New("executor: an auditor is required")
	}
	x := &Executor{
		cfg:     opts.Config.withDefaults(),
		auditor: opts.Auditor,
		members: opts.Membership,
		logger:  opts.Logger,
		procfs:  opts.ProcFS,
		node:    opts.Node,
		self:    int64(os.Getpid()),
	}
	if x.logger == nil {
		x.logger = slog.New(slog.DiscardHandler)
	}
	if x.procfs == "" {
		x.procfs = "/proc"
	}
	if x.node == "" {
		x.node, _ = os.Hostname()
	}
	return x, nil
}

// Execute checks and carries out req, then writes its audit entry.
func (x *Executor) Execute(ctx context.Context, req Request) Result {
	if req.Node == "" {
		req.Node = x.node
	}
	res := x.execute(ctx, req)
	jobID := req.JobID
	if jobID == "" {
		jobID = req.ExpectedJobID
	}
	entry := audit.Entry{
		Timestamp: time.Now(), User: req.User, Action: req.Action,
		Target: audit.Target{PID: req.PID, JobID: jobID, Node: req.Node},
		Result: res.Result, Details: res.Details, Params: req.Params,
	}
	if entry.Action == "" {
		entry.Action = "(none)" // the audit log refuses an empty action
	}
	if err := x.auditor.Write(ctx, entry); err != nil {
		x.logger.Error("writing audit entry", "action", req.Action, "pid", req.PID, "err", err)
		res.Err = errors.Join(res.Err, fmt.Errorf("%w: %w", ErrAudit, err))
	}
	if res.Result == audit.Failure {
		x.logger.Warn("action failed", "action", req.Action, "pid", req.PID, "user", req.User, "err", res.Err)
	} else {
		x.logger.Info("action", "action", req.Action, "pid", req.PID, "user", req.User, "result", string(res.Result))
	}
	return res
}

func failed(err error) Result {
	return Result{Result: audit.Failure, Details: err.Error(), Err: err}
}

func (x *Executor) execute(ctx context.Context, req Request) Result {
	switch req.Action {
	case ActionSignal:
		return x.signal(req)
	case ActionGracefulShutdown:
		return x.gracefulShutdown(ctx, req)
	case ActionRunHook:
		return x.runHook(ctx, req)
	case ActionReportOnly:
		if req.DryRun {
			return Result{Result: audit.DryRun, Details: "report only"}
		}
		return Result{Result: audit.Success, Details: "report only"}
	default:
		return failed(fmt.Errorf("%w: %q", ErrNotAllowed, req.Action))
	}
}

func parseSignal(name string) (unix.Signal, error) {
	sig, ok := signals[name]
	if !ok {
		return 0, fmt.Errorf("%w: signal %q is not one of SIGUSR1, SIGUSR2, SIGTERM, SIGKILL, SIGCONT, SIGSTOP", ErrInvalidParams, name)
	}
	return sig, nil
}

// verify checks that req.PID may be acted on and is the process the caller
// saw; it returns the start time read from procfs.
func (x *Executor) verify(req Request) (uint64, error) {
	if req.PID <= 1 {
		return 0, fmt.Errorf("%w: refusing pid %d", ErrProtectedProcess, req.PID)
	}
	if req.PID == x.self {
		return 0, fmt.Errorf("%w: refusing the agent's own pid %d", ErrProtectedProcess, req.PID)
	}
	st, err := readStat(x.procfs, req.PID)
	if err != nil {
		return 0, err
	}
	if st.state == 'Z' {
		return 0, fmt.Errorf("%w: pid %d has exited", ErrNoSuchProcess, req.PID)
	}
	switch {
	case req.ExpectedStartTime == 0 && !x.cfg.AllowUnverified:
		return 0, fmt.Errorf("%w: no expected start time for pid %d and allow_unverified is off", ErrUnverified, req.PID)
	case req.ExpectedStartTime != 0 && st.startTime != req.ExpectedStartTime:
		return 0, fmt.Errorf("%w: pid %d started at %d, expected %d (pid reused?)", ErrStartTimeMismatch, req.PID, st.startTime, req.ExpectedStartTime)
	}
	if req.ExpectedJobID != "" {
		if x.members == nil {
			return 0, fmt.Errorf("%w: no membership source to check job %q", ErrNotInJob, req.ExpectedJobID)
		}
		job, ok := x.members.JobOf(req.PID)
		if !ok {
			return 0, fmt.Errorf("%w: pid %d belongs to no known job, expected %q", ErrNotInJob, req.PID, req.ExpectedJobID)
		}
		if job != req.ExpectedJobID {
			return 0, fmt.Errorf("%w: pid %d belongs to %q, expected %q", ErrNotInJob, req.PID, job, req.ExpectedJobID)
		}
	}
	return st.startTime, nil
}

func (x *Executor) signal(req Request) Result {
	name := req.Params["signal"]
	sig, err := parseSignal(name)
	if err != nil {
		return failed(err)
	}
	start, err := x.verify(req)
	if err != nil {
		return failed(err)
	}
	if req.DryRun {
		return Result{Result: audit.DryRun, Details: fmt.Sprintf("would send %s to pid %d (start time %d)", name, req.PID, start)}
	}
	t, err := openTarget(x.procfs, req.PID, start)
	if err != nil {
		return failed(err)
	}
	defer t.Close()
	if err := t.signal(sig); err != nil {
		return failed(err)
	}
	return Result{Result: audit.Success, Details: fmt.Sprintf("sent %s to pid %d (start time %d)", name, req.PID, start)}
}

// gracefulShutdown reports success when the process exits within the wait
// after the first signal, partial_failure (ErrEscalated) when it took
// SIGKILL, and failure (ErrStillAlive) when even SIGKILL did not end it
// within Config.KillWait (e.g. stuck in uninterruptible sleep).
func (x *Executor) gracefulShutdown(ctx context.Context, req Request) Result {
	name := req.Params["signal"]
	if name == "" {
		name = "SIGTERM"
	}
	sig, err := parseSignal(name)
	if err != nil {
		return failed(err)
	}
	wait := DefaultShutdownWait
	if ws, ok := req.Params["wait_seconds"]; ok {
		n, err := strconv.ParseFloat(ws, 64)
		if err != nil || n < 0 || time.Duration(n*float64(time.Second)) > x.cfg.MaxWait {
			return failed(fmt.Errorf("%w: wait_seconds %q must be a number from 0 to %s", ErrInvalidParams, ws, x.cfg.MaxWait))
		}
		wait = time.Duration(n * float64(time.Second))
	}
	start, err := x.verify(req)
	if err != nil {
		return failed(err)
	}
	if req.DryRun {
		return Result{Result: audit.DryRun, Details: fmt.Sprintf("would send %s to pid %d, wait %s, then SIGKILL", name, req.PID, wait)}
	}
	t, err := openTarget(x.procfs, req.PID, start)
	if err != nil {
		return failed(err)
	}
	defer t.Close()
	if err := t.signal(sig); err != nil {
		return failed(err)
	}
	exited, err := t.waitExit(ctx, wait)
	if err != nil {
		return failed(fmt.Errorf("sent %s to pid %d, then stopped waiting: %w", name, req.PID, err))
	}
	if exited {
		return Result{Result: audit.Success, Details: fmt.Sprintf("pid %d exited after %s", req.PID, name)}
	}
	if err := t.signal(unix.SIGKILL); err != nil {
		if errors.Is(err, ErrNoSuchProcess) { // exited just as the wait ended
			return Result{Result: audit.Success, Details: fmt.Sprintf("pid %d exited after %s", req.PID, name)}
		}
		return failed(err)
	}
	exited, err = t.waitExit(ctx, x.cfg.KillWait)
	if err != nil {
		return failed(fmt.Errorf("sent SIGKILL to pid %d, then stopped waiting: %w", req.PID, err))
	}
	if !exited {
		return failed(fmt.Errorf("%w: pid %d did not exit %s after SIGKILL", ErrStillAlive, req.PID, x.cfg.KillWait))
	}
	err = fmt.Errorf("%w: pid %d still alive %s after %s, killed with SIGKILL", ErrEscalated, req.PID, wait, name)
	return Result{Result: audit.PartialFailure, Details: err.Error(), Err: err}
}
