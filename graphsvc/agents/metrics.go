package agents

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ark-gpu/ark/event"
)

// metrics are the link's series. The names carry "link" where the hub
// (graphsvc) has a series of its own for the same idea, so both can share
// one registry.
type metrics struct {
	received     prometheus.Counter
	rejected     *prometheus.CounterVec
	commands     *prometheus.CounterVec
	authFailures prometheus.Counter
	agents       *prometheus.Desc
	s            *Server
}

func newMetrics(s *Server) *metrics {
	m := &metrics{
		s: s,
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ark_hub_link_events_received_total",
			Help: "Events received from agents over the link, snapshots included.",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ark_hub_frames_rejected_total",
			Help: "Agent links closed for a bad frame or a protocol breach, by reason.",
		}, []string{"reason"}),
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ark_hub_link_commands_total",
			Help: "Commands dispatched to agents over the link, by result.",
		}, []string{"result"}),
		authFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ark_hub_link_auth_failures_total",
			Help: "Agent connections refused for a missing, invalid or forbidden credential.",
		}),
		agents: prometheus.NewDesc("ark_hub_link_agents",
			"Agents the link knows, by state: connected, or stale (the link is down and the node's data may be out of date).",
			[]string{"state"}, nil),
	}
	for _, r := range []string{"malformed", "unknown_type", event.ReasonTooManyAttrs, "too_big", "unexpected", "bad_node", "node_mismatch", "no_hello", "idle"} {
		m.rejected.WithLabelValues(r)
	}
	return m
}

func (m *metrics) register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.received, m.rejected, m.commands, m.authFailures, m} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// Describe implements prometheus.Collector for the agent states.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) { ch <- m.agents }

// Collect implements prometheus.Collector for the agent states.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	var connected, stale int
	for _, a := range m.s.Agents() {
		if a.Connected {
			connected++
		} else {
			stale++
		}
	}
	ch <- prometheus.MustNewConstMetric(m.agents, prometheus.GaugeValue, float64(connected), "connected")
	ch <- prometheus.MustNewConstMetric(m.agents, prometheus.GaugeValue, float64(stale), "stale")
}
