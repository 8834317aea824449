package nvmlprobe

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probe"
	"github.com/ark-gpu/ark/exporter/probes/nvml/nvmlmock"
)

const (
	gib = 1 << 30
	mib = 1 << 20
	// testNow is the fixed clock of the tests' probes.
	testNow = int64(1_700_000_000_000)
)

// busOf is where GPU i sits, as on a DGX A100.
var busOf = [8]uint8{0x07, 0x0f, 0x47, 0x4e, 0x87, 0x90, 0xb7, 0xbd}

// rig is go-nvml's DGX A100 mock with every reading the probe makes stubbed
// to values the tests chose: GPU i is i*10 % busy, uses i+1 GiB of 40, is
// at 30+i °C, draws 100.5+i W, has i single-bit volatile ECC errors (10+i
// aggregate, 1 double-bit aggregate), i correctable remapped rows, 3*i PCIe
// replays and nLinks NVLinks up. GPU 0 runs pids 1000 (compute and
// graphics, 1 GiB) and 1001 (512 MiB); GPU 1 runs pid 2000 whose memory is
// not available. Retired pages are not supported (an A100 remaps rows).
type rig struct {
	srv  *server.Server
	devs []*server.Device

	mu       sync.Mutex
	compute  map[int][]nvml.ProcessInfo
	graphics map[int][]nvml.ProcessInfo

	xid   chan nvml.EventData
	waits atomic.Int64
	freed atomic.Int64
}

func newRig(t testing.TB, nGPUs, nLinks int) *rig {
	t.Helper()
	r := &rig{
		srv: dgxa100.New(),
		compute: map[int][]nvml.ProcessInfo{
			0: {{Pid: 1000, UsedGpuMemory: gib}, {Pid: 1001, UsedGpuMemory: 512 * mib}},
			1: {{Pid: 2000, UsedGpuMemory: ^uint64(0)}},
		},
		graphics: map[int][]nvml.ProcessInfo{
			0: {{Pid: 1000, UsedGpuMemory: gib}},
		},
		xid: make(chan nvml.EventData, 4),
	}
	r.srv.Devices = r.srv.Devices[:nGPUs]
	for i, d := range r.srv.Devices {
		dev := d.(*server.Device)
		r.devs = append(r.devs, dev)
		r.stub(dev, i, nLinks)
	}
	r.srv.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) {
		return &mock.EventSet{
			WaitFunc: func(ms uint32) (nvml.EventData, nvml.Return) {
				r.waits.Add(1)
				select {
				case ev := <-r.xid:
					return ev, nvml.SUCCESS
				case <-time.After(time.Duration(ms) * time.Millisecond):
					return nvml.EventData{}, nvml.ERROR_TIMEOUT
				}
			},
			FreeFunc: func() nvml.Return {
				r.freed.Add(1)
				return nvml.SUCCESS
			},
		}, nvml.SUCCESS
	}
	return r
}

func (r *rig) stub(d *server.Device, i, nLinks int) {
	nvmlmock.StubDevice(d, i, nLinks)
	d.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) {
		r.mu.Lock()
		defer r.mu.Unlock()
		return append([]nvml.ProcessInfo(nil), r.compute[i]...), nvml.SUCCESS
	}
	d.GetGraphicsRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) {
		r.mu.Lock()
		defer r.mu.Unlock()
		return append([]nvml.ProcessInfo(nil), r.graphics[i]...), nvml.SUCCESS
	}
	d.RegisterEventsFunc = func(uint64, nvml.EventSet) nvml.Return { return nvml.SUCCESS }
}

func (r *rig) setCompute(gpu int, ps ...nvml.ProcessInfo) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.compute[gpu] = ps
}

// newProbe builds a probe over r with its metrics on a fresh registry.
func newProbe(t testing.TB, r *rig, env probe.Env) (*Probe, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	env.Registerer = reg
	if env.NodeName == "" {
		env.NodeName = "node-7"
	}
	p, err := New(env, r.srv)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	p.now = func() time.Time { return time.UnixMilli(testNow) }
	p.waitTimeout = 20 * time.Millisecond
	return p, reg
}

// recorder is a Sink that keeps what it is given.
type recorder struct {
	mu  sync.Mutex
	evs []event.Event
}

func (s *recorder) Emit(ev *event.Event) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.evs = append(s.evs, ev.Clone())
	return true
}

func (s *recorder) events() []event.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]event.Event(nil), s.evs...)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// pods is a fake PodLookup: a map from GPU UUID to container.
type pods map[string]probe.PodRef

func (p pods) LookupDevice(id string) (probe.PodRef, bool) {
	ref, ok := p[id]
	return ref, ok
}
