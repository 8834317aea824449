package dashboards

import (
	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/variants"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
)

// promDS is the Prometheus data source every PromQL panel reads: the
// dashboard's datasource variable.
var promDS = common.DataSourceRef{Type: cog.ToPtr("prometheus"), Uid: cog.ToPtr("${datasource}")}

// infinityDS is the Infinity (JSON) data source that reads the hub's API.
var infinityDS = common.DataSourceRef{Type: cog.ToPtr(InfinityType), Uid: cog.ToPtr("${infinity}")}

// InfinityType is the plugin id of Grafana's Infinity data source.
const InfinityType = "yesoreyeram-infinity-datasource"

// query is one PromQL target; legend may be empty.
func query(expr, legend string) *prometheus.DataqueryBuilder {
	q := prometheus.NewDataqueryBuilder().Expr(expr).Datasource(promDS)
	if legend != "" {
		q = q.LegendFormat(legend)
	}
	return q
}

// instant is a PromQL target evaluated once, for stat panels and tables.
func instant(expr, legend string) *prometheus.DataqueryBuilder {
	return query(expr, legend).Instant()
}

// thresholds are absolute steps: base colour, then (value, colour) pairs.
func thresholds(base string, steps ...any) *dashboard.ThresholdsConfigBuilder {
	ts := []dashboard.Threshold{{Color: base}}
	for i := 0; i+1 < len(steps); i += 2 {
		ts = append(ts, dashboard.Threshold{Value: cog.ToPtr(toFloat(steps[i])), Color: steps[i+1].(string)})
	}
	return dashboard.NewThresholdsConfigBuilder().Mode(dashboard.ThresholdsModeAbsolute).Steps(ts)
}

func toFloat(v any) float64 {
	switch x := v.(type) {
	case int:
		return float64(x)
	case float64:
		return x
	}
	panic("threshold value must be a number")
}

// infinityQuery is an Infinity target that reads a JSON array from the hub:
// url relative to the $hub variable, rows under root, and the columns the
// panel needs (selector in the JSON, and its text or number type).
func infinityQuery(refID, url, root, format string, columns [][2]string) cog.Builder[variants.Dataquery] {
	cols := make([]any, 0, len(columns))
	for _, c := range columns {
		cols = append(cols, map[string]any{"selector": c[0], "text": c[0], "type": c[1]})
	}
	return variants.NewUnknownDataqueryBuilderFromObject(variants.UnknownDataquery{
		"refId":         refID,
		"datasource":    map[string]any{"type": InfinityType, "uid": "${infinity}"},
		"type":          "json",
		"source":        "url",
		"parser":        "backend",
		"format":        format,
		"url":           "${hub}" + url,
		"url_options":   map[string]any{"method": "GET"},
		"root_selector": root,
		"columns":       cols,
	})
}

// Template variables. Every PromQL target filters on cluster and node
// (or job) with =~, so "All" is ".*".
func datasourceVar() *dashboard.DatasourceVariableBuilder {
	return dashboard.NewDatasourceVariableBuilder("datasource").Label("Data source").Type("prometheus").
		Description("The Prometheus that scrapes Ark's agents and hub.")
}

func labelVar(name, label, query, description string, all bool) *dashboard.QueryVariableBuilder {
	v := dashboard.NewQueryVariableBuilder(name).Label(label).Description(description).
		Query(dashboard.StringOrMap{String: cog.ToPtr(query)}).Definition(query).
		Datasource(promDS).Refresh(dashboard.VariableRefreshOnTimeRangeChanged).Sort(dashboard.VariableSortAlphabeticalAsc)
	if all {
		v = v.Multi(true).IncludeAll(true).AllValue(".*")
	}
	return v
}

func clusterVar() *dashboard.QueryVariableBuilder {
	return labelVar("cluster", "Cluster", `label_values(up{job=~"ark-agent|ark-hub"}, cluster)`,
		"The cluster label Prometheus adds to every target (external or target label); All when there is none.", true)
}

func nodeVar(all bool) *dashboard.QueryVariableBuilder {
	return labelVar("node", "Node", `label_values(up{job="ark-agent", cluster=~"$cluster"}, node)`,
		"The Kubernetes node of an agent (the ServiceMonitor's node label).", all)
}

func jobVar() *dashboard.QueryVariableBuilder {
	return labelVar("job", "Job", `label_values(ark_process_resource_usage{cluster=~"$cluster", job_id!=""}, job_id)`,
		"A training job, as the agents discovered it (Kubernetes namespace/owner, Slurm job id).", false)
}

func base(uid, title, description string, tags ...string) *dashboard.DashboardBuilder {
	return dashboard.NewDashboardBuilder(title).Uid(uid).Description(description).
		Tags(append([]string{"ark"}, tags...)).Editable().Refresh("30s").Time("now-1h", "now").
		Timezone("browser").Tooltip(dashboard.DashboardCursorSyncCrosshair).
		Link(dashboard.NewDashboardLinkBuilder("Ark").Type(dashboard.DashboardLinkTypeDashboards).
			Tags([]string{"ark"}).AsDropdown(true).IncludeVars(true).KeepTime(true)).
		WithVariable(datasourceVar()).WithVariable(clusterVar())
}

// noFooter hides a table's footer (the schema requires its reducer list).
func noFooter() *common.TableFooterOptionsBuilder {
	return common.NewTableFooterOptionsBuilder().Show(false).Reducer([]string{"sum"})
}
