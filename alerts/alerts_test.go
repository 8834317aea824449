// Package alerts_test checks Ark's Prometheus rules: promtool accepts them
// and their unit tests pass, every alert is complete (for, severity,
// annotations, a runbook), tested firing and not firing, and routed by the
// shipped remediation policy when it names a fault class.
package alerts_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/ark-gpu/ark/remediator"
)

// ruleFiles are the rule files, in the order Prometheus loads them.
var ruleFiles = []string{"ark-rules.yaml", "ark-alerts.yaml"}

const (
	testFile      = "tests/ark-alerts_test.yaml"
	runbookPrefix = "https://github.com/ark-gpu/ark/blob/main/docs/runbooks/"
	runbookDir    = "../docs/runbooks"
	policyFile    = "../deploy/hub/remediation-policy.yaml"
)

type ruleGroups struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []rule `yaml:"rules"`
	} `yaml:"groups"`
}

type rule struct {
	Alert       string            `yaml:"alert"`
	Record      string            `yaml:"record"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

type unitTests struct {
	Tests []struct {
		Name      string `yaml:"name"`
		AlertTest []struct {
			EvalTime  string `yaml:"eval_time"`
			Alertname string `yaml:"alertname"`
			ExpAlerts []struct {
				ExpLabels map[string]string `yaml:"exp_labels"`
			} `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

func promtool(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("../hack/promtool.sh").Output()
	if err != nil {
		t.Fatalf("installing promtool (hack/promtool.sh): %v", err)
	}
	return strings.TrimSpace(string(out))
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func alerts(t *testing.T) []rule {
	t.Helper()
	var out []rule
	for _, f := range ruleFiles {
		var g ruleGroups
		readYAML(t, f, &g)
		for _, grp := range g.Groups {
			for _, r := range grp.Rules {
				if r.Alert != "" {
					out = append(out, r)
				}
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("no alerts found")
	}
	return out
}

func TestPromtoolChecksTheRules(t *testing.T) {
	out, err := exec.Command(promtool(t), append([]string{"check", "rules"}, ruleFiles...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
}

func TestPromtoolUnitTestsPass(t *testing.T) {
	out, err := exec.Command(promtool(t), "test", "rules", testFile).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool test rules %s: %v\n%s", testFile, err, out)
	}
}

// TestEveryAlertIsComplete: for, severity, summary, description and a
// runbook_url pointing at an existing page of docs/runbooks, one page per
// alert and no page without one.
func TestEveryAlertIsComplete(t *testing.T) {
	names := map[string]bool{}
	for _, a := range alerts(t) {
		if names[a.Alert] {
			t.Errorf("%s: defined twice", a.Alert)
		}
		names[a.Alert] = true
		if a.For == "" {
			t.Errorf("%s: no for", a.Alert)
		}
		if s := a.Labels["severity"]; s != "critical" && s != "warning" {
			t.Errorf("%s: severity %q, want critical or warning", a.Alert, s)
		}
		for _, k := range []string{"summary", "description", "runbook_url"} {
			if strings.TrimSpace(a.Annotations[k]) == "" {
				t.Errorf("%s: no %s annotation", a.Alert, k)
			}
		}
		if want := runbookPrefix + a.Alert + ".md"; a.Annotations["runbook_url"] != want {
			t.Errorf("%s: runbook_url %q, want %q", a.Alert, a.Annotations["runbook_url"], want)
		}
		page := filepath.Join(runbookDir, a.Alert+".md")
		b, err := os.ReadFile(page)
		if err != nil {
			t.Errorf("%s: runbook: %v", a.Alert, err)
			continue
		}
		if !strings.HasPrefix(string(b), "# "+a.Alert+"\n") {
			t.Errorf("%s: %s must start with the heading \"# %s\"", a.Alert, page, a.Alert)
		}
	}
	pages, err := filepath.Glob(filepath.Join(runbookDir, "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pages {
		if name := strings.TrimSuffix(filepath.Base(p), ".md"); name != "README" && !names[name] {
			t.Errorf("%s: a runbook for no alert", p)
		}
	}
}

// TestEveryAlertIsTestedFiringAndNotFiring reads the promtool unit tests.
func TestEveryAlertIsTestedFiringAndNotFiring(t *testing.T) {
	var u unitTests
	readYAML(t, testFile, &u)
	firing, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range u.Tests {
		for _, at := range tc.AlertTest {
			if len(at.ExpAlerts) > 0 {
				firing[at.Alertname] = true
			} else {
				quiet[at.Alertname] = true
			}
		}
	}
	for _, a := range alerts(t) {
		if !firing[a.Alert] {
			t.Errorf("%s: no unit test where it fires", a.Alert)
		}
		if !quiet[a.Alert] {
			t.Errorf("%s: no unit test where it stays quiet", a.Alert)
		}
	}
}

// TestRemediationPolicyRoutesEveryFaultClassAlert: an alert with a
// fault_class label, as the unit tests expect it to fire, is routed by the
// shipped policy to that class and names a node; alerts without one are
// not routed (Alertmanager does not send them to the hub).
func TestRemediationPolicyRoutesEveryFaultClassAlert(t *testing.T) {
	p, err := remediator.LoadFile(policyFile)
	if err != nil {
		t.Fatal(err)
	}
	var u unitTests
	readYAML(t, testFile, &u)
	fired := map[string][]map[string]string{}
	for _, tc := range u.Tests {
		for _, at := range tc.AlertTest {
			for _, e := range at.ExpAlerts {
				ls := map[string]string{"alertname": at.Alertname}
				for k, v := range e.ExpLabels {
					ls[k] = v
				}
				fired[at.Alertname] = append(fired[at.Alertname], ls)
			}
		}
	}
	routed := 0
	for _, a := range alerts(t) {
		class, ok := a.Labels["fault_class"]
		if !ok {
			continue
		}
		if _, known := p.Classes[remediator.Class(class)]; !known {
			t.Errorf("%s: fault_class %q is not a class of %s", a.Alert, class, policyFile)
		}
		for _, ls := range fired[a.Alert] {
			got, ok := p.Route(ls)
			if !ok || string(got) != class {
				t.Errorf("%s %v: routed to %q (%v), want %q", a.Alert, ls, got, ok, class)
			}
			if node, _ := p.NodeOf(ls); node == "" {
				t.Errorf("%s %v: names no node the policy reads (%v)", a.Alert, ls, p.NodeLabels)
			}
			routed++
		}
	}
	if routed == 0 {
		t.Fatal("no alert with a fault_class fired in the unit tests")
	}
	// Every class of the policy has an alert that reaches it, but
	// StorageDeviceFailure: no metric says a disk failed (storage errors
	// reach the causal graph, not /metrics), so only an agent rule or a
	// third-party alert naming fault_class="StorageDeviceFailure" can.
	classes := map[string]bool{}
	for _, a := range alerts(t) {
		classes[a.Labels["fault_class"]] = true
	}
	for c := range p.Classes {
		if !classes[string(c)] && !slices.Contains([]string{"StorageDeviceFailure"}, string(c)) {
			t.Errorf("class %s: no alert names it", c)
		}
	}
}
