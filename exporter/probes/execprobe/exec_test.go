package execprobe

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probe"
)

const steadyScript = `#!/bin/sh
while :; do
  echo "` + `{\"ts\":1764300000000,\"event_type\":\"compute.util\",\"entity_id\":\"steady\",\"value\":85}` + `"
  sleep 0.05
done
`

func TestProbeIsRegisteredAndOnByDefault(t *testing.T) {
	for _, s := range probe.Specs() {
		if s.Name == "exec" {
			if !s.Default {
				t.Error("exec probe is not enabled by default")
			}
			return
		}
	}
	t.Fatal("exec probe is not registered")
}

func TestNoProgramsReportsNoData(t *testing.T) {
	pr, err := New(probe.Env{Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := pr.Run(ctx, &sink{}); !errors.Is(err, probe.ErrNoData) {
		t.Fatalf("Run = %v, want ErrNoData", err)
	}
}

func TestProbeBuiltTwiceSharesItsMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	env := probe.Env{Registerer: reg}
	first, err := New(env)
	if err != nil {
		t.Fatal(err)
	}
	second, err := New(env)
	if err != nil {
		t.Fatalf("second New with the same registry: %v", err)
	}
	if first.(*Probe).metrics.events != second.(*Probe).metrics.events {
		t.Error("second probe did not reuse the registered collectors")
	}
}

func TestInvalidConfigFailsNew(t *testing.T) {
	_, err := New(probe.Env{Config: func(v any) error {
		v.(*Config).Programs = []ProgramConfig{{Name: "x"}}
		return nil
	}})
	want := `invalid exec probe config: exec probe "x": command is required`
	if err == nil || err.Error() != want {
		t.Fatalf("New = %v, want %q", err, want)
	}
}

func TestWellBehavedShellProbeDeliversItsEvents(t *testing.T) {
	path := script(t, "gpu.sh", `#!/bin/sh
for i in 1 2 3; do
  echo "{\"ts\":1764300000000,\"event_type\":\"compute.util\",\"entity_id\":\"gpu-$i\",\"job_id\":\"job-a\",\"pid\":$$,\"value\":8$i,\"attrs\":{\"rank\":\"$i\"}}"
done
exec sleep 1000
`)
	h := start(t, fmt.Sprintf("programs: [{name: gpu, command: %q}]", path))
	waitFor(t, 10*time.Second, "three events", func() bool { return h.sink.count("gpu-3") == 1 })

	for i := 1; i <= 3; i++ {
		evs := h.sink.events("gpu-" + strconv.Itoa(i))
		if len(evs) != 1 {
			t.Fatalf("gpu-%d: %d events, want 1", i, len(evs))
		}
		got := evs[0]
		if got.Type != event.ComputeUtil || got.TS != 1764300000000 || got.JobID != "job-a" || got.PID <= 0 ||
			got.Value != "8"+strconv.Itoa(i) || got.Attrs.Get("rank") != strconv.Itoa(i) {
			t.Errorf("gpu-%d: got %+v", i, got)
		}
		if got.NodeID != "" {
			t.Errorf("gpu-%d: NodeID = %q, want it left for the agent to fill", i, got.NodeID)
		}
	}
	pm := h.metrics("gpu")
	if got := testutil.ToFloat64(pm.events); got != 3 {
		t.Errorf("events_total = %v, want 3", got)
	}
	if got := testutil.ToFloat64(pm.up); got != 1 {
		t.Errorf("up while running = %v, want 1", got)
	}
	if err := h.stop(); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if got := testutil.ToFloat64(pm.up); got != 0 {
		t.Errorf("up after stop = %v, want 0", got)
	}
	if n, f := h.obs.total(), h.obs.failures(); n != 2 || len(f) != 0 {
		t.Errorf("Observe: %d calls, failures %v; want start and stop, no failure", n, f)
	}
}

func TestPythonProbeWorksUnchanged(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 not installed")
	}
	path := script(t, "storage.py", `#!/usr/bin/env python3
import json, time
for i in range(3):
    print(json.dumps({"ts": 1764300000, "event_type": "storage.iops",
                      "entity_id": "storage-nvme%dn1" % i, "value": "12.5"}), flush=True)
time.sleep(1000)
`)
	h := start(t, fmt.Sprintf("programs: [{name: storage, command: %q}]", path))
	waitFor(t, 20*time.Second, "the python probe's events", func() bool { return h.sink.count("storage-nvme2n1") == 1 })
	got := h.sink.events("storage-nvme0n1")
	if len(got) != 1 || got[0].Type != event.StorageIOPS || got[0].Value != "12.5" || got[0].TS != 1764300000000 {
		t.Errorf("storage-nvme0n1: %+v", got)
	}
}

func TestGarbageLinesAreCountedByReasonWhileGoodOnesArrive(t *testing.T) {
	path := script(t, "mixed.sh", `#!/bin/sh
echo '{"ts":1764300000000,"event_type":"compute.util","entity_id":"good-1","value":1}'
echo 'this is not json'
echo '{"ts":1764300000000,"event_type":"gpu.melted","entity_id":"gpu-0","value":1}'
echo '{"ts":1764300000000,"event_type":"compute.util","value":1}'
echo '{"ts":"yesterday","event_type":"compute.util","entity_id":"gpu-0","value":1}'
head -c 2000 /dev/zero | tr '\0' x; echo
echo '{"ts":1764300000000,"event_type":"compute.util","entity_id":"gpu-0","value":1,"attrs":{"a0":"1","a1":"1","a2":"1","a3":"1","a4":"1","a5":"1","a6":"1","a7":"1","a8":"1","a9":"1","a10":"1","a11":"1","a12":"1","a13":"1","a14":"1","a15":"1","a16":"1","a17":"1","a18":"1","a19":"1","a20":"1","a21":"1","a22":"1","a23":"1","a24":"1","a25":"1","a26":"1","a27":"1","a28":"1","a29":"1","a30":"1","a31":"1","a32":"1","a33":"1","a34":"1","a35":"1","a36":"1","a37":"1","a38":"1","a39":"1","a40":"1","a41":"1","a42":"1","a43":"1","a44":"1","a45":"1","a46":"1","a47":"1","a48":"1","a49":"1","a50":"1","a51":"1","a52":"1","a53":"1","a54":"1","a55":"1","a56":"1","a57":"1","a58":"1","a59":"1","a60":"1","a61":"1","a62":"1","a63":"1","a64":"1"}}'
echo '{"ts":1764300000000,"event_type":"compute.util","entity_id":"good-2","value":2}'
`)
	h := start(t, fmt.Sprintf("programs: [{name: mixed, command: %q, restart: never, max_line_bytes: 1024}]", path))
	waitFor(t, 10*time.Second, "the program to end", func() bool {
		return len(h.logs.find("program ended, not restarting", "mixed")) == 1
	})

	if h.sink.count("good-1") != 1 || h.sink.count("good-2") != 1 {
		t.Errorf("good events: good-1 %d, good-2 %d; want 1 each", h.sink.count("good-1"), h.sink.count("good-2"))
	}
	pm := h.metrics("mixed")
	for _, reason := range event.Reasons {
		if got := testutil.ToFloat64(pm.rejected[reason]); got != 1 {
			t.Errorf("lines_rejected_total{reason=%q} = %v, want 1", reason, got)
		}
	}
	if got := testutil.ToFloat64(pm.events); got != 2 {
		t.Errorf("events_total = %v, want 2", got)
	}
	// Five bad lines within the log window: only the first is logged.
	logged := h.logs.find("rejected line from program", "mixed")
	if len(logged) != 1 || logged[0].attrs["reason"].String() != event.ReasonNotJSON {
		t.Errorf("rejected-line logs = %+v, want one, for the not_json line", logged)
	}
}

func TestStderrIsLoggedAtARateLimit(t *testing.T) {
	path := script(t, "noisy.sh", `#!/bin/sh
i=0
while [ $i -lt 50 ]; do echo "complaint $i" >&2; i=$((i+1)); done
`)
	h := start(t, fmt.Sprintf("programs: [{name: noisy, command: %q, restart: never, max_stderr_lines_per_second: 5}]", path))
	waitFor(t, 10*time.Second, "the program to end", func() bool {
		return len(h.logs.find("program ended, not restarting", "noisy")) == 1
	})
	logged := h.logs.find("program stderr", "noisy")
	dropped := testutil.ToFloat64(h.metrics("noisy").stderrDropped)
	if len(logged)+int(dropped) != 50 {
		t.Errorf("logged %d + dropped %v != 50 lines written", len(logged), dropped)
	}
	if len(logged) < 5 || len(logged) > 10 {
		t.Errorf("logged %d stderr lines, want the burst of 5 plus what refilled", len(logged))
	}
	if len(logged) > 0 && logged[0].attrs["line"].String() != "complaint 0" {
		t.Errorf("first stderr line logged = %q", logged[0].attrs["line"].String())
	}
}

func TestCrashingProbeIsRestartedWithGrowingBackoffWhileOthersFlow(t *testing.T) {
	crasher := script(t, "crasher.sh", `#!/bin/sh
echo '{"ts":1764300000000,"event_type":"compute.util","entity_id":"crasher","value":1}'
sleep 0.1
exit 3
`)
	steady := script(t, "steady.sh", steadyScript)
	h := start(t, fmt.Sprintf(`
programs:
  - {name: crasher, command: %q, backoff: {initial: 100ms, max: 400ms}}
  - {name: steady, command: %q}
`, crasher, steady))
	crash, stead := h.metrics("crasher"), h.metrics("steady")

	waitFor(t, 15*time.Second, "a first restart", func() bool { return testutil.ToFloat64(crash.restarts) >= 1 })
	steadyBefore := h.sink.count("steady")
	waitFor(t, 20*time.Second, "five restarts", func() bool { return testutil.ToFloat64(crash.restarts) >= 5 })

	if got := h.sink.count("steady") - steadyBefore; got < 5 {
		t.Errorf("steady probe delivered %d events during the crash loop, want it to keep flowing", got)
	}
	if got := testutil.ToFloat64(stead.restarts); got != 0 {
		t.Errorf("steady restarts = %v, want 0", got)
	}
	if got := testutil.ToFloat64(stead.up); got != 1 {
		t.Errorf("steady up = %v, want 1", got)
	}
	if got := h.sink.count("crasher"); got < 5 {
		t.Errorf("crasher delivered %d events, want one per run", got)
	}
	var crashes int
	for _, err := range h.obs.failures() {
		if strings.Contains(err.Error(), "program crasher") && strings.Contains(err.Error(), "exit status 3") {
			crashes++
		}
	}
	if crashes < 5 {
		t.Errorf("Observe saw %d crashes, want at least 5: %v", crashes, h.obs.failures())
	}

	// The n-th wait is in [d/2, d] with d = 100ms·2^(n-1) capped at 400ms.
	var waits []time.Duration
	for _, r := range h.logs.find("restarting program", "crasher") {
		waits = append(waits, r.attrs["backoff"].Duration())
	}
	if len(waits) < 5 {
		t.Fatalf("%d restart waits logged, want at least 5", len(waits))
	}
	d := 100 * time.Millisecond
	for i, w := range waits {
		if w < d/2 || w > d {
			t.Errorf("wait %d = %s, want in [%s, %s]; all waits %v", i+1, w, d/2, d, waits)
		}
		d = min(2*d, 400*time.Millisecond)
	}
	if got := testutil.ToFloat64(crash.backoff); got <= 0 || got > 0.4 {
		t.Errorf("backoff_seconds = %v, want in (0, 0.4]", got)
	}
}

func TestBackoffStartsOverAfterALongRun(t *testing.T) {
	path := script(t, "slowcrash.sh", "#!/bin/sh\nsleep 0.1\nexit 1\n")
	h := start(t, fmt.Sprintf("programs: [{name: slow, command: %q, backoff: {initial: 60ms, max: 1s, reset_after: 50ms}}]", path))
	waitFor(t, 15*time.Second, "three restarts", func() bool { return testutil.ToFloat64(h.metrics("slow").restarts) >= 3 })
	for _, r := range h.logs.find("restarting program", "slow") {
		if w := r.attrs["backoff"].Duration(); w > 60*time.Millisecond {
			t.Errorf("wait %s after a run longer than reset_after, want at most initial (60ms)", w)
		}
	}
}

func TestRestartPolicy(t *testing.T) {
	for _, tc := range []struct {
		policy    RestartPolicy
		exitCode  int
		restarted bool
	}{
		{RestartAlways, 0, true},
		{RestartOnFailure, 0, false},
		{RestartOnFailure, 1, true},
		{RestartNever, 1, false},
	} {
		t.Run(fmt.Sprintf("%s exit %d", tc.policy, tc.exitCode), func(t *testing.T) {
			path := script(t, "exit.sh", "#!/bin/sh\nexit $CODE\n")
			h := start(t, fmt.Sprintf("programs: [{name: p, command: %q, restart: %s, env: {CODE: %q}, backoff: {initial: 10ms}}]",
				path, tc.policy, strconv.Itoa(tc.exitCode)))
			restarts := h.metrics("p").restarts
			if tc.restarted {
				waitFor(t, 10*time.Second, "a restart", func() bool { return testutil.ToFloat64(restarts) >= 1 })
				return
			}
			waitFor(t, 10*time.Second, "the program to end", func() bool {
				return len(h.logs.find("program ended, not restarting", "p")) == 1
			})
			if got := testutil.ToFloat64(restarts); got != 0 {
				t.Errorf("restarts = %v, want 0", got)
			}
		})
	}
}

func TestProgramThatCannotStartIsRetried(t *testing.T) {
	h := start(t, "programs: [{name: missing, command: /nonexistent/probe, restart: on-failure, backoff: {initial: 10ms, max: 20ms}}]")
	waitFor(t, 10*time.Second, "two failed starts", func() bool { return len(h.obs.failures()) >= 2 })
	err := h.obs.failures()[0]
	if !strings.Contains(err.Error(), "starting /nonexistent/probe") {
		t.Errorf("Observe error = %v, want it to name the start", err)
	}
	if got := testutil.ToFloat64(h.metrics("missing").up); got != 0 {
		t.Errorf("up = %v, want 0", got)
	}
}

func TestProgramGetsItsEnvAndDir(t *testing.T) {
	path := script(t, "env.sh", `#!/bin/sh
echo "{\"ts\":1764300000000,\"event_type\":\"process.state\",\"entity_id\":\"env\",\"value\":\"$FOO|$BAR|$(pwd -P)\"}"
exec sleep 1000
`)
	dir := t.TempDir()
	h := start(t, fmt.Sprintf("programs: [{name: env, command: %q, dir: %q, env: {FOO: foo-value, BAR: x y}}]", path, dir))
	waitFor(t, 10*time.Second, "the event", func() bool { return h.sink.count("env") == 1 })
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := h.sink.events("env")[0].Value, "foo-value|x y|"+real; got != want {
		t.Errorf("value = %q, want %q", got, want)
	}
}

func TestFloodingProbeIsRateLimitedAndOthersStillDeliver(t *testing.T) {
	steady := script(t, "steady.sh", steadyScript)
	const limit = 1000
	h := start(t, fmt.Sprintf(`
programs:
  - name: flood
    command: yes
    args: ['{"ts":1764300000000,"event_type":"compute.util","entity_id":"flood","value":1}']
    max_events_per_second: %d
  - {name: steady, command: %q}
`, limit, steady))
	flood := h.metrics("flood")
	waitFor(t, 30*time.Second, "100k dropped flood lines and steady events", func() bool {
		return testutil.ToFloat64(flood.rateLimited) >= 100000 && h.sink.count("steady") >= 5
	})
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}

	got := h.sink.count("flood")
	ran := h.stopped.Sub(h.started).Seconds()
	t.Logf("flood: %d events delivered, %.0f dropped in %.2fs", got, testutil.ToFloat64(flood.rateLimited), ran)
	if maxWant := limit + limit*ran; float64(got) > maxWant {
		t.Errorf("sink got %d flood events in %.2fs, want at most burst+rate*t = %.0f", got, ran, maxWant)
	}
	if got < limit {
		t.Errorf("sink got %d flood events, want at least the burst %d", got, limit)
	}
	if n := testutil.ToFloat64(flood.events); n != float64(got) {
		t.Errorf("events_total = %v, sink got %d", n, got)
	}
	if n := testutil.ToFloat64(h.metrics("steady").rateLimited); n != 0 {
		t.Errorf("steady rate-limited = %v, want 0", n)
	}
}

func TestShutdownKillsAProbeThatIgnoresSIGTERMAndItsChildren(t *testing.T) {
	path := script(t, "stubborn.sh", `#!/bin/sh
trap '' TERM
sleep 1000 &
echo "{\"ts\":1764300000000,\"event_type\":\"process.state\",\"entity_id\":\"leader\",\"pid\":$$,\"value\":\"R\"}"
echo "{\"ts\":1764300000000,\"event_type\":\"process.state\",\"entity_id\":\"child\",\"pid\":$!,\"value\":\"S\"}"
wait
`)
	const grace = 300 * time.Millisecond
	h := start(t, fmt.Sprintf("programs: [{name: stubborn, command: %q, shutdown_grace: %s}]", path, grace))
	waitFor(t, 10*time.Second, "the pids", func() bool { return h.sink.count("leader") == 1 && h.sink.count("child") == 1 })
	pgid, child := h.sink.events("leader")[0].PID, h.sink.events("child")[0].PID
	if groupGone(pgid) {
		t.Fatalf("process group %d not found while running", pgid)
	}

	begin := time.Now()
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(begin); took < grace {
		t.Errorf("Run returned %s after cancel, before the %s grace: SIGTERM was not ignored?", took, grace)
	}
	// Nothing of the group runs any more; what is left are zombies that
	// init reaps in its own time, which kill -0 sees until then.
	if live := liveMembers(t, pgid); len(live) != 0 {
		t.Errorf("process group %d still has running members %v after Run returned", pgid, live)
	}
	waitFor(t, 10*time.Second, "kill -0 on the group to fail", func() bool { return groupGone(pgid) })
	if err := syscall.Kill(int(child), 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("kill -0 %d (child sleep): %v, want ESRCH", child, err)
	}
	if len(h.logs.find("program outlived its shutdown grace, killing its process group", "stubborn")) != 1 {
		t.Error("no log line about the SIGKILL")
	}
}

func TestShutdownLetsAProbeExitOnSIGTERMAndKeepsItsLastEvents(t *testing.T) {
	path := script(t, "polite.sh", `#!/bin/sh
trap 'echo "{\"ts\":1764300000000,\"event_type\":\"process.state\",\"entity_id\":\"goodbye\",\"value\":\"exited\"}"; exit 0' TERM
echo "{\"ts\":1764300000000,\"event_type\":\"process.state\",\"entity_id\":\"hello\",\"value\":\"R\"}"
while :; do sleep 0.05; done
`)
	h := start(t, fmt.Sprintf("programs: [{name: polite, command: %q}]", path))
	waitFor(t, 10*time.Second, "hello", func() bool { return h.sink.count("hello") == 1 })
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	if got := h.sink.count("goodbye"); got != 1 {
		t.Errorf("goodbye events = %d, want the one written on SIGTERM", got)
	}
	if len(h.logs.find("program outlived its shutdown grace, killing its process group", "")) != 0 {
		t.Error("the program exited on SIGTERM but was SIGKILLed")
	}
	if f := h.obs.failures(); len(f) != 0 {
		t.Errorf("Observe failures = %v, want none for a stop", f)
	}
}
