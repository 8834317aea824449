package exporter

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ark-gpu/ark/event"
)

// eventCounters are the agent's ingest counters, every label value created
// up front so a series exists at zero.
type eventCounters struct {
	processed *prometheus.CounterVec
	rejected  *prometheus.CounterVec
	byType    map[event.Type]prometheus.Counter
	byReason  map[string]prometheus.Counter
}

func newEventCounters(reg prometheus.Registerer) *eventCounters {
	c := &eventCounters{
		processed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ark_events_processed_total",
			Help: "Events the agent accepted from its probes, by type.",
		}, []string{"event_type"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ark_events_rejected_total",
			Help: "Input lines or events the agent could not use, by reason.",
		}, []string{"reason"}),
		byType:   map[event.Type]prometheus.Counter{},
		byReason: map[string]prometheus.Counter{},
	}
	for _, t := range event.Types {
		c.byType[t] = c.processed.WithLabelValues(string(t))
	}
	for _, r := range event.Reasons {
		c.byReason[r] = c.rejected.WithLabelValues(r)
	}
	reg.MustRegister(c.processed, c.rejected)
	return c
}

func (c *eventCounters) reject(reason string) {
	if ctr, ok := c.byReason[reason]; ok {
		ctr.Inc()
		return
	}
	c.rejected.WithLabelValues(reason).Inc()
}
