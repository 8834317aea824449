package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter"
	"github.com/ark-gpu/ark/exporter/probe"
	"github.com/ark-gpu/ark/exporter/procstat"
	"github.com/ark-gpu/ark/graph"
	"github.com/ark-gpu/ark/internal/audit"
	"github.com/ark-gpu/ark/internal/fullfs"
)

// startTime reads field 22 of /proc/<pid>/stat.
func startTime(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	st, err := procstat.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return strconv.FormatUint(st.StartTime, 10)
}

type testAgent struct {
	a      *exporter.Agent
	socket string
	audit  string
	stop   func()
}

// startTestAgent runs an agent with no probe but jobs; opts adjust its
// config.
func startTestAgent(t *testing.T, opts ...func(*exporter.Config)) *testAgent {
	t.Helper()
	return startTestAgentAuditing(t, filepath.Join(t.TempDir(), "audit.log"), opts...)
}

// startTestAgentAuditing starts a test agent whose audit log is auditPath.
func startTestAgentAuditing(t *testing.T, auditPath string, opts ...func(*exporter.Config)) *testAgent {
	t.Helper()
	dir := t.TempDir()
	ta := &testAgent{socket: filepath.Join(dir, "ark.sock"), audit: auditPath}
	off := map[string]bool{"exec": false, "kmsg": false, "nvml": false, "procfs": false}
	cfg := exporter.Config{
		NodeName: "gpu-host-1", Enabled: off,
		Paths:   probe.Paths{ProcFS: "/proc", SysFS: "/sys", DevKmsg: filepath.Join(dir, "no-kmsg"), PodResources: filepath.Join(dir, "no-kubelet.sock")},
		Control: exporter.ControlConfig{Socket: ta.socket, Audit: audit.Config{Path: ta.audit}},
	}
	for _, o := range opts {
		o(&cfg)
	}
	a, err := exporter.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ta.a = a
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	ta.stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(ta.stop)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(ta.socket); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("agent socket never appeared")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return ta
}

// rank starts a process that records the SIGUSR1 it gets, and tells the
// agent it is rank 0 of job j1, stalled on the network.
func (ta *testAgent) rank(t *testing.T) (*exec.Cmd, string) {
	t.Helper()
	got := filepath.Join(t.TempDir(), "got")
	cmd := exec.Command("/bin/sh", "-c", `trap 'echo USR1 >> "$GOT"' USR1; while :; do sleep 0.05; done`)
	cmd.Env = append(os.Environ(), "GOT="+got)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	pid := int64(cmd.Process.Pid)
	now := time.Now().UnixMilli()
	st := startTime(t, cmd.Process.Pid)
	for _, ev := range []event.Event{
		{TS: now, Type: event.IntentRun, EntityID: "pid-" + strconv.FormatInt(pid, 10), PID: pid, JobID: "j1", Value: "running",
			Attrs: event.Attrs{{Key: "rank", Value: "0"}, {Key: "addr", Value: "10.0.0.1:29500"}}},
		{TS: now, Type: event.ProcessState, EntityID: "pid-" + strconv.FormatInt(pid, 10), PID: pid, JobID: "j1", Value: "S",
			Attrs: event.Attrs{{Key: graph.AttrStartTime, Value: st}}},
		{TS: now + 1, Type: event.ComputeUtil, EntityID: "gpu-0", PID: pid, JobID: "j1", Value: "0"},
		{TS: now + 2, Type: event.TransportDrop, EntityID: "network-ib0", PID: pid, JobID: "j1", Value: "25"},
		{TS: now + 3, Type: event.ErrorNet, EntityID: "network-ib0", Value: "mlx5_0: port 1 link down", Attrs: event.Attrs{{Key: "reason", Value: "link_down"}}},
	} {
		ta.a.Publish(&ev)
	}
	waitUntil(t, "the agent to track the rank", func() bool {
		code, out, _ := runArk(t, "", "ps", "--socket", ta.socket, "-o", "json")
		return code == 0 && strings.Contains(out, `"pid": `+strconv.FormatInt(pid, 10))
	})
	return cmd, got
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// auditEntries returns the outcome entries of the audit log at path and
// the number of intents written before them.
func auditEntries(t *testing.T, path string) (outcomes []audit.Entry, intents int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var e audit.Entry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		if e.Result == audit.Intent {
			intents++
			continue
		}
		outcomes = append(outcomes, e)
	}
	return outcomes, intents
}

func TestPsWhyDiagFixEndToEnd(t *testing.T) {
	ta := startTestAgent(t)
	cmd, got := ta.rank(t)
	pid := strconv.Itoa(cmd.Process.Pid)

	code, out, errs := runArk(t, "", "ps", "--socket", ta.socket)
	if code != 0 || !strings.Contains(out, pid) || !strings.Contains(out, "j1") || !strings.Contains(out, "network-ib0 (waits) FAULT") {
		t.Fatalf("ps: %d %s %s", code, out, errs)
	}
	code, out, errs = runArk(t, "", "why", pid, "--socket", ta.socket, "-o", "json")
	var res graph.Result
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil || len(res.Causes) == 0 || res.Causes[0].EntityID != "network-ib0" {
		t.Fatalf("why: %d %s %s", code, out, errs)
	}
	code, out, _ = runArk(t, "", "why", "--job", "j1", "--socket", ta.socket)
	if code != 0 || !strings.Contains(out, "ROOT CAUSE") {
		t.Fatalf("why --job: %d %s", code, out)
	}
	waitUntil(t, "the network rule to match", func() bool {
		_, out, _ := runArk(t, "", "diag", pid, "--socket", ta.socket)
		return strings.Contains(out, "RankStalledOnNetwork") && strings.Contains(out, "ark fix "+pid+" --action Signal --param signal=SIGUSR1")
	})

	// Dry run: every check, no signal, audited as dry_run.
	code, out, errs = runArk(t, "", "fix", pid, "--dry-run", "--socket", ta.socket)
	if code != 0 || !strings.Contains(out, "dry_run") {
		t.Fatalf("fix --dry-run: %d %s %s", code, out, errs)
	}
	// The suggested action: SIGUSR1 so the rank checkpoints.
	code, out, errs = runArk(t, "", "fix", pid, "--yes", "--socket", ta.socket)
	if code != 0 || !strings.Contains(out, "Signal on pid "+pid+": success") {
		t.Fatalf("fix: %d %s %s", code, out, errs)
	}
	waitUntil(t, "the rank to get SIGUSR1", func() bool {
		b, _ := os.ReadFile(got)
		return strings.Contains(string(b), "USR1")
	})
	if b, _ := os.ReadFile(got); strings.Count(string(b), "USR1") != 1 {
		t.Fatalf("the dry run must not signal: %q", b)
	}
	entries, intents := auditEntries(t, ta.audit)
	if intents != 1 {
		t.Fatalf("audit: %d intents, want the signal's", intents)
	}
	if len(entries) != 2 || entries[0].Result != audit.DryRun || entries[1].Result != audit.Success ||
		entries[1].Action != "Signal" || entries[1].JobID != "j1" || entries[1].Node != "gpu-host-1" ||
		!strings.Contains(entries[1].User, "uid=0") || entries[1].PID != int64(cmd.Process.Pid) {
		t.Fatalf("audit: %+v", entries)
	}
	// The audit entry is mirrored on the bus as action.exec.
	waitUntil(t, "the action.exec event", func() bool {
		_, out, _ := runArk(t, "", "events", "--type", "action.exec", "--socket", ta.socket, "-o", "json")
		return strings.Count(out, `"event_type":"action.exec"`) == 2
	})
}

func TestFixRefusesAProcessWhoseStartTimeChanged(t *testing.T) {
	ta := startTestAgent(t)
	cmd, got := ta.rank(t)
	pid := int64(cmd.Process.Pid)
	// The graph now believes another process holds the pid (a start time
	// that is not the real one), as after a pid reuse.
	ev := event.Event{TS: time.Now().UnixMilli() + 10, Type: event.ProcessState, EntityID: "pid-" + strconv.FormatInt(pid, 10),
		PID: pid, JobID: "j1", Value: "S", Attrs: event.Attrs{{Key: graph.AttrStartTime, Value: "1"}}}
	ta.a.Publish(&ev)
	waitUntil(t, "the new start time", func() bool {
		ps := ta.a.Graph().Processes(graph.ProcessFilter{PID: pid})
		return len(ps) == 1 && ps[0].StartTime == 1
	})
	code, out, errs := runArk(t, "", "fix", strconv.FormatInt(pid, 10), "--yes", "--action", "Signal", "--param", "signal=SIGUSR1", "--socket", ta.socket)
	if code != exitFailure || !strings.Contains(out+errs, "start time") {
		t.Fatalf("fix on a changed start time: exit %d\n%s\n%s", code, out, errs)
	}
	time.Sleep(200 * time.Millisecond)
	if b, _ := os.ReadFile(got); len(b) != 0 {
		t.Fatal("the process must not have been signalled")
	}
	if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the process must still be alive: %v", err)
	}
	entries, _ := auditEntries(t, ta.audit)
	if len(entries) != 1 || entries[0].Result != audit.Failure || !strings.Contains(entries[0].Details, "start time") {
		t.Fatalf("the refusal is audited: %+v", entries)
	}
}

// With the audit log's disk full, ark fix is refused, says why and exits 1.
func TestFixFailsWhenTheAuditLogIsFull(t *testing.T) {
	dir := fullfs.Mount(t, 64<<10)
	ta := startTestAgentAuditing(t, filepath.Join(dir, "audit.log"))
	cmd, got := ta.rank(t)
	fullfs.Fill(t, dir)
	code, out, errs := runArk(t, "", "fix", strconv.Itoa(cmd.Process.Pid), "--yes", "--action", "Signal", "--param", "signal=SIGUSR1", "--socket", ta.socket)
	if code != exitFailure || !strings.Contains(out+errs, "refusing to act unaudited") || !strings.Contains(out+errs, "no space left on device") {
		t.Fatalf("fix with a full audit disk: exit %d\n%s\n%s", code, out, errs)
	}
	if b, _ := os.ReadFile(got); len(b) != 0 {
		t.Fatal("the process must not have been signalled")
	}
}

func TestControlCommandErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "ark.sock")
	code, _, errs := runArk(t, "", "ps", "--socket", missing)
	if code != exitFailure || strings.Count(strings.TrimSpace(errs), "\n") != 0 ||
		!strings.Contains(errs, "no agent at "+missing+": is `ark agent` running?") {
		t.Fatalf("missing agent: exit %d, stderr %q", code, errs)
	}
	ta := startTestAgent(t)
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"why", "--socket", ta.socket}, exitUsage, "a pid or --job is required"},
		{[]string{"why", "abc", "--socket", ta.socket}, exitUsage, "not a pid"},
		{[]string{"why", "424242", "--socket", ta.socket}, exitFailure, "not tracked"},
		{[]string{"diag", "424242", "--socket", ta.socket}, exitFailure, "not tracked"},
		{[]string{"fix", "424242", "--socket", ta.socket}, exitUsage, "stdin is not a terminal"},
		{[]string{"fix", "424242", "--yes", "--socket", ta.socket}, exitFailure, "not tracked"},
		{[]string{"fix", "1", "--yes", "--param", "nokey", "--socket", ta.socket}, exitUsage, "key=value"},
		{[]string{"events", "--type", "bogus", "--socket", ta.socket}, exitFailure, "unknown event type"},
		{[]string{"ps", "-o", "yaml", "--socket", ta.socket}, exitUsage, "unknown output"},
	}
	for _, tc := range cases {
		code, out, errs := runArkDevNull(t, tc.args...)
		if code != tc.code || !strings.Contains(out+errs, tc.want) {
			t.Errorf("%v: exit %d (want %d), output %q %q", tc.args, code, tc.code, out, errs)
		}
	}
}

func TestRulesCheck(t *testing.T) {
	if code, out, errs := runArk(t, "", "rules", "check", "../../rules/defaults"); code != 0 || !strings.Contains(out, "ok") {
		t.Fatalf("defaults: %d %s %s", code, out, errs)
	}
	dir := t.TempDir()
	bad := "name: Broken\ntriggers:\n  - event_type: error.hw\n    condition: 'foo > 1'\n"
	if err := os.WriteFile(filepath.Join(dir, "bad.yaml"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errs := runArk(t, "", "rules", "check", dir)
	if code != exitFailure || !strings.Contains(errs, "bad.yaml:4") || !strings.Contains(errs, "undeclared reference to 'foo'") {
		t.Fatalf("bad rule: exit %d %s", code, errs)
	}
}

// runArkDevNull runs ark with /dev/null as stdin: a file, not a terminal.
func runArkDevNull(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	var out, errb bytes.Buffer
	code = run(args, null, &out, &errb)
	return code, out.String(), errb.String()
}
