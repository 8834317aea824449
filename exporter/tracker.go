package exporter

import (
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probe"
	"github.com/ark-gpu/ark/graph"
)

// tracker follows the processes the events mention: it feeds the procfs
// probe (probe.Tracker) and exports per-process usage and wait metrics.
// Series of a process leave /metrics once it has not been heard from for
// the TTL, so cardinality follows the live ranks.
type tracker struct {
	mu    sync.Mutex
	ttl   int64 // ms
	now   func() int64
	procs map[int64]*trackedProc

	usage    *prometheus.Desc
	waitHist prometheus.Histogram
}

type trackedProc struct {
	pid       int64
	job       string
	lastSeen  int64
	gpuUtil   float64
	gpuUtilTS int64
	usage     map[usageKey]usageSample
	stuckAt   int64 // start of the current wait, 0 when running
	exited    bool
}

type usageKey struct {
	resource string
	kind     event.Type
}

type usageSample struct {
	value float64
	ts    int64
}

func newTracker(ttl time.Duration, now func() int64) *tracker {
	return &tracker{
		ttl:   ttl.Milliseconds(),
		now:   now,
		procs: make(map[int64]*trackedProc),
		usage: prometheus.NewDesc("ark_process_resource_usage",
			"Latest usage of a resource by a tracked process: GPU utilisation %, device memory bytes, network bytes/s, storage IOPS, by the event kind that reported it.",
			[]string{"pid", "job_id", "resource", "kind"}, nil),
		waitHist: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ark_process_wait_time_seconds",
			Help:    "How long tracked processes stayed stuck (process.state D or stalled) before running again or exiting.",
			Buckets: []float64{1, 5, 15, 30, 60, 120, 300, 600, 1800},
		}),
	}
}

func (t *tracker) proc(pid int64) *trackedProc {
	p := t.procs[pid]
	if p == nil {
		p = &trackedProc{pid: pid, usage: map[usageKey]usageSample{}}
		t.procs[pid] = p
	}
	return p
}

// observe updates the tracker with a batch of events.
func (t *tracker) observe(batch []event.Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range batch {
		ev := &batch[i]
		if ev.PID <= 0 {
			continue
		}
		p := t.proc(ev.PID)
		if ev.TS > p.lastSeen {
			p.lastSeen = ev.TS
		}
		if ev.JobID != "" && ev.JobID != p.job {
			p.job = strings.Clone(ev.JobID) // not the whole decoded line
		}
		switch ev.Type {
		case event.ComputeUtil, event.ComputeMem, event.TransportBW, event.StorageIOPS, event.StorageQDepth:
			v, ok := ev.Num()
			if !ok {
				continue
			}
			k := usageKey{ev.EntityID, ev.Type}
			if _, ok := p.usage[k]; !ok {
				k.resource = strings.Clone(k.resource)
			}
			p.usage[k] = usageSample{v, ev.TS}
			if ev.Type == event.ComputeUtil && ev.TS >= p.gpuUtilTS {
				p.gpuUtil, p.gpuUtilTS = v, ev.TS
			}
		case event.ProcessState:
			stuck := graph.IsStuckState(ev.Value)
			switch {
			case stuck && p.stuckAt == 0:
				p.stuckAt = ev.TS
			case !stuck && p.stuckAt != 0:
				t.waitHist.Observe(float64(ev.TS-p.stuckAt) / 1000)
				p.stuckAt = 0
			}
			p.exited = ev.Value == "exited" || ev.Value == "Z"
		}
	}
}

// expire forgets processes not heard from for the TTL.
func (t *tracker) expire() {
	cut := t.now() - t.ttl
	for pid, p := range t.procs {
		if p.lastSeen < cut {
			if p.stuckAt != 0 {
				t.waitHist.Observe(float64(p.lastSeen-p.stuckAt) / 1000)
			}
			delete(t.procs, pid)
			continue
		}
		for k, s := range p.usage {
			if s.ts < cut {
				delete(p.usage, k)
			}
		}
	}
}

// Tracked implements probe.Tracker.
func (t *tracker) Tracked() []probe.Tracked {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.expire()
	out := make([]probe.Tracked, 0, len(t.procs))
	for _, p := range t.procs {
		if p.exited {
			continue
		}
		out = append(out, probe.Tracked{PID: p.pid, JobID: p.job, GPUUtil: p.gpuUtil, GPUUtilTS: p.gpuUtilTS})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PID < out[j].PID })
	return out
}

// Describe implements prometheus.Collector.
func (t *tracker) Describe(ch chan<- *prometheus.Desc) {
	ch <- t.usage
	t.waitHist.Describe(ch)
}

// Collect implements prometheus.Collector.
func (t *tracker) Collect(ch chan<- prometheus.Metric) {
	t.mu.Lock()
	t.expire()
	for _, p := range t.procs {
		pid := strconv.FormatInt(p.pid, 10)
		for k, s := range p.usage {
			ch <- prometheus.MustNewConstMetric(t.usage, prometheus.GaugeValue, s.value, pid, p.job, k.resource, string(k.kind))
		}
	}
	t.mu.Unlock()
	t.waitHist.Collect(ch)
}
