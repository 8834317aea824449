package alerts_test

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"testing"

	"gopkg.in/yaml.v3"
)

var update = flag.Bool("update", false, "rewrite "+prometheusRuleFile+" from the rule files")

const prometheusRuleFile = "../deploy/base/prometheus-rule.yaml"

// prometheusRule wraps the groups of every rule file in a prometheus-operator
// PrometheusRule.
func prometheusRule(t *testing.T) []byte {
	t.Helper()
	var groups []yaml.Node
	for _, f := range ruleFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var doc yaml.Node
		if err := yaml.Unmarshal(b, &doc); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		var g struct {
			Groups []yaml.Node `yaml:"groups"`
		}
		if err := doc.Decode(&g); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		groups = append(groups, g.Groups...)
	}
	obj := map[string]any{
		"apiVersion": "monitoring.coreos.com/v1",
		"kind":       "PrometheusRule",
		"metadata": map[string]any{
			"name":      "ark",
			"namespace": "ark-system",
			"labels":    map[string]string{"app.kubernetes.io/name": "ark"},
		},
		"spec": map[string]any{"groups": groups},
	}
	var buf bytes.Buffer
	buf.WriteString("# Generated from alerts/*.yaml by `make manifests` (go test ./alerts -run PrometheusRule -update): do not edit.\n")
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(obj); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestPrometheusRuleWrapsTheRuleFiles: the PrometheusRule shipped in
// deploy/ is exactly the rule files, so prometheus-operator users get the
// same rules that promtool tests.
func TestPrometheusRuleWrapsTheRuleFiles(t *testing.T) {
	want := prometheusRule(t)
	if *update {
		if err := os.WriteFile(prometheusRuleFile, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(prometheusRuleFile)
	if err != nil {
		t.Fatalf("%v (go test ./alerts -run PrometheusRule -update writes it)", err)
	}
	if !bytes.Equal(got, want) {
		diff := exec.Command("diff", "-u", prometheusRuleFile, "-")
		diff.Stdin = bytes.NewReader(want)
		out, _ := diff.CombinedOutput()
		t.Fatalf("%s is out of date with alerts/ (make manifests):\n%s", prometheusRuleFile, out)
	}
}
