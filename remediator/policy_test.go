package remediator

import (
	"errors"
	"strings"
	"testing"
	"time"
)

const minimal = `
routes:
  - matchers: ['alertname="XidFatal"']
    class: PersistentXidError
classes:
  PersistentXidError:
    steps:
      - type: taint
`

func TestLoadAppliesDefaults(t *testing.T) {
	p, err := Load([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if time.Duration(p.Cooldown) != DefaultCooldown || !*p.BlastRadius ||
		p.CircuitBreaker.MaxTaintedRatio != DefaultMaxTaintedRatio || *p.CircuitBreaker.MaxNodesPerHour != DefaultMaxNodesPerHour ||
		time.Duration(p.Eviction.Timeout) != DefaultEvictionTimeout || p.Classes[PersistentXidError].OnResolved != Keep ||
		strings.Join(p.NodeLabels, ",") != strings.Join(DefaultNodeLabels, ",") {
		t.Fatalf("defaults not applied: %+v", p)
	}
}

func TestShippedPolicyLoads(t *testing.T) {
	p, err := LoadFile("../deploy/hub/remediation-policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []Class{PersistentXidError, RdmaLinkDown, StorageDeviceFailure, OtherHardwareFailure} {
		if p.Classes[c] == nil {
			t.Errorf("class %s has no steps", c)
		}
	}
}

func TestLoadReportsEveryProblemExactly(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"unknown field", minimal + "colldown: 5m\n", "invalid remediation policy: yaml: unmarshal errors:\n  line 9: field colldown not found in type remediator.Policy"},
		{"no routes", "classes: {OtherHardwareFailure: {steps: [{type: taint}]}}", "invalid remediation policy: routes: at least one route is required"},
		{"bad matcher and class", `
routes:
  - matchers: ['alertname=~"("']
    class: GpuOnFire
classes:
  OtherHardwareFailure: {steps: [{type: taint}]}
`, `invalid remediation policy: routes[0]: unknown class "GpuOnFire" (want one of PersistentXidError, RdmaLinkDown, StorageDeviceFailure, OtherHardwareFailure); routes[0]: invalid matcher "alertname=~\"(\"": error parsing regexp: missing closing ): ` + "`^(?:()$`"},
		{"route to a class without steps", `
routes: [{matchers: ['a="b"'], class: RdmaLinkDown}]
classes:
  OtherHardwareFailure: {steps: [{type: taint}]}
`, `invalid remediation policy: routes[0]: class "RdmaLinkDown" has no entry under classes`},
		{"bad steps", `
routes: [{matchers: ['a="b"'], class: OtherHardwareFailure}]
classes:
  OtherHardwareFailure:
    on_resolved: forget
    steps:
      - type: taint
        duration: 5s
      - type: agent_action
        action: rm -rf
      - type: wait
      - type: reboot
      - {}
`, `invalid remediation policy: classes.OtherHardwareFailure: on_resolved "forget" is not "keep" or "untaint"; ` +
			`classes.OtherHardwareFailure.steps[0] (taint): duration is only valid for wait steps; ` +
			`classes.OtherHardwareFailure.steps[1] (agent_action): action "rm -rf" is not one the agent allows (Signal, GracefulShutdown, RunHook, ReportOnly); ` +
			`classes.OtherHardwareFailure.steps[2] (wait): duration must be positive; ` +
			`classes.OtherHardwareFailure.steps[3] (reboot): unknown step type "reboot"; ` +
			`classes.OtherHardwareFailure.steps[4] (): type is required`},
		{"limits", minimal + `
node_labels: ["no-dashes"]
circuit_breaker: {max_tainted_ratio: 1.5, max_nodes_per_hour: -1}
eviction: {initial_backoff: 1m, max_backoff: 1s}
`, `invalid remediation policy: node_labels: invalid label name "no-dashes"; circuit_breaker.max_tainted_ratio: 1.5 is not between 0 and 1; ` +
			`circuit_breaker.max_nodes_per_hour: -1 is negative; eviction: initial_backoff 1m is longer than max_backoff 1s`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load([]byte(tc.yaml))
			if err == nil {
				t.Fatal("loaded")
			}
			if !errors.Is(err, ErrInvalidPolicy) {
				t.Errorf("error %v does not wrap ErrInvalidPolicy", err)
			}
			if err.Error() != tc.want {
				t.Errorf("error\n got: %s\nwant: %s", err, tc.want)
			}
		})
	}
}

func TestRouteFirstMatchWins(t *testing.T) {
	p, err := Load([]byte(`
routes:
  - matchers: ['fault_class="StorageDeviceFailure"']
    class: StorageDeviceFailure
  - matchers: ['alertname=~"Xid.*"', 'severity!="info"']
    class: PersistentXidError
classes:
  StorageDeviceFailure: {steps: [{type: taint}]}
  PersistentXidError: {steps: [{type: taint}]}
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		labels map[string]string
		want   Class
		ok     bool
	}{
		{map[string]string{"alertname": "XidFatal", "severity": "critical"}, PersistentXidError, true},
		{map[string]string{"alertname": "XidFatal", "severity": "info"}, "", false},
		{map[string]string{"alertname": "XidFatal", "fault_class": "StorageDeviceFailure"}, StorageDeviceFailure, true},
		{map[string]string{"alertname": "DiskFull"}, "", false},
	} {
		got, ok := p.Route(tc.labels)
		if got != tc.want || ok != tc.ok {
			t.Errorf("Route(%v) = %q, %v; want %q, %v", tc.labels, got, ok, tc.want, tc.ok)
		}
	}
}

func TestNodeOf(t *testing.T) {
	p, err := Load([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		labels    map[string]string
		node, via string
	}{
		{map[string]string{"node": "gpu-07", "instance": "10.0.0.1:9464"}, "gpu-07", "node"},
		{map[string]string{"Hostname": "dgx-3"}, "dgx-3", "Hostname"},
		{map[string]string{"instance": "node-7:9464"}, "node-7", "instance"},
		{map[string]string{"instance": "[fd00::1]:9464"}, "fd00::1", "instance"},
		{map[string]string{"instance": "node-7"}, "node-7", "instance"},
		{map[string]string{"node": "  "}, "", ""},
	} {
		node, via := p.NodeOf(tc.labels)
		if node != tc.node || via != tc.via {
			t.Errorf("NodeOf(%v) = %q via %q; want %q via %q", tc.labels, node, via, tc.node, tc.via)
		}
	}
}
