package exporter

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/graph"
)

// graphCollector exports the local causal graph's size and counters.
type graphCollector struct {
	g          *graph.Graph
	nodes      *prometheus.Desc
	edges      *prometheus.Desc
	evicted    *prometheus.Desc
	expired    *prometheus.Desc
	unresolved *prometheus.Desc
	clamped    *prometheus.Desc
}

func newGraphCollector(g *graph.Graph) *graphCollector {
	return &graphCollector{
		g:          g,
		nodes:      prometheus.NewDesc("ark_graph_nodes", "Nodes in the local causal graph, by type.", []string{"type"}, nil),
		edges:      prometheus.NewDesc("ark_graph_edges", "Edges in the local causal graph, by type.", []string{"type"}, nil),
		evicted:    prometheus.NewDesc("ark_graph_evicted_total", "Graph nodes and edges evicted to stay under the size limits.", []string{"what"}, nil),
		expired:    prometheus.NewDesc("ark_graph_expired_total", "Graph nodes and edges removed by the TTL.", []string{"what"}, nil),
		unresolved: prometheus.NewDesc("ark_graph_unresolved_peers_total", "Transport events whose peer address matched no known rank.", nil, nil),
		clamped:    prometheus.NewDesc("ark_graph_future_events_total", "Events too far ahead of the graph clock, applied at the clock.", nil, nil),
	}
}

func (c *graphCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.nodes
	ch <- c.edges
	ch <- c.evicted
	ch <- c.expired
	ch <- c.unresolved
	ch <- c.clamped
}

func (c *graphCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.g.Stats()
	for _, k := range graph.Kinds {
		ch <- prometheus.MustNewConstMetric(c.nodes, prometheus.GaugeValue, float64(s.Nodes[k]), k.String())
	}
	for _, t := range graph.EdgeTypes {
		ch <- prometheus.MustNewConstMetric(c.edges, prometheus.GaugeValue, float64(s.Edges[t]), t.String())
	}
	ch <- prometheus.MustNewConstMetric(c.evicted, prometheus.CounterValue, float64(s.EvictedNodes), "node")
	ch <- prometheus.MustNewConstMetric(c.evicted, prometheus.CounterValue, float64(s.EvictedEdges), "edge")
	ch <- prometheus.MustNewConstMetric(c.expired, prometheus.CounterValue, float64(s.ExpiredNodes), "node")
	ch <- prometheus.MustNewConstMetric(c.expired, prometheus.CounterValue, float64(s.ExpiredEdges), "edge")
	ch <- prometheus.MustNewConstMetric(c.unresolved, prometheus.CounterValue, float64(s.UnresolvedPeer))
	ch <- prometheus.MustNewConstMetric(c.clamped, prometheus.CounterValue, float64(s.FutureClamped))
}

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
