package graph

import (
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ark-gpu/ark/event"
)

// The synthetic cluster of the performance claims: 10,000 hosts with 8 GPUs
// and 8 ranks each, in jobs of 512 ranks (64 hosts). One job has a fatal XID
// on one GPU and every one of its ranks waits on a ring neighbor.
const (
	benchHosts       = 10_000
	benchGPUsPerHost = 8
	benchRanksPerJob = 512
)

type cluster struct {
	g       *Graph
	faulty  string
	at      int64
	healthy string
	events  int
}

var (
	clusterOnce sync.Once
	theCluster  cluster
)

func hostName(h int) string { return "node-" + strconv.Itoa(h) }

func clusterEvents(fn func(*event.Event)) (faulty, healthy string, at int64) {
	hostsPerJob := benchRanksPerJob / benchGPUsPerHost
	ts := t0
	var ev event.Event
	emit := func(typ event.Type, host int, entity, value string, pid int64, job string, attrs ...string) {
		ev = event.Event{TS: ts, Type: typ, NodeID: hostName(host), EntityID: entity, Value: value, PID: pid, JobID: job}
		for i := 0; i+1 < len(attrs); i += 2 {
			ev.Attrs = append(ev.Attrs, event.Attr{Key: attrs[i], Value: attrs[i+1]})
		}
		fn(&ev)
	}
	addr := func(h, g int) string { return fmt.Sprintf("10.%d.%d.1:%d", h/250, h%250, 29500+g) }
	for h := range benchHosts {
		job := "job-" + strconv.Itoa(h/hostsPerJob)
		for gpu := range benchGPUsPerHost {
			pid := int64(10_000 + gpu)
			rank := (h%hostsPerJob)*benchGPUsPerHost + gpu
			emit(event.IntentRun, h, "pid-"+strconv.FormatInt(pid, 10), "running", pid, job,
				"rank", strconv.Itoa(rank), "addr", addr(h, gpu))
			emit(event.ComputeUtil, h, "gpu-"+strconv.Itoa(gpu), "97", pid, job)
			emit(event.TransportBW, h, "network-ib0", "2e10", pid, job)
			emit(event.ProcessState, h, "pid-"+strconv.FormatInt(pid, 10), "R", pid, job)
		}
	}
	// Job 7 (hosts 448..511) breaks: an XID 79 on its 10th host, and every
	// rank drops toward its ring neighbor and stalls.
	ts += 30_000
	faultyJob := 7
	base := faultyJob * hostsPerJob
	emit(event.ErrorHW, base+9, "gpu-3", "Xid 79: GPU has fallen off the bus.", 10_003, "", "xid", "79")
	ts += 1000
	for i := range benchRanksPerJob {
		h, gpu := base+i/benchGPUsPerHost, i%benchGPUsPerHost
		n := (i + 1) % benchRanksPerJob
		nh, ngpu := base+n/benchGPUsPerHost, n%benchGPUsPerHost
		pid := int64(10_000 + gpu)
		emit(event.TransportDrop, h, "network-ib0", "17", pid, "job-7", "peer", addr(nh, ngpu))
		emit(event.ProcessState, h, "pid-"+strconv.FormatInt(pid, 10), "stalled", pid, "job-7")
	}
	return "job-" + strconv.Itoa(faultyJob), "job-3", ts
}

func buildCluster(b *testing.B) *cluster {
	clusterOnce.Do(func() {
		g := New(Options{})
		n := 0
		f, h, at := clusterEvents(func(ev *event.Event) { g.apply(ev); n++ })
		theCluster = cluster{g: g, faulty: f, healthy: h, at: at, events: n}
	})
	res, err := theCluster.g.Why(Target{JobID: theCluster.faulty}, theCluster.at)
	if err != nil || len(res.Causes) == 0 || res.Causes[0].NodeID != hostName(7*64+9) {
		b.Fatalf("synthetic cluster: wrong answer %+v %v", res.Causes, err)
	}
	return &theCluster
}

// BenchmarkWhy512RankJob measures Why for a stalled 512-rank job on a
// 10,000-host, 80,000-GPU graph, reporting p50 and p99.
func BenchmarkWhy512RankJob(b *testing.B) {
	c := buildCluster(b)
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		res, _ := c.g.Why(Target{JobID: c.faulty}, c.at)
		lat = append(lat, time.Since(start))
		if len(res.Causes) == 0 {
			b.Fatal("no cause")
		}
	}
	b.StopTimer()
	reportPercentiles(b, lat)
}

// BenchmarkWhyHealthyJob is the common case: nothing wrong.
func BenchmarkWhyHealthyJob(b *testing.B) {
	c := buildCluster(b)
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		res, _ := c.g.Why(Target{JobID: c.healthy}, c.at)
		lat = append(lat, time.Since(start))
		if len(res.Causes) != 0 {
			b.Fatal("healthy job has causes")
		}
	}
	b.StopTimer()
	reportPercentiles(b, lat)
}

func reportPercentiles(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	p := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))].Nanoseconds()) / 1e6 }
	b.ReportMetric(p(0.50), "p50-ms")
	b.ReportMetric(p(0.99), "p99-ms")
}

// BenchmarkIngest measures applying a steady realistic stream (usage
// samples, state, drops with peers) to a populated graph.
func BenchmarkIngest(b *testing.B) {
	const hosts = 1000
	g := New(Options{})
	var evs []event.Event
	// Ranks first, so peers resolve.
	for h := range hosts {
		for gpu := range 8 {
			pid := int64(10_000 + gpu)
			evs = append(evs, event.Event{TS: t0, Type: event.IntentRun, NodeID: hostName(h), EntityID: "pid-" + strconv.FormatInt(pid, 10),
				Value: "running", PID: pid, JobID: "job-" + strconv.Itoa(h/64),
				Attrs: event.Attrs{{Key: "addr", Value: fmt.Sprintf("10.%d.%d.1:%d", h/250, h%250, 29500+gpu)}}})
		}
	}
	g.ApplyBatch(evs)
	stream := make([]event.Event, 0, 64*1024)
	ts := t0 + 1000
	for i := 0; len(stream) < cap(stream); i++ {
		h := i % hosts
		gpu := (i / hosts) % 8
		pid := int64(10_000 + gpu)
		node := hostName(h)
		job := "job-" + strconv.Itoa(h/64)
		switch i % 5 {
		case 0, 1:
			stream = append(stream, event.Event{TS: ts, Type: event.ComputeUtil, NodeID: node, EntityID: "gpu-" + strconv.Itoa(gpu), Value: "97", PID: pid, JobID: job})
		case 2:
			stream = append(stream, event.Event{TS: ts, Type: event.TransportBW, NodeID: node, EntityID: "network-ib0", Value: "2e10", PID: pid, JobID: job})
		case 3:
			stream = append(stream, event.Event{TS: ts, Type: event.ProcessState, NodeID: node, EntityID: "pid-" + strconv.FormatInt(pid, 10), Value: "R", PID: pid, JobID: job})
		case 4:
			stream = append(stream, event.Event{TS: ts, Type: event.TransportDrop, NodeID: node, EntityID: "network-ib0", Value: "2", PID: pid, JobID: job,
				Attrs: event.Attrs{{Key: "peer", Value: fmt.Sprintf("10.%d.%d.1:%d", ((h+1)%hosts)/250, ((h+1)%hosts)%250, 29500+gpu)}}})
		}
		if i%8000 == 7999 {
			ts += 1000
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	const batch = 1024
	for i := 0; i < b.N; i += batch {
		off := i % len(stream)
		end := min(off+batch, len(stream), off+(b.N-i))
		g.ApplyBatch(stream[off:end])
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkBytesPerEdge measures heap bytes per edge: edges added between
// existing nodes, and the whole cluster's heap divided by its edges.
func BenchmarkBytesPerEdge(b *testing.B) {
	for i := 0; i < b.N; i++ {
		const procs, peers = 20_000, 10
		g := New(Options{})
		for p := range procs {
			g.apply(&event.Event{TS: t0, Type: event.IntentRun, NodeID: "h" + strconv.Itoa(p/8), EntityID: "x", Value: "r",
				PID: int64(p%8 + 1), JobID: "j", Attrs: event.Attrs{{Key: "addr", Value: "10.1." + strconv.Itoa(p/250) + "." + strconv.Itoa(p%250)}}})
		}
		before := heapInUse()
		added := 0
		for p := range procs {
			for k := 1; k <= peers; k++ {
				q := (p + k*97) % procs
				g.apply(&event.Event{TS: t0 + 1, Type: event.TransportDrop, NodeID: "h" + strconv.Itoa(p/8), EntityID: "network-ib0", Value: "1",
					PID: int64(p%8 + 1), Attrs: event.Attrs{{Key: "peer", Value: "10.1." + strconv.Itoa(q/250) + "." + strconv.Itoa(q%250)}}})
			}
		}
		after := heapInUse()
		added = g.Stats().Edges[WaitsOn]
		b.ReportMetric(float64(after-before)/float64(added), "bytes/edge")
		runtime.KeepAlive(g)
	}
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
