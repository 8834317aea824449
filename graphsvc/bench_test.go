package graphsvc

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/graph"
)

// benchCopies is how many copies of the 4-host recording the benchmark
// cluster holds: 64 jobs of 32 ranks on 256 hosts.
const benchCopies = 64

// copyScenario renames the recording's hosts, job and addresses for copy k.
func copyScenario(evs []event.Event, k int) []event.Event {
	prefix := "c" + strconv.Itoa(k) + "-"
	net := "10." + strconv.Itoa(10+k) + "."
	out := make([]event.Event, len(evs))
	for i, ev := range evs {
		ev.NodeID = prefix + ev.NodeID
		if ev.JobID != "" {
			ev.JobID = scenarioJob + "-" + strconv.Itoa(k)
		}
		if len(ev.Attrs) > 0 {
			attrs := slices.Clone(ev.Attrs)
			for j := range attrs {
				if attrs[j].Key == event.AttrAddr || attrs[j].Key == event.AttrPeer {
					attrs[j].Value = strings.Replace(attrs[j].Value, "10.9.", net, 1)
				}
			}
			ev.Attrs = attrs
		}
		out[i] = ev
	}
	return out
}

// BenchmarkWhyUnderIngest measures why latency on the hub while another
// goroutine keeps ingesting agent batches, and reports p50/p99 and the
// ingest rate it sustained meanwhile.
func BenchmarkWhyUnderIngest(b *testing.B) {
	base := loadScenario(b)
	h, err := New(Options{})
	if err != nil {
		b.Fatal(err)
	}
	var load [][]event.Event // per-host batches of usage samples to replay
	for k := range benchCopies {
		evs := copyScenario(base, k)
		interleave(evs, 256, h.Ingest)
		if k == 0 {
			continue
		}
		var usage []event.Event
		for _, ev := range evs {
			if ev.Type == event.ComputeUtil || ev.Type == event.TransportBW {
				usage = append(usage, ev)
			}
		}
		for i := 0; i < len(usage); i += 256 {
			load = append(load, usage[i:min(i+256, len(usage))])
		}
	}
	target := graph.Target{JobID: scenarioJob + "-0"}
	if res, err := h.Why(target, 0); err != nil || len(res.Causes) == 0 || res.Causes[0].EntityID != "gpu-6" {
		b.Fatalf("why before the load: %+v %v", res.Causes, err)
	}

	for _, bc := range []struct {
		name string
		why  func() error
	}{
		{"graph", func() error { _, err := h.Why(target, 0); return err }},
		{"http", func() error {
			rec := httptest.NewRecorder()
			h.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/v1/why?job_id="+target.JobID, nil))
			if rec.Code != http.StatusOK {
				return errStatus(rec.Code)
			}
			return nil
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			stop := make(chan struct{})
			var ingested atomic.Int64
			var wg sync.WaitGroup
			wg.Go(func() {
				batch := make([]event.Event, 0, 256)
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					src := load[i%len(load)]
					batch = append(batch[:0], src...)
					h.Ingest(src[0].NodeID, batch)
					ingested.Add(int64(len(batch)))
				}
			})
			lat := make([]time.Duration, 0, b.N)
			start := time.Now()
			b.ResetTimer()
			for b.Loop() {
				t0 := time.Now()
				if err := bc.why(); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			close(stop)
			wg.Wait()
			elapsed := time.Since(start)
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-us")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-us")
			b.ReportMetric(float64(ingested.Load())/elapsed.Seconds(), "ingested-events/s")
		})
	}
}

type errStatus int

func (e errStatus) Error() string { return "status " + strconv.Itoa(int(e)) }
