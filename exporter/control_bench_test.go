package exporter

import (
	"context"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/ipc"
	"github.com/ark-gpu/ark/graph"
)

// benchAgent is an agent with a control socket and 64 ranks on 8 GPUs,
// one of them stalled on a GPU with an XID.
func benchAgent(b *testing.B) (string, func()) {
	b.Helper()
	sock := filepath.Join(b.TempDir(), "ark.sock")
	a, err := New(Config{NodeName: "h", Control: ControlConfig{Socket: sock}})
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now().UnixMilli()
	// The scheduler places every rank first, then they run.
	for r := range 64 {
		pid := int64(10_000 + r)
		ev := event.Event{TS: now, Type: event.IntentRun, EntityID: "pid-" + strconv.FormatInt(pid, 10), PID: pid, JobID: "j", Value: "running",
			Attrs: event.Attrs{{Key: "rank", Value: strconv.Itoa(r)}, {Key: "addr", Value: "10.0.0.1:" + strconv.Itoa(29500+r)}}}
		a.Publish(&ev)
	}
	for r := range 64 {
		pid := int64(10_000 + r)
		for _, ev := range []event.Event{
			{TS: now, Type: event.ComputeUtil, EntityID: "gpu-" + strconv.Itoa(r%8), PID: pid, JobID: "j", Value: "97"},
			{TS: now, Type: event.TransportBW, EntityID: "network-ib0", PID: pid, JobID: "j", Value: "2e10"},
			{TS: now, Type: event.TransportDrop, EntityID: "network-ib0", PID: pid, JobID: "j", Value: "3",
				Attrs: event.Attrs{{Key: "peer", Value: "10.0.0.1:" + strconv.Itoa(29500+(r+1)%64)}}},
			{TS: now, Type: event.ProcessState, EntityID: "pid-" + strconv.FormatInt(pid, 10), PID: pid, JobID: "j", Value: "stalled"},
		} {
			a.Publish(&ev)
		}
	}
	xev := event.Event{TS: now, Type: event.ErrorHW, EntityID: "gpu-3", Value: "Xid 79", Attrs: event.Attrs{{Key: "xid", Value: "79"}}}
	a.Publish(&xev)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = a.Run(ctx); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for len(a.graph.Processes(graph.ProcessFilter{})) < 64 {
		if time.Now().After(deadline) {
			b.Fatal("agent never saw the ranks")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return sock, func() { cancel(); <-done }
}

func benchIPC(b *testing.B, cmd string, args any, out func() any) {
	sock, stop := benchAgent(b)
	defer stop()
	c, err := ipc.Dial(context.Background(), sock)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if err := c.Call(context.Background(), cmd, args, out()); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}

// BenchmarkIPCPs is `ark ps` over the socket on a host with 64 ranks.
func BenchmarkIPCPs(b *testing.B) {
	benchIPC(b, "ps", PSArgs{}, func() any { return &[]graph.Process{} })
}

// BenchmarkIPCWhy is `ark why <pid>` over the socket on a host with 64
// ranks waiting on each other and one faulty GPU.
func BenchmarkIPCWhy(b *testing.B) {
	benchIPC(b, "why", TargetArgs{PID: 10_000}, func() any { return &graph.Result{} })
}
