package rules

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func errStrings(errs []error) []string {
	out := make([]string, len(errs))
	for i, e := range errs {
		out[i] = e.Error()
	}
	return out
}

func ruleNames(rs *RuleSet) []string {
	var out []string
	for _, r := range rs.Rules() {
		out = append(out, r.Name)
	}
	return out
}

func equalStrings(t *testing.T, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s:\ngot:\n  %s\nwant:\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func TestMalformedRulesAreReportedWithFileLineAndOthersStillLoad(t *testing.T) {
	rs, errs := LoadDir("testdata/bad")
	equalStrings(t, "errors", errStrings(errs), []string{
		`testdata/bad/mixed.yaml:9: rule "X": condition: ERROR: <input>:1:18: undeclared reference to 'foo'`,
		`testdata/bad/mixed.yaml:12: yaml: did not find expected node content`,
		`testdata/bad/mixed.yaml:14: rule "Typo": at least one trigger is required`,
		`testdata/bad/mixed.yaml:16: rule "Typo": unknown field "trigers"`,
		`testdata/bad/mixed.yaml:22: rule "GoodLast": condition: ERROR: <input>:1:6: undefined field 'vaule' of event (want one of ts, event_type, entity_id, node_id, job_id, pid, value, num, attrs)`,
	})
	equalStrings(t, "loaded rules", ruleNames(rs), []string{"GoodFirst", "GoodReally", "OtherFile"})
	if got := Check("testdata/bad"); len(got) != len(errs) {
		t.Errorf("Check found %d problems, LoadDir %d", len(got), len(errs))
	}
}

func TestRuleValidationErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		yaml string
		want []string
	}{
		{
			name: "unknown action type",
			yaml: "name: A\ntriggers: [{event_type: error.hw}]\nactions:\n  - type: Reboot\n",
			want: []string{`f.yaml:4: rule "A": unknown action type "Reboot" (want one of Signal, GracefulShutdown, RunHook, ReportOnly, Quarantine)`},
		},
		{
			name: "bad signal",
			yaml: "name: A\ntriggers: [{event_type: error.hw}]\nactions:\n  - type: Signal\n    params: {signal: SIGHUP}\n",
			want: []string{`f.yaml:4: rule "A": action Signal: invalid signal "SIGHUP" (want one of SIGUSR1, SIGUSR2, SIGTERM, SIGKILL, SIGCONT, SIGSTOP)`},
		},
		{
			name: "signal missing",
			yaml: "name: A\ntriggers: [{event_type: error.hw}]\nactions:\n  - type: Signal\n",
			want: []string{`f.yaml:4: rule "A": action Signal: param "signal" is required`},
		},
		{
			name: "graceful shutdown needs a positive wait",
			yaml: "name: A\ntriggers: [{event_type: error.hw}]\nactions:\n  - type: GracefulShutdown\n    params: {signal: SIGTERM, wait_seconds: 0}\n",
			want: []string{`f.yaml:4: rule "A": action GracefulShutdown: wait_seconds must be a number > 0, got "0"`},
		},
		{
			name: "run hook needs a hook and a timeout",
			yaml: "name: A\ntriggers: [{event_type: error.hw}]\nactions:\n  - type: RunHook\n    params: {extra: 1}\n",
			want: []string{
				`f.yaml:4: rule "A": action RunHook: unknown param "extra"`,
				`f.yaml:4: rule "A": action RunHook: param "hook" is required`,
				`f.yaml:4: rule "A": action RunHook: param "timeout_seconds" is required`,
			},
		},
		{
			name: "params must be scalars",
			yaml: "name: A\ntriggers: [{event_type: error.hw}]\nactions:\n  - type: Signal\n    params:\n      signal: [SIGUSR1]\n",
			want: []string{`f.yaml:6: rule "A": action Signal: param "signal" must be a string or a number`},
		},
		{
			name: "quarantine class",
			yaml: "name: A\ntriggers: [{event_type: error.hw}]\nactions:\n  - type: Quarantine\n    params: {class: Flaky}\n",
			want: []string{`f.yaml:4: rule "A": action Quarantine: invalid class "Flaky" (want one of PersistentXidError, RdmaLinkDown, StorageDeviceFailure, OtherHardwareFailure)`},
		},
		{
			name: "unknown event type",
			yaml: "name: A\ntriggers:\n  - event_type: gpu.util\n",
			want: []string{`f.yaml:3: rule "A": unknown event type "gpu.util"`},
		},
		{
			name: "condition must return bool",
			yaml: "name: A\ntriggers:\n  - event_type: error.hw\n    condition: event.value\n",
			want: []string{`f.yaml:4: rule "A": condition: must return bool, not dyn`},
		},
		{
			name: "condition type error",
			yaml: "name: A\ntriggers:\n  - event_type: error.hw\n    condition: 'edge.to > 3'\n",
			want: []string{`f.yaml:4: rule "A": condition: ERROR: <input>:1:9: found no matching overload for '_>_' applied to '(string, int)'`},
		},
		{
			name: "name, severity, cooldown",
			yaml: "severity: loud\ncooldown: soon\ntriggers: [{event_type: error.hw}]\n",
			want: []string{
				`f.yaml:1: name is required`,
				`f.yaml:1: invalid severity "loud" (want one of info, warning, critical)`,
				`f.yaml:2: invalid cooldown "soon": want a duration like 30s or 5m`,
			},
		},
		{
			name: "duplicate field",
			yaml: "name: A\nname: B\ntriggers: [{event_type: error.hw}]\n",
			want: []string{`f.yaml:2: rule "A": duplicate field "name"`},
		},
		{
			name: "unknown trigger field",
			yaml: "name: A\ntriggers:\n  - event_type: error.hw\n    when: 'true'\n",
			want: []string{`f.yaml:4: rule "A": trigger: unknown field "when"`},
		},
		{
			name: "duplicate rule name",
			yaml: "name: A\ntriggers: [{event_type: error.hw}]\n---\nname: A\ntriggers: [{event_type: error.net}]\n",
			want: []string{`f.yaml:4: rule "A": duplicate rule name, first defined at f.yaml:1`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, errs := Parse("f.yaml", []byte(tc.yaml))
			equalStrings(t, "errors", errStrings(errs), tc.want)
		})
	}
}

func TestRuleFieldsAndDefaults(t *testing.T) {
	rs, errs := Parse("f.yaml", []byte(`
name: WorkloadStalled
description: a rank waits on a network resource that has errors
triggers:
  - event_type: transport.drop
    condition: 'edge.type == "WaitsOn" && edge.to.startsWith("network")'
actions:
  - type: GracefulShutdown
    params: {signal: SIGUSR1, wait_seconds: 10}
  - type: RunHook
    params: {hook: drain, timeout_seconds: 2.5}
`))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	r := rs.Rules()[0]
	if r.Severity != SeverityWarning || r.Cooldown != time.Minute || r.Line != 2 {
		t.Errorf("defaults: severity %q cooldown %v line %d", r.Severity, r.Cooldown, r.Line)
	}
	gs, hook := r.Actions[0], r.Actions[1]
	if gs.Signal() != "SIGUSR1" || gs.Wait() != 10*time.Second {
		t.Errorf("GracefulShutdown: signal %q wait %v", gs.Signal(), gs.Wait())
	}
	if hook.Hook() != "drain" || hook.Timeout() != 2500*time.Millisecond {
		t.Errorf("RunHook: hook %q timeout %v", hook.Hook(), hook.Timeout())
	}
}

func TestCheckReportsUnreadableDirectory(t *testing.T) {
	errs := Check(filepath.Join(t.TempDir(), "missing"))
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "no such file or directory") {
		t.Fatalf("got %v", errs)
	}
}

func TestCheckAcceptsOneFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "r.yml")
	if err := os.WriteFile(f, []byte("name: A\ntriggers: [{event_type: bogus}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	equalStrings(t, "errors", errStrings(Check(f)), []string{f + `:2: rule "A": unknown event type "bogus"`})
}
