package executor

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ark-gpu/ark/internal/audit"
)

// hookPath is the PATH a hook runs with; the agent's own environment (which
// may hold credentials) is not passed on.
const hookPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// hookWaitDelay bounds how long a hook's output pipes are drained after it
// was killed, in case a grandchild left the process group holding them.
const hookWaitDelay = time.Second

func (x *Executor) runHook(ctx context.Context, req Request) Result {
	name := req.Params["hook"]
	hook, ok := x.cfg.Hooks[name]
	if !ok {
		return failed(fmt.Errorf("%w: %q", ErrUnknownHook, name))
	}
	// A hook about a process gets the same checks as a signal, so ARK_PID
	// names the process the caller saw; pid 0 means a node-level hook.
	if req.PID != 0 {
		if _, err := x.verify(req); err != nil {
			return failed(err)
		}
	}
	argv := strings.Join(append([]string{hook.Command}, hook.Args...), " ")
	if req.DryRun {
		return Result{Result: audit.DryRun, Details: fmt.Sprintf("would run hook %s: %s", name, argv)}
	}

	hctx, cancel := context.WithTimeout(ctx, hook.Timeout)
	defer cancel()
	cmd := exec.CommandContext(hctx, hook.Command, hook.Args...)
	jobID := req.JobID
	if jobID == "" {
		jobID = req.ExpectedJobID
	}
	cmd.Env = []string{
		hookPath,
		"ARK_PID=" + strconv.FormatInt(req.PID, 10),
		"ARK_JOB_ID=" + jobID,
		"ARK_NODE=" + req.Node,
	}
	// Its own process group, so a timeout kills what the hook started too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = hookWaitDelay
	out := &cappedBuffer{limit: x.cfg.OutputLimit}
	cmd.Stdout = out
	cmd.Stderr = out

	err := cmd.Run()
	switch {
	case errors.Is(hctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil:
		return failed(fmt.Errorf("%w: hook %s after %s; output: %s", ErrHookTimeout, name, hook.Timeout, out))
	case err != nil:
		return failed(fmt.Errorf("%w: hook %s: %w; output: %s", ErrHookFailed, name, err, out))
	}
	return Result{Result: audit.Success, Details: fmt.Sprintf("hook %s exited 0; output: %s", name, out)}
}

// cappedBuffer keeps the first limit bytes written to it and counts the rest.
type cappedBuffer struct {
	mu      sync.Mutex
	limit   int
	buf     []byte
	dropped int
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	keep := min(len(p), b.limit-len(b.buf))
	b.buf = append(b.buf, p[:keep]...)
	b.dropped += len(p) - keep
	return len(p), nil
}

func (b *cappedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := strings.TrimRight(string(b.buf), "\n")
	if b.dropped > 0 {
		s += fmt.Sprintf("... [truncated %d bytes]", b.dropped)
	}
	return s
}
