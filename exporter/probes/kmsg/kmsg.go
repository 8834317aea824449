package kmsg

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probe"
	"github.com/ark-gpu/ark/xid"
)

// Name is the probe's registered name.
const Name = "kmsg"

func init() {
	probe.Register(probe.Spec{
		Name:    Name,
		Help:    "NVIDIA XID errors from the kernel log (/dev/kmsg)",
		Default: true,
		New:     New,
	})
}

// Config is the probe's section of the agent config file:
//
//	kmsg:
//	  dedup_window: 10s
type Config struct {
	// DedupWindow folds repeats of the same XID on the same GPU; 0 turns
	// folding off.
	DedupWindow time.Duration `yaml:"dedup_window" json:"dedup_window"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{DedupWindow: 10 * time.Second}
}

// Validate reports a config the probe cannot run with.
func (c Config) Validate() error {
	if c.DedupWindow < 0 {
		return fmt.Errorf("dedup_window must not be negative, got %s", c.DedupWindow)
	}
	return nil
}

// Attribute keys this probe adds beyond the well-known ones in event.
const (
	AttrAction             = "action"
	AttrProcess            = "process"
	AttrRecoveryAction     = "recovery_action"
	AttrRecoveryActionCode = "recovery_action_code"
)

// unknownAction is the action label of a code missing from the catalog.
const unknownAction = "UNKNOWN"

// Probe follows the kernel log for XID errors.
type Probe struct {
	log      *slog.Logger
	path     string
	paths    probe.Paths
	gpus     probe.GPUResolver
	observeF func(time.Duration, error)
	cfg      Config
	m        *metrics
	now      func() time.Time
}

// New builds the probe from env; its config comes from env.Config.
func New(env probe.Env) (probe.Probe, error) {
	cfg := DefaultConfig()
	if env.Config != nil {
		if err := env.Config(&cfg); err != nil {
			return nil, err
		}
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("probe %s config: %w", Name, err)
	}
	m, err := newMetrics(env.Registerer)
	if err != nil {
		return nil, err
	}
	log := env.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Probe{
		log:      log,
		path:     env.Paths.DevKmsg,
		paths:    env.Paths,
		gpus:     env.GPUs,
		observeF: env.Observe,
		cfg:      cfg,
		m:        m,
		now:      time.Now,
	}, nil
}

func (p *Probe) observe(d time.Duration, err error) {
	if p.observeF != nil {
		p.observeF(d, err)
	}
}

// Run follows the kernel log until ctx ends. It returns an error wrapping
// probe.ErrNoData at once when the log is missing or not readable.
func (p *Probe) Run(ctx context.Context, sink probe.Sink) error {
	t0 := time.Now()
	src, err := openSource(p.path)
	p.observe(time.Since(t0), err)
	if err != nil {
		return err
	}
	p.log.Debug("following kernel log", "path", p.path, "kind", src.kind.String())

	r := &runner{
		p:     p,
		sink:  sink,
		gpus:  newGPUIndexer(p.gpus, p.paths),
		dedup: newDeduper(p.cfg.DedupWindow),
	}
	// Closing the file wakes a read blocked on /dev/kmsg or a FIFO.
	stopClose := context.AfterFunc(ctx, func() { _ = src.Close() })
	defer func() {
		if stopClose() {
			_ = src.Close() // read-only: nothing to lose
		}
	}()

	var wg sync.WaitGroup
	flushCtx, stopFlush := context.WithCancel(ctx)
	if p.cfg.DedupWindow > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.flushLoop(flushCtx)
		}()
	}
	defer func() {
		stopFlush()
		wg.Wait()
		r.flushAll()
	}()

	t0 = time.Now()
	err = src.follow(ctx, r)
	if ctx.Err() != nil {
		return nil
	}
	p.observe(time.Since(t0), err)
	return err
}

// runner is one Run's state.
type runner struct {
	p    *Probe
	sink probe.Sink
	gpus *gpuIndexer

	mu    sync.Mutex // guards dedup and serializes Emit
	dedup *deduper
}

func (r *runner) read(n int) { r.p.m.lines.Add(float64(n)) }

func (r *runner) ignored(reason string) { r.p.m.ignored.WithLabelValues(reason).Inc() }

func (r *runner) line(b []byte) {
	x, st := parse(b)
	switch st {
	case notXID:
		return
	case isXID:
		r.xid(x)
	default:
		r.ignored(st.reason())
		r.p.log.Debug("ignoring malformed XID line", "reason", st.reason(), "line", string(b))
	}
}

// xid counts one XID and emits it unless it repeats one inside its window.
func (r *runner) xid(x XID) {
	now := r.p.now()
	action := unknownAction
	if e, ok := xid.Lookup(x.Code); ok && e.ImmediateAction != "" {
		action = e.ImmediateAction
	}
	gpu := "pci-" + x.PCIBus
	if i, ok := r.gpus.index(x.PCIBus); ok {
		gpu = strconv.Itoa(i)
	}
	code := strconv.Itoa(x.Code)
	r.p.m.xids.WithLabelValues(gpu, code, action).Inc()

	ev := newEvent(x, gpu, code, action, now)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.dedup.observe(dedupKey{bus: x.PCIBus, code: x.Code}, ev, now, r.emit) {
		r.emit(ev)
	}
}

func newEvent(x XID, gpu, code, action string, now time.Time) *event.Event {
	value := "Xid " + code
	if x.Message != "" {
		value += ": " + x.Message
	}
	ev := &event.Event{
		TS:       now.UnixMilli(),
		Type:     event.ErrorHW,
		EntityID: "gpu-" + gpu,
		PID:      x.PID,
		Value:    value,
		Attrs:    make(event.Attrs, 0, 7),
	}
	ev.Attrs.Set(event.AttrXID, code)
	ev.Attrs.Set(event.AttrPCIBus, x.PCIBus)
	ev.Attrs.Set(AttrAction, action)
	if x.Name != "" {
		ev.Attrs.Set(AttrProcess, x.Name)
	}
	if x.Code == 154 {
		if c, name, ok := recoveryAction(x.Message); ok {
			ev.Attrs.Set(AttrRecoveryAction, name)
			ev.Attrs.Set(AttrRecoveryActionCode, c)
		}
	}
	return ev
}

// emit hands ev to the sink; the caller holds r.mu.
func (r *runner) emit(ev *event.Event) {
	if !r.sink.Emit(ev) {
		r.p.log.Debug("XID event dropped by a full bus", "entity", ev.EntityID, "xid", ev.Attrs.Get(event.AttrXID))
	}
}

// flushLoop closes de-duplication windows on time, so a flood's summary
// goes out even when the log falls silent.
func (r *runner) flushLoop(ctx context.Context) {
	t := time.NewTicker(flushInterval(r.p.cfg.DedupWindow))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.mu.Lock()
			r.dedup.expire(r.p.now(), r.emit)
			r.mu.Unlock()
		}
	}
}

// flushAll closes every open window when Run ends, so no count is lost.
func (r *runner) flushAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dedup.flush(r.p.now(), r.emit)
}

// flushInterval is a fifth of the window, within [10ms, 1s]: summaries are
// late by at most that.
func flushInterval(window time.Duration) time.Duration {
	return min(max(window/5, 10*time.Millisecond), time.Second)
}

// metrics are the probe's own series.
type metrics struct {
	xids    *prometheus.CounterVec
	lines   prometheus.Counter
	ignored *prometheus.CounterVec
}

// Reasons a line is counted in ark_kmsg_lines_ignored_total.
var ignoredReasons = []string{badPCI.reason(), badCode.reason(), "too_long", "overrun"}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		xids: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ark_xid_errors_total",
			Help: "NVIDIA XID errors seen in the kernel log, repeats folded by de-duplication included.",
		}, []string{"gpu", "xid", "action"}),
		lines: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ark_kmsg_lines_total",
			Help: "Kernel log lines (or /dev/kmsg records) read.",
		}),
		ignored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ark_kmsg_lines_ignored_total",
			Help: "Kernel log lines skipped: malformed NVRM Xid lines (malformed_pci, malformed_code), lines over 64 KiB (too_long), and /dev/kmsg overruns where the kernel overwrote unread records (overrun).",
		}, []string{"reason"}),
	}
	for _, r := range ignoredReasons {
		m.ignored.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.xids, err = probe.RegisterOrReuse(reg, m.xids); err != nil {
		return nil, err
	}
	if m.lines, err = probe.RegisterOrReuse(reg, m.lines); err != nil {
		return nil, err
	}
	if m.ignored, err = probe.RegisterOrReuse(reg, m.ignored); err != nil {
		return nil, err
	}
	return m, nil
}
