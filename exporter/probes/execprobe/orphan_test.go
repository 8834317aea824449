package execprobe

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probe"
	"github.com/ark-gpu/ark/exporter/procstat"
)

// The test binary re-executed with agentHelperEnv set is a stand-in agent:
// it runs the exec probe with that config and stateDirEnv as its state
// directory until SIGTERM (a clean stop) or SIGKILL.
const (
	agentHelperEnv = "ARK_EXECPROBE_TEST_AGENT"
	stateDirEnv    = "ARK_EXECPROBE_TEST_STATE"
)

type discard struct{}

func (discard) Emit(*event.Event) bool { return true }

func runAgentHelper(config string) int {
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	pr, err := New(probe.Env{
		Logger:     logger,
		Registerer: prometheus.NewRegistry(),
		Config:     func(v any) error { return yaml.Unmarshal([]byte(config), v) },
		StateDir:   os.Getenv(stateDirEnv),
		NodeName:   "node-t",
	})
	if err != nil {
		logger.Error("starting the exec probe", "err", err)
		return 3
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := pr.Run(ctx, discard{}); err != nil {
		logger.Error("running the exec probe", "err", err)
		return 4
	}
	return 0
}

// startAgent starts a stand-in agent process.
func startAgent(t *testing.T, config, stateDir string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), agentHelperEnv+"="+config, stateDirEnv+"="+stateDir)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}

// running reports whether pid is a process that has not exited (a zombie
// has).
func running(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	st, err := procstat.Parse(b)
	return err == nil && st.State != 'Z' && st.State != 'X'
}

// killGroupAtEnd SIGKILLs process group pgid when the test ends, whatever
// happened.
func killGroupAtEnd(t *testing.T, pgid int) {
	t.Cleanup(func() { _ = syscall.Kill(-pgid, syscall.SIGKILL) })
}

// pidLines reads the "leader child" lines the program script writes.
func pidLines(t *testing.T, path string) [][2]int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var out [][2]int
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		l, err1 := strconv.Atoi(f[0])
		c, err2 := strconv.Atoi(f[1])
		if err1 != nil || err2 != nil {
			t.Fatalf("bad pid line %q", line)
		}
		out = append(out, [2]int{l, c})
	}
	return out
}

// A SIGKILLed agent takes its programs' leaders with it, and the next agent
// ends what they started (same process group, same run) before it starts
// its own copy: one copy runs, not two.
func TestProgramsOfAKilledAgentDoNotOutliveIt(t *testing.T) {
	dir := t.TempDir()
	pids := filepath.Join(dir, "pids")
	prog := script(t, "prog.sh", "#!/bin/sh\nsleep 600 &\necho \"$$ $!\" >> \"$PIDS\"\nwait\n")
	config := fmt.Sprintf("programs: [{name: watch, command: %s, env: {PIDS: %s}, restart: never}]", prog, pids)
	state := filepath.Join(dir, "state")

	first := startAgent(t, config, state)
	waitFor(t, 20*time.Second, "the first agent's program", func() bool { return len(pidLines(t, pids)) == 1 })
	run1 := pidLines(t, pids)[0]
	killGroupAtEnd(t, run1[0])
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = first.Wait()
	waitFor(t, 20*time.Second, "the program's leader to die with its agent", func() bool { return !running(run1[0]) })

	second := startAgent(t, config, state)
	waitFor(t, 20*time.Second, "the second agent's program", func() bool { return len(pidLines(t, pids)) == 2 })
	run2 := pidLines(t, pids)[1]
	killGroupAtEnd(t, run2[0])
	waitFor(t, 20*time.Second, "the first run's child to be ended by the second agent", func() bool { return !running(run1[1]) })
	if !running(run2[0]) || !running(run2[1]) {
		t.Fatalf("the second agent's own run %v is not running", run2)
	}

	// A clean stop ends the program and forgets its record.
	if err := second.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := second.Wait(); err != nil {
		t.Fatalf("the second agent's clean stop: %v", err)
	}
	if running(run2[0]) || running(run2[1]) {
		t.Fatalf("run %v outlived a clean stop", run2)
	}
	if left, _ := filepath.Glob(filepath.Join(state, "exec", "node-t", "*")); len(left) != 0 {
		t.Fatalf("records left after a clean stop: %v", left)
	}
}

// startMarked starts a process in its own group marked as run, as a
// program of an agent would be.
func startMarked(t *testing.T, run string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("/bin/sleep", "600")
	cmd.Env = []string{runEnv + "=" + run}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	})
	return cmd
}

func writeRecord(t *testing.T, state, program string, rec runRecord) {
	t.Helper()
	dir := filepath.Join(state, "exec", "node-t")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(rec)
	if err := os.WriteFile(filepath.Join(dir, program+".json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// A program left by an agent that is gone (one without the parent-death
// signal, or whose leader escaped it) is killed when the next agent starts;
// one whose agent still runs, and a process in the group without the run's
// mark, are left alone.
func TestStaleProgramsAreKilledAtStart(t *testing.T) {
	state := t.TempDir()
	gone := exec.Command("/bin/true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	stale := startMarked(t, "stale-run")
	writeRecord(t, state, "stale", runRecord{AgentPID: gone.Process.Pid, AgentStart: 1, PGID: stale.Process.Pid, Run: "stale-run"})

	self, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	st, err := procstat.Parse(self)
	if err != nil {
		t.Fatal(err)
	}
	owned := startMarked(t, "owned-run")
	writeRecord(t, state, "owned", runRecord{AgentPID: os.Getpid(), AgentStart: st.StartTime, PGID: owned.Process.Pid, Run: "owned-run"})
	unmarked := startMarked(t, "another-run")
	writeRecord(t, state, "unmarked", runRecord{AgentPID: gone.Process.Pid, AgentStart: 1, PGID: unmarked.Process.Pid, Run: "not-its-run"})

	cfg := "programs:\n"
	for _, name := range []string{"stale", "owned", "unmarked"} {
		cfg += fmt.Sprintf("  - {name: %s, command: /bin/true, restart: never}\n", name)
	}
	h := startIn(t, cfg, state)
	waitFor(t, 20*time.Second, "the stale program to be killed", func() bool { return !running(stale.Process.Pid) })
	waitFor(t, 20*time.Second, "the new programs to run", func() bool { return len(h.logs.find("program exited", "")) == 3 })
	if !running(owned.Process.Pid) {
		t.Fatal("a program of a running agent was killed")
	}
	if !running(unmarked.Process.Pid) {
		t.Fatal("a process without the recorded run's mark was killed")
	}
	if n := h.logs.find("killed the processes a previous agent left of a program", "stale"); len(n) != 1 {
		t.Fatalf("the kill is not logged: %v", n)
	}
}
