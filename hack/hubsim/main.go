// Command hubsim simulates a fleet of Ark agents against one hub, for
// measuring the hub at cluster scale (hack/bench-hub.sh). Every simulated
// host has its own WebSocket link (link package: hello, snapshot, event
// batches with acks, results for commands) and sends the folded stream an
// agent's forwarder would: keep-alives every 2 minutes per key, state
// changes, usage jumps, drop bursts crossing zero, and now and then an XID
// (79, 48 or 13) on a GPU, after which every rank of that job drops toward
// the faulty rank and stalls. The cluster is 8 GPUs and 8 ranks a host,
// jobs of 64 hosts (512 ranks).
//
// It runs three phases and prints what it measured: connect (every agent
// links and sends its snapshot), steady (the folded stream; the hub's
// ingest rate, RSS and CPU, and the latency of GET /api/v1/why for a
// 512-rank job asked repeatedly) and overload (some agents send raw
// samples as fast as the acks allow: the hub's sustained maximum).
//
//	hubsim -hub http://127.0.0.1:9465 -token-file tok -agents 10000 -hub-pid 1234
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	cfg := defaultConfig()
	flag.StringVar(&cfg.Hub, "hub", "http://127.0.0.1:9465", "the hub's base URL")
	flag.StringVar(&cfg.TokenFile, "token-file", "", "file holding the hub's bearer token")
	flag.IntVar(&cfg.Agents, "agents", cfg.Agents, "simulated hosts, one agent link each (8 GPUs, 8 ranks a host)")
	flag.IntVar(&cfg.JobHosts, "job-hosts", cfg.JobHosts, "hosts per job (64 hosts = 512 ranks)")
	flag.Float64Var(&cfg.Rate, "rate", cfg.Rate, "folded events a second per host in the steady phase (keep-alives alone make about 0.5)")
	flag.DurationVar(&cfg.Steady, "steady", cfg.Steady, "length of the steady phase")
	flag.DurationVar(&cfg.Overload, "overload", cfg.Overload, "length of the overload phase (0: skip it)")
	flag.IntVar(&cfg.OverloadAgents, "overload-agents", cfg.OverloadAgents, "agents that send as fast as acks allow in the overload phase (0: all)")
	flag.IntVar(&cfg.OverloadBatch, "overload-batch", cfg.OverloadBatch, "events per batch in the overload phase")
	flag.IntVar(&cfg.OverloadWindow, "overload-window", cfg.OverloadWindow, "batches an agent keeps waiting for acks in the overload phase")
	flag.DurationVar(&cfg.WhyEvery, "why-every", cfg.WhyEvery, "pause between why queries")
	flag.DurationVar(&cfg.FaultEvery, "fault-every", cfg.FaultEvery, "inject an XID into a random job this often (0: only the why job's)")
	flag.DurationVar(&cfg.FaultHold, "fault-hold", cfg.FaultHold, "a faulted job recovers after this long")
	flag.IntVar(&cfg.HubPID, "hub-pid", 0, "the hub's pid, for its RSS and CPU (0: not measured)")
	flag.IntVar(&cfg.DialConcurrency, "dial-concurrency", cfg.DialConcurrency, "agents connecting at once")
	flag.StringVar(&cfg.PhaseHook, "phase-hook", "", "a program run at each phase boundary with steady, steady-done, overload or overload-done, waited for (a failure ends the run)")
	flag.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "random seed")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if cfg.TokenFile != "" {
		b, err := os.ReadFile(cfg.TokenFile)
		if err != nil {
			log.Error("reading the token", "err", err)
			os.Exit(2)
		}
		cfg.Token = strings.TrimSpace(string(b))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	s, err := newSim(cfg, log)
	if err != nil {
		log.Error("hubsim", "err", err)
		os.Exit(2)
	}
	rep, err := s.run(ctx)
	if rep != nil {
		rep.print(os.Stdout, cfg)
	}
	if err != nil {
		log.Error("hubsim", "err", err)
		stop()
		os.Exit(1)
	}
}

// config is what a simulation runs with.
type config struct {
	Hub, TokenFile, Token, PhaseHook              string
	Agents, JobHosts                              int
	Rate                                          float64
	Steady, Overload                              time.Duration
	OverloadAgents, OverloadBatch, OverloadWindow int
	WhyEvery, FaultEvery, FaultHold, Timeout      time.Duration
	HubPID, DialConcurrency                       int
	Seed                                          uint64
	// Settle is how long the steady stream runs before it is measured
	// (the why job's fault reaches the hub).
	Settle time.Duration
}

func defaultConfig() config {
	return config{
		Agents: 10_000, JobHosts: 64, Rate: 1, Steady: 40 * time.Second, Overload: 15 * time.Second,
		OverloadAgents: 1000, OverloadBatch: 256, OverloadWindow: 2,
		WhyEvery: 50 * time.Millisecond, FaultEvery: 10 * time.Second, FaultHold: 30 * time.Second,
		Timeout: 30 * time.Second, DialConcurrency: 32, Seed: 1, Settle: 3 * time.Second,
	}
}

func (c config) check() error {
	switch {
	case c.Agents < 2:
		return fmt.Errorf("-agents %d: want at least 2", c.Agents)
	case c.JobHosts < 1:
		return fmt.Errorf("-job-hosts %d: want at least 1", c.JobHosts)
	case c.OverloadBatch < 1 || c.OverloadBatch > 4096:
		return fmt.Errorf("-overload-batch %d: want 1 to 4096", c.OverloadBatch)
	case c.OverloadWindow < 1:
		return fmt.Errorf("-overload-window %d: want at least 1", c.OverloadWindow)
	case c.Token == "":
		return fmt.Errorf("a token is required (-token-file)")
	}
	return nil
}
