package tcpflow

import (
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probe"
)

func benchSource(b *testing.B) source {
	b.Helper()
	if os.Geteuid() != 0 {
		b.Skip("loading eBPF programs needs root")
	}
	cfg := Config{}
	cfg.defaults(probe.DefaultPaths())
	src, err := openBPF(cfg)
	if err != nil {
		b.Skipf("eBPF unavailable here: %v", err)
	}
	return src
}

// BenchmarkRingBufferDrain is how many closed flows a second the Go side
// drains from the ring buffer while loopback connections open and close
// (each connection closes two flows); the kernel's lost counter must stay
// at zero.
func BenchmarkRingBufferDrain(b *testing.B) {
	src := benchSource(b)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	got := make(chan struct{}, 1<<16)
	done := make(chan error, 1)
	go func() {
		done <- src.readClosed(func(*Sample) {
			select {
			case got <- struct{}{}:
			default:
			}
		})
	}()
	b.ResetTimer()
	start := time.Now()
	n := 0
	for range b.N {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		_, _ = c.Write([]byte{1})
		c.Close()
	}
	// Both ends of every connection close.
	for n < 2*b.N {
		select {
		case <-got:
			n++
		case <-time.After(10 * time.Second):
			b.Fatalf("drained %d of %d closes", n, 2*b.N)
		}
	}
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "events/s")
	b.StopTimer()
	if lost := src.lost(); lost != 0 {
		b.Errorf("%d closes lost", lost)
	}
	_ = src.close()
	<-done
}

// BenchmarkPollAt10kFlows is the probe's own CPU per interval with 10,000
// flows in the kernel's table (5,000 loopback connections, both ends
// owned): one op reads the table, updates the tracker and metrics and
// emits the events. cpu_%_at_1s is ns/op over the default 1 s interval.
func BenchmarkPollAt10kFlows(b *testing.B) {
	src := benchSource(b)
	defer src.close()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	const conns = 5000
	var keep []net.Conn
	defer func() {
		for _, c := range keep {
			c.Close()
		}
	}()
	one := []byte{1}
	for range conns {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			b.Skipf("opening %d connections: %v", conns, err)
		}
		s, err := ln.Accept()
		if err != nil {
			b.Fatal(err)
		}
		keep = append(keep, c, s)
		_, _ = c.Write(one)
		_, _ = s.Read(make([]byte, 1))
	}
	cfg := Config{}
	cfg.defaults(probe.DefaultPaths())
	p, err := newProbe(probe.Env{}, cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	sink := probe.SinkFunc(func(*event.Event) bool { return true })
	if err := p.poll(src, sink); err != nil {
		b.Fatal(err)
	}
	if n := len(p.trk.flows); n < 2*conns {
		b.Fatalf("%d flows tracked, want %d", n, 2*conns)
	}
	b.ResetTimer()
	for range b.N {
		// Traffic on every 10th connection, so there is something to
		// emit; the writes are not the probe's cost.
		b.StopTimer()
		for i := 0; i < len(keep); i += 20 {
			_, _ = keep[i].Write(one)
		}
		b.StartTimer()
		if err := p.poll(src, sink); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1e9*100, "cpu_%_at_1s")
}
