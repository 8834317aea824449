package arkreceiver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/receiver/receiverhelper"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.uber.org/zap/exp/zapslog"
	"golang.org/x/time/rate"

	"github.com/ark-gpu/ark/collector-receiver/arkreceiver/internal/metadata"
	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probe"
	"github.com/ark-gpu/ark/exporter/probes/execprobe"
	"github.com/ark-gpu/ark/graphsvc"
)

// reasonBufferFull counts exec events dropped because the pipeline fell
// behind by more than a few batches (a probe's Emit must not block).
const reasonBufferFull = "buffer_full"

// arkReceiver is one configured ark receiver, shared by the metrics and
// traces pipelines that name it.
type arkReceiver struct {
	cfg    *Config
	set    receiver.Settings
	logger *slog.Logger

	metrics consumer.Metrics // nil when no metrics pipeline uses it
	traces  consumer.Traces  // nil when no traces pipeline uses it

	telemetry *metadata.TelemetryBuilder
	obs       *receiverhelper.ObsReport
	rejectOpt map[string]metric.AddOption
	logLimit  *rate.Limiter

	jobs *jobIndex
	mb   *metricsBuilder
	buf  *buffer

	startOnce sync.Once
	stopOnce  sync.Once
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	tail      *tailer
	sock      *socketInput
	// deliverMu keeps batches in order across the inputs.
	deliverMu sync.Mutex
}

func newReceiver(cfg *Config, set receiver.Settings) (*arkReceiver, error) {
	tb, err := metadata.NewTelemetryBuilder(set.TelemetrySettings)
	if err != nil {
		return nil, fmt.Errorf("creating the receiver's telemetry: %w", err)
	}
	obs, err := receiverhelper.NewObsReport(receiverhelper.ObsReportSettings{
		ReceiverID:             set.ID,
		Transport:              "jsonl",
		ReceiverCreateSettings: set,
	})
	if err != nil {
		return nil, fmt.Errorf("creating the receiver's obsreport: %w", err)
	}
	r := &arkReceiver{
		cfg:       cfg,
		set:       set,
		logger:    slog.New(zapslog.NewHandler(set.Logger.Core())),
		telemetry: tb,
		obs:       obs,
		rejectOpt: map[string]metric.AddOption{},
		logLimit:  rate.NewLimiter(rate.Every(time.Second), 5),
		jobs:      newJobIndex(),
		mb:        newMetricsBuilder(cfg.K8sNodeName),
		buf:       newBuffer(cfg.MaxBatch),
	}
	for _, reason := range append(slices.Clone(event.Reasons), reasonBufferFull) {
		r.rejectOpt[reason] = metric.WithAttributeSet(attribute.NewSet(attribute.String("reason", reason)))
	}
	return r, nil
}

// Start starts the inputs once, whichever pipeline starts it first.
func (r *arkReceiver) Start(ctx context.Context, host component.Host) error {
	var err error
	r.startOnce.Do(func() { err = r.start(ctx, host) })
	return err
}

func (r *arkReceiver) start(ctx context.Context, host component.Host) error {
	if r.cfg.HostName == "" {
		if h, err := os.Hostname(); err == nil {
			r.cfg.HostName = h
		}
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r.cancel = cancel
	if len(r.cfg.Include) > 0 {
		t, err := newTailer(ctx, r, host)
		if err != nil {
			cancel()
			return err
		}
		r.tail = t
		r.wg.Go(func() { t.run(runCtx) })
	}
	if r.cfg.Listen.Endpoint != "" {
		s, err := listen(ctx, r)
		if err != nil {
			r.stop(context.WithoutCancel(ctx))
			return err
		}
		r.sock = s
		r.wg.Go(func() { s.serve(runCtx) })
	}
	if len(r.cfg.Exec.Programs) > 0 {
		cfg := r.cfg.Exec
		p, err := execprobe.New(probe.Env{
			Logger:     r.logger,
			Paths:      probe.DefaultPaths(),
			NodeName:   r.cfg.HostName,
			Registerer: prometheus.NewRegistry(), // the Collector reports its own telemetry
			Config: func(v any) error {
				c, ok := v.(*execprobe.Config)
				if !ok {
					return fmt.Errorf("exec config: unexpected %T", v)
				}
				*c = cfg
				return nil
			},
			Reject: func(reason string) { r.reject(context.Background(), reason, nil) },
		})
		if err != nil {
			r.stop(context.WithoutCancel(ctx))
			return fmt.Errorf("starting exec probes: %w", err)
		}
		sink := probe.SinkFunc(func(ev *event.Event) bool {
			if !r.buf.add(ev) {
				r.reject(context.Background(), reasonBufferFull, nil)
				return false
			}
			return true
		})
		r.wg.Go(func() {
			if err := p.Run(runCtx, sink); err != nil && !errors.Is(err, probe.ErrNoData) {
				r.logger.Error("exec probes stopped", "err", err)
			}
		})
	}
	r.wg.Go(func() { r.flushLoop(runCtx) })
	return nil
}

// Shutdown stops the inputs, delivers what they read and closes the
// checkpoint storage. It is safe without Start and more than once.
func (r *arkReceiver) Shutdown(ctx context.Context) error {
	var err error
	r.stopOnce.Do(func() { err = r.stop(ctx) })
	return err
}

func (r *arkReceiver) stop(ctx context.Context) error {
	if r.cancel != nil {
		r.cancel()
	}
	if r.sock != nil {
		r.sock.close()
	}
	r.wg.Wait()
	if evs := r.buf.take(); len(evs) > 0 {
		r.deliver(context.WithoutCancel(ctx), evs)
	}
	var err error
	if r.tail != nil {
		err = r.tail.close(ctx)
	}
	r.telemetry.Shutdown()
	return err
}

// flushLoop delivers the socket's and the exec probes' events every
// flush interval, or as soon as a batch is full.
func (r *arkReceiver) flushLoop(ctx context.Context) {
	t := time.NewTicker(r.cfg.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.buf.full:
		}
		if evs := r.buf.take(); len(evs) > 0 {
			r.deliver(context.WithoutCancel(ctx), evs)
		}
	}
}

// deliver converts a batch and hands it to the pipelines. It returns once
// they accepted or refused it, so a file offset saved after it never
// covers a line that was not delivered.
func (r *arkReceiver) deliver(ctx context.Context, evs []event.Event) {
	if len(evs) == 0 {
		return
	}
	r.deliverMu.Lock()
	defer r.deliverMu.Unlock()
	for i := range evs {
		if evs[i].NodeID == "" {
			evs[i].NodeID = r.cfg.HostName
		}
	}
	r.telemetry.ReceiverArkEventsAccepted.Add(ctx, int64(len(evs)))
	if r.cfg.HostEventsPerJob {
		evs = r.jobs.expand(evs)
	}
	if r.metrics != nil {
		md := r.mb.build(evs)
		octx := r.obs.StartMetricsOp(ctx)
		err := r.metrics.ConsumeMetrics(octx, md)
		r.obs.EndMetricsOp(octx, metadata.Type.String(), md.DataPointCount(), err)
		if err != nil {
			r.logger.Error("metrics pipeline refused a batch", "events", len(evs), "err", err)
		}
	}
	if r.traces != nil {
		td := r.toTraces(evs)
		octx := r.obs.StartTracesOp(ctx)
		err := r.traces.ConsumeTraces(octx, td)
		r.obs.EndTracesOp(octx, metadata.Type.String(), td.SpanCount(), err)
		if err != nil {
			r.logger.Error("traces pipeline refused a batch", "events", len(evs), "err", err)
		}
	}
}

// toTraces is graphsvc's mapping, plus k8s.node.name when configured.
func (r *arkReceiver) toTraces(evs []event.Event) ptrace.Traces {
	td := graphsvc.EventsToTraces(evs)
	if r.cfg.K8sNodeName {
		for _, rs := range td.ResourceSpans().All() {
			if h, ok := rs.Resource().Attributes().Get(graphsvc.AttrHostName); ok {
				rs.Resource().Attributes().PutStr(graphsvc.AttrK8sNodeName, h.Str())
			}
		}
	}
	return td
}

// reject counts a line that was dropped, and logs it at a rate limit.
func (r *arkReceiver) reject(ctx context.Context, reason string, err error) {
	opt, ok := r.rejectOpt[reason]
	if !ok {
		opt = metric.WithAttributes(attribute.String("reason", reason))
	}
	r.telemetry.ReceiverArkEventsRejected.Add(ctx, 1, opt)
	if err != nil && r.logLimit.Allow() {
		r.logger.Warn("dropped an input line", "reason", reason, "err", err)
	}
}

// buffer collects the socket's and the exec probes' events between
// flushes.
type buffer struct {
	max  int
	full chan struct{}

	mu      sync.Mutex
	evs     []event.Event
	drained chan struct{} // closed at the next take
}

func newBuffer(maxBatch int) *buffer {
	return &buffer{max: maxBatch, full: make(chan struct{}, 1), drained: make(chan struct{})}
}

// add copies ev into the buffer; it returns false, keeping nothing, when
// four batches are already waiting.
func (b *buffer) add(ev *event.Event) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.evs) >= 4*b.max {
		return false
	}
	b.evs = append(b.evs, ev.Clone())
	if len(b.evs) >= b.max {
		select {
		case b.full <- struct{}{}:
		default:
		}
	}
	return true
}

// addWait is add for a producer that can wait: it blocks while the
// buffer is full, until it drains or ctx ends.
func (b *buffer) addWait(ctx context.Context, ev *event.Event) bool {
	for {
		b.mu.Lock()
		drained := b.drained
		b.mu.Unlock()
		if b.add(ev) {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-drained:
		}
	}
}

func (b *buffer) take() []event.Event {
	b.mu.Lock()
	defer b.mu.Unlock()
	evs := b.evs
	b.evs = nil
	close(b.drained)
	b.drained = make(chan struct{})
	return evs
}
