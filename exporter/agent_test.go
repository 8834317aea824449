package exporter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probe"
	"github.com/ark-gpu/ark/graph"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const t0 = int64(1764300000000)

func TestBusNeverBlocksAndCountsDrops(t *testing.T) {
	b := NewBus(nil)
	release := make(chan struct{})
	var got int
	var mu sync.Mutex
	b.Subscribe("slow", 10, func(batch []event.Event) {
		<-release
		mu.Lock()
		got += len(batch)
		mu.Unlock()
	})
	var fast int
	b.Subscribe("fast", 2000, func(batch []event.Event) { fast += len(batch) })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.Run(ctx); close(done) }()
	ev := event.Event{TS: t0, Type: event.ComputeUtil, EntityID: "gpu-0", Value: "1", PID: 1}
	start := time.Now()
	for range 1000 {
		b.Publish(&ev)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Publish blocked behind a slow subscriber for %s", d)
	}
	dropped := testutil.ToFloat64(b.dropped.WithLabelValues("slow"))
	if dropped < 1000-10-1-maxBatch || dropped > 1000-10 {
		t.Fatalf("slow subscriber drops = %v", dropped)
	}
	if d := testutil.ToFloat64(b.dropped.WithLabelValues("fast")); d != 0 {
		t.Fatalf("fast subscriber dropped %v", d)
	}
	close(release)
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if float64(got)+dropped != 1000 || fast != 1000 {
		t.Fatalf("delivered %d + dropped %v to slow, %d to fast; want 1000 each", got, dropped, fast)
	}
}

func startAgent(t *testing.T, cfg Config) (*Agent, func()) {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- a.Run(ctx) }()
	return a, func() {
		cancel()
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
}

func scrape(t *testing.T, a *Agent) string {
	t.Helper()
	resp, err := http.Get("http://" + a.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
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

func TestAgentFeedsGraphAndMetricsFromProbes(t *testing.T) {
	// The agent reads its clock from its own goroutines (rule matches log
	// with it), so the test moves it atomically.
	var nowMS atomic.Int64
	nowMS.Store(t0 + 5000)
	evs := []event.Event{
		{TS: t0, Type: event.IntentRun, EntityID: "pid-7", PID: 7, JobID: "j", Value: "running", Attrs: event.Attrs{{Key: "rank", Value: "0"}}},
		{TS: t0 + 1000, Type: event.ComputeUtil, EntityID: "gpu-0", PID: 7, JobID: "j", Value: "97"},
		{TS: t0 + 2000, Type: event.ErrorHW, EntityID: "gpu-0", PID: 7, Value: "Xid 79: fell off", Attrs: event.Attrs{{Key: "xid", Value: "79"}}},
		{TS: t0 + 2000, Type: "bogus.type", EntityID: "gpu-0", Value: "1"},
		{TS: t0 + 2000, Type: event.ComputeUtil, Value: "1"},
	}
	a, stop := startAgent(t, Config{
		NodeName: "gpu-host-1", ListenAddress: "127.0.0.1:0", Now: func() time.Time { return time.UnixMilli(nowMS.Load()) },
		Enabled:   map[string]bool{"procfs": false, "jobs": false, "tcpflow": false},
		Factories: map[string]probe.Factory{},
	})
	defer stop()
	for i := range evs {
		a.Publish(&evs[i])
	}
	waitFor(t, "the graph to see the job", func() bool {
		res, _ := a.Graph().Why(graph.Target{JobID: "j"}, 0)
		return len(res.Causes) == 1
	})
	res, _ := a.Graph().Why(graph.Target{JobID: "j"}, 0)
	if c := res.Causes[0]; c.NodeID != "gpu-host-1" || c.EntityID != "gpu-0" {
		t.Fatalf("the agent must fill in its node name: %+v", c)
	}
	body := scrape(t, a)
	for _, want := range []string{
		`ark_events_processed_total{event_type="compute.util"} 1`,
		`ark_events_rejected_total{reason="unknown_event_type"} 1`,
		`ark_events_rejected_total{reason="missing_field"} 1`,
		`ark_graph_nodes{type="error"} 1`,
		`ark_process_resource_usage{job_id="j",kind="compute.util",pid="7",resource="gpu-0"} 97`,
		`process_cpu_seconds_total`,
		`go_goroutines`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// Series of a process leave once it has been quiet for the TTL.
	nowMS.Add((10 * time.Minute).Milliseconds())
	if body := scrape(t, a); strings.Contains(body, `ark_process_resource_usage{`) {
		t.Error("an expired pid must leave ark_process_resource_usage")
	}
}

type failingProbe struct {
	mu   sync.Mutex
	runs int
}

func (p *failingProbe) Run(context.Context, probe.Sink) error {
	p.mu.Lock()
	p.runs++
	p.mu.Unlock()
	return errors.New("boom")
}

// Test probes, off by default; tests enable them and swap factories.
func init() {
	for _, name := range []string{"test-fail", "test-absent", "test-off"} {
		probe.Register(probe.Spec{Name: name, Help: "test", New: func(probe.Env) (probe.Probe, error) {
			return nil, errors.New("replaced in tests")
		}})
	}
}

func TestAgentReportsInactiveAndRestartsFailedProbes(t *testing.T) {
	fp := &failingProbe{}
	a, stop := startAgent(t, Config{
		NodeName: "h", ListenAddress: "127.0.0.1:0",
		Enabled: map[string]bool{"test-fail": true, "test-absent": true},
		Factories: map[string]probe.Factory{
			"test-fail": func(probe.Env) (probe.Probe, error) { return fp, nil },
			"test-absent": func(probe.Env) (probe.Probe, error) {
				return nil, fmt.Errorf("no GPU here: %w", probe.ErrNoData)
			},
		},
	})
	defer stop()
	waitFor(t, "a restart", func() bool { fp.mu.Lock(); defer fp.mu.Unlock(); return fp.runs >= 2 })
	body := scrape(t, a)
	if !strings.Contains(body, `ark_probe_success{probe="test-fail"} 0`) {
		t.Error("a failing probe must show ark_probe_success 0")
	}
	want := map[string]string{"test-fail": "running", "test-absent": "inactive", "test-off": "disabled"}
	for _, s := range a.Probes() {
		restarting := s.Name == "test-fail" && s.State == "failed"
		if w, ok := want[s.Name]; ok && s.State != w && !restarting {
			t.Errorf("%s: %s, want %s", s.Name, s.State, w)
		}
	}
}

func TestUnknownProbeSectionIsAnError(t *testing.T) {
	fc, err := LoadConfig([]byte("probes:\n  test-off: {}\n  nvmll: {}\n  bogus: {}\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(Config{NodeName: "h", File: fc})
	if err == nil {
		t.Fatal("a section under probes: naming no probe must be an error")
	}
	for _, want := range []string{`unknown probe "bogus"`, `unknown probe "nvmll"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %s", err, want)
		}
	}
	if strings.Contains(err.Error(), `"test-off"`) {
		t.Errorf("error %q names a known probe", err)
	}
}

func TestConfigSectionsAreStrict(t *testing.T) {
	fc, err := LoadConfig([]byte("probes:\n  procfs:\n    interval: 2s\n    bogus: 1\n"))
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Interval time.Duration `yaml:"interval"`
	}
	err = fc.section("procfs")(&v)
	if err == nil || !strings.Contains(err.Error(), `field bogus not found`) {
		t.Fatalf("unknown key in a probe section: %v", err)
	}
	if _, err := LoadConfig([]byte("probez: {}\n")); err == nil {
		t.Fatal("unknown top-level key must be an error")
	}
	var none struct{ X int }
	if err := fc.section("absent")(&none); err != nil || none.X != 0 {
		t.Fatalf("absent section: %v", err)
	}
}
