// Package graphmetrics exports a causal graph's size and counters to
// Prometheus, the same way on the agent and on the hub.
package graphmetrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ark-gpu/ark/graph"
)

// Collector exports a causal graph's size and counters at scrape time:
// ark_graph_nodes{type}, ark_graph_edges{type}, evictions, expiries,
// unresolved peers and clamped events.
type Collector struct {
	g          *graph.Graph
	nodes      *prometheus.Desc
	edges      *prometheus.Desc
	evicted    *prometheus.Desc
	expired    *prometheus.Desc
	unresolved *prometheus.Desc
	clamped    *prometheus.Desc
}

// NewCollector returns a Collector over g.
func NewCollector(g *graph.Graph) *Collector {
	return &Collector{
		g:          g,
		nodes:      prometheus.NewDesc("ark_graph_nodes", "Nodes in the causal graph, by type.", []string{"type"}, nil),
		edges:      prometheus.NewDesc("ark_graph_edges", "Edges in the causal graph, by type.", []string{"type"}, nil),
		evicted:    prometheus.NewDesc("ark_graph_evicted_total", "Graph nodes and edges evicted to stay under the size limits.", []string{"what"}, nil),
		expired:    prometheus.NewDesc("ark_graph_expired_total", "Graph nodes and edges removed by the TTL.", []string{"what"}, nil),
		unresolved: prometheus.NewDesc("ark_graph_unresolved_peers_total", "Transport events whose peer address matched no known rank.", nil, nil),
		clamped:    prometheus.NewDesc("ark_graph_future_events_total", "Events too far ahead of the graph clock, applied at the clock.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.nodes
	ch <- c.edges
	ch <- c.evicted
	ch <- c.expired
	ch <- c.unresolved
	ch <- c.clamped
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
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
