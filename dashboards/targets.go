package dashboards

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// Target is one PromQL query of a dashboard's panel.
type Target struct {
	Panel string // the panel's title
	RefID string
	Expr  string
}

// PromTargets lists the PromQL targets of a dashboard's JSON, panels in
// rows included.
func PromTargets(dashboardJSON []byte) ([]Target, error) {
	var d struct {
		Panels []jsonPanel `json:"panels"`
	}
	if err := json.Unmarshal(dashboardJSON, &d); err != nil {
		return nil, fmt.Errorf("decoding the dashboard: %w", err)
	}
	var out []Target
	var walk func([]jsonPanel)
	walk = func(ps []jsonPanel) {
		for _, p := range ps {
			walk(p.Panels)
			for _, t := range p.Targets {
				if t.Datasource.Type != "prometheus" {
					continue
				}
				out = append(out, Target{Panel: p.Title, RefID: t.RefID, Expr: t.Expr})
			}
		}
	}
	walk(d.Panels)
	return out, nil
}

type jsonPanel struct {
	Title   string      `json:"title"`
	Panels  []jsonPanel `json:"panels"`
	Targets []struct {
		RefID      string `json:"refId"`
		Expr       string `json:"expr"`
		Datasource struct {
			Type string `json:"type"`
		} `json:"datasource"`
	} `json:"targets"`
}

// Expand replaces Grafana's template variables in s, $name and ${name},
// with vals; a longer name is replaced before a name it starts with
// ($__rate_interval before $__range, $nodes before $node).
func Expand(s string, vals map[string]string) string {
	names := make([]string, 0, len(vals))
	for n := range vals {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return len(names[i]) > len(names[j]) })
	for _, n := range names {
		s = strings.ReplaceAll(s, "${"+n+"}", vals[n])
		s = strings.ReplaceAll(s, "$"+n, vals[n])
	}
	return s
}

// SampleValues are values for every variable the dashboards use, for
// checks that need plain PromQL: All (".*") for multi-value variables and
// Grafana's interval variables at their usual size.
var SampleValues = map[string]string{
	"cluster": ".*", "node": ".*", "job": "train/example",
	"__rate_interval": "1m", "__interval": "15s", "__range": "1h",
	"datasource": "prometheus", "infinity": "infinity", "hub": "http://127.0.0.1:9465",
}
