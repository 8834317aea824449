package graphsvc

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/graph/graphmetrics"
)

// Event sources, the values of the source label.
const (
	sourceLink = "link"
	sourceOTLP = "otlp"
)

// Results of a fix the hub counts besides the agent's own (success,
// partial_failure, failure, dry_run).
const (
	resultUnauthorized = "unauthorized"
	resultBadRequest   = "bad_request"
	resultNotFound     = "not_found"
	resultUnavailable  = "unavailable" // no dispatcher, or the agent is not connected
	resultTimeout      = "timeout"
	resultError        = "error"
)

var commandResults = []string{"success", "partial_failure", "failure", "dry_run",
	resultUnauthorized, resultBadRequest, resultNotFound, resultUnavailable, resultTimeout, resultError}

// Reasons an OTLP request is rejected as a whole.
const (
	otlpInvalidBody     = "invalid_body"
	otlpBadEncoding     = "bad_content_encoding"
	otlpTooLarge        = "too_large"
	otlpUnsupportedType = "unsupported_content_type"
	// otlpUnauthenticated: no valid credential (401).
	otlpUnauthenticated = "unauthenticated"
	// otlpForbidden: a credential that may not write, or not for a host
	// the request names (403).
	otlpForbidden = "forbidden"
	// otlpAuthUnavailable: the credential could not be checked now (503).
	otlpAuthUnavailable = "auth_unavailable"
)

var otlpReasons = []string{otlpInvalidBody, otlpBadEncoding, otlpTooLarge, otlpUnsupportedType,
	otlpUnauthenticated, otlpForbidden, otlpAuthUnavailable}

// metrics are the hub's own series; the graph's sizes are read at scrape
// time by the hub's collector.
type metrics struct {
	received     *prometheus.CounterVec
	eventsDrop   *prometheus.CounterVec
	otlpRejected *prometheus.CounterVec
	commands     *prometheus.CounterVec
	why          prometheus.Histogram
	state        *hubCollector
	graph        *graphmetrics.Collector
}

func newMetrics(h *Hub) *metrics {
	m := &metrics{
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ark_hub_events_received_total",
			Help: "Events the hub applied to the global graph, by source (link or otlp).",
		}, []string{"source"}),
		eventsDrop: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ark_hub_events_rejected_total",
			Help: "Events the hub dropped, by source and reason.",
		}, []string{"source", "reason"}),
		otlpRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ark_hub_otlp_rejected_total",
			Help: "OTLP/HTTP requests the hub refused as a whole, by reason.",
		}, []string{"reason"}),
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ark_hub_commands_total",
			Help: "Commands (fix) the hub handled, by result.",
		}, []string{"result"}),
		why: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "ark_hub_why_duration_seconds",
			Help: "Time to answer one why query on the global graph, stale-host check included.",
			// Sub-millisecond resolution, and a bound at the 5 ms a query
			// should stay under at 10,000 hosts.
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		state: newHubCollector(h),
		graph: graphmetrics.NewCollector(h.g),
	}
	for _, s := range []string{sourceLink, sourceOTLP} {
		m.received.WithLabelValues(s)
		for _, r := range event.Reasons {
			m.eventsDrop.WithLabelValues(s, r)
		}
	}
	for _, r := range otlpReasons {
		m.otlpRejected.WithLabelValues(r)
	}
	for _, r := range commandResults {
		m.commands.WithLabelValues(r)
	}
	return m
}

func (m *metrics) register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.received, m.eventsDrop, m.otlpRejected, m.commands, m.why, m.state, m.graph} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

func (m *metrics) dropped(source, reason string, n int) {
	if n > 0 {
		m.eventsDrop.WithLabelValues(source, reason).Add(float64(n))
	}
}

// hubCollector exports the agents' states at scrape time; the graph's
// sizes come from graphmetrics, as on the agent.
type hubCollector struct {
	h      *Hub
	agents *prometheus.Desc
}

func newHubCollector(h *Hub) *hubCollector {
	return &hubCollector{
		h:      h,
		agents: prometheus.NewDesc("ark_hub_agents", "Hosts the hub knows, by state (connected over the agent link, or stale).", []string{"state"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *hubCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.agents
}

// Collect implements prometheus.Collector.
func (c *hubCollector) Collect(ch chan<- prometheus.Metric) {
	connected, stale := c.h.agentCounts()
	ch <- prometheus.MustNewConstMetric(c.agents, prometheus.GaugeValue, float64(connected), "connected")
	ch <- prometheus.MustNewConstMetric(c.agents, prometheus.GaugeValue, float64(stale), "stale")
}
