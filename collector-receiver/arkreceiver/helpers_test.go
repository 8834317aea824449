package arkreceiver

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/ark-gpu/ark/collector-receiver/arkreceiver/internal/metadatatest"
	"github.com/ark-gpu/ark/graphsvc"
)

// started is a running receiver and what it fed.
type started struct {
	metrics *consumertest.MetricsSink
	traces  *consumertest.TracesSink
	tel     *componenttest.Telemetry
	comps   []component.Component
	rcv     *arkReceiver
}

// startReceiver starts the receiver of cfg for both signals on host (nil:
// a nop host) and shuts it down at the end of the test.
func startReceiver(t *testing.T, cfg *Config, host component.Host) *started {
	t.Helper()
	if host == nil {
		host = componenttest.NewNopHost()
	}
	s := &started{
		metrics: new(consumertest.MetricsSink),
		traces:  new(consumertest.TracesSink),
		tel:     componenttest.NewTelemetry(),
	}
	set := metadatatest.NewSettings(s.tel)
	f := NewFactory()
	mr, err := f.CreateMetrics(context.Background(), set, cfg, s.metrics)
	require.NoError(t, err)
	tr, err := f.CreateTraces(context.Background(), set, cfg, s.traces)
	require.NoError(t, err)
	s.rcv = mr.(shared).arkReceiver
	require.Same(t, s.rcv, tr.(shared).arkReceiver, "one receiver for both signals")
	s.comps = []component.Component{mr, tr}
	for _, c := range s.comps {
		require.NoError(t, c.Start(context.Background(), host))
	}
	t.Cleanup(func() { s.stop(t) })
	return s
}

func (s *started) stop(t *testing.T) {
	t.Helper()
	if s.comps == nil {
		return
	}
	for _, c := range s.comps {
		require.NoError(t, c.Shutdown(context.Background()))
	}
	s.comps = nil
	require.NoError(t, s.tel.Shutdown(context.Background()))
}

// rejected returns the receiver's own count of dropped lines by reason.
func (s *started) rejected() map[string]int64 {
	out := map[string]int64{}
	m, err := s.tel.GetMetric("otelcol_receiver_ark_events_rejected")
	if err != nil {
		return out
	}
	sum, ok := m.Data.(metricdata.Sum[int64])
	if !ok {
		return out
	}
	for _, dp := range sum.DataPoints {
		r, _ := dp.Attributes.Value("reason")
		out[r.AsString()] += dp.Value
	}
	return out
}

// spanValues lists ark.value of every span received, in order.
func spanValues(all []ptrace.Traces) []string {
	var out []string
	for _, td := range all {
		for _, rs := range td.ResourceSpans().All() {
			for _, ss := range rs.ScopeSpans().All() {
				for _, sp := range ss.Spans().All() {
					v, _ := sp.Attributes().Get(graphsvc.AttrValue)
					out = append(out, v.AsString())
				}
			}
		}
	}
	return out
}

// seqLine is a valid event whose value is seq.
func seqLine(seq int) string {
	return fmt.Sprintf(`{"ts":%d,"event_type":"compute.util","entity_id":"gpu-0","node_id":"n1","pid":7,"value":%d}`+"\n", 1764300000000+int64(seq), seq)
}

// appendSeq appends the events from..to-1 to path.
func appendSeq(t *testing.T, path string, from, to int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	require.NoError(t, err)
	for i := from; i < to; i++ {
		_, err := f.WriteString(seqLine(i))
		require.NoError(t, err)
	}
	require.NoError(t, f.Close())
}

// requireEachOnce checks that values are 0..n-1, each exactly once.
func requireEachOnce(t *testing.T, values []string, n int) {
	t.Helper()
	count := map[int]int{}
	for _, v := range values {
		i, err := strconv.Atoi(v)
		require.NoError(t, err)
		count[i]++
	}
	for i := range n {
		require.Equalf(t, 1, count[i], "event %d seen %d times", i, count[i])
	}
	require.Len(t, values, n)
}

func testConfig(include ...string) *Config {
	cfg := createDefaultConfig().(*Config)
	cfg.Include = include
	cfg.PollInterval = 20 * 1e6 // 20ms
	cfg.HostName = "test-host"
	return cfg
}

var _ receiver.Traces = shared{}

func gzipFile(t *testing.T, from, to string) {
	t.Helper()
	raw, err := os.ReadFile(from)
	require.NoError(t, err)
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, err = zw.Write(raw)
	require.NoError(t, err)
	require.NoError(t, zw.Close())
	require.NoError(t, os.WriteFile(to, buf.Bytes(), 0o644))
}

func gunzipFile(t *testing.T, from, to string) {
	t.Helper()
	f, err := os.Open(from)
	require.NoError(t, err)
	defer f.Close()
	zr, err := gzip.NewReader(f)
	require.NoError(t, err)
	raw, err := io.ReadAll(zr)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(to, raw, 0o644))
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, []byte(text), 0o644))
}
