package execprobe

import (
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ark-gpu/ark/event"
)

// RestartPolicy says when a program that exited is started again.
type RestartPolicy string

// The restart policies.
const (
	// RestartAlways restarts the program whenever it exits.
	RestartAlways RestartPolicy = "always"
	// RestartOnFailure restarts it when it failed to start, exited non-zero
	// or was killed by a signal; a clean exit ends it.
	RestartOnFailure RestartPolicy = "on-failure"
	// RestartNever runs it once.
	RestartNever RestartPolicy = "never"
)

// Defaults applied to a field left out (or zero) in the config file.
const (
	DefaultRestart                 = RestartAlways
	DefaultBackoffInitial          = time.Second
	DefaultBackoffMax              = time.Minute
	DefaultBackoffResetAfter       = 30 * time.Second
	DefaultMaxEventsPerSecond      = 10000
	DefaultMaxLineBytes            = event.DefaultMaxLineBytes
	DefaultMaxStderrLinesPerSecond = 10
	DefaultShutdownGrace           = 5 * time.Second
)

// Config is the exec probe's section of the agent config:
//
//	exec:
//	  programs:
//	    - name: nccl-watch
//	      command: /opt/probes/nccl-watch.py
//	      args: [--interval, 5s]
//	      env: {PYTHONUNBUFFERED: "1"}
//	      restart: on-failure
//	      backoff: {initial: 1s, max: 1m}
//	      max_events_per_second: 10000
type Config struct {
	Programs []ProgramConfig `yaml:"programs" json:"programs" mapstructure:"programs"`
}

// ProgramConfig is one external probe: an executable that writes JSONL
// events (docs/events.md) on stdout. A zero or absent field takes its
// default.
type ProgramConfig struct {
	// Name identifies the program in metrics (label probe) and logs.
	Name string `yaml:"name" json:"name" mapstructure:"name"`
	// Command is the executable, a path or a name looked up in PATH; it is
	// run directly, not through a shell.
	Command string   `yaml:"command" json:"command" mapstructure:"command"`
	Args    []string `yaml:"args" json:"args" mapstructure:"args"`
	// Env is added to the agent's environment, as a map or a list of
	// KEY=VALUE strings.
	Env EnvVars `yaml:"env" json:"env" mapstructure:"env"`
	// Dir is the working directory; empty means the agent's.
	Dir     string        `yaml:"dir" json:"dir" mapstructure:"dir"`
	Restart RestartPolicy `yaml:"restart" json:"restart" mapstructure:"restart"`
	Backoff BackoffConfig `yaml:"backoff" json:"backoff" mapstructure:"backoff"`
	// MaxEventsPerSecond caps the events taken from the program (burst: one
	// second's worth); the excess is dropped and counted.
	MaxEventsPerSecond int `yaml:"max_events_per_second" json:"max_events_per_second" mapstructure:"max_events_per_second"`
	// MaxLineBytes is the longest accepted stdout line.
	MaxLineBytes int `yaml:"max_line_bytes" json:"max_line_bytes" mapstructure:"max_line_bytes"`
	// MaxStderrLinesPerSecond caps the stderr lines copied into the log.
	MaxStderrLinesPerSecond int `yaml:"max_stderr_lines_per_second" json:"max_stderr_lines_per_second" mapstructure:"max_stderr_lines_per_second"`
	// ShutdownGrace is how long the process group has between SIGTERM and
	// SIGKILL.
	ShutdownGrace time.Duration `yaml:"shutdown_grace" json:"shutdown_grace" mapstructure:"shutdown_grace"`
}

// BackoffConfig is the delay before a restart: the n-th consecutive restart
// waits a random time in [d/2, d], d = Initial·2^(n-1) capped at Max. A run
// longer than ResetAfter starts the sequence again from Initial.
type BackoffConfig struct {
	Initial    time.Duration `yaml:"initial" json:"initial" mapstructure:"initial"`
	Max        time.Duration `yaml:"max" json:"max" mapstructure:"max"`
	ResetAfter time.Duration `yaml:"reset_after" json:"reset_after" mapstructure:"reset_after"`
}

// EnvVars are KEY=VALUE strings. In YAML they are written as a map or as a
// list of KEY=VALUE strings; a map is sorted by key. (The mapstructure tags
// let the Collector receiver embed Config; there env is a list.)
type EnvVars []string

// UnmarshalYAML accepts a map or a list.
func (e *EnvVars) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.MappingNode:
		var m map[string]string
		if err := n.Decode(&m); err != nil {
			return fmt.Errorf("decoding env map: %w", err)
		}
		out := make(EnvVars, 0, len(m))
		for _, k := range slices.Sorted(maps.Keys(m)) {
			if k == "" || strings.Contains(k, "=") {
				return fmt.Errorf("line %d: invalid env name %q", n.Line, k)
			}
			out = append(out, k+"="+m[k])
		}
		*e = out
		return nil
	case yaml.SequenceNode:
		var l []string
		if err := n.Decode(&l); err != nil {
			return fmt.Errorf("decoding env list: %w", err)
		}
		*e = l
		return nil
	default:
		return fmt.Errorf("line %d: env must be a map or a list of KEY=VALUE strings", n.Line)
	}
}

// SetDefaults fills every zero field with its default (Validate expects
// them filled).
func (c *Config) SetDefaults() {
	for i := range c.Programs {
		p := &c.Programs[i]
		if p.Restart == "" {
			p.Restart = DefaultRestart
		}
		if p.Backoff.Initial == 0 {
			p.Backoff.Initial = DefaultBackoffInitial
		}
		if p.Backoff.Max == 0 {
			p.Backoff.Max = max(DefaultBackoffMax, p.Backoff.Initial)
		}
		if p.Backoff.ResetAfter == 0 {
			p.Backoff.ResetAfter = DefaultBackoffResetAfter
		}
		if p.MaxEventsPerSecond == 0 {
			p.MaxEventsPerSecond = DefaultMaxEventsPerSecond
		}
		if p.MaxLineBytes == 0 {
			p.MaxLineBytes = DefaultMaxLineBytes
		}
		if p.MaxStderrLinesPerSecond == 0 {
			p.MaxStderrLinesPerSecond = DefaultMaxStderrLinesPerSecond
		}
		if p.ShutdownGrace == 0 {
			p.ShutdownGrace = DefaultShutdownGrace
		}
	}
}

var validName = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)

// Validate reports every problem in c at once, one per line, after defaults
// were applied.
func (c *Config) Validate() error {
	var errs []error
	seen := make(map[string]bool, len(c.Programs))
	for i, p := range c.Programs {
		prefix := fmt.Sprintf("exec probe %q: ", p.Name)
		if p.Name == "" {
			prefix = fmt.Sprintf("exec probe programs[%d]: ", i)
		}
		bad := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf(prefix+format, args...))
		}
		switch {
		case p.Name == "":
			bad("name is required")
		case !validName.MatchString(p.Name):
			bad("name must match %s", validName)
		case seen[p.Name]:
			bad("name is used by more than one program")
		}
		seen[p.Name] = true
		if p.Command == "" {
			bad("command is required")
		}
		for _, kv := range p.Env {
			if strings.IndexByte(kv, '=') <= 0 {
				bad("env entry %q is not KEY=VALUE", kv)
			}
		}
		switch p.Restart {
		case RestartAlways, RestartOnFailure, RestartNever:
		default:
			bad("invalid restart policy %q (want always, on-failure or never)", p.Restart)
		}
		if p.Backoff.Initial < 0 {
			bad("backoff.initial must be positive, got %s", p.Backoff.Initial)
		}
		if p.Backoff.Max < p.Backoff.Initial {
			bad("backoff.max (%s) must not be less than backoff.initial (%s)", p.Backoff.Max, p.Backoff.Initial)
		}
		if p.Backoff.ResetAfter < 0 {
			bad("backoff.reset_after must be positive, got %s", p.Backoff.ResetAfter)
		}
		if p.MaxEventsPerSecond < 0 {
			bad("max_events_per_second must be positive, got %d", p.MaxEventsPerSecond)
		}
		if p.MaxLineBytes < 0 {
			bad("max_line_bytes must be positive, got %d", p.MaxLineBytes)
		}
		if p.MaxStderrLinesPerSecond < 0 {
			bad("max_stderr_lines_per_second must be positive, got %d", p.MaxStderrLinesPerSecond)
		}
		if p.ShutdownGrace < 0 {
			bad("shutdown_grace must be positive, got %s", p.ShutdownGrace)
		}
	}
	return errors.Join(errs...)
}
