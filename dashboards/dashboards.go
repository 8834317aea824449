// Package dashboards builds Ark's Grafana dashboards with the Grafana
// Foundation SDK. The JSON committed beside this file is what Grafana
// imports; `make dashboards` regenerates it and the package's tests check
// that it matches, that it is valid for its schema version and that every
// PromQL target parses. A test under test/e2e checks that every query
// returns data from a Prometheus scraping real agents and a hub.
package dashboards

import (
	"encoding/json"
	"fmt"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/heatmap"
	"github.com/grafana/grafana-foundation-sdk/go/nodegraph"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/table"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// Dashboard is one generated dashboard and the file it is kept in.
type Dashboard struct {
	File  string // e.g. ark-cluster.json
	Build func() *dashboard.DashboardBuilder
}

// All lists Ark's dashboards.
var All = []Dashboard{
	{"ark-cluster.json", Cluster},
	{"ark-node.json", Node},
	{"ark-job.json", Job},
	{"ark-self.json", Self},
}

// JSON renders d as Grafana imports it (indented, with a final newline).
func JSON(d Dashboard) ([]byte, error) {
	built, err := d.Build().Build()
	if err != nil {
		return nil, fmt.Errorf("building %s: %w", d.File, err)
	}
	b, err := json.MarshalIndent(built, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding %s: %w", d.File, err)
	}
	return append(b, '\n'), nil
}

// Filters shared by the targets.
const (
	sel     = `cluster=~"$cluster", node=~"$node"`
	selJob  = `cluster=~"$cluster", job_id="$job"`
	selHub  = `cluster=~"$cluster", job="ark-hub"`
	selAll  = `cluster=~"$cluster"`
	perStep = "[$__rate_interval]"
)

func ts(title, description, unit string) *timeseries.PanelBuilder {
	return timeseries.NewPanelBuilder().Title(title).Description(description).Unit(unit).
		Datasource(promDS).Span(12).Height(8).FillOpacity(10).
		Legend(common.NewVizLegendOptionsBuilder().DisplayMode(common.LegendDisplayModeTable).
			Placement(common.LegendPlacementRight).ShowLegend(true).Calcs([]string{"lastNotNull", "max"}))
}

func single(title, description, unit string) *stat.PanelBuilder {
	return stat.NewPanelBuilder().Title(title).Description(description).Unit(unit).
		Datasource(promDS).Span(6).Height(4).ColorMode(common.BigValueColorModeBackground).
		GraphMode(common.BigValueGraphModeArea).
		ReduceOptions(common.NewReduceDataOptionsBuilder().Calcs([]string{"lastNotNull"}))
}

// Cluster answers: which nodes and GPUs are sick, which jobs are stuck,
// and what remediation did about it.
func Cluster() *dashboard.DashboardBuilder {
	return base("ark-cluster", "Ark / Cluster",
		"Which nodes' GPUs are failing, which jobs are stalled, and what Ark's remediation did.", "cluster").
		WithVariable(nodeVar(true)).
		WithRow(dashboard.NewRowBuilder("Hardware")).
		WithPanel(heatmap.NewPanelBuilder().Title("GPU faults by node").
			Description("Faults on each node's GPUs over the last 15 minutes (recording rule node_gpu:ark_gpu_faults:sum15m): XIDs the catalog does not say to ignore, double-bit ECC errors, failed row remaps, NVLinks down. 0 is healthy.").
			Datasource(promDS).Span(24).Height(9).Unit("short").Calculate(false).
			Thresholds(thresholds("green", 1, "red")).
			Color(heatmap.NewHeatmapColorOptionsBuilder().Mode(heatmap.HeatmapColorModeScheme).Scheme("RdYlGn").Reverse(true).Exponent(0.5).Steps(64).Fill("dark-orange")).
			WithTarget(query(`sum by (node) (node_gpu:ark_gpu_faults:sum15m{`+sel+`})`, "{{node}}"))).
		WithPanel(ts("XIDs by node and code", "NVIDIA XID errors per interval, by node and XID code (ark_xid_errors_total, repeats folded by the agent's de-duplication included).", "short").
			Thresholds(thresholds("green", 1, "red")).
			WithTarget(query(`sum by (node, xid) (increase(ark_xid_errors_total{`+sel+`}`+perStep+`))`, "{{node}} XID {{xid}}"))).
		WithPanel(ts("Stalled flows", "TCP flows with data to send and no progress (zero window or nothing acknowledged), by node and peer: a stuck rank on the peer's side, usually.", "short").
			Thresholds(thresholds("green", 1, "orange")).
			WithTarget(query(`sum by (node, peer) (ark_tcp_stalled_flows{`+sel+`})`, "{{node}} → {{peer}}"))).
		WithRow(dashboard.NewRowBuilder("Jobs")).
		WithPanel(single("Jobs stalled", "Jobs whose busiest rank uses less than 1% of its GPU (recording rule job_id:ark_rank_utilization_percent:max); 0 while every job runs, no data when no job is tracked.", "short").
			Thresholds(thresholds("green", 1, "red")).
			WithTarget(instant(`count(job_id:ark_rank_utilization_percent:max{`+selAll+`} < 1) or 0 * count(job_id:ark_rank_utilization_percent:max{`+selAll+`})`, ""))).
		WithPanel(single("Jobs running", "Jobs with at least one rank tracked by an agent.", "short").
			Thresholds(thresholds("blue")).
			WithTarget(instant(`count(job_id:ark_rank_utilization_percent:max{`+selAll+`})`, ""))).
		WithPanel(single("Remediation leader", "Hub replicas holding the remediation Lease: 1 when remediation is on and healthy, 0 when no replica acts.", "short").
			Thresholds(thresholds("red", 1, "green", 2, "red")).
			WithTarget(instant(`sum(ark_remediation_leader{`+selHub+`})`, ""))).
		WithPanel(single("Agents up", "Agents Prometheus scrapes successfully, of all it tries.", "short").
			Thresholds(thresholds("blue")).
			WithTarget(instant(`sum(up{job="ark-agent", `+sel+`})`, ""))).
		WithRow(dashboard.NewRowBuilder("Remediation")).
		WithPanel(ts("Remediation actions", "Steps the hub's remediator took, by fault class, action (taint, condition, event, agent_action, evict) and result (success, partial_failure, failure, dry_run).", "short").
			Thresholds(thresholds("green")).
			WithTarget(query(`sum by (class, action, result) (increase(ark_remediation_actions_total{`+selHub+`}`+perStep+`))`, "{{class}} {{action}} {{result}}"))).
		WithPanel(ts("Alerts by outcome (circuit breaker)", "Alertmanager alerts the hub handled, by outcome: remediated, kept, untainted, or refused — cooldown, breaker (the circuit breaker is open: too many nodes tainted), ignored, rejected, failed.", "short").
			Thresholds(thresholds("green")).
			OverrideByName("breaker", []dashboard.DynamicConfigValue{{Id: "color", Value: map[string]any{"mode": "fixed", "fixedColor": "red"}}}).
			WithTarget(query(`sum by (outcome) (increase(ark_remediation_alerts_total{`+selHub+`}`+perStep+`))`, "{{outcome}}")))
}

// Node answers: what is wrong with this node's GPUs, network and storage,
// and has Ark quarantined it.
func Node() *dashboard.DashboardBuilder {
	gpu := "GPU {{gpu}}"
	return base("ark-node", "Ark / Node",
		"One node's GPUs, NICs and storage as Ark's agent sees them, and the hardware-fault alerts that quarantine it.", "node").
		WithVariable(nodeVar(false)).
		WithRow(dashboard.NewRowBuilder("GPUs")).
		WithPanel(ts("GPU utilisation", "Per GPU utilisation over the driver's last sample period (DCGM_FI_DEV_GPU_UTIL).", "percent").
			Min(0).Max(100).Thresholds(thresholds("red", 1, "green")).
			WithTarget(query(`max by (gpu) (ark_gpu_utilization_percent{`+sel+`})`, gpu))).
		WithPanel(ts("GPU memory used", "Frame buffer memory in use per GPU, reserved memory included.", "bytes").
			Min(0).Thresholds(thresholds("green")).
			WithTarget(query(`max by (gpu) (ark_gpu_memory_used_bytes{`+sel+`})`, gpu))).
		WithPanel(ts("GPU temperature", "GPU core temperature; above 85 °C most GPUs throttle their clocks.", "celsius").
			Thresholds(thresholds("green", 80, "orange", 88, "red")).
			WithTarget(query(`max by (gpu) (ark_gpu_temperature_celsius{`+sel+`})`, gpu))).
		WithPanel(ts("GPU power", "Power drawn by each GPU board.", "watt").
			Min(0).Thresholds(thresholds("green")).
			WithTarget(query(`max by (gpu) (ark_gpu_power_watts{`+sel+`})`, gpu))).
		WithPanel(ts("ECC errors", "ECC errors per interval since the driver loaded, by GPU and type (single: corrected, double: uncorrectable, the process using the memory was killed).", "short").
			Thresholds(thresholds("green", 1, "red")).
			WithTarget(query(`sum by (gpu, type) (increase(ark_gpu_ecc_errors_total{scope="volatile", `+sel+`}`+perStep+`))`, "GPU {{gpu}} {{type}}"))).
		WithPanel(ts("Row remaps", "Remapped memory rows (correctable, uncorrectable) and whether a remap is pending or has failed (1): a failure means the GPU must be replaced.", "short").
			Thresholds(thresholds("green", 1, "orange")).
			WithTarget(query(`max by (gpu, kind) (ark_gpu_remapped_rows{`+sel+`})`, "GPU {{gpu}} {{kind}}"))).
		WithPanel(ts("XIDs", "NVIDIA XID errors per interval by GPU and code, with the catalog's immediate action.", "short").
			Thresholds(thresholds("green", 1, "red")).
			WithTarget(query(`sum by (gpu, xid, action) (increase(ark_xid_errors_total{`+sel+`}`+perStep+`))`, "GPU {{gpu}} XID {{xid}} ({{action}})"))).
		WithPanel(ts("NVLinks down", "NVLinks of each GPU that are not active.", "short").
			Min(0).Thresholds(thresholds("green", 1, "red")).
			WithTarget(query(`sum by (gpu) (1 - ark_gpu_nvlink_up{`+sel+`})`, gpu))).
		WithRow(dashboard.NewRowBuilder("Network")).
		WithPanel(ts("TCP retransmits by peer", "Segments retransmitted per second toward each peer (eBPF flow probe): one peer standing out is a sick path or peer.", "pps").
			Thresholds(thresholds("green", 50, "red")).
			WithTarget(query(`sum by (peer) (rate(ark_tcp_retransmits_total{`+sel+`}`+perStep+`))`, "{{peer}}"))).
		WithPanel(ts("TCP throughput by peer", "Bytes per second to and from each peer (eBPF flow probe).", "Bps").
			Thresholds(thresholds("green")).
			WithTarget(query(`sum by (peer, direction) (rate(ark_tcp_bytes_total{`+sel+`}`+perStep+`))`, "{{peer}} {{direction}}"))).
		WithPanel(ts("Stalled flows by peer", "Flows toward each peer with data to send and no progress.", "short").
			Thresholds(thresholds("green", 1, "orange")).
			WithTarget(query(`sum by (peer) (ark_tcp_stalled_flows{`+sel+`})`, "{{peer}}"))).
		WithRow(dashboard.NewRowBuilder("Storage and quarantine")).
		WithPanel(ts("Storage queue depth", "Requests queued on each storage device used by a tracked process; a sustained high queue stalls checkpoints.", "short").
			Thresholds(thresholds("green", 32, "orange", 64, "red")).
			WithTarget(query(`max by (resource) (ark_process_resource_usage{kind="storage.qdepth", `+sel+`})`, "{{resource}}"))).
		WithPanel(table.NewPanelBuilder().Title("Hardware-fault alerts (taint and condition)").
			Description("Alerts on this node that carry a fault_class: the ones the hub's remediation policy acts on. While one fires, the node has the taint ark.dev/hardware-fault=<class>:NoSchedule and the ArkHardwareFault condition (unless remediation runs in dry-run).").
			Datasource(promDS).Span(12).Height(8).Unit("short").Thresholds(thresholds("orange")).Footer(noFooter()).
			WithTarget(instant(`max by (alertname, fault_class, alertstate, gpu) (ALERTS{fault_class!="", `+sel+`})`, "").Format(prometheus.PromQueryFormatTable)))
}

// GraphColumns are the fields of the hub's /api/v1/graph frames that the
// Node Graph panel reads (Grafana's node graph data frame fields).
var GraphColumns = struct{ Nodes, Edges [][2]string }{
	Nodes: [][2]string{{"id", "string"}, {"title", "string"}, {"subtitle", "string"}, {"mainstat", "string"},
		{"secondarystat", "string"}, {"color", "string"}, {"detail__kind", "string"}},
	Edges: [][2]string{{"id", "string"}, {"source", "string"}, {"target", "string"}, {"mainstat", "string"}},
}

// WhyColumns are the fields of /api/v1/why's causes the summary table shows.
var WhyColumns = [][2]string{{"node_id", "string"}, {"entity_id", "string"}, {"summary", "string"},
	{"severity", "string"}, {"affected_ranks", "number"}}

// Job answers: is this job making progress, and if not, why.
func Job() *dashboard.DashboardBuilder {
	return base("ark-job", "Ark / Job",
		"One training job: its ranks' utilisation, how many are stalled, and the causal graph from the hub that says why.", "job").
		WithVariable(jobVar()).
		WithVariable(dashboard.NewDatasourceVariableBuilder("infinity").Label("Hub data source").Type(InfinityType).
			Description("An Infinity data source allowed to reach the hub (its allowed hosts include the hub's URL).")).
		WithVariable(dashboard.NewTextBoxVariableBuilder("hub").Label("Hub URL").
			Description("The Ark hub's base URL, as the Infinity data source reaches it.").
			DefaultValue(dashboard.StringOrMap{String: cog.ToPtr("http://ark-hub.ark-system.svc:9465")})).
		WithRow(dashboard.NewRowBuilder("Progress")).
		WithPanel(single("Ranks", "Ranks of the job that agents track.", "short").
			Thresholds(thresholds("blue")).
			WithTarget(instant(`count(ark_process_resource_usage{kind="compute.util", `+selJob+`})`, ""))).
		WithPanel(single("Ranks stalled", "Ranks whose GPU is idle (under 1%): when it equals Ranks, the job is stalled.", "short").
			Thresholds(thresholds("green", 1, "red")).
			WithTarget(instant(`sum(job_id:ark_ranks_idle:count{`+selJob+`})`, ""))).
		WithPanel(single("Busiest rank", "Utilisation of the job's busiest rank: under 1% for 10 minutes fires ArkJobStalled.", "percent").
			Thresholds(thresholds("red", 1, "green")).
			WithTarget(instant(`max(job_id:ark_rank_utilization_percent:max{`+selJob+`})`, ""))).
		WithPanel(single("Nodes", "Nodes the job's ranks run on.", "short").
			Thresholds(thresholds("blue")).
			WithTarget(instant(`count(count by (node) (ark_process_resource_usage{`+selJob+`}))`, ""))).
		WithPanel(ts("Rank utilisation", "GPU utilisation of every rank, by node and pid: the ranks that stop first point at the cause.", "percent").
			Min(0).Max(100).Thresholds(thresholds("red", 1, "green")).
			WithTarget(query(`max by (node, pid) (ark_process_resource_usage{kind="compute.util", `+selJob+`})`, "{{node}} pid {{pid}}"))).
		WithPanel(ts("Rank network throughput", "Network throughput of every rank: a collective that stalls drops to zero everywhere at once.", "Bps").
			Min(0).Thresholds(thresholds("green")).
			WithTarget(query(`sum by (node, pid) (ark_process_resource_usage{kind="transport.bw", `+selJob+`})`, "{{node}} pid {{pid}}"))).
		WithRow(dashboard.NewRowBuilder("Why")).
		WithPanel(nodegraph.NewPanelBuilder().Title("Causal graph").
			Description("The job's ranks, the resources they use or wait on across nodes, and the faults the hub ranks as root causes (GET /api/v1/graph?job_id=…). Red: an active fault and what it blocks; orange: waiting; grey: a host whose agent is gone.").
			Datasource(infinityDS).Span(16).Height(16).
			WithTarget(infinityQuery("nodes", `/api/v1/graph?job_id=${job}`, "nodes", "node-graph-nodes", GraphColumns.Nodes)).
			WithTarget(infinityQuery("edges", `/api/v1/graph?job_id=${job}`, "edges", "node-graph-edges", GraphColumns.Edges))).
		WithPanel(table.NewPanelBuilder().Title("Why: root causes").
			Description("The hub's ranked root causes for the job (GET /api/v1/why?job_id=…), first the most likely: the node, the device, what happened and how many ranks it holds up.").
			Datasource(infinityDS).Span(8).Height(16).Unit("short").Thresholds(thresholds("orange")).Footer(noFooter()).
			WithTarget(infinityQuery("why", `/api/v1/why?job_id=${job}`, "causes", "table", WhyColumns)))
}

// Self answers: is Ark itself healthy — ingesting, not dropping, connected,
// fast, and its webhook answering.
func Self() *dashboard.DashboardBuilder {
	return base("ark-self", "Ark / Ark itself",
		"Ark's own health: events ingested and lost, probes, agents connected to the hub, why latency and the remediation webhook.", "self").
		WithVariable(nodeVar(true)).
		WithRow(dashboard.NewRowBuilder("Agents")).
		WithPanel(ts("Events per second", "Events the agents accepted from their probes, by event type.", "ops").
			Thresholds(thresholds("green")).
			WithTarget(query(`sum by (event_type) (rate(ark_events_processed_total{`+sel+`}`+perStep+`))`, "{{event_type}}"))).
		WithPanel(ts("Events rejected and dropped", "Input the agents could not use, by reason (not_json, line_too_long, unknown_event_type, missing_field, invalid_field), and events a slow bus subscriber lost.", "ops").
			Thresholds(thresholds("green", 0.1, "orange")).
			WithTarget(query(`sum by (reason) (rate(ark_events_rejected_total{`+sel+`}`+perStep+`))`, "rejected {{reason}}")).
			WithTarget(query(`sum by (subscriber) (rate(ark_events_dropped_total{`+sel+`}`+perStep+`))`, "dropped by {{subscriber}}"))).
		WithPanel(ts("Probe success", "Whether each probe's last poll succeeded (1) or failed (0), by node.", "short").
			Min(0).Max(1).Thresholds(thresholds("red", 1, "green")).
			WithTarget(query(`min by (node, probe) (ark_probe_success{`+sel+`})`, "{{node}} {{probe}}"))).
		WithPanel(ts("Probe duration", "How long each probe's last poll (or state change) took, by node.", "s").
			Thresholds(thresholds("green", 1, "orange")).
			WithTarget(query(`max by (node, probe) (ark_probe_duration_seconds{`+sel+`})`, "{{node}} {{probe}}"))).
		WithPanel(ts("Discovery skipped", "Processes job discovery skipped, by reason.", "ops").
			Thresholds(thresholds("green")).
			WithTarget(query(`sum by (reason) (rate(ark_discovery_skipped_total{`+sel+`}`+perStep+`))`, "{{reason}}"))).
		WithRow(dashboard.NewRowBuilder("Hub")).
		WithPanel(single("Agents connected", "Hosts connected to the hub over the agent link.", "short").
			Thresholds(thresholds("blue")).
			WithTarget(instant(`sum(ark_hub_agents{state="connected", `+selHub+`})`, ""))).
		WithPanel(single("Agents stale", "Hosts the hub knows whose agent has gone: answers about their jobs say so.", "short").
			Thresholds(thresholds("green", 1, "orange")).
			WithTarget(instant(`sum(ark_hub_agents{state="stale", `+selHub+`})`, ""))).
		WithPanel(single("Hub events per second", "Events the hub applied to the global graph, from the agent link and OTLP.", "ops").
			Thresholds(thresholds("blue")).
			WithTarget(instant(`sum(rate(ark_hub_events_received_total{`+selHub+`}[5m]))`, ""))).
		WithPanel(single("Why p99", "99th percentile time to answer a why query on the global graph.", "s").
			Thresholds(thresholds("green", 0.005, "orange", 0.05, "red")).
			WithTarget(instant(`histogram_quantile(0.99, sum by (le) (rate(ark_hub_why_duration_seconds_bucket{`+selHub+`}[5m])))`, ""))).
		WithPanel(ts("Why latency", "Time to answer one why query on the global graph, stale-host check included (50th and 99th percentiles).", "s").
			Thresholds(thresholds("green", 0.005, "orange")).
			WithTarget(query(`histogram_quantile(0.5, sum by (le) (rate(ark_hub_why_duration_seconds_bucket{`+selHub+`}`+perStep+`)))`, "p50")).
			WithTarget(query(`histogram_quantile(0.99, sum by (le) (rate(ark_hub_why_duration_seconds_bucket{`+selHub+`}`+perStep+`)))`, "p99"))).
		WithPanel(ts("Remediation webhook responses", "Alertmanager webhook requests by HTTP status: 200 handled, 4xx bad alerts (no node label, unknown node), 503 from a replica that does not lead.", "reqps").
			Thresholds(thresholds("green")).
			WithTarget(query(`sum by (code) (rate(ark_remediation_webhook_requests_total{`+selHub+`}`+perStep+`))`, "{{code}}"))).
		WithPanel(ts("Hub rejects", "Events and OTLP requests the hub refused, by source and reason.", "ops").
			Thresholds(thresholds("green", 0.1, "orange")).
			WithTarget(query(`sum by (source, reason) (rate(ark_hub_events_rejected_total{`+selHub+`}`+perStep+`))`, "{{source}} {{reason}}")))
}
