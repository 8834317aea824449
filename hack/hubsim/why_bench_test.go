package main

import (
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/graph"
	"github.com/ark-gpu/ark/graphsvc"
)

// BenchmarkWhyAtClusterScale asks why a 512-rank job stalls in the graph
// the hub holds for the simulated 10,000-host cluster (snapshots plus a
// minute of the folded stream), with one XID 79 in the job: the why of
// hack/bench-hub.sh without the load around it.
func BenchmarkWhyAtClusterScale(b *testing.B) {
	c, hub := clusterHub(b)
	g := hub.Graph()
	t := graph.Target{JobID: c.jobs[0].id}
	res, err := g.Why(t, 0)
	if err != nil || len(res.Causes) == 0 || res.Causes[0].XID != 79 {
		b.Fatalf("why %s: %+v, %v", t.JobID, res.Causes, err)
	}
	st := g.Stats()
	b.Logf("graph: %d nodes, %d edges; %d ranks, %d causes", st.Nodes[graph.KindProcess]+st.Nodes[graph.KindResource], st.Edges[graph.Consumes]+st.Edges[graph.WaitsOn], res.Ranks, len(res.Causes))
	t1 := time.Now()
	g.Expire(g.Clock())
	b.Logf("one expiry walk: %s", time.Since(t1))
	t1 = time.Now()
	g.Settle()
	b.Logf("one settle: %s", time.Since(t1))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := g.Why(t, 0); err != nil {
			b.Fatal(err)
		}
	}
}

// clusterHub is a hub fed the simulated 10,000-host cluster's snapshots
// and a minute of its folded stream, with one XID 79 in the first job.
func clusterHub(b *testing.B) (*cluster, *graphsvc.Hub) {
	b.Helper()
	c := newCluster(10000, 64, 1, 1, t0)
	hub, err := graphsvc.New(graphsvc.Options{})
	if err != nil {
		b.Fatal(err)
	}
	for _, h := range c.hosts {
		hub.AgentConnected(h.name, h.addrs())
		hub.Ingest(h.name, h.snapshot(t0))
	}
	j := c.jobs[0]
	fault(j.hosts[3], 1, 79, t0+1000, 0, func(h *host, evs []event.Event) { hub.Ingest(h.name, evs) })
	for h, evs := range simulate(c, t0+1000, time.Minute) {
		hub.Ingest(h.name, evs)
	}
	return c, hub
}

// BenchmarkWhyHTTPAtClusterScale is GET /api/v1/why for the 512-rank job
// through the hub's handler: the query, the stale-host check and the JSON.
// "partition" has 3,000 of the 10,000 agents disconnected.
func BenchmarkWhyHTTPAtClusterScale(b *testing.B) {
	for _, stale := range []int{0, 3000} {
		name := "connected"
		if stale > 0 {
			name = "partition"
		}
		b.Run(name, func(b *testing.B) {
			c, hub := clusterHub(b)
			for _, h := range c.hosts[:stale] {
				hub.AgentDisconnected(h.name)
			}
			h := hub.Handler()
			u := "/api/v1/why?job_id=" + url.QueryEscape(c.jobs[0].id)
			w := httptest.NewRecorder()
			h.ServeHTTP(w, httptest.NewRequest("GET", u, nil))
			if w.Code != 200 {
				b.Fatalf("%d %s", w.Code, w.Body)
			}
			b.Logf("response: %d bytes", w.Body.Len())
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				w := httptest.NewRecorder()
				h.ServeHTTP(w, httptest.NewRequest("GET", u, nil))
				if w.Code != 200 {
					b.Fatal(w.Code)
				}
			}
		})
	}
}
