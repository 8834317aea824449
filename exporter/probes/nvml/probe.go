package nvmlprobe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probe"
)

// Name is the probe's name: --probe.nvml, and its config section.
const Name = "nvml"

// maxProcsPerGPU bounds the per-process series and events of one GPU; NVML
// lists every context, and MPS can put hundreds on a GPU.
const maxProcsPerGPU = 128

// xidWaitTimeout is how long one NVML event wait blocks, and so how long
// Run may take to return after its context ends.
const xidWaitTimeout = 500 * time.Millisecond

func init() {
	probe.Register(probe.Spec{
		Name:    Name,
		Help:    "GPU metrics, per-process GPU use and XID events from NVML (libnvidia-ml.so.1)",
		Default: true,
		New: func(env probe.Env) (probe.Probe, error) {
			return New(env, nvml.New())
		},
	})
}

// Probe reads GPUs through an nvml.Interface. It is a probe.Probe and a
// probe.GPUResolver; its metrics are registered by New.
type Probe struct {
	lib         nvml.Interface
	env         probe.Env
	logger      *slog.Logger
	cfg         Config
	now         func() time.Time
	waitTimeout time.Duration

	// gpus is written by open and read by Run's goroutine and the XID
	// watcher, which starts after open and is stopped before close.
	gpus []*gpu

	mu sync.Mutex
	// snap is the latest poll, one sample per GPU. A published snapshot is
	// never modified, so the collector reads it after releasing mu.
	snap []sample
	// pci maps pciAddr.key() to the GPU index.
	pci map[string]int
}

// gpu is what discovery learned about one device, and what it has learned
// since about what the device does not support.
type gpu struct {
	index       int
	dev         nvml.Device
	entity      string // "gpu-<index>"
	indexLabel  string
	uuid        string
	model       string
	busID       string // as NVML writes it, the pci_bus_id label
	pciBus      string // kernel form, the pci_bus attr of events
	links       []int  // NVLinks that answered at discovery
	linkLabels  []string
	unsupported fieldSet
}

// New builds the probe over lib (nvml.New() in production, a mock in
// tests), reading its config from env and registering its metrics.
func New(env probe.Env, lib nvml.Interface) (*Probe, error) {
	cfg := DefaultConfig()
	if env.Config != nil {
		if err := env.Config(&cfg); err != nil {
			return nil, fmt.Errorf("nvml: reading config: %w", err)
		}
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("nvml: %w", err)
	}
	logger := env.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	p := &Probe{
		lib:         lib,
		env:         env,
		logger:      logger,
		cfg:         cfg,
		now:         time.Now,
		waitTimeout: xidWaitTimeout,
	}
	if env.Registerer != nil {
		if err := env.Registerer.Register(collector{p: p}); err != nil {
			return nil, fmt.Errorf("nvml: registering metrics: %w", err)
		}
	}
	return p, nil
}

// Run initialises NVML, polls every GPU each interval until ctx ends and
// shuts NVML down. Without a driver or a GPU it returns an error wrapping
// probe.ErrNoData (and the nvml.Return saying why).
func (p *Probe) Run(ctx context.Context, sink probe.Sink) error {
	if err := p.open(); err != nil {
		return err
	}
	defer p.close()
	// The poll and the XID watcher both emit; the Sink contract does not
	// promise it may be called from two goroutines.
	sink = &lockedSink{sink: sink}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	if p.cfg.XIDEvents {
		p.startXID(ctx, &wg, sink)
	}
	return probe.Poll(ctx, p.env, p.cfg.Interval, func(ctx context.Context) error {
		return p.poll(ctx, sink)
	})
}

// open initialises NVML and discovers the GPUs.
func (p *Probe) open() error {
	if ret := p.lib.Init(); ret != nvml.SUCCESS {
		return fmt.Errorf("nvml: initializing NVML: %w: %w", ret, probe.ErrNoData)
	}
	n, ret := p.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		p.shutdown()
		return fmt.Errorf("nvml: counting GPUs: %w", ret)
	}
	if n == 0 {
		p.shutdown()
		return fmt.Errorf("nvml: no GPUs: %w", probe.ErrNoData)
	}
	gpus := make([]*gpu, 0, n)
	pci := make(map[string]int, n)
	var errs []error
	for i := range n {
		g, err := p.discover(i)
		if err != nil {
			errs = append(errs, err)
			p.logger.Warn("nvml: leaving out a GPU that did not answer at discovery", "gpu", i, "err", err)
			continue
		}
		gpus = append(gpus, g)
		if a, ok := parsePCI(g.pciBus); ok {
			pci[a.key()] = g.index
		}
	}
	if len(gpus) == 0 {
		p.shutdown()
		return fmt.Errorf("nvml: discovering GPUs: %w", errors.Join(errs...))
	}
	p.gpus = gpus
	p.mu.Lock()
	p.pci = pci
	p.mu.Unlock()
	return nil
}

// discover reads what does not change while the driver is loaded.
func (p *Probe) discover(i int) (*gpu, error) {
	dev, ret := p.lib.DeviceGetHandleByIndex(i)
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("getting handle of GPU %d: %w", i, ret)
	}
	g := &gpu{index: i, dev: dev, entity: "gpu-" + strconv.Itoa(i), indexLabel: strconv.Itoa(i)}
	if g.uuid, ret = dev.GetUUID(); ret != nvml.SUCCESS {
		return nil, fmt.Errorf("getting UUID of GPU %d: %w", i, ret)
	}
	if g.model, ret = dev.GetName(); ret != nvml.SUCCESS {
		p.logger.Debug("nvml: no GPU name", "gpu", i, "err", ret)
	}
	info, ret := dev.GetPciInfo()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("getting PCI info of GPU %d: %w", i, ret)
	}
	g.busID = cString(info.BusId[:])
	a, ok := parsePCI(g.busID)
	if !ok {
		a = pciAddr{domain: info.Domain, bus: uint8(info.Bus), dev: uint8(info.Device)}
		if g.busID == "" {
			g.busID = a.String()
		}
	}
	g.pciBus = a.String()
	// A GPU answers for the links it has; the others return
	// ERROR_INVALID_ARGUMENT or ERROR_NOT_SUPPORTED and are not asked again.
	for l := range nvml.NVLINK_MAX_LINKS {
		if _, ret := dev.GetNvLinkState(l); ret == nvml.SUCCESS {
			g.links = append(g.links, l)
			g.linkLabels = append(g.linkLabels, strconv.Itoa(l))
		}
	}
	return g, nil
}

// close drops the snapshot, so a stopped probe exports nothing stale, and
// shuts NVML down.
func (p *Probe) close() {
	p.mu.Lock()
	p.snap = nil
	p.mu.Unlock()
	p.gpus = nil
	p.shutdown()
}

func (p *Probe) shutdown() {
	if ret := p.lib.Shutdown(); ret != nvml.SUCCESS {
		p.logger.Debug("nvml: shutdown", "err", ret)
	}
}

// poll reads every GPU, publishes the snapshot and emits the per-process
// events. A GPU that fails to answer is reported in the error and the
// others are still read.
func (p *Probe) poll(ctx context.Context, sink probe.Sink) error {
	samples := make([]sample, len(p.gpus))
	var errs []error
	for i, g := range p.gpus {
		if err := ctx.Err(); err != nil {
			return err
		}
		s := &samples[i]
		p.labels(g, s)
		if err := p.read(g, s); err != nil {
			errs = append(errs, err)
		}
	}
	p.mu.Lock()
	p.snap = samples
	p.mu.Unlock()
	p.emit(sink, samples)
	return errors.Join(errs...)
}

func (p *Probe) labels(g *gpu, s *sample) {
	s.gpu = g
	s.labels = [numBaseLabels]string{g.indexLabel, g.uuid, g.model, p.env.NodeName, g.busID, "", "", ""}
	if p.env.Pods != nil {
		if ref, ok := p.env.Pods.LookupDevice(g.uuid); ok {
			s.labels[labelPod], s.labels[labelNamespace], s.labels[labelContainer] = ref.Pod, ref.Namespace, ref.Container
		}
	}
}

// emit sends compute.util and compute.mem for every process on every GPU.
func (p *Probe) emit(sink probe.Sink, samples []sample) {
	ts := p.now().UnixMilli()
	var ev event.Event
	for i := range samples {
		s := &samples[i]
		util := strconv.FormatUint(uint64(s.util), 10)
		for _, pr := range s.procs {
			if s.have.has(fUtil) {
				ev = event.Event{TS: ts, Type: event.ComputeUtil, EntityID: s.gpu.entity, PID: int64(pr.pid), Value: util}
				sink.Emit(&ev)
			}
			if pr.memKnown {
				ev = event.Event{TS: ts, Type: event.ComputeMem, EntityID: s.gpu.entity, PID: int64(pr.pid), Value: strconv.FormatUint(pr.mem, 10)}
				sink.Emit(&ev)
			}
		}
	}
}

// lockedSink serialises Emit.
type lockedSink struct {
	mu   sync.Mutex
	sink probe.Sink
}

// Emit passes ev on under the lock.
func (l *lockedSink) Emit(ev *event.Event) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sink.Emit(ev)
}
