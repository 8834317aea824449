// Package e2e runs otelcol-ark, the Collector built with the ark receiver,
// against real Ark hubs and a real Prometheus over loopback.
package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const (
	token    = "s3cret-token"
	incident = "../../testdata/scenarios/xid79-4node.jsonl"
)

var arkBin, otelcolBin string

func TestMain(m *testing.M) {
	otelcolBin = os.Getenv("ARK_OTELCOL")
	if otelcolBin == "" {
		fmt.Println("skipping: set ARK_OTELCOL to an otelcol-ark binary (make test does, with hack/otelcol.sh)")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "ark-otelcol-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	arkBin = filepath.Join(dir, "ark")
	build := exec.Command("go", "build", "-o", arkBin, "./cmd/ark")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building ark: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

// start runs a process until the end of the test, logging its output on
// failure.
func start(t *testing.T, name, bin string, args ...string) {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("--- %s output:\n%s", name, out.String())
		}
	})
}

// startHub starts an ark hub with a bearer token and returns its address.
func startHub(t *testing.T, name string) string {
	t.Helper()
	tok := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(tok, []byte(token+"\n"), 0o600))
	addr := freePort(t)
	start(t, name, arkBin, "hub", "--web.listen-address", addr, "--token-file", tok, "--leader-elect=false")
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 60*time.Second, 100*time.Millisecond, "hub %s ready", name)
	return addr
}

// startCollector runs otelcol-ark with the config text.
func startCollector(t *testing.T, name, config string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), name+".yaml")
	require.NoError(t, os.WriteFile(path, []byte(config), 0o644))
	start(t, name, otelcolBin, "--config", path)
}

// telemetryOff keeps the Collector's own metrics off its default port, so
// collectors run side by side.
const telemetryOff = `
  telemetry:
    metrics:
      level: none
`

type cause struct {
	NodeID   string `json:"node_id"`
	EntityID string `json:"entity_id"`
}

type answer struct {
	Causes []cause `json:"causes"`
}

// firstCause runs ark with args and -o json and returns its first cause.
func firstCause(args ...string) (cause, error) {
	out, err := exec.Command(arkBin, append(args, "-o", "json")...).Output()
	if err != nil {
		return cause{}, fmt.Errorf("ark %s: %w: %s", strings.Join(args, " "), err, out)
	}
	var a answer
	if err := json.Unmarshal(out, &a); err != nil {
		return cause{}, fmt.Errorf("ark %s: %w: %s", strings.Join(args, " "), err, out)
	}
	if len(a.Causes) == 0 {
		return cause{}, fmt.Errorf("ark %s: no cause", strings.Join(args, " "))
	}
	return a.Causes[0], nil
}

// TestCollectorToHubNamesTheSameRootCauseAsAnalyze: the shipped incident
// through otelcol-ark's ark receiver and otlphttp exporter into a hub.
func TestCollectorToHubNamesTheSameRootCauseAsAnalyze(t *testing.T) {
	want, err := firstCause("analyze", "--input", incident, "--job", "train/example")
	require.NoError(t, err)
	require.Equal(t, cause{"node-3", "gpu-6"}, want)

	hub := startHub(t, "hub")
	startCollector(t, "otelcol", fmt.Sprintf(`
receivers:
  ark:
    include: [%s]
exporters:
  otlp_http:
    endpoint: http://%s
    headers: {Authorization: "Bearer %s"}
service:
  pipelines:
    traces: {receivers: [ark], exporters: [otlp_http]}
%s`, abs(t, incident), hub, token, telemetryOff))

	var got cause
	require.Eventually(t, func() bool {
		got, err = firstCause("why", "--job", "train/example", "--hub", "http://"+hub)
		return err == nil && got == want
	}, 90*time.Second, 250*time.Millisecond, "hub's why: %+v, %v", got, err)
}

// TestPrometheusScrapesTheReceiversMetrics: ark receiver → prometheus
// exporter → a real Prometheus, queried with PromQL.
func TestPrometheusScrapesTheReceiversMetrics(t *testing.T) {
	prom := prometheusBin(t)
	exp := freePort(t)
	startCollector(t, "otelcol", fmt.Sprintf(`
receivers:
  ark:
    include: [%s]
exporters:
  prometheus:
    endpoint: %s
    resource_to_telemetry_conversion: {enabled: true}
    metric_expiration: 1h
service:
  pipelines:
    metrics: {receivers: [ark], exporters: [prometheus]}
%s`, abs(t, incident), exp, telemetryOff))

	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	require.NoError(t, os.WriteFile(cfg, []byte(fmt.Sprintf(`
global: {scrape_interval: 1s}
scrape_configs:
  - job_name: otelcol-ark
    static_configs: [{targets: ["%s"]}]
`, exp)), 0o644))
	promAddr := freePort(t)
	start(t, "prometheus", prom, "--config.file", cfg, "--storage.tsdb.path", filepath.Join(dir, "data"),
		"--web.listen-address", promAddr)

	query := func(q string) (string, error) {
		resp, err := http.Get("http://" + promAddr + "/api/v1/query?query=" + url.QueryEscape(q))
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	// The XID on node-3's gpu-6, counted once for the one job using it.
	var body string
	require.Eventually(t, func() bool {
		body, _ = query(`sum by (host_name, hw_id, ark_xid) (hw_errors_total{error_type="xid"})`)
		return strings.Contains(body, `"host_name":"node-3"`) && strings.Contains(body, `"hw_id":"gpu-6"`) &&
			strings.Contains(body, `"ark_xid":"79"`) && strings.Contains(body, `"1"]`)
	}, 90*time.Second, 500*time.Millisecond, "PromQL answer: %s", body)
	require.Eventually(t, func() bool {
		body, _ = query(`count(hw_gpu_utilization_ratio{host_name="node-1"} <= 1)`)
		return strings.Contains(body, `"value"`)
	}, 30*time.Second, 500*time.Millisecond, "utilisation as a ratio: %s", body)
}

// TestLoadBalancingGatewayShardsJobsAcrossHubs: a gateway Collector reads
// two jobs' events and routes them by trace id (= job) over OTLP to a
// relay Collector per hub; each hub holds only its own job, and each
// answers why for it.
func TestLoadBalancingGatewayShardsJobsAcrossHubs(t *testing.T) {
	// The shipped incident, plus a second job on other hosts whose GPU
	// fails too: each job's events carry their own job id.
	in := filepath.Join(t.TempDir(), "two-jobs.jsonl")
	raw, err := os.ReadFile(incident)
	require.NoError(t, err)
	second := strings.NewReplacer(`"job_id":"train/example"`, `"job_id":"train/other"`,
		`"node_id":"node-`, `"node_id":"other-`).Replace(string(raw))
	require.NoError(t, os.WriteFile(in, []byte(string(raw)+second), 0o644))
	wantA, err := firstCause("analyze", "--input", in, "--job", "train/example")
	require.NoError(t, err)
	wantB, err := firstCause("analyze", "--input", in, "--job", "train/other")
	require.NoError(t, err)
	require.Equal(t, cause{"other-3", "gpu-6"}, wantB)

	hubA, hubB := startHub(t, "hub-a"), startHub(t, "hub-b")
	relayA, relayB := freePort(t), freePort(t)
	startCollector(t, "relay", fmt.Sprintf(`
receivers:
  otlp/a: {protocols: {grpc: {endpoint: "%s"}}}
  otlp/b: {protocols: {grpc: {endpoint: "%s"}}}
exporters:
  otlp_http/a: {endpoint: "http://%s", headers: {Authorization: "Bearer %s"}}
  otlp_http/b: {endpoint: "http://%s", headers: {Authorization: "Bearer %s"}}
service:
  pipelines:
    traces/a: {receivers: [otlp/a], exporters: [otlp_http/a]}
    traces/b: {receivers: [otlp/b], exporters: [otlp_http/b]}
%s`, relayA, relayB, hubA, token, hubB, token, telemetryOff))
	startCollector(t, "gateway", fmt.Sprintf(`
receivers:
  ark:
    include: [%s]
exporters:
  load_balancing:
    routing_key: traceID
    protocol:
      otlp:
        tls: {insecure: true}
    resolver:
      static: {hostnames: ["%s", "%s"]}
service:
  pipelines:
    traces: {receivers: [ark], exporters: [load_balancing]}
%s`, in, relayA, relayB, telemetryOff))

	// Which hub owns which job is the load balancer's hash: find out, then
	// check that the other hub knows nothing of that job.
	owner := func(job string) (string, error) {
		var owners []string
		for _, h := range []string{hubA, hubB} {
			if _, err := firstCause("why", "--job", job, "--hub", "http://"+h); err == nil {
				owners = append(owners, h)
			}
		}
		if len(owners) != 1 {
			return "", fmt.Errorf("job %s answered by %d hubs", job, len(owners))
		}
		return owners[0], nil
	}
	for job, want := range map[string]cause{"train/example": wantA, "train/other": wantB} {
		var got cause
		var h string
		require.Eventually(t, func() bool {
			h, err = owner(job)
			if err != nil {
				return false
			}
			got, err = firstCause("why", "--job", job, "--hub", "http://"+h)
			return err == nil && got == want
		}, 90*time.Second, 250*time.Millisecond, "job %s: %+v, %v", job, got, err)
		t.Logf("job %s lives on hub %s", job, h)
	}
	// The CLI given the whole set answers for either job.
	for job, want := range map[string]cause{"train/example": wantA, "train/other": wantB} {
		got, err := firstCause("why", "--job", job, "--hub", "http://"+hubA+",http://"+hubB)
		require.NoError(t, err)
		require.Equal(t, want, got, "job %s", job)
	}
}

func abs(t *testing.T, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	require.NoError(t, err)
	return a
}

// prometheusBin is the prometheus binary of Debian's package that
// hack/promtool.sh unpacks (or one on PATH).
func prometheusBin(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("prometheus"); err == nil {
		return p
	}
	out, err := exec.Command("../../hack/promtool.sh").Output()
	if err != nil {
		t.Skipf("no prometheus: hack/promtool.sh failed: %v", err)
	}
	p := filepath.Join(filepath.Dir(strings.TrimSpace(string(out))), "prometheus")
	if _, err := os.Stat(p); err != nil {
		t.Skipf("no prometheus next to promtool: %v", err)
	}
	return p
}
