package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestServerTiming(t *testing.T) {
	for _, c := range []struct {
		h    string
		want time.Duration
	}{
		{"why;dur=0.412", 412 * time.Microsecond},
		{`why;desc="graph walk";dur=12.5`, 12500 * time.Microsecond},
		{"why;dur=3, db;dur=9", 3 * time.Millisecond},
		{"cdn;dur=7, why;dur=4", 4 * time.Millisecond}, // a proxy's metric in front
		{"why; DUR = 2", 2 * time.Millisecond},         // the spec's case and spaces
		{"db;dur=9", 0},
		{"why", 0},
		{"", 0},
		{"why;dur=abc", 0},
		{"why;dur=-1", 0},
		{"why;dur=NaN", 0},
		{"why;dur=Inf", 0},
	} {
		if got := serverTiming(c.h); got != c.want {
			t.Errorf("serverTiming(%q) = %s, want %s", c.h, got, c.want)
		}
	}
}

// probe keeps the client's latency and the hub's own time apart, and
// counts an error answer as an error, not as a latency.
func TestProbeRecordsClientAndHubTimes(t *testing.T) {
	const hubTime = 3 * time.Millisecond
	var fail atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if fail.Load() {
			http.Error(w, "no", http.StatusNotFound)
			return
		}
		time.Sleep(hubTime)
		w.Header().Add("Server-Timing", "cdn;dur=7") // a proxy's own line first
		w.Header().Add("Server-Timing", "why;dur=3.000")
		_, _ = w.Write([]byte(`{}`))
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	p := probe(ctx, srv.Client(), srv.URL, 20*time.Millisecond)
	if len(p.lat) < 3 || len(p.server) != len(p.lat) || p.errs != 0 {
		t.Fatalf("%d latencies, %d hub times, %d errors (last %v); want several of each, no errors", len(p.lat), len(p.server), p.errs, p.last)
	}
	for i := range p.lat {
		if p.server[i] != hubTime || p.lat[i] < hubTime {
			t.Errorf("query %d: client %s, hub %s; want hub %s and the client no less", i, p.lat[i], p.server[i], hubTime)
		}
	}
	s := summary("hub", p.server, 0, nil, 5*time.Millisecond)
	if !strings.Contains(s, "p99 3.00 ms") || !strings.Contains(s, "target p99 <= 5 ms: met") {
		t.Errorf("summary %q", s)
	}
	if s := summary("hub", p.server, 0, nil, 2*time.Millisecond); !strings.Contains(s, "target p99 <= 2 ms: MISSED") {
		t.Errorf("summary against 2 ms: %q", s)
	}
	if s := summary("client", p.lat, 0, nil, 0); strings.Contains(s, "target") {
		t.Errorf("summary without a target: %q", s)
	}

	fail.Store(true)
	ctx, cancel = context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	p = probe(ctx, srv.Client(), srv.URL, 20*time.Millisecond)
	if len(p.lat) != 0 || p.errs == 0 || p.last == nil || !strings.Contains(p.last.Error(), "404") {
		t.Errorf("failing hub: %d latencies, %d errors, last %v; want errors only", len(p.lat), p.errs, p.last)
	}
}
