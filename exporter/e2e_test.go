package exporter_test

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite fixtures/e2e-output.txt")

// TestAgentEndToEndMetrics is node_exporter's golden test for the agent:
// the real binary (built with the NVML mock) runs an exec probe replaying a
// recording, reads a kernel log fixture and a procfs fixture, and its
// /metrics must match fixtures/e2e-output.txt and pass promtool.
func TestAgentEndToEndMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the agent binary")
	}
	fixtures, err := filepath.Abs("fixtures")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "ark")
	build := exec.Command("go", "build", "-tags", "nvmlmock", "-o", bin, "../cmd/ark")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the agent: %v\n%s", err, out)
	}
	cfg := filepath.Join(dir, "agent.yaml")
	writeFile(t, cfg, fmt.Sprintf(`probes:
  exec:
    programs:
      - name: replay
        command: %[1]s/replay.sh
        args: [%[1]s/e2e-events.jsonl]
        restart: never
  nvml:
    interval: 1h
  procfs:
    heartbeat: 1h
`, fixtures))
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs bytes.Buffer
	agent := exec.CommandContext(ctx, bin, "agent",
		"--node-name", "e2e-node", "--web.listen-address", addr, "--config.file", cfg,
		"--path.procfs", filepath.Join(fixtures, "proc"), "--path.sysfs", filepath.Join(fixtures, "sys"),
		"--path.kmsg", filepath.Join(fixtures, "kmsg.txt"), "--path.pod-resources", filepath.Join(dir, "no-kubelet.sock"),
		"--ipc.socket", filepath.Join(dir, "ark.sock"), "--audit.file", filepath.Join(dir, "audit.log"),
		"--state.dir", filepath.Join(dir, "state"), "--log.level", "debug",
		// The golden exposition is the fixture host's: the flow probe reads
		// the machine's kernel and job discovery has its own tests.
		"--no-probe.tcpflow", "--no-probe.jobs")
	agent.Env = append(os.Environ(), "ARK_NVML_MOCK_PROCS=0:4100:1073741824,1:4101:536870912")
	agent.Stdout, agent.Stderr = &logs, &logs
	agent.Cancel = func() error { return agent.Process.Signal(os.Interrupt) }
	agent.WaitDelay = 10 * time.Second
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		_ = agent.Wait()
		if t.Failed() {
			t.Logf("agent log:\n%s", logs.String())
		}
	}()

	// Settled: every replayed event counted and two scrapes a second apart
	// agree (the procfs probe has reported every tracked process).
	var raw, got string
	deadline := time.Now().Add(60 * time.Second)
	for {
		raw = scrapeURL(t, "http://"+addr+"/metrics")
		norm := normalize(raw)
		if norm == got && strings.Contains(norm, `ark_events_processed_total{event_type="intent.run"} 4`) &&
			strings.Contains(norm, `ark_xid_errors_total{action="RESTART_BM",gpu="0",xid="79"} 1`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics did not settle (%d bytes scraped); last two scrapes differ in:\n%s", len(raw), lineDiff(got, norm))
		}
		got = norm
		time.Sleep(time.Second)
	}

	golden := filepath.Join("fixtures", "e2e-output.txt")
	if *update {
		writeFile(t, golden, got)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		diff := exec.Command("diff", "-u", golden, "-")
		diff.Stdin = strings.NewReader(got)
		out, _ := diff.CombinedOutput()
		t.Fatalf("/metrics differs from %s (rerun with -update if the change is intended):\n%s", golden, out)
	}

	// promtool lints the whole exposition, go_ and process_ included.
	promtool, err := exec.Command("../hack/promtool.sh").Output()
	if err != nil {
		t.Fatalf("installing promtool: %v", err)
	}
	check := exec.Command(strings.TrimSpace(string(promtool)), "check", "metrics")
	check.Stdin = strings.NewReader(raw)
	if out, err := check.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}

// normalize drops what varies between runs: the Go runtime and process
// collectors, timings, and the exec probe's pids.
func normalize(raw string) string {
	var b strings.Builder
	sc := bufio.NewScanner(strings.NewReader(raw))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		name := line
		if strings.HasPrefix(line, "# ") {
			if f := strings.Fields(line); len(f) >= 3 {
				name = f[2]
			}
		}
		switch {
		case strings.HasPrefix(name, "go_"), strings.HasPrefix(name, "process_"), strings.HasPrefix(name, "promhttp_"),
			strings.HasPrefix(name, "ark_probe_duration_seconds"), strings.HasPrefix(name, "ark_exec_probe_backoff_seconds"):
			continue
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.String()
}

// lineDiff lists the lines only one of a and b has.
func lineDiff(a, b string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	ma, mb := in(a), in(b)
	var out strings.Builder
	for l := range ma {
		if !mb[l] {
			out.WriteString("- " + l + "\n")
		}
	}
	for l := range mb {
		if !ma[l] {
			out.WriteString("+ " + l + "\n")
		}
	}
	return out.String()
}

func scrapeURL(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}
