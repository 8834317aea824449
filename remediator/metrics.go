package remediator

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the remediator's Prometheus metrics.
type Metrics struct {
	actions      *prometheus.CounterVec
	alerts       *prometheus.CounterVec
	requests     *prometheus.CounterVec
	evictions    *prometheus.CounterVec
	queued       prometheus.Gauge
	leader       prometheus.Gauge
	taintLatency prometheus.Histogram
}

// NewMetrics creates the metrics and registers them with reg (nil: not
// registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ark_remediation_actions_total",
			Help: "Remediation steps taken, by fault class, action and result (success, partial_failure, failure, dry_run).",
		}, []string{"class", "action", "result"}),
		alerts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ark_remediation_alerts_total",
			Help: "Alerts handled, by status and outcome (remediated, suppressed, cooldown, breaker, ignored, rejected, failed, kept, untainted).",
		}, []string{"status", "outcome"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ark_remediation_webhook_requests_total",
			Help: "Alertmanager webhook requests, by HTTP status code.",
		}, []string{"code"}),
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ark_remediation_evictions_total",
			Help: "Pod evictions, by result (evicted, evicted_after_retry, blocked, error).",
		}, []string{"result"}),
		queued: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ark_remediation_queue_length",
			Help: "Alerts accepted and waiting for a worker.",
		}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ark_remediation_leader",
			Help: "1 when this hub replica holds the remediation lease and acts.",
		}),
		taintLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ark_remediation_taint_latency_seconds",
			Help:    "From a webhook's arrival to the node's taint being written.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
	}
	if reg != nil {
		reg.MustRegister(m.actions, m.alerts, m.requests, m.evictions, m.queued, m.leader, m.taintLatency)
	}
	return m
}

// SetLeader records whether this replica leads.
func (m *Metrics) SetLeader(on bool) {
	if on {
		m.leader.Set(1)
		return
	}
	m.leader.Set(0)
}
