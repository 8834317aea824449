package execprobe

import (
	"bytes"
	"log/slog"
	"testing"
	"time"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probe"
)

// BenchmarkReadEvents measures the stdout path of one program: decode,
// rate limit, emit. "accepted" hands every line to the sink; "rate_limited"
// drops nearly all, the cost a flooding program puts on the agent.
func BenchmarkReadEvents(b *testing.B) {
	const lines = 10000
	data := bytes.Repeat([]byte(`{"ts":1764300000000,"event_type":"compute.util","entity_id":"gpu-0","pid":4242,"value":85,"attrs":{"rank":"3"}}`+"\n"), lines)
	for _, bc := range []struct {
		name string
		rate int
	}{{"accepted", 1 << 30}, {"rate_limited", 1}} {
		b.Run(bc.name, func(b *testing.B) {
			cfg := Config{Programs: []ProgramConfig{{Name: "bench", Command: "x", MaxEventsPerSecond: bc.rate}}}
			cfg.SetDefaults()
			m, err := newMetrics(nil)
			if err != nil {
				b.Fatal(err)
			}
			p := newProgram(cfg.Programs[0], slog.New(slog.DiscardHandler), func(time.Duration, error) {}, m)
			sink := probe.SinkFunc(func(*event.Event) bool { return true })
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				p.readEvents(bytes.NewReader(data), sink)
			}
			b.ReportMetric(float64(b.N)*lines/b.Elapsed().Seconds(), "lines/s")
		})
	}
}
