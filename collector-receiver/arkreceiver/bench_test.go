package arkreceiver

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/open-telemetry/opentelemetry-collector-contrib/receiver/filelogreceiver"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/pdata/plog"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/receiver/receivertest"

	"github.com/ark-gpu/ark/collector-receiver/arkreceiver/internal/metadata"
)

const benchEvents = 200_000

// benchFile writes benchEvents events of a 64-rank job (utilisation,
// throughput, process state and placements, as an agent records them).
func benchFile(b *testing.B) string {
	b.Helper()
	path := filepath.Join(b.TempDir(), "events.jsonl")
	f, err := os.Create(path)
	require.NoError(b, err)
	w := bufio.NewWriter(f)
	for i := range benchEvents {
		ts := 1764300000000 + int64(i)
		node, pid := i%8, 3000+i%64
		switch i % 4 {
		case 0:
			fmt.Fprintf(w, `{"ts":%d,"event_type":"compute.util","entity_id":"gpu-%d","node_id":"node-%d","pid":%d,"job_id":"train/bench","value":"%d"}`+"\n", ts, pid%8, node, pid, i%100)
		case 1:
			fmt.Fprintf(w, `{"ts":%d,"event_type":"transport.bw","entity_id":"network-ib0","node_id":"node-%d","pid":%d,"job_id":"train/bench","value":%d}`+"\n", ts, node, pid, i*1000)
		case 2:
			fmt.Fprintf(w, `{"ts":%d,"event_type":"process.state","entity_id":"pid-%d","node_id":"node-%d","pid":%d,"job_id":"train/bench","value":"R"}`+"\n", ts, pid, node, pid)
		default:
			fmt.Fprintf(w, `{"ts":%d,"event_type":"intent.run","entity_id":"pid-%d","node_id":"node-%d","pid":%d,"job_id":"train/bench","value":"running","attrs":{"rank":"%d","addr":"10.0.0.%d:29500"}}`+"\n", ts, pid, node, pid, pid-3000, node)
		}
	}
	require.NoError(b, w.Flush())
	require.NoError(b, f.Close())
	return path
}

// BenchmarkReceiverVsFilelog reads one file with the ark receiver (to
// traces: the mapping with links, the heavier signal) and with the contrib
// file_log receiver and a json_parser operator (to logs), each into a
// counting nop consumer, and reports events/s side by side.
func BenchmarkReceiverVsFilelog(b *testing.B) {
	path := benchFile(b)
	b.Run("ark", func(b *testing.B) {
		var n atomic.Int64
		next, err := consumer.NewTraces(func(_ context.Context, td ptrace.Traces) error {
			n.Add(int64(td.SpanCount()))
			return nil
		})
		require.NoError(b, err)
		cfg := testConfig(path)
		cfg.PollInterval = time.Millisecond
		runBench(b, &n, func() (component.Component, error) {
			return NewFactory().CreateTraces(context.Background(), receivertest.NewNopSettings(metadata.Type), cfg, next)
		})
	})
	b.Run("file_log+json_parser", func(b *testing.B) {
		var n atomic.Int64
		next, err := consumer.NewLogs(func(_ context.Context, ld plog.Logs) error {
			n.Add(int64(ld.LogRecordCount()))
			return nil
		})
		require.NoError(b, err)
		f := filelogreceiver.NewFactory()
		cfg := f.CreateDefaultConfig()
		require.NoError(b, confmap.NewFromStringMap(map[string]any{
			"include":       []any{path},
			"start_at":      "beginning",
			"poll_interval": "1ms",
			"operators":     []any{map[string]any{"type": "json_parser"}},
		}).Unmarshal(cfg))
		runBench(b, &n, func() (component.Component, error) {
			return f.CreateLogs(context.Background(), receivertest.NewNopSettings(f.Type()), cfg, next)
		})
	})
}

func runBench(b *testing.B, n *atomic.Int64, create func() (component.Component, error)) {
	b.Helper()
	var total time.Duration
	for b.Loop() {
		n.Store(0)
		r, err := create()
		require.NoError(b, err)
		begin := time.Now()
		require.NoError(b, r.Start(context.Background(), componenttest.NewNopHost()))
		for n.Load() < benchEvents {
			time.Sleep(time.Millisecond)
		}
		total += time.Since(begin)
		require.NoError(b, r.Shutdown(context.Background()))
	}
	b.ReportMetric(float64(benchEvents)*float64(b.N)/total.Seconds(), "events/s")
}
