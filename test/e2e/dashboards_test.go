package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ark-gpu/ark/dashboards"
	"github.com/ark-gpu/ark/internal/kubetest"
)

// pendingMetrics are metrics that other work adds to the agent (the eBPF
// flow probe, job discovery) and this branch may not have yet: a query on
// one of them may return nothing; the test says which did. Remove a name
// once its probe is merged.
var pendingMetrics = []string{
	"ark_tcp_retransmits_total", // eBPF flow probe
	"ark_tcp_bytes_total",       // eBPF flow probe
	"ark_tcp_stalled_flows",     // eBPF flow probe
	"ark_discovery_skipped_total",
}

// dashboardPolicy quarantines a node without touching its processes: the
// recording's pids are not this test's.
const dashboardPolicy = `
cooldown: 5m
routes:
  - matchers: ['fault_class="PersistentXidError"']
    class: PersistentXidError
classes:
  PersistentXidError:
    steps:
      - type: taint
      - type: condition
      - type: event
`

// TestEveryDashboardQueryReturnsData: a real Prometheus, loaded with
// alerts/, scrapes four agents (NVML mock, kmsg from a file, the XID 79
// incident replayed by an exec probe) and a hub with remediation on a real
// control plane. Every PromQL target of every dashboard, and every
// variable's query, must return data; the Node Graph and why tables of the
// Job dashboard must find their fields in the hub's answers.
func TestEveryDashboardQueryReturnsData(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Prometheus, a Kubernetes control plane, a hub and four agents")
	}
	promBin := toolPath(t, "../../hack/prometheus.sh", "prometheus")
	cp := kubetest.Start(t, kubetest.Options{})
	applyManifest(t, cp.Client, "../../deploy/hub/rbac.yaml")
	kubeconfig := cp.Kubeconfig(t, cp.ServiceAccountConfig(t, "ark-system", "ark-hub-sa"))
	for i := 1; i <= 4; i++ {
		cp.CreateNode(t, fmt.Sprintf("node-%d", i), nil)
	}

	dir := t.TempDir()
	mockBin := filepath.Join(dir, "ark-nvmlmock")
	if out, err := exec.Command("go", "build", "-tags", "nvmlmock", "-o", mockBin, "../../cmd/ark").CombinedOutput(); err != nil {
		t.Fatalf("building ark with the NVML mock: %v\n%s", err, out)
	}
	token := filepath.Join(dir, "token")
	policy := filepath.Join(dir, "policy.yaml")
	for p, b := range map[string]string{token: "s3cret-token\n", policy: dashboardPolicy} {
		if err := os.WriteFile(p, []byte(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	files := splitByHost(t, "../../testdata/scenarios/xid79-4node.jsonl", dir)
	// A storage queue for the Node dashboard, on a rank of node-3.
	now := time.Now().UnixMilli()
	appendFile(t, files["node-3"], fmt.Sprintf(`{"ts":%d,"event_type":"storage.qdepth","entity_id":"storage-nvme0n1","value":"12","pid":3206,"job_id":"train/example"}
{"ts":%d,"event_type":"storage.iops","entity_id":"storage-nvme0n1","value":"1500","pid":3206,"job_id":"train/example"}
`, now, now))

	hubAddr := freePort(t)
	start(t, "hub", "hub", "--web.listen-address", hubAddr, "--token-file", token,
		"--remediation.policy", policy, "--kubeconfig", kubeconfig, "--remediation.audit-file", filepath.Join(dir, "hub-audit.log"),
		"--leader-elect.namespace", "ark-system", "--leader-elect.lease-duration", "3s",
		"--leader-elect.renew-deadline", "2s", "--leader-elect.retry-period", "500ms")
	agentAddrs := map[string]string{}
	kmsg := map[string]string{}
	for node, file := range files {
		cfg := filepath.Join(dir, node+".yaml")
		writeTestFile(t, cfg, fmt.Sprintf(`probes:
  exec:
    programs:
      - name: replay
        command: /bin/sh
        args: ["-c", "cat %s; exec sleep 3600"]
        restart: never
  nvml:
    interval: 1s
`, file))
		kmsg[node] = filepath.Join(dir, node+".kmsg")
		writeTestFile(t, kmsg[node], "")
		agentAddrs[node] = freePort(t)
		cmd := exec.Command(mockBin, "agent", "--node-name", node, "--web.listen-address", agentAddrs[node],
			"--config.file", cfg, "--ipc.socket", filepath.Join(dir, node+".sock"), "--audit.file", filepath.Join(dir, node+".audit"),
			"--hub.url", "http://"+hubAddr, "--hub.token-file", token, "--no-probe.procfs",
			"--path.kmsg", kmsg[node], "--path.sysfs", "../../exporter/fixtures/sys", "--path.pod-resources", filepath.Join(dir, "none.sock"))
		cmd.Env = append(os.Environ(), "ARK_NVML_MOCK_PROCS=6:3206:1073741824")
		startCmd(t, node, cmd)
	}
	promAddr := startPrometheus(t, promBin, dir, hubAddr, agentAddrs)

	eventually(t, 60*time.Second, "the hub names node-3/gpu-6", func() error { return faultyGPUFirst(hubAddr) })
	// Two XID 79 lines a few scrapes apart on node-3's GPU 6 (PCI B7:00),
	// so that the counter rises where Prometheus sees it and the alert goes
	// pending.
	xid := "4,2001,9300000000,-;NVRM: Xid (PCI:0000:b7:00): 79, pid=3206, name=python3, GPU has fallen off the bus.\n"
	appendFile(t, kmsg["node-3"], xid)
	waitScrapes(t, promAddr, 3)
	appendFile(t, kmsg["node-3"], xid)
	// The Alertmanager webhook as Alertmanager posts it, once a replica leads.
	eventually(t, 30*time.Second, "the hub's remediation answers the webhook", func() error {
		code, body, err := postAlert(hubAddr, "s3cret-token", alertPayload("firing", "ArkGPUFellOffBus",
			map[string]string{"node": "node-3", "gpu": "6", "fault_class": "PersistentXidError"}))
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})

	t.Run("node graph frames", func(t *testing.T) { checkNodeGraph(t, hubAddr) })

	type query struct{ where, expr string }
	var queries []query
	for _, d := range dashboards.All {
		b, err := dashboards.JSON(d)
		if err != nil {
			t.Fatal(err)
		}
		targets, err := dashboards.PromTargets(b)
		if err != nil {
			t.Fatal(err)
		}
		for _, tg := range targets {
			queries = append(queries, query{d.File + ": " + tg.Panel + " " + tg.RefID, tg.Expr})
		}
		for _, v := range variableQueries(t, b) {
			queries = append(queries, query{d.File + ": variable " + v[0], v[1]})
		}
	}
	vals := map[string]string{}
	for k, v := range dashboards.SampleValues {
		vals[k] = v
	}
	vals["cluster"], vals["node"] = "lab", "node-3"
	empty := map[string]bool{}
	eventually(t, 120*time.Second, "every dashboard query returns data", func() error {
		// why's latency histogram needs queries in the window.
		_, _ = getWhy(hubAddr)
		var missing []string
		for _, q := range queries {
			if empty[q.where] {
				continue
			}
			n, err := promQuery(promAddr, dashboards.Expand(q.expr, vals))
			if err != nil {
				return fmt.Errorf("%s: %w", q.where, err)
			}
			if n == 0 {
				if pending(q.expr) {
					continue
				}
				missing = append(missing, q.where+": "+q.expr)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("%d of %d queries return nothing:\n%s", len(missing), len(queries), strings.Join(missing, "\n"))
		}
		return nil
	})
	var skipped []string
	for _, q := range queries {
		if n, err := promQuery(promAddr, dashboards.Expand(q.expr, vals)); err == nil && n == 0 {
			skipped = append(skipped, q.where)
		}
	}
	t.Logf("%d queries return data; %d return nothing because they read a metric not merged yet (%v): %s",
		len(queries)-len(skipped), len(skipped), pendingMetrics, strings.Join(skipped, "; "))
}

func pending(expr string) bool {
	for _, m := range pendingMetrics {
		if strings.Contains(expr, m) {
			return true
		}
	}
	return false
}

var labelValuesRE = regexp.MustCompile(`^label_values\((.+), *(\w+)\)$`)

// variableQueries turns each label_values(selector, label) variable into a
// query for the selector's series by that label (a value is counted only
// when the label is set, see promQuery).
func variableQueries(t *testing.T, dashboardJSON []byte) [][2]string {
	t.Helper()
	var d struct {
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(dashboardJSON, &d); err != nil {
		t.Fatal(err)
	}
	var out [][2]string
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, _ := v.Query.(string)
		m := labelValuesRE.FindStringSubmatch(q)
		if m == nil {
			t.Fatalf("variable %s: query %q is not label_values(selector, label)", v.Name, q)
		}
		out = append(out, [2]string{v.Name, fmt.Sprintf(`count by (%s) (%s)`, m[2], m[1])})
	}
	return out
}

// checkNodeGraph: the hub's /api/v1/graph has every field the Job
// dashboard's Node Graph reads, ids that edges can point at, and a fault.
func checkNodeGraph(t *testing.T, hub string) {
	var g struct {
		Nodes []map[string]any `json:"nodes"`
		Edges []map[string]any `json:"edges"`
	}
	getJSON(t, "http://"+hub+"/api/v1/graph?job_id=train/example", &g)
	if len(g.Nodes) == 0 || len(g.Edges) == 0 {
		t.Fatalf("%d nodes, %d edges", len(g.Nodes), len(g.Edges))
	}
	ids := map[string]bool{}
	seen := map[string]bool{}
	red := false
	for _, n := range g.Nodes {
		for k := range n {
			seen[k] = true
		}
		for _, k := range []string{"id", "title", "mainstat", "color"} {
			if s, _ := n[k].(string); s == "" {
				t.Errorf("node %v: no %s", n, k)
			}
		}
		ids[n["id"].(string)] = true
		red = red || n["color"] == "red"
	}
	for _, c := range dashboards.GraphColumns.Nodes {
		if !seen[c[0]] {
			t.Errorf("no node has the field %q the panel reads", c[0])
		}
	}
	for _, e := range g.Edges {
		for _, c := range dashboards.GraphColumns.Edges {
			if s, _ := e[c[0]].(string); s == "" {
				t.Errorf("edge %v: no %s", e, c[0])
			}
		}
		if !ids[fmt.Sprint(e["source"])] || !ids[fmt.Sprint(e["target"])] {
			t.Errorf("edge %v: source or target is not a node", e)
		}
	}
	if !red {
		t.Error("no node coloured red: the fault is not shown")
	}
	var why struct {
		Causes []map[string]any `json:"causes"`
	}
	getJSON(t, "http://"+hub+"/api/v1/why?job_id=train/example", &why)
	if len(why.Causes) == 0 {
		t.Fatal("why: no cause")
	}
	for _, c := range dashboards.WhyColumns {
		if _, ok := why.Causes[0][c[0]]; !ok {
			t.Errorf("why's first cause has no %q for the table: %v", c[0], why.Causes[0])
		}
	}
}

func getJSON(t *testing.T, u string, v any) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", u, resp.Status, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
}

// startPrometheus runs Prometheus with alerts/ (recording rules every
// second) scraping the hub and the agents every second, each agent with
// the node label a ServiceMonitor would give it; it returns its address.
func startPrometheus(t *testing.T, bin, dir, hub string, agents map[string]string) string {
	t.Helper()
	var rules []string
	for _, f := range []string{"ark-rules.yaml", "ark-alerts.yaml"} {
		b, err := os.ReadFile(filepath.Join("../../alerts", f))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, f)
		writeTestFile(t, p, strings.ReplaceAll(string(b), "interval: 30s", "interval: 1s"))
		rules = append(rules, p)
	}
	nodes := make([]string, 0, len(agents))
	for n := range agents {
		nodes = append(nodes, n)
	}
	sort.Strings(nodes)
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "global: {scrape_interval: 1s, evaluation_interval: 1s}\nrule_files: [%s]\nscrape_configs:\n", strings.Join(rules, ", "))
	fmt.Fprintf(&cfg, "  - job_name: ark-hub\n    static_configs:\n      - targets: [%q]\n        labels: {cluster: lab, node: control-1}\n", hub)
	cfg.WriteString("  - job_name: ark-agent\n    static_configs:\n")
	for _, n := range nodes {
		fmt.Fprintf(&cfg, "      - targets: [%q]\n        labels: {cluster: lab, node: %s}\n", agents[n], n)
	}
	conf := filepath.Join(dir, "prometheus.yml")
	writeTestFile(t, conf, cfg.String())
	addr := freePort(t)
	startCmd(t, "prometheus", exec.Command(bin, "--config.file="+conf, "--storage.tsdb.path="+filepath.Join(dir, "tsdb"),
		"--web.listen-address="+addr, "--log.level=warn"))
	eventually(t, 60*time.Second, "Prometheus scrapes every target", func() error {
		n, err := promQuery(addr, `up == 1`)
		if err != nil {
			return err
		}
		if n != len(agents)+1 {
			return fmt.Errorf("%d of %d targets up", n, len(agents)+1)
		}
		return nil
	})
	return addr
}

// waitScrapes waits until Prometheus has scraped the agents n more times.
func waitScrapes(t *testing.T, prom string, n int) {
	t.Helper()
	count := func() (float64, error) {
		v, err := promScalar(prom, `min(count_over_time(up{job="ark-agent"}[1h]))`)
		return v, err
	}
	first, err := count()
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "more scrapes", func() error {
		v, err := count()
		if err != nil {
			return err
		}
		if v < first+float64(n) {
			return fmt.Errorf("%v scrapes, want %v", v, first+float64(n))
		}
		return nil
	})
}

type promResult struct {
	Status string `json:"status"`
	Error  string `json:"error"`
	Data   struct {
		Result []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		} `json:"result"`
	} `json:"data"`
}

func promInstant(addr, expr string) (promResult, error) {
	var r promResult
	resp, err := http.Get("http://" + addr + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return r, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("%s: %s", resp.Status, b)
	}
	if r.Status != "success" {
		return r, fmt.Errorf("query %q: %s", expr, r.Error)
	}
	return r, nil
}

// promQuery returns how many series an instant query returns; for a
// "count by (label) (...)" query, only the series where label is set.
func promQuery(addr, expr string) (int, error) {
	r, err := promInstant(addr, expr)
	if err != nil {
		return 0, err
	}
	by := countByRE.FindStringSubmatch(expr)
	n := 0
	for _, s := range r.Data.Result {
		if by == nil || s.Metric[by[1]] != "" {
			n++
		}
	}
	return n, nil
}

var countByRE = regexp.MustCompile(`^count by \((\w+)\) `)

func promScalar(addr, expr string) (float64, error) {
	r, err := promInstant(addr, expr)
	if err != nil {
		return 0, err
	}
	if len(r.Data.Result) == 0 {
		return 0, nil
	}
	var v float64
	_, err = fmt.Sscan(fmt.Sprint(r.Data.Result[0].Value[1]), &v)
	return v, err
}

func writeTestFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func appendFile(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

func toolPath(t *testing.T, script string, args ...string) string {
	t.Helper()
	out, err := exec.Command(script, args...).Output()
	if err != nil {
		t.Fatalf("%s %v: %v", script, args, err)
	}
	return strings.TrimSpace(string(out))
}
