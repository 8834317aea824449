package execprobe

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ark-gpu/ark/exporter/probe"

	"github.com/ark-gpu/ark/event"
)

// Reasons an accepted event is dropped (label reason of
// ark_exec_probe_events_dropped_total).
const (
	DropRateLimited = "rate_limited" // over max_events_per_second
	DropBusFull     = "bus_full"     // the sink refused it (already counted by the bus)
)

// metrics are the exec probe's own series; label probe is the program name.
type metrics struct {
	events        *prometheus.CounterVec
	dropped       *prometheus.CounterVec
	rejected      *prometheus.CounterVec
	stderrDropped *prometheus.CounterVec
	restarts      *prometheus.CounterVec
	up            *prometheus.GaugeVec
	backoff       *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ark_exec_probe_events_total",
			Help: "Events read from an exec probe program and accepted by the event bus.",
		}, []string{"probe"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ark_exec_probe_events_dropped_total",
			Help: "Valid events from an exec probe program that were dropped, by reason (rate_limited, bus_full).",
		}, []string{"probe", "reason"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ark_exec_probe_lines_rejected_total",
			Help: "Stdout lines of an exec probe program that were not valid events, by reason.",
		}, []string{"probe", "reason"}),
		stderrDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ark_exec_probe_stderr_lines_dropped_total",
			Help: "Stderr lines of an exec probe program not logged because of the rate limit.",
		}, []string{"probe"}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ark_exec_probe_restarts_total",
			Help: "Times an exec probe program was started again after it exited.",
		}, []string{"probe"}),
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ark_exec_probe_up",
			Help: "1 while the exec probe program is running, 0 otherwise.",
		}, []string{"probe"}),
		backoff: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ark_exec_probe_backoff_seconds",
			Help: "The wait before the exec probe program's latest restart; 0 before any restart.",
		}, []string{"probe"}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.events, err = probe.RegisterOrReuse(reg, m.events); err != nil {
		return nil, err
	}
	if m.dropped, err = probe.RegisterOrReuse(reg, m.dropped); err != nil {
		return nil, err
	}
	if m.rejected, err = probe.RegisterOrReuse(reg, m.rejected); err != nil {
		return nil, err
	}
	if m.stderrDropped, err = probe.RegisterOrReuse(reg, m.stderrDropped); err != nil {
		return nil, err
	}
	if m.restarts, err = probe.RegisterOrReuse(reg, m.restarts); err != nil {
		return nil, err
	}
	if m.up, err = probe.RegisterOrReuse(reg, m.up); err != nil {
		return nil, err
	}
	if m.backoff, err = probe.RegisterOrReuse(reg, m.backoff); err != nil {
		return nil, err
	}
	return m, nil
}

// programMetrics are one program's series, resolved once so the hot path
// is an atomic add.
type programMetrics struct {
	events        prometheus.Counter
	rateLimited   prometheus.Counter
	busFull       prometheus.Counter
	rejected      map[string]prometheus.Counter
	stderrDropped prometheus.Counter
	restarts      prometheus.Counter
	up            prometheus.Gauge
	backoff       prometheus.Gauge
}

// forProgram resolves (and so exports at zero) every series of program name.
func (m *metrics) forProgram(name string) programMetrics {
	pm := programMetrics{
		events:        m.events.WithLabelValues(name),
		rateLimited:   m.dropped.WithLabelValues(name, DropRateLimited),
		busFull:       m.dropped.WithLabelValues(name, DropBusFull),
		rejected:      make(map[string]prometheus.Counter, len(event.Reasons)),
		stderrDropped: m.stderrDropped.WithLabelValues(name),
		restarts:      m.restarts.WithLabelValues(name),
		up:            m.up.WithLabelValues(name),
		backoff:       m.backoff.WithLabelValues(name),
	}
	for _, r := range event.Reasons {
		pm.rejected[r] = m.rejected.WithLabelValues(name, r)
	}
	return pm
}

// reject counts a rejected line; an unknown reason is counted as is.
func (pm programMetrics) reject(m *metrics, name, reason string) {
	c, ok := pm.rejected[reason]
	if !ok {
		c = m.rejected.WithLabelValues(name, reason)
	}
	c.Inc()
}
