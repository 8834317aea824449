package executor

import (
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"time"
)

// Defaults applied by New to zero Config fields.
const (
	DefaultHookTimeout = 30 * time.Second
	DefaultMaxWait     = 5 * time.Minute
	DefaultKillWait    = 5 * time.Second
	DefaultOutputLimit = 4096
	// DefaultShutdownWait is GracefulShutdown's wait when the request gives
	// no wait_seconds.
	DefaultShutdownWait = 10 * time.Second
)

// Config is the executor's section of the agent config.
type Config struct {
	// AllowUnverified lets signals go to a pid whose start time the caller
	// does not know (ExpectedStartTime 0). Off by default: without the start
	// time a reused pid cannot be told from the process the graph saw.
	AllowUnverified bool `yaml:"allow_unverified" json:"allow_unverified"`
	// MaxWait caps GracefulShutdown's wait_seconds (default 5m).
	MaxWait time.Duration `yaml:"max_wait" json:"max_wait"`
	// KillWait is how long GracefulShutdown waits for the exit after SIGKILL
	// (default 5s).
	KillWait time.Duration `yaml:"kill_wait" json:"kill_wait"`
	// OutputLimit is how many bytes of a hook's output go into the audit
	// details (default 4096).
	OutputLimit int `yaml:"output_limit" json:"output_limit"`
	// Hooks are the only programs RunHook may start, by name.
	Hooks map[string]Hook `yaml:"hooks" json:"hooks"`
}

// Hook is one program RunHook may run: argv only, never through a shell.
type Hook struct {
	// Command is the absolute path of the program.
	Command string `yaml:"command" json:"command"`
	// Args are passed as they are, without expansion.
	Args []string `yaml:"args" json:"args"`
	// Timeout kills the hook and its process group (default 30s).
	Timeout time.Duration `yaml:"timeout" json:"timeout"`
}

// Validate reports every problem with c at once.
func (c Config) Validate() error {
	var errs []error
	if c.MaxWait < 0 {
		errs = append(errs, fmt.Errorf("executor: max_wait must not be negative, got %s", c.MaxWait))
	}
	if c.KillWait < 0 {
		errs = append(errs, fmt.Errorf("executor: kill_wait must not be negative, got %s", c.KillWait))
	}
	if c.OutputLimit < 0 {
		errs = append(errs, fmt.Errorf("executor: output_limit must not be negative, got %d", c.OutputLimit))
	}
	names := make([]string, 0, len(c.Hooks))
	for name := range c.Hooks {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		h := c.Hooks[name]
		switch {
		case name == "":
			errs = append(errs, errors.New("executor: hook with an empty name"))
		case h.Command == "":
			errs = append(errs, fmt.Errorf("executor: hooks.%s: command is required", name))
		case !filepath.IsAbs(h.Command):
			errs = append(errs, fmt.Errorf("executor: hooks.%s: command %q must be an absolute path", name, h.Command))
		}
		if h.Timeout < 0 {
			errs = append(errs, fmt.Errorf("executor: hooks.%s: timeout must not be negative, got %s", name, h.Timeout))
		}
	}
	return errors.Join(errs...)
}

// withDefaults returns c with zero fields set to their defaults.
func (c Config) withDefaults() Config {
	if c.MaxWait == 0 {
		c.MaxWait = DefaultMaxWait
	}
	if c.KillWait == 0 {
		c.KillWait = DefaultKillWait
	}
	if c.OutputLimit == 0 {
		c.OutputLimit = DefaultOutputLimit
	}
	hooks := make(map[string]Hook, len(c.Hooks))
	for name, h := range c.Hooks {
		if h.Timeout == 0 {
			h.Timeout = DefaultHookTimeout
		}
		hooks[name] = h
	}
	c.Hooks = hooks
	return c
}
