// Command whyprobe asks a hub why a job stalls, over and over, and prints
// the latency an operator's client sees: one client keeps its connection
// (a dashboard, a script with a persistent client), the other opens a new
// one for every query (the ark CLI, curl). hack/bench-hub.sh runs it in a
// process of its own beside the simulated fleet.
//
// It also prints the hub's own time for the same answers, which the hub
// sends in a Server-Timing header, and with -floor the latency of a
// no-op endpoint (the hub's /healthz) asked the same way: what any
// answer costs on this machine under this load, before the hub does any
// work for it.
//
//	whyprobe -url 'http://127.0.0.1:9465/api/v1/why?job_id=train%2Fjob-0' -floor http://127.0.0.1:9465/healthz -for 30s
//
// Without -for it asks until SIGTERM or SIGINT, then prints.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	u := flag.String("url", "", "the why URL to ask")
	floor := flag.String("floor", "", "a no-op URL to ask the same way, for the latency floor (none when empty)")
	flag.DurationVar(&target, "target", 5*time.Millisecond, "the p99 the hub's own time is checked against (0: no check)")
	every := flag.Duration("every", 25*time.Millisecond, "pause between queries, per client")
	d := flag.Duration("for", 0, "how long to ask (0: until SIGTERM or SIGINT)")
	flag.DurationVar(&slow, "slow", 0, "log each query slower than this to stderr, with its time (0: none)")
	flag.Parse()
	if *u == "" {
		fmt.Fprintln(os.Stderr, "whyprobe: -url is required")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if *d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *d)
		defer cancel()
	}
	type client struct {
		name, url string
		c         *http.Client
		why       bool // its answers carry the hub's own time
	}
	clients := []client{
		{"kept connection", *u, &http.Client{Timeout: 10 * time.Second}, true},
		{"new connection each query", *u, &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}, true},
	}
	if *floor != "" {
		clients = append(clients, client{"floor (" + *floor + ", kept connection)", *floor, &http.Client{Timeout: 10 * time.Second}, false})
	}
	results := make([]string, len(clients))
	var server []time.Duration // the hub's own times, from both why clients
	var mu sync.Mutex
	bad := false
	var wg sync.WaitGroup
	for i, cl := range clients {
		wg.Go(func() {
			p := probe(ctx, cl.c, cl.url, *every)
			// The target is the hub's; the client lines say what this
			// machine adds to it (compare the floor).
			results[i] = summary(cl.name, p.lat, p.errs, p.last, 0)
			mu.Lock()
			defer mu.Unlock()
			if cl.why {
				server = append(server, p.server...)
			}
			if len(p.lat) == 0 || p.errs > 0 {
				bad = true
			}
		})
	}
	wg.Wait()
	const own = "the hub's own time (Server-Timing: handler start to answer encoded)"
	if len(server) > 0 {
		fmt.Println(summary(own, server, 0, nil, target))
	} else {
		fmt.Println(own + ": none, no answer carried a why Server-Timing (an older hub, or a proxy that drops the header)")
	}
	for _, r := range results {
		fmt.Println(r)
	}
	if bad {
		os.Exit(1)
	}
}

var slow, target time.Duration

// probed is what one client measured: its latencies, the hub's own times
// where the answer carried them, and its failures.
type probed struct {
	lat, server []time.Duration
	errs        int
	last        error
}

func probe(ctx context.Context, c *http.Client, u string, every time.Duration) probed {
	var p probed
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return p
		case <-t.C:
		}
		t0 := time.Now()
		hub, err := get(ctx, c, u)
		if ctx.Err() != nil {
			return p
		}
		if err != nil {
			p.errs++
			p.last = err
			continue
		}
		l := time.Since(t0)
		if slow > 0 && l > slow {
			fmt.Fprintf(os.Stderr, "slow query: %s (hub %s) at %s %s\n", l.Round(time.Microsecond), hub.Round(time.Microsecond), t0.UTC().Format("15:04:05.000"), u)
		}
		p.lat = append(p.lat, l)
		if hub > 0 {
			p.server = append(p.server, hub)
		}
	}
}

// get asks u and returns the hub's own time from the answer's
// Server-Timing header (0 when it has none).
func get(ctx context.Context, c *http.Client, u string) (time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("status %s", resp.Status)
	}
	// Each Server-Timing line (a proxy may add its own) is a list.
	return serverTiming(strings.Join(resp.Header.Values("Server-Timing"), ",")), nil
}

// serverTiming reads the dur (ms) of the metric named why from a
// Server-Timing value such as "why;dur=0.412" or "cdn;dur=3, why;dur=0.4";
// 0 when there is none.
func serverTiming(h string) time.Duration {
	for _, metric := range strings.Split(h, ",") {
		params := strings.Split(metric, ";")
		if strings.TrimSpace(params[0]) != "why" {
			continue
		}
		for _, param := range params[1:] {
			k, v, ok := strings.Cut(param, "=")
			if !ok || !strings.EqualFold(strings.TrimSpace(k), "dur") {
				continue
			}
			ms, err := strconv.ParseFloat(strings.Trim(strings.TrimSpace(v), `"`), 64)
			if err != nil || ms < 0 || math.IsInf(ms, 0) || math.IsNaN(ms) {
				return 0
			}
			return time.Duration(ms * float64(time.Millisecond))
		}
		return 0
	}
	return 0
}

// summary prints percentiles, and checks the p99 against target unless it
// is 0.
func summary(name string, lat []time.Duration, errs int, last error, target time.Duration) string {
	if len(lat) == 0 {
		return fmt.Sprintf("%s: no answer (%d errors, last: %v)", name, errs, last)
	}
	slices.Sort(lat)
	q := func(p float64) float64 {
		i := min(int(float64(len(lat))*p), len(lat)-1)
		return float64(lat[i].Microseconds()) / 1000
	}
	s := fmt.Sprintf("%s: p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms over %d queries, %d errors",
		name, q(0.5), q(0.9), q(0.99), q(1), len(lat), errs)
	if target > 0 {
		tms := float64(target.Microseconds()) / 1000
		s += fmt.Sprintf(" (target p99 <= %g ms: %s)", tms, map[bool]string{true: "met", false: "MISSED"}[q(0.99) <= tms])
	}
	if last != nil {
		s += fmt.Sprintf("; last error: %v", last)
	}
	return s
}
