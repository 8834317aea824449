package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ark-gpu/ark/internal/audit"
)

func TestMain(m *testing.M) {
	// lumberjack (behind the real audit log) never stops its mill goroutine.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("gopkg.in/natefinch/lumberjack%2ev2.(*Logger).millRun"))
}

type fakeAuditor struct {
	mu      sync.Mutex
	entries []audit.Entry
	err     error
}

func (f *fakeAuditor) Write(_ context.Context, e audit.Entry) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	f.entries = append(f.entries, e)
	return nil
}

func (f *fakeAuditor) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.entries)
}

func (f *fakeAuditor) last() audit.Entry {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.entries[len(f.entries)-1]
}

type fakeMembers map[int64]string

func (m fakeMembers) JobOf(pid int64) (string, bool) {
	j, ok := m[pid]
	return j, ok
}

type harness struct {
	t  *testing.T
	x  *Executor
	fa *fakeAuditor
}

func newHarness(t *testing.T, cfg Config, members Membership) *harness {
	t.Helper()
	fa := &fakeAuditor{}
	x, err := New(Options{Config: cfg, Auditor: fa, Membership: members, Node: "node-1"})
	if err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, x: x, fa: fa}
}

// exec runs req and checks that it wrote exactly one audit entry that agrees
// with the result: every path, refused ones included, is audited.
func (h *harness) exec(req Request) Result {
	h.t.Helper()
	before := h.fa.count()
	res := h.x.Execute(context.Background(), req)
	if got := h.fa.count() - before; got != 1 {
		h.t.Fatalf("%s: wrote %d audit entries, want 1", req.Action, got)
	}
	e := h.fa.last()
	if e.Result != res.Result || e.Details != res.Details || e.Target.PID != req.PID || e.User != req.User || e.Target.Node == "" {
		h.t.Fatalf("audit entry %+v does not match request %+v / result %+v", e, req, res)
	}
	if req.Action != "" && e.Action != req.Action {
		h.t.Fatalf("audit action %q, want %q", e.Action, req.Action)
	}
	if (res.Result == audit.Failure) != (res.Err != nil) && res.Result != audit.PartialFailure {
		h.t.Fatalf("result %s with err %v", res.Result, res.Err)
	}
	if res.Result == audit.Failure && res.Details == "" {
		h.t.Fatalf("failure without a reason in details")
	}
	return res
}

func wantErr(t *testing.T, res Result, want error) {
	t.Helper()
	if !errors.Is(res.Err, want) {
		t.Fatalf("err = %v, want %v (result %s, details %q)", res.Err, want, res.Result, res.Details)
	}
	if res.Result != audit.Failure && !errors.Is(want, ErrEscalated) {
		t.Fatalf("result = %s, want failure", res.Result)
	}
}

func wantResult(t *testing.T, res Result, want audit.Result) {
	t.Helper()
	if res.Result != want {
		t.Fatalf("result = %s (err %v, details %q), want %s", res.Result, res.Err, res.Details, want)
	}
}

// start runs a child process and kills it at the end of the test.
func start(t *testing.T, env []string, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = env
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}

func pidOf(cmd *exec.Cmd) int64 { return int64(cmd.Process.Pid) }

func startTimeOf(t *testing.T, pid int64) uint64 {
	t.Helper()
	st, err := readStat("/proc", pid)
	if err != nil {
		t.Fatal(err)
	}
	return st.startTime
}

// alive reports whether pid is a live (non-zombie) process.
func alive(pid int64) bool {
	st, err := readStat("/proc", pid)
	return err == nil && st.state != 'Z'
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func fileHas(path, s string) func() bool {
	return func() bool {
		b, _ := os.ReadFile(path)
		return strings.Contains(string(b), s)
	}
}

func signalReq(pid int64, start uint64, sig string) Request {
	return Request{Action: ActionSignal, Params: map[string]string{"signal": sig}, PID: pid, User: "alice", ExpectedStartTime: start}
}

func TestSignalReachesTheProcessThatTrapsIt(t *testing.T) {
	file := filepath.Join(t.TempDir(), "trap")
	cmd := start(t, []string{"FILE=" + file}, "/bin/sh", "-c",
		`trap 'echo got >> "$FILE"' USR1; echo ready > "$FILE"; while :; do sleep 0.1; done`)
	waitFor(t, "trap installed", fileHas(file, "ready"))
	pid := pidOf(cmd)
	h := newHarness(t, Config{}, nil)
	res := h.exec(signalReq(pid, startTimeOf(t, pid), "SIGUSR1"))
	wantResult(t, res, audit.Success)
	waitFor(t, "trap to run", fileHas(file, "got"))
	if !alive(pid) {
		t.Fatal("trapped SIGUSR1 should not end the process")
	}
}

func TestStartTimeMismatchIsRefusedAndTheProcessLives(t *testing.T) {
	cmd := start(t, nil, "/bin/sleep", "60")
	pid := pidOf(cmd)
	h := newHarness(t, Config{}, nil)
	for _, action := range []string{ActionSignal, ActionGracefulShutdown} {
		req := signalReq(pid, startTimeOf(t, pid)+1, "SIGKILL")
		req.Action = action
		res := h.exec(req)
		wantErr(t, res, ErrStartTimeMismatch)
		if !strings.Contains(h.fa.last().Details, "start") {
			t.Errorf("details %q do not give the reason", h.fa.last().Details)
		}
	}
	if !alive(pid) {
		t.Fatal("process was killed despite the start time mismatch")
	}
}

func TestJobMismatchIsRefused(t *testing.T) {
	cmd := start(t, nil, "/bin/sleep", "60")
	pid := pidOf(cmd)
	cases := []struct {
		name    string
		members Membership
	}{
		{"other job", fakeMembers{pid: "job-b"}},
		{"no job known", fakeMembers{}},
		{"no membership source", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, Config{}, c.members)
			req := signalReq(pid, startTimeOf(t, pid), "SIGKILL")
			req.ExpectedJobID = "job-a"
			wantErr(t, h.exec(req), ErrNotInJob)
			if h.fa.last().Target.JobID != "job-a" {
				t.Errorf("audit target_job_id = %q", h.fa.last().Target.JobID)
			}
		})
	}
	if !alive(pid) {
		t.Fatal("process killed despite job mismatch")
	}
	h := newHarness(t, Config{}, fakeMembers{pid: "job-a"})
	req := signalReq(pid, startTimeOf(t, pid), "SIGCONT")
	req.ExpectedJobID = "job-a"
	wantResult(t, h.exec(req), audit.Success)
}

func TestActionsOutsideTheAllowListAreRefused(t *testing.T) {
	h := newHarness(t, Config{}, nil)
	for _, action := range []string{"", "Exec", "signal", "Shell"} {
		wantErr(t, h.exec(Request{Action: action, PID: 1234, User: "mallory"}), ErrNotAllowed)
	}
	if a := h.fa.last().Action; a != "Shell" {
		t.Errorf("audited action %q", a)
	}
}

func TestInvalidParamsAreRefused(t *testing.T) {
	cmd := start(t, nil, "/bin/sleep", "60")
	pid := pidOf(cmd)
	st := startTimeOf(t, pid)
	h := newHarness(t, Config{MaxWait: time.Minute}, nil)
	for _, params := range []map[string]string{
		{"signal": "SIGHUP"}, {"signal": "sigkill"}, {}, {"signal": "9"},
	} {
		req := signalReq(pid, st, "")
		req.Params = params
		wantErr(t, h.exec(req), ErrInvalidParams)
	}
	for _, ws := range []string{"abc", "-1", "61"} {
		req := Request{Action: ActionGracefulShutdown, Params: map[string]string{"wait_seconds": ws}, PID: pid, ExpectedStartTime: st}
		wantErr(t, h.exec(req), ErrInvalidParams)
	}
	if !alive(pid) {
		t.Fatal("process killed by a refused request")
	}
}

func TestProtectedPidsAreRefused(t *testing.T) {
	h := newHarness(t, Config{AllowUnverified: true}, nil)
	for _, pid := range []int64{-5, 0, 1, int64(os.Getpid())} {
		wantErr(t, h.exec(signalReq(pid, 0, "SIGCONT")), ErrProtectedProcess)
	}
}

func TestUnknownStartTimeIsRefusedUnlessAllowed(t *testing.T) {
	cmd := start(t, nil, "/bin/sleep", "60")
	pid := pidOf(cmd)
	wantErr(t, newHarness(t, Config{}, nil).exec(signalReq(pid, 0, "SIGCONT")), ErrUnverified)
	wantResult(t, newHarness(t, Config{AllowUnverified: true}, nil).exec(signalReq(pid, 0, "SIGCONT")), audit.Success)
}

func TestMissingProcessIsReported(t *testing.T) {
	cmd := exec.Command("/bin/true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, Config{AllowUnverified: true}, nil)
	wantErr(t, h.exec(signalReq(pidOf(cmd), 0, "SIGKILL")), ErrNoSuchProcess)
}

func TestDryRunChecksEverythingButDoesNotAct(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "hook-ran")
	cmd := start(t, nil, "/bin/sleep", "60")
	pid := pidOf(cmd)
	st := startTimeOf(t, pid)
	h := newHarness(t, Config{Hooks: map[string]Hook{"touch": {Command: "/usr/bin/touch", Args: []string{marker}}}}, nil)

	reqs := []Request{
		signalReq(pid, st, "SIGKILL"),
		{Action: ActionGracefulShutdown, Params: map[string]string{"signal": "SIGKILL", "wait_seconds": "0"}, PID: pid, ExpectedStartTime: st},
		{Action: ActionRunHook, Params: map[string]string{"hook": "touch"}, PID: pid, ExpectedStartTime: st},
		{Action: ActionReportOnly},
	}
	for _, req := range reqs {
		req.DryRun = true
		wantResult(t, h.exec(req), audit.DryRun)
	}
	if !alive(pid) {
		t.Fatal("dry run killed the process")
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("dry run ran the hook")
	}

	// The checks still run: a dry run on the wrong process is refused.
	req := signalReq(pid, st+1, "SIGKILL")
	req.DryRun = true
	wantErr(t, h.exec(req), ErrStartTimeMismatch)
	req = Request{Action: ActionRunHook, Params: map[string]string{"hook": "nope"}, DryRun: true}
	wantErr(t, h.exec(req), ErrUnknownHook)
}

func TestGracefulShutdownEndsWithSIGKILLWhenTERMIsIgnored(t *testing.T) {
	file := filepath.Join(t.TempDir(), "ready")
	cmd := start(t, []string{"FILE=" + file}, "/bin/sh", "-c",
		`trap '' TERM; echo ready > "$FILE"; while :; do sleep 0.1; done`)
	waitFor(t, "TERM ignored", fileHas(file, "ready"))
	pid := pidOf(cmd)
	h := newHarness(t, Config{}, nil)
	res := h.exec(Request{Action: ActionGracefulShutdown, Params: map[string]string{"wait_seconds": "0.3"}, PID: pid, ExpectedStartTime: startTimeOf(t, pid)})
	wantResult(t, res, audit.PartialFailure)
	if !errors.Is(res.Err, ErrEscalated) {
		t.Fatalf("err = %v, want ErrEscalated", res.Err)
	}
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("wait: %v", err)
	}
	if ws := ee.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("process ended with %v, want SIGKILL", ee)
	}
}

func TestGracefulShutdownSucceedsWhenTheProcessExits(t *testing.T) {
	cmd := start(t, nil, "/bin/sleep", "60")
	pid := pidOf(cmd)
	h := newHarness(t, Config{}, nil)
	res := h.exec(Request{Action: ActionGracefulShutdown, Params: map[string]string{"wait_seconds": "30"}, PID: pid, ExpectedStartTime: startTimeOf(t, pid)})
	wantResult(t, res, audit.Success)
	var ee *exec.ExitError
	if err := cmd.Wait(); !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
		t.Fatalf("process ended with %v, want SIGTERM", err)
	}
}

func TestRunHookRunsOnlyConfiguredProgramsWithArgvAndEnv(t *testing.T) {
	dir := t.TempDir()
	injected := filepath.Join(dir, "injected")
	t.Setenv("ARK_SECRET_TOKEN", "hunter2")
	cmd := start(t, nil, "/bin/sleep", "60")
	pid := pidOf(cmd)
	st := startTimeOf(t, pid)
	h := newHarness(t, Config{Hooks: map[string]Hook{
		"env":  {Command: "/usr/bin/env"},
		"echo": {Command: "/bin/echo", Args: []string{"$(touch " + injected + ")", ";", "rm", "-rf", "/"}},
	}}, nil)

	res := h.exec(Request{Action: ActionRunHook, Params: map[string]string{"hook": "env"}, PID: pid, ExpectedStartTime: st, JobID: "job-a", Node: "node-9"})
	wantResult(t, res, audit.Success)
	for _, want := range []string{"ARK_PID=" + strconv.FormatInt(pid, 10), "ARK_JOB_ID=job-a", "ARK_NODE=node-9", "PATH="} {
		if !strings.Contains(res.Details, want) {
			t.Errorf("details %q lack %q", res.Details, want)
		}
	}
	if strings.Contains(res.Details, "hunter2") {
		t.Errorf("the agent's environment leaked into the hook: %q", res.Details)
	}

	res = h.exec(Request{Action: ActionRunHook, Params: map[string]string{"hook": "echo"}})
	wantResult(t, res, audit.Success)
	if !strings.Contains(res.Details, "$(touch ") {
		t.Errorf("args were not passed literally: %q", res.Details)
	}
	if _, err := os.Stat(injected); err == nil {
		t.Fatal("a shell expanded the hook's arguments")
	}

	for _, name := range []string{"", "ENV", "/usr/bin/env", "rm"} {
		wantErr(t, h.exec(Request{Action: ActionRunHook, Params: map[string]string{"hook": name}}), ErrUnknownHook)
	}
	// A hook about a process verifies it like a signal does.
	wantErr(t, h.exec(Request{Action: ActionRunHook, Params: map[string]string{"hook": "env"}, PID: pid, ExpectedStartTime: st + 1}), ErrStartTimeMismatch)
}

func TestRunHookTimesOutAndKillsItsProcessGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child")
	h := newHarness(t, Config{Hooks: map[string]Hook{
		"hang": {Command: "/bin/sh", Args: []string{"-c", `sleep 30 & echo $! > ` + pidFile + `; echo started; wait`}, Timeout: 300 * time.Millisecond},
	}}, nil)
	res := h.exec(Request{Action: ActionRunHook, Params: map[string]string{"hook": "hang"}})
	wantErr(t, res, ErrHookTimeout)
	if !strings.Contains(res.Details, "started") {
		t.Errorf("output before the timeout is missing: %q", res.Details)
	}
	raw, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	child, err := strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the hook's child to be killed", func() bool { return !alive(child) })
}

func TestRunHookFailureAndOutputTruncation(t *testing.T) {
	h := newHarness(t, Config{OutputLimit: 10, Hooks: map[string]Hook{
		"fail":  {Command: "/bin/sh", Args: []string{"-c", "echo boom >&2; exit 3"}},
		"noisy": {Command: "/bin/sh", Args: []string{"-c", `printf '%0100d' 0`}},
	}}, nil)
	res := h.exec(Request{Action: ActionRunHook, Params: map[string]string{"hook": "fail"}})
	wantErr(t, res, ErrHookFailed)
	if !strings.Contains(res.Details, "exit status 3") || !strings.Contains(res.Details, "boom") {
		t.Errorf("details %q", res.Details)
	}
	res = h.exec(Request{Action: ActionRunHook, Params: map[string]string{"hook": "noisy"}})
	wantResult(t, res, audit.Success)
	if !strings.Contains(res.Details, "output: 0000000000... [truncated 90 bytes]") {
		t.Errorf("details %q", res.Details)
	}
}

func TestReportOnlyOnlyAudits(t *testing.T) {
	h := newHarness(t, Config{}, nil)
	res := h.exec(Request{Action: ActionReportOnly, PID: 1, User: "bob", Params: map[string]string{"reason": "xid 79"}})
	wantResult(t, res, audit.Success)
	if e := h.fa.last(); e.Params["reason"] != "xid 79" || e.Target.Node != "node-1" {
		t.Errorf("entry %+v", e)
	}
}

func TestAuditFailureIsReturned(t *testing.T) {
	fa := &fakeAuditor{err: errors.New("disk full")}
	x, err := New(Options{Auditor: fa})
	if err != nil {
		t.Fatal(err)
	}
	res := x.Execute(context.Background(), Request{Action: ActionReportOnly})
	if !errors.Is(res.Err, ErrAudit) {
		t.Fatalf("err = %v, want ErrAudit", res.Err)
	}
}

func TestStatIsParsedAfterTheLastParenthesis(t *testing.T) {
	procfs := t.TempDir()
	write := func(pid int, stat string) {
		if err := os.MkdirAll(filepath.Join(procfs, strconv.Itoa(pid)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(procfs, strconv.Itoa(pid), "stat"), []byte(stat), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	rest := " 1 1 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 %d 1000 100 18446744073709551615\n"
	write(4242, "4242 (evil) 1 2 3 (x) y"+fmt.Sprintf(" S"+rest, 777))
	write(4343, "4343 (zomb) Z"+fmt.Sprintf(rest, 888))
	fa := &fakeAuditor{}
	x, err := New(Options{Auditor: fa, ProcFS: procfs})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, x: x, fa: fa}
	dry := func(pid int64, st uint64) Request {
		r := signalReq(pid, st, "SIGKILL")
		r.DryRun = true
		return r
	}
	wantResult(t, h.exec(dry(4242, 777)), audit.DryRun)
	wantErr(t, h.exec(dry(4242, 2)), ErrStartTimeMismatch)
	wantErr(t, h.exec(dry(4343, 888)), ErrNoSuchProcess)
	wantErr(t, h.exec(dry(4444, 1)), ErrNoSuchProcess)
}

func TestRequestsAreRecordedInTheRealAuditLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	log, err := audit.Open(audit.Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	x, err := New(Options{Auditor: log, Node: "node-1"})
	if err != nil {
		t.Fatal(err)
	}
	cmd := start(t, nil, "/bin/sleep", "60")
	pid := pidOf(cmd)
	ok := x.Execute(context.Background(), signalReq(pid, startTimeOf(t, pid), "SIGCONT"))
	bad := x.Execute(context.Background(), signalReq(pid, startTimeOf(t, pid)+1, "SIGKILL"))
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 lines, got %q", raw)
	}
	for i, want := range []Result{ok, bad} {
		var e audit.Entry
		if err := json.Unmarshal([]byte(lines[i]), &e); err != nil {
			t.Fatal(err)
		}
		if e.Result != want.Result || e.Target.PID != pid || e.Action != ActionSignal || e.Target.Node != "node-1" || e.Details != want.Details {
			t.Errorf("line %d = %+v, want result %s", i, e, want.Result)
		}
	}
	if ok.Result != audit.Success || bad.Result != audit.Failure {
		t.Fatalf("results %s, %s", ok.Result, bad.Result)
	}
}

func TestConfigErrorsAreReportedTogether(t *testing.T) {
	cfg := Config{MaxWait: -1, OutputLimit: -1, Hooks: map[string]Hook{
		"a": {},
		"b": {Command: "bin/x", Timeout: -time.Second},
	}}
	_, err := New(Options{Config: cfg, Auditor: &fakeAuditor{}})
	want := strings.Join([]string{
		"executor: max_wait must not be negative, got -1ns",
		"executor: output_limit must not be negative, got -1",
		"executor: hooks.a: command is required",
		`executor: hooks.b: command "bin/x" must be an absolute path`,
		"executor: hooks.b: timeout must not be negative, got -1s",
	}, "\n")
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant:\n%s", err, want)
	}
	if _, err := New(Options{}); err == nil {
		t.Fatal("New without an auditor should fail")
	}
}

func TestWithoutPidfdSignalsStillReachOnlyTheVerifiedProcess(t *testing.T) {
	orig := pidfdOpen
	pidfdOpen = func(int, int) (int, error) { return -1, syscall.ENOSYS }
	t.Cleanup(func() { pidfdOpen = orig })

	file := filepath.Join(t.TempDir(), "trap")
	trapper := start(t, []string{"FILE=" + file}, "/bin/sh", "-c",
		`trap 'echo got >> "$FILE"' USR1; trap '' TERM; echo ready > "$FILE"; while :; do sleep 0.1; done`)
	waitFor(t, "traps installed", fileHas(file, "ready"))
	pid := pidOf(trapper)
	st := startTimeOf(t, pid)
	h := newHarness(t, Config{}, nil)
	wantResult(t, h.exec(signalReq(pid, st, "SIGUSR1")), audit.Success)
	waitFor(t, "trap to run", fileHas(file, "got"))
	wantErr(t, h.exec(signalReq(pid, st+1, "SIGKILL")), ErrStartTimeMismatch)
	res := h.exec(Request{Action: ActionGracefulShutdown, Params: map[string]string{"wait_seconds": "0.2"}, PID: pid, ExpectedStartTime: st})
	wantResult(t, res, audit.PartialFailure)
	if alive(pid) {
		t.Fatal("process survived the SIGKILL")
	}
}
