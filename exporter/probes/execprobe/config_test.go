package execprobe

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func parse(t *testing.T, text string) (Config, error) {
	t.Helper()
	return loadConfig(func(v any) error { return yaml.Unmarshal([]byte(text), v) })
}

func TestConfigFillsDefaults(t *testing.T) {
	cfg, err := parse(t, `
programs:
  - name: minimal
    command: /opt/probe
  - name: tuned
    command: probe.py
    args: [--fast]
    env: {B: "2", A: "1"}
    dir: /srv
    restart: on-failure
    backoff: {initial: 2s}
    max_events_per_second: 50
    max_line_bytes: 1024
    max_stderr_lines_per_second: 3
    shutdown_grace: 1s
  - name: env-list
    command: x
    env: [A=1, B=two=2]
`)
	if err != nil {
		t.Fatal(err)
	}
	want := []ProgramConfig{{
		Name:                    "minimal",
		Command:                 "/opt/probe",
		Restart:                 RestartAlways,
		Backoff:                 BackoffConfig{Initial: time.Second, Max: time.Minute, ResetAfter: 30 * time.Second},
		MaxEventsPerSecond:      10000,
		MaxLineBytes:            65536,
		MaxStderrLinesPerSecond: 10,
		ShutdownGrace:           5 * time.Second,
	}, {
		Name:                    "tuned",
		Command:                 "probe.py",
		Args:                    []string{"--fast"},
		Env:                     EnvVars{"A=1", "B=2"},
		Dir:                     "/srv",
		Restart:                 RestartOnFailure,
		Backoff:                 BackoffConfig{Initial: 2 * time.Second, Max: time.Minute, ResetAfter: 30 * time.Second},
		MaxEventsPerSecond:      50,
		MaxLineBytes:            1024,
		MaxStderrLinesPerSecond: 3,
		ShutdownGrace:           time.Second,
	}, {
		Name:                    "env-list",
		Command:                 "x",
		Env:                     EnvVars{"A=1", "B=two=2"},
		Restart:                 RestartAlways,
		Backoff:                 BackoffConfig{Initial: time.Second, Max: time.Minute, ResetAfter: 30 * time.Second},
		MaxEventsPerSecond:      10000,
		MaxLineBytes:            65536,
		MaxStderrLinesPerSecond: 10,
		ShutdownGrace:           5 * time.Second,
	}}
	if !reflect.DeepEqual(cfg.Programs, want) {
		t.Errorf("programs:\n got %+v\nwant %+v", cfg.Programs, want)
	}
}

func TestConfigWithoutSectionHasNoPrograms(t *testing.T) {
	cfg, err := loadConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Programs) != 0 {
		t.Errorf("programs = %v, want none", cfg.Programs)
	}
}

func TestConfigValidationReportsEveryProblemExactly(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want string
	}{{
		name: "missing command",
		yaml: `programs: [{name: x}]`,
		want: `exec probe "x": command is required`,
	}, {
		name: "missing name",
		yaml: `programs: [{command: /bin/true}]`,
		want: `exec probe programs[0]: name is required`,
	}, {
		name: "duplicate name",
		yaml: `programs: [{name: x, command: a}, {name: x, command: b}]`,
		want: `exec probe "x": name is used by more than one program`,
	}, {
		name: "name unfit for a label",
		yaml: `programs: [{name: "a b", command: a}]`,
		want: `exec probe "a b": name must match ^[A-Za-z0-9_.-]+$`,
	}, {
		name: "restart policy",
		yaml: `programs: [{name: x, command: a, restart: sometimes}]`,
		want: `exec probe "x": invalid restart policy "sometimes" (want always, on-failure or never)`,
	}, {
		name: "backoff max below initial",
		yaml: `programs: [{name: x, command: a, backoff: {initial: 10s, max: 2s}}]`,
		want: `exec probe "x": backoff.max (2s) must not be less than backoff.initial (10s)`,
	}, {
		name: "negative numbers",
		yaml: `programs: [{name: x, command: a, backoff: {reset_after: -1s}, max_events_per_second: -1, max_line_bytes: -5, max_stderr_lines_per_second: -2, shutdown_grace: -1s}]`,
		want: `exec probe "x": backoff.reset_after must be positive, got -1s
exec probe "x": max_events_per_second must be positive, got -1
exec probe "x": max_line_bytes must be positive, got -5
exec probe "x": max_stderr_lines_per_second must be positive, got -2
exec probe "x": shutdown_grace must be positive, got -1s`,
	}, {
		name: "env entry without value",
		yaml: `programs: [{name: x, command: a, env: [FOO, =bar, OK=1]}]`,
		want: `exec probe "x": env entry "FOO" is not KEY=VALUE
exec probe "x": env entry "=bar" is not KEY=VALUE`,
	}, {
		name: "every problem at once",
		yaml: `programs: [{name: x}, {command: a, restart: maybe}, {name: x, command: b, backoff: {initial: -1s}}]`,
		want: `exec probe "x": command is required
exec probe programs[1]: name is required
exec probe programs[1]: invalid restart policy "maybe" (want always, on-failure or never)
exec probe "x": name is used by more than one program
exec probe "x": backoff.initial must be positive, got -1s`,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(t, tc.yaml)
			if err == nil {
				t.Fatalf("no error, want:\n%s", tc.want)
			}
			got := strings.TrimPrefix(err.Error(), "invalid exec probe config: ")
			if got != tc.want {
				t.Errorf("error:\n%s\nwant:\n%s", got, tc.want)
			}
		})
	}
}

func TestConfigEnvMustBeMapOrList(t *testing.T) {
	_, err := parse(t, "programs: [{name: x, command: a, env: FOO=1}]")
	want := "reading exec probe config: yaml: unmarshal errors:\n  line 1: env must be a map or a list of KEY=VALUE strings"
	if err == nil || !strings.HasPrefix(err.Error(), "reading exec probe config: ") || !strings.Contains(err.Error(), "env must be a map or a list of KEY=VALUE strings") {
		t.Errorf("error = %v, want %q", err, want)
	}
}
