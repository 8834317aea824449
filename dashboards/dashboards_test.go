package dashboards_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/ark-gpu/ark/dashboards"
)

var update = flag.Bool("update", false, "rewrite the dashboards' JSON from the Go source")

// TestGeneratedJSONMatchesSource: the committed JSON is what the Go source
// builds (make dashboards rewrites it).
func TestGeneratedJSONMatchesSource(t *testing.T) {
	for _, d := range dashboards.All {
		want, err := dashboards.JSON(d)
		if err != nil {
			t.Fatal(err)
		}
		if *update {
			if err := os.WriteFile(d.File, want, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		got, err := os.ReadFile(d.File)
		if err != nil {
			t.Fatalf("%v (make dashboards writes it)", err)
		}
		if !bytes.Equal(got, want) {
			diff := exec.Command("diff", "-u", d.File, "-")
			diff.Stdin = bytes.NewReader(want)
			out, _ := diff.CombinedOutput()
			t.Errorf("%s differs from its Go source (make dashboards):\n%s", d.File, out)
		}
	}
}

// TestDashboardsAreValidForTheirSchemaVersion decodes each committed file
// strictly into the SDK's types for the schema version it declares (no
// unknown field anywhere, panel options included) and validates it; then
// checks the house rules: variables, a description on every panel, units
// and thresholds on every data panel.
func TestDashboardsAreValidForTheirSchemaVersion(t *testing.T) {
	plugins.RegisterDefaultPlugins()
	want := dashboard.NewDashboard().SchemaVersion
	for _, d := range dashboards.All {
		t.Run(d.File, func(t *testing.T) {
			b, err := os.ReadFile(d.File)
			if err != nil {
				t.Fatal(err)
			}
			var dash dashboard.Dashboard
			if err := dash.UnmarshalJSONStrict(b); !isNil(err) {
				t.Fatalf("strict decoding: %v", err)
			}
			if err := dash.Validate(); err != nil {
				t.Fatalf("validation: %v", err)
			}
			if dash.SchemaVersion != want {
				t.Errorf("schemaVersion %d, want %d (the SDK's)", dash.SchemaVersion, want)
			}
			if dash.Uid == nil || *dash.Uid == "" || dash.Description == nil || *dash.Description == "" {
				t.Error("no uid or no description")
			}
			vars := map[string]bool{}
			for _, v := range dash.Templating.List {
				vars[v.Name] = true
			}
			for _, v := range []string{"datasource", "cluster"} {
				if !vars[v] {
					t.Errorf("no $%s variable", v)
				}
			}
			if !vars["node"] && !vars["job"] {
				t.Error("no $node or $job variable")
			}
			var raw struct {
				Panels []map[string]any `json:"panels"`
			}
			if err := json.Unmarshal(b, &raw); err != nil {
				t.Fatal(err)
			}
			n := 0
			for _, p := range raw.Panels {
				if p["type"] == "row" {
					continue
				}
				n++
				title, _ := p["title"].(string)
				if desc, _ := p["description"].(string); strings.TrimSpace(desc) == "" {
					t.Errorf("panel %q: no description", title)
				}
				if ts, _ := p["targets"].([]any); len(ts) == 0 {
					t.Errorf("panel %q: no target", title)
				}
				if p["type"] == "nodeGraph" {
					continue // units and thresholds come from the frames
				}
				fc, _ := p["fieldConfig"].(map[string]any)
				defaults, _ := fc["defaults"].(map[string]any)
				if u, _ := defaults["unit"].(string); u == "" {
					t.Errorf("panel %q: no unit", title)
				}
				if _, ok := defaults["thresholds"]; !ok {
					t.Errorf("panel %q: no thresholds", title)
				}
			}
			if n == 0 {
				t.Fatal("no panels")
			}
		})
	}
}

// isNil: the SDK's strict decoder may return an empty cog.BuildErrors
// as a non-nil error.
func isNil(err error) bool {
	var be cog.BuildErrors
	return err == nil || (errors.As(err, &be) && len(be) == 0)
}

// TestEveryPromQLTargetParses parses each target with Prometheus' own
// parser, template variables replaced by sample values.
func TestEveryPromQLTargetParses(t *testing.T) {
	p := parser.NewParser(parser.Options{})
	total := 0
	for _, d := range dashboards.All {
		b, err := os.ReadFile(d.File)
		if err != nil {
			t.Fatal(err)
		}
		targets, err := dashboards.PromTargets(b)
		if err != nil {
			t.Fatal(err)
		}
		for _, tg := range targets {
			total++
			expr := dashboards.Expand(tg.Expr, dashboards.SampleValues)
			if strings.Contains(expr, "$") {
				t.Errorf("%s %q: a variable with no sample value: %s", d.File, tg.Panel, expr)
				continue
			}
			if _, err := p.ParseExpr(expr); err != nil {
				t.Errorf("%s %q: %v\n%s", d.File, tg.Panel, err, expr)
			}
		}
	}
	if total == 0 {
		t.Fatal("no PromQL targets found")
	}
	t.Logf("%d PromQL targets parse", total)
}
