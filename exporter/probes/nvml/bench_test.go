package nvmlprobe

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probe"
)

// BenchmarkPoll is one poll of a DGX A100 (8 GPUs, 12 NVLinks each, three
// processes) through go-nvml's mock: the probe's own cost per interval,
// without the driver's. The mock records every call, which adds to allocs.
func BenchmarkPoll(b *testing.B) {
	r := newRig(b, 8, 12)
	p, _ := newProbe(b, r, probe.Env{})
	if err := p.open(); err != nil {
		b.Fatal(err)
	}
	defer p.close()
	sink := probe.SinkFunc(func(*event.Event) bool { return true })
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := p.poll(ctx, sink); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCollect is one scrape of the probe's metrics for 8 GPUs.
func BenchmarkCollect(b *testing.B) {
	r := newRig(b, 8, 12)
	p, _ := newProbe(b, r, probe.Env{})
	if err := p.open(); err != nil {
		b.Fatal(err)
	}
	defer p.close()
	if err := p.poll(context.Background(), &recorder{}); err != nil {
		b.Fatal(err)
	}
	c := collector{p: p}
	ch := make(chan prometheus.Metric, 1024)
	b.ReportAllocs()
	for b.Loop() {
		c.Collect(ch)
		for len(ch) > 0 {
			<-ch
		}
	}
}
