// Command whyprobe asks a hub why a job stalls, over and over, and prints
// the latency an operator's client sees: one client keeps its connection
// (a dashboard, a script with a persistent client), the other opens a new
// one for every query (the ark CLI, curl). hack/bench-hub.sh runs it in a
// process of its own beside the simulated fleet.
//
//	whyprobe -url 'http://127.0.0.1:9465/api/v1/why?job_id=train%2Fjob-0' -for 30s
//
// Without -for it asks until SIGTERM or SIGINT, then prints.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"sync"
	"syscall"
	"time"
)

func main() {
	u := flag.String("url", "", "the why URL to ask")
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
	clients := []struct {
		name string
		c    *http.Client
	}{
		{"kept connection", &http.Client{Timeout: 10 * time.Second}},
		{"new connection each query", &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}},
	}
	results := make([]string, len(clients))
	bad := false
	var wg sync.WaitGroup
	for i, cl := range clients {
		wg.Go(func() {
			lat, errs, last := probe(ctx, cl.c, *u, *every)
			results[i] = summary(cl.name, lat, errs, last)
			if len(lat) == 0 || errs > 0 {
				bad = true
			}
		})
	}
	wg.Wait()
	for _, r := range results {
		fmt.Println(r)
	}
	if bad {
		os.Exit(1)
	}
}

var slow time.Duration

func probe(ctx context.Context, c *http.Client, u string, every time.Duration) (lat []time.Duration, errs int, last error) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return lat, errs, last
		case <-t.C:
		}
		t0 := time.Now()
		err := get(ctx, c, u)
		if ctx.Err() != nil {
			return lat, errs, last
		}
		if err != nil {
			errs++
			last = err
			continue
		}
		l := time.Since(t0)
		if slow > 0 && l > slow {
			fmt.Fprintf(os.Stderr, "slow query: %s at %s\n", l.Round(time.Microsecond), t0.UTC().Format("15:04:05.000"))
		}
		lat = append(lat, l)
	}
}

func get(ctx context.Context, c *http.Client, u string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

func summary(name string, lat []time.Duration, errs int, last error) string {
	if len(lat) == 0 {
		return fmt.Sprintf("%s: no answer (%d errors, last: %v)", name, errs, last)
	}
	slices.Sort(lat)
	q := func(p float64) float64 {
		i := min(int(float64(len(lat))*p), len(lat)-1)
		return float64(lat[i].Microseconds()) / 1000
	}
	s := fmt.Sprintf("%s: p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms over %d queries, %d errors (target p99 <= 5 ms: %s)",
		name, q(0.5), q(0.9), q(0.99), q(1), len(lat), errs, map[bool]string{true: "met", false: "MISSED"}[q(0.99) <= 5])
	if last != nil {
		s += fmt.Sprintf("; last error: %v", last)
	}
	return s
}
