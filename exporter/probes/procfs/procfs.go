// Package procfs is the agent's process probe: the state of the processes
// Ark tracks (R/S/D/Z, exited) from /proc/<pid>/stat, and a "stalled"
// verdict for a rank whose CPU time and GPU utilisation stay flat.
package procfs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"time"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probe"
	"github.com/ark-gpu/ark/exporter/procstat"
	"github.com/ark-gpu/ark/graph"
)

func init() {
	probe.Register(probe.Spec{
		Name:    "procfs",
		Help:    "state of tracked processes from /proc, with a stalled verdict",
		Default: true,
		New:     New,
	})
}

// Config is the probe's section of the agent config.
type Config struct {
	// Interval between polls (default 1s).
	Interval time.Duration `yaml:"interval" json:"interval"`
	// StallWindow is how long CPU time and GPU utilisation must stay flat
	// for a process to be stalled (default 30s).
	StallWindow time.Duration `yaml:"stall_window" json:"stall_window"`
	// StallCPUFraction is the share of one core below which CPU time is
	// flat (default 0.01: 1%).
	StallCPUFraction float64 `yaml:"stall_cpu_fraction" json:"stall_cpu_fraction"`
	// StallGPUDelta is the utilisation range (percentage points) within
	// which GPU utilisation is flat (default 1).
	StallGPUDelta float64 `yaml:"stall_gpu_delta" json:"stall_gpu_delta"`
	// Heartbeat re-emits an unchanged state this often (default 15s), so the
	// graph keeps quiet processes alive.
	Heartbeat time.Duration `yaml:"heartbeat" json:"heartbeat"`
}

func (c *Config) defaults() {
	if c.Interval == 0 {
		c.Interval = time.Second
	}
	if c.StallWindow == 0 {
		c.StallWindow = 30 * time.Second
	}
	if c.StallCPUFraction == 0 {
		c.StallCPUFraction = 0.01
	}
	if c.StallGPUDelta == 0 {
		c.StallGPUDelta = 1
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = 15 * time.Second
	}
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	if c.Interval < 0 {
		errs = append(errs, fmt.Errorf("procfs: interval must be positive, got %s", c.Interval))
	}
	if c.StallWindow < c.Interval {
		errs = append(errs, fmt.Errorf("procfs: stall_window (%s) must be at least the interval (%s)", c.StallWindow, c.Interval))
	}
	if c.StallCPUFraction < 0 || c.StallCPUFraction > 1 {
		errs = append(errs, fmt.Errorf("procfs: stall_cpu_fraction must be within [0,1], got %g", c.StallCPUFraction))
	}
	return errors.Join(errs...)
}

// Probe polls /proc for the tracked processes.
type Probe struct {
	env   probe.Env
	cfg   Config
	now   func() time.Time
	ticks float64 // clock ticks per second
	procs map[int64]*proc
}

type proc struct {
	start     uint64 // starttime, ticks since boot
	job       string
	state     string // last emitted value
	emittedAt time.Time
	// samples within the stall window
	cpu []sample
	gpu []sample
}

type sample struct {
	at time.Time
	v  float64
}

// New builds the probe from env.
func New(env probe.Env) (probe.Probe, error) {
	var cfg Config
	if env.Config != nil {
		if err := env.Config(&cfg); err != nil {
			return nil, err
		}
	}
	cfg.defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if env.Tracker == nil {
		return nil, fmt.Errorf("procfs: no process tracker: %w", probe.ErrNoData)
	}
	if _, err := os.Stat(env.Paths.Proc("self", "stat")); err != nil {
		return nil, fmt.Errorf("procfs: %s unreadable: %w", env.Paths.ProcFS, probe.ErrNoData)
	}
	return &Probe{env: env, cfg: cfg, now: time.Now, ticks: 100, procs: map[int64]*proc{}}, nil
}

// Run polls until ctx ends.
func (p *Probe) Run(ctx context.Context, sink probe.Sink) error {
	return probe.Poll(ctx, p.env, p.cfg.Interval, func(context.Context) error {
		return p.poll(sink)
	})
}

// Stat is what the probe reads from /proc/<pid>/stat.
type Stat = procstat.Stat

// ParseStat parses the contents of /proc/<pid>/stat.
func ParseStat(b []byte) (Stat, error) { return procstat.Parse(b) }

func (p *Probe) poll(sink probe.Sink) error {
	now := p.now()
	tracked := p.env.Tracker.Tracked()
	seen := make(map[int64]bool, len(tracked))
	var firstErr error
	for _, t := range tracked {
		seen[t.PID] = true
		pr := p.procs[t.PID]
		b, err := os.ReadFile(p.env.Paths.Proc(strconv.FormatInt(t.PID, 10), "stat"))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errSearch) {
				// The process is gone: say so once.
				if pr != nil && pr.state != "exited" {
					p.emit(sink, t.PID, pr, "exited", now)
				} else if pr == nil {
					pr = &proc{job: t.JobID}
					p.procs[t.PID] = pr
					p.emit(sink, t.PID, pr, "exited", now)
				}
				continue
			}
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		st, err := ParseStat(b)
		if err != nil {
			if p.env.Reject != nil {
				p.env.Reject(event.ReasonInvalidField)
			}
			continue
		}
		switch {
		case pr == nil:
			pr = &proc{start: st.StartTime}
			p.procs[t.PID] = pr
		case pr.start != 0 && st.StartTime != pr.start:
			// The pid was reused: the process we tracked has exited.
			if pr.state != "exited" {
				p.emit(sink, t.PID, pr, "exited", now)
			}
			continue
		}
		pr.job = t.JobID
		cpu := float64(st.UTime+st.STime) / p.ticks
		pr.cpu = window(append(pr.cpu, sample{now, cpu}), now, p.cfg.StallWindow)
		if t.GPUUtilTS > 0 {
			pr.gpu = window(append(pr.gpu, sample{time.UnixMilli(t.GPUUtilTS), t.GPUUtil}), now, p.cfg.StallWindow)
		}
		state := string(st.State)
		if st.State == 'Z' || st.State == 'X' {
			state = "Z"
		} else if p.stalled(pr, now) {
			state = "stalled"
		}
		if state != pr.state || now.Sub(pr.emittedAt) >= p.cfg.Heartbeat {
			p.emit(sink, t.PID, pr, state, now)
		}
	}
	for pid := range p.procs {
		if !seen[pid] {
			delete(p.procs, pid)
		}
	}
	return firstErr
}

// errSearch: reading another user's /proc/<pid> after it exited can yield
// ESRCH.
var errSearch = errors.New("no such process")

// window keeps the samples of the last d, plus the newest one before it so
// the window is always spanned.
func window(s []sample, now time.Time, d time.Duration) []sample {
	cut := now.Add(-d)
	i := 0
	for i+1 < len(s) && !s[i+1].at.After(cut) {
		i++
	}
	return append(s[:0], s[i:]...)
}

// stalled: the samples span the whole window, CPU time grew by less than
// the threshold, and GPU utilisation (when reported) stayed within delta.
func (p *Probe) stalled(pr *proc, now time.Time) bool {
	if len(pr.cpu) < 2 || now.Sub(pr.cpu[0].at) < p.cfg.StallWindow {
		return false
	}
	span := now.Sub(pr.cpu[0].at).Seconds()
	if grew := pr.cpu[len(pr.cpu)-1].v - pr.cpu[0].v; grew > p.cfg.StallCPUFraction*span {
		return false
	}
	if len(pr.gpu) == 0 {
		return true
	}
	lo, hi := pr.gpu[0].v, pr.gpu[0].v
	for _, s := range pr.gpu {
		lo, hi = min(lo, s.v), max(hi, s.v)
	}
	return hi-lo <= p.cfg.StallGPUDelta
}

func (p *Probe) emit(sink probe.Sink, pid int64, pr *proc, state string, now time.Time) {
	pr.state, pr.emittedAt = state, now
	ev := event.Event{
		TS:       now.UnixMilli(),
		Type:     event.ProcessState,
		EntityID: "pid-" + strconv.FormatInt(pid, 10),
		PID:      pid,
		JobID:    pr.job,
		Value:    state,
	}
	if pr.start != 0 && state != "exited" {
		// Lets the executor tell this process from a later one with the
		// same pid.
		ev.Attrs = event.Attrs{{Key: graph.AttrStartTime, Value: strconv.FormatUint(pr.start, 10)}}
	}
	sink.Emit(&ev)
}
