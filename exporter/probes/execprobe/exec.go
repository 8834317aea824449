// Package execprobe is the "exec" probe: it runs external programs that
// write JSONL events (docs/events.md) on stdout — probes written in
// Python, shell, Rust or anything else that can print a line — and feeds
// their events to the agent.
//
// Each program runs in its own process group, is restarted with
// exponential backoff according to its restart policy, is rate-limited so a
// flooding program cannot starve the agent, and on shutdown gets SIGTERM,
// a grace period, then SIGKILL on the whole group. The leader dies with the
// agent (parent-death signal), and a record per program under the agent's
// state directory lets the next agent end what a killed one left of the
// group before it starts its own copy. Bad lines are counted and
// logged at a rate limit; stderr goes to the log, rate-limited too.
//
// The probe is enabled by default but inert without configuration: with no
// programs listed, Run returns probe.ErrNoData at once so the agent reports
// it inactive.
package execprobe

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ark-gpu/ark/exporter/probe"
)

// Name is the probe's registered name (--[no-]probe.exec, config section
// exec).
const Name = "exec"

func init() {
	probe.Register(probe.Spec{
		Name:    Name,
		Help:    "Run external programs that print JSONL events on stdout (config section exec.programs).",
		Default: true,
		New:     New,
	})
}

// Probe supervises the configured programs.
type Probe struct {
	metrics *metrics
	logger  *slog.Logger
	progs   []*program
}

// New builds the exec probe from env: it reads and validates the config
// section and registers the metrics.
func New(env probe.Env) (probe.Probe, error) {
	cfg, err := loadConfig(env.Config)
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(env.Registerer)
	if err != nil {
		return nil, err
	}
	logger := env.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	observe := env.Observe
	if observe == nil {
		observe = func(time.Duration, error) {}
	}
	p := &Probe{metrics: m, logger: logger}
	rec := newRecords(env.StateDir, env.NodeName, logger)
	for _, pc := range cfg.Programs {
		prog := newProgram(pc, logger, observe, m)
		prog.countReject = env.Reject
		prog.rec = rec
		p.progs = append(p.progs, prog)
	}
	return p, nil
}

// Run starts every program and supervises them until ctx ends, then stops
// them and returns nil once no program, reader or child is left. With no
// programs configured it returns probe.ErrNoData at once. A program that
// ends for good (restart never or on-failure) does not end Run. Run is
// meant to be called once at a time.
func (p *Probe) Run(ctx context.Context, sink probe.Sink) error {
	if len(p.progs) == 0 {
		return fmt.Errorf("no exec programs configured: %w", probe.ErrNoData)
	}
	// What a killed agent left running goes before the new copies start.
	for _, prog := range p.progs {
		n, err := prog.rec.reap(prog.cfg.Name)
		if err != nil {
			p.logger.Warn("ending what a previous agent left of a program", "program", prog.cfg.Name, "err", err)
		}
		if n > 0 {
			p.logger.Info("killed the processes a previous agent left of a program", "program", prog.cfg.Name, "killed", n)
		}
	}
	var wg sync.WaitGroup
	for _, prog := range p.progs {
		wg.Go(func() { prog.supervise(ctx, sink) })
	}
	wg.Wait()
	<-ctx.Done()
	return nil
}

// loadConfig decodes the section with decode (nil: no section), applies the
// defaults and validates.
func loadConfig(decode func(v any) error) (Config, error) {
	var cfg Config
	if decode != nil {
		if err := decode(&cfg); err != nil {
			return Config{}, fmt.Errorf("reading exec probe config: %w", err)
		}
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return Config{}, fmt.Errorf("invalid exec probe config: %w", err)
	}
	return cfg, nil
}
