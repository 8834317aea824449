package exporter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/ark-gpu/ark/event"
)

// BenchmarkAgentPipeline measures what an exec probe's output goes through
// in the agent: JSONL decode → validation → bus → local graph and metrics,
// reporting events/s once every event has been applied to the graph.
func BenchmarkAgentPipeline(b *testing.B) {
	var buf bytes.Buffer
	ts := t0
	for i := range 100_000 {
		pid := 1000 + i%64
		switch i % 4 {
		case 0:
			fmt.Fprintf(&buf, `{"ts":%d,"event_type":"compute.util","entity_id":"gpu-%d","value":"%d","pid":%d,"job_id":"j"}`+"\n", ts, pid%8, 90+i%10, pid)
		case 1:
			fmt.Fprintf(&buf, `{"ts":%d,"event_type":"transport.bw","entity_id":"network-ib0","value":"2e10","pid":%d,"job_id":"j"}`+"\n", ts, pid)
		case 2:
			fmt.Fprintf(&buf, `{"ts":%d,"event_type":"transport.drop","entity_id":"network-ib0","value":"0","pid":%d,"job_id":"j","attrs":{"peer":"10.0.0.2:29500"}}`+"\n", ts, pid)
		case 3:
			fmt.Fprintf(&buf, `{"ts":%d,"event_type":"process.state","entity_id":"pid-%d","value":"R","pid":%d,"job_id":"j"}`+"\n", ts, pid, pid)
		}
		if i%1000 == 999 {
			ts += 1000
		}
	}
	data := buf.Bytes()
	a, err := New(Config{NodeName: "bench", Now: func() time.Time { return time.UnixMilli(ts) }})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.bus.Run(ctx); close(done) }()
	b.ReportAllocs()
	b.ResetTimer()
	r := bytes.NewReader(data)
	d := event.NewDecoder(r)
	var ev event.Event
	for i := 0; i < b.N; i++ {
		err := d.Decode(&ev)
		if errors.Is(err, io.EOF) {
			r.Reset(data)
			d = event.NewDecoder(r)
			err = d.Decode(&ev)
		}
		if err != nil {
			b.Fatal(err)
		}
		// A full bus drops (counted); the benchmark waits instead, to
		// measure throughput rather than loss.
		for !a.Publish(&ev) {
			time.Sleep(50 * time.Microsecond)
		}
	}
	for a.graph.Stats().Applied < uint64(b.N) {
		time.Sleep(100 * time.Microsecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	cancel()
	<-done
}
