package graphsvc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/graph"
	"github.com/ark-gpu/ark/graph/analyze"
	"github.com/ark-gpu/ark/internal/fakeclock"
	"github.com/ark-gpu/ark/link"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	scenarioFile = "../testdata/scenarios/xid79-4node.jsonl"
	scenarioJob  = "train/example"
	testToken    = "s3cret-token"
)

// loadScenario decodes the recording, every line of which is valid.
func loadScenario(tb testing.TB) []event.Event {
	tb.Helper()
	b, err := os.ReadFile(scenarioFile)
	if err != nil {
		tb.Fatal(err)
	}
	d := event.NewDecoder(bytes.NewReader(b))
	var evs []event.Event
	for {
		var ev event.Event
		err := d.Decode(&ev)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			tb.Fatalf("decoding the scenario: %v", err)
		}
		evs = append(evs, ev)
	}
	return evs
}

// byHost splits events by node_id, keeping each host's order, and returns
// the hosts in order of first appearance.
func byHost(evs []event.Event) ([]string, map[string][]event.Event) {
	var hosts []string
	m := map[string][]event.Event{}
	for _, ev := range evs {
		if _, ok := m[ev.NodeID]; !ok {
			hosts = append(hosts, ev.NodeID)
		}
		m[ev.NodeID] = append(m[ev.NodeID], ev)
	}
	return hosts, m
}

// interleave calls fn with chunks of each host's events in turn, as agents
// streaming side by side deliver them.
func interleave(evs []event.Event, chunk int, fn func(node string, batch []event.Event)) {
	hosts, m := byHost(evs)
	for pos := 0; ; pos += chunk {
		sent := false
		for _, h := range hosts {
			if pos >= len(m[h]) {
				continue
			}
			batch := append([]event.Event(nil), m[h][pos:min(pos+chunk, len(m[h]))]...)
			fn(h, batch)
			sent = true
		}
		if !sent {
			return
		}
	}
}

// fakeDispatcher records commands and answers with a fixed result, or
// waits for the context when block is set.
type fakeDispatcher struct {
	mu     sync.Mutex
	cmds   []link.Command
	nodes  []string
	result string
	block  bool
	err    error
	agents []AgentInfo
}

func (f *fakeDispatcher) Dispatch(ctx context.Context, node string, cmd link.Command) (link.Result, error) {
	f.mu.Lock()
	f.cmds = append(f.cmds, cmd)
	f.nodes = append(f.nodes, node)
	f.mu.Unlock()
	if f.err != nil {
		return link.Result{}, f.err
	}
	if f.block {
		<-ctx.Done()
		return link.Result{}, ctx.Err()
	}
	return link.Result{ID: cmd.ID, Node: node, PID: cmd.PID, JobID: cmd.JobID, Action: "reset_gpu",
		Result: f.result, Details: "done by the fake"}, nil
}

func (f *fakeDispatcher) Agents() []AgentInfo { return f.agents }

type testHub struct {
	*Hub
	srv *httptest.Server
	reg *prometheus.Registry
}

func newTestHub(t *testing.T, opts Options) *testHub {
	t.Helper()
	reg := prometheus.NewRegistry()
	opts.Registerer = reg
	if opts.Token == "" {
		opts.Token = testToken
	}
	h, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h.Handler())
	t.Cleanup(srv.Close)
	return &testHub{Hub: h, srv: srv, reg: reg}
}

// ingestScenario feeds the recording through Ingest, host by host in
// interleaved chunks.
func (th *testHub) ingestScenario(t *testing.T) {
	t.Helper()
	interleave(loadScenario(t), 128, th.Ingest)
}

// get fetches path and decodes the JSON body into v (when not nil),
// returning the status code.
func (th *testHub) get(t *testing.T, path string, v any) int {
	t.Helper()
	resp, err := http.Get(th.srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); path != "/metrics" && ct != "application/json" {
		t.Errorf("GET %s: Content-Type %q, want application/json", path, ct)
	}
	if v != nil {
		if err := json.Unmarshal(body, v); err != nil {
			t.Fatalf("GET %s: decoding %q: %v", path, body, err)
		}
	}
	return resp.StatusCode
}

func topCause(t *testing.T, res WhyResponse) graph.Cause {
	t.Helper()
	if !res.Found || len(res.Causes) == 0 {
		t.Fatalf("no cause: found=%v ranks=%d", res.Found, res.Ranks)
	}
	return res.Causes[0]
}

func TestWhyNamesTheFaultyGPUFirstWhateverOrderTheHostsArriveIn(t *testing.T) {
	for _, c := range []struct {
		name  string
		chunk int
	}{
		{"agents streaming side by side", 128},
		{"one event per host in turn", 1},
		{"one host after another", 1 << 20},
	} {
		t.Run(c.name, func(t *testing.T) {
			th := newTestHub(t, Options{})
			interleave(loadScenario(t), c.chunk, th.Ingest)
			checkWhyMatchesAnalyze(t, th)
		})
	}
}

func checkWhyMatchesAnalyze(t *testing.T, th *testHub) {
	t.Helper()
	var res WhyResponse
	if code := th.get(t, "/api/v1/why?job_id="+scenarioJob, &res); code != http.StatusOK {
		t.Fatalf("status %d", code)
	}
	top := topCause(t, res)
	if top.NodeID != "node-3" || top.EntityID != "gpu-6" || top.XID != 79 {
		t.Fatalf("top cause %s/%s xid %d (%s), want node-3/gpu-6 xid 79", top.NodeID, top.EntityID, top.XID, top.Summary)
	}
	if res.Ranks != 32 || top.AffectedRanks != 32 {
		t.Errorf("ranks %d, affected %d: want all 32 ranks to reach the GPU", res.Ranks, top.AffectedRanks)
	}
	if res.StaleHosts == nil || len(res.StaleHosts) != 0 {
		t.Errorf("stale_hosts = %#v, want [] (every host just sent)", res.StaleHosts)
	}

	// The same cause shape as `ark analyze -o json` on the whole recording.
	f, err := os.Open(scenarioFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rep, err := analyze.Run(f, analyze.Options{Target: graph.Target{JobID: scenarioJob}})
	if err != nil {
		t.Fatal(err)
	}
	want := rep.Causes[0]
	if top.NodeID != want.NodeID || top.EntityID != want.EntityID || top.Summary != want.Summary ||
		len(top.Chain) != len(want.Chain) {
		t.Errorf("hub's top cause differs from analyze's:\nhub:     %+v\nanalyze: %+v", top, want)
	}
}

// The why answer carries the hub's own time for it (Server-Timing), which
// a client compares with what it saw; an error answer carries none.
func TestWhyAnswerCarriesTheHubsOwnTime(t *testing.T) {
	th := newTestHub(t, Options{})
	th.ingestScenario(t)
	start := time.Now()
	resp, err := http.Get(th.srv.URL + "/api/v1/why?job_id=" + scenarioJob)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	seen := time.Since(start)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	st := resp.Header.Get("Server-Timing")
	ms, ok := strings.CutPrefix(st, "why;dur=")
	if !ok {
		t.Fatalf("Server-Timing %q, want why;dur=<ms>", st)
	}
	d, err := strconv.ParseFloat(ms, 64)
	if err != nil {
		t.Fatalf("Server-Timing %q: %v", st, err)
	}
	if d <= 0 || time.Duration(d*float64(time.Millisecond)) > seen {
		t.Errorf("Server-Timing says %.3f ms; the client saw %s in all", d, seen)
	}

	resp, err = http.Get(th.srv.URL + "/api/v1/why?job_id=nope")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || resp.Header.Get("Server-Timing") != "" {
		t.Errorf("unknown job: status %d, Server-Timing %q; want 404 without one", resp.StatusCode, resp.Header.Get("Server-Timing"))
	}
}

func TestWhyTargetsAndBadQueries(t *testing.T) {
	th := newTestHub(t, Options{})
	th.ingestScenario(t)
	cases := []struct {
		name, query string
		code        int
		errHas      string
	}{
		{"job", "job_id=" + scenarioJob, http.StatusOK, ""},
		{"pid on its host", "node=node-3&pid=3206", http.StatusOK, ""},
		{"host", "node=node-3", http.StatusOK, ""},
		{"no target", "", http.StatusBadRequest, "missing target"},
		{"pid without node", "pid=3206", http.StatusBadRequest, "pid needs node"},
		{"bad pid", "node=node-3&pid=abc", http.StatusBadRequest, "invalid pid"},
		{"job and node", "job_id=x&node=node-3", http.StatusBadRequest, "not job_id with node"},
		{"bad at", "job_id=x&at=yesterday", http.StatusBadRequest, "invalid at"},
		{"unknown job", "job_id=nope", http.StatusNotFound, "job nope not found"},
		{"unknown pid", "node=node-3&pid=99", http.StatusNotFound, "not found"},
		{"unknown host", "node=node-99", http.StatusNotFound, "not found"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var body map[string]any
			code := th.get(t, "/api/v1/why?"+c.query, &body)
			if code != c.code {
				t.Fatalf("status %d, want %d (%v)", code, c.code, body)
			}
			if c.errHas != "" {
				msg, _ := body["error"].(string)
				if !strings.Contains(msg, c.errHas) {
					t.Errorf("error %q, want it to contain %q", msg, c.errHas)
				}
				return
			}
			var res WhyResponse
			th.get(t, "/api/v1/why?"+c.query, &res)
			if top := topCause(t, res); top.NodeID != "node-3" || top.EntityID != "gpu-6" {
				t.Errorf("top cause %s/%s, want node-3/gpu-6", top.NodeID, top.EntityID)
			}
		})
	}
	if n := testutil.CollectAndCount(th.reg, "ark_hub_why_duration_seconds"); n != 1 {
		t.Errorf("why histogram series = %d, want 1", n)
	}
}

func TestPSFiltersByHostJobAndPID(t *testing.T) {
	th := newTestHub(t, Options{})
	th.ingestScenario(t)
	cases := []struct {
		query string
		want  int
	}{
		{"", 32},
		{"?job_id=" + scenarioJob, 32},
		{"?node=node-2", 8},
		{"?node=node-2&job_id=" + scenarioJob, 8},
		{"?job_id=other", 0},
		{"?pid=3206", 1},
	}
	for _, c := range cases {
		var ps PSResponse
		if code := th.get(t, "/api/v1/ps"+c.query, &ps); code != http.StatusOK {
			t.Fatalf("%s: status %d", c.query, code)
		}
		if len(ps.Processes) != c.want {
			t.Errorf("ps%s: %d processes, want %d", c.query, len(ps.Processes), c.want)
		}
		for _, p := range ps.Processes {
			if p.Stale {
				t.Errorf("ps%s: %s/%d stale with every agent sending", c.query, p.Node, p.PID)
			}
			if strings.Contains(c.query, "node=node-2") && p.Node != "node-2" {
				t.Errorf("ps%s returned a process of %s", c.query, p.Node)
			}
		}
	}
	var body map[string]string
	if code := th.get(t, "/api/v1/ps?pid=-1", &body); code != http.StatusBadRequest || body["error"] == "" {
		t.Errorf("bad pid: status %d body %v, want 400 with an error", code, body)
	}
}

func TestJobGraphFramesAreConsistentAndShowTheFault(t *testing.T) {
	th := newTestHub(t, Options{})
	th.ingestScenario(t)
	var ng NodeGraph
	if code := th.get(t, "/api/v1/graph?job_id="+scenarioJob, &ng); code != http.StatusOK {
		t.Fatalf("status %d", code)
	}
	nodes := map[string]GraphNode{}
	for _, n := range ng.Nodes {
		if n.ID == "" || n.Title == "" || n.Color == "" {
			t.Errorf("node with an empty field: %+v", n)
		}
		if _, dup := nodes[n.ID]; dup {
			t.Errorf("duplicate node %s", n.ID)
		}
		nodes[n.ID] = n
	}
	edgeIDs := map[string]bool{}
	crossNode := 0
	for _, e := range ng.Edges {
		if _, ok := nodes[e.Source]; !ok {
			t.Errorf("edge %s: source %s is not a node", e.ID, e.Source)
		}
		if _, ok := nodes[e.Target]; !ok {
			t.Errorf("edge %s: target %s is not a node", e.ID, e.Target)
		}
		if edgeIDs[e.ID] {
			t.Errorf("duplicate edge %s", e.ID)
		}
		edgeIDs[e.ID] = true
		if nodes[e.Source].Kind == "process" && nodes[e.Target].Kind == "process" && hostOf(e.Source) != hostOf(e.Target) {
			crossNode++
		}
	}
	if gpu := nodes["node-3/gpu-6"]; gpu.Color != colorFault {
		t.Errorf("node-3/gpu-6 colour %q, want %q (active fault)", gpu.Color, colorFault)
	}
	faults := 0
	for _, n := range ng.Nodes {
		if n.Kind == "error" && n.Color == colorFault {
			faults++
		}
	}
	if faults == 0 {
		t.Error("no error node painted as an active fault")
	}
	if job := nodes["job/"+scenarioJob]; job.MainStat != "32 ranks" {
		t.Errorf("job node %+v, want mainstat 32 ranks", job)
	}
	if crossNode == 0 {
		t.Error("no cross-node wait edge between ranks of different hosts")
	}
	var body map[string]string
	if code := th.get(t, "/api/v1/graph", &body); code != http.StatusBadRequest {
		t.Errorf("no job_id: status %d, want 400", code)
	}
	if code := th.get(t, "/api/v1/graph?job_id=nope", &body); code != http.StatusNotFound {
		t.Errorf("unknown job: status %d, want 404", code)
	}
}

func postFix(t *testing.T, th *testHub, token, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, th.srv.URL+"/api/v1/fix", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("decoding the fix answer: %v", err)
	}
	return resp.StatusCode, out
}

func TestFixNeedsTheTokenAndReachesTheAgentOfThePID(t *testing.T) {
	fd := &fakeDispatcher{result: "success"}
	th := newTestHub(t, Options{Dispatcher: fd})
	th.ingestScenario(t)
	commands := func(result string) float64 {
		return testutil.ToFloat64(th.m.commands.WithLabelValues(result))
	}

	for _, tok := range []string{"", "wrong", testToken + "x"} {
		code, body := postFix(t, th, tok, `{"pid":3206}`)
		if code != http.StatusUnauthorized || body["error"] == nil {
			t.Errorf("token %q: status %d body %v, want 401 with an error", tok, code, body)
		}
	}
	if got := commands(resultUnauthorized); got != 3 {
		t.Errorf("unauthorized count %v, want 3", got)
	}
	if len(fd.cmds) != 0 {
		t.Fatalf("an unauthorized call reached the agent: %+v", fd.cmds)
	}

	code, body := postFix(t, th, testToken, `{"pid":3206,"job_id":"train/example","dry_run":true,"user":"alice"}`)
	if code != http.StatusOK {
		t.Fatalf("status %d: %v", code, body)
	}
	if len(fd.cmds) != 1 || fd.nodes[0] != "node-3" {
		t.Fatalf("dispatched %+v to %v, want one command to node-3", fd.cmds, fd.nodes)
	}
	cmd := fd.cmds[0]
	if cmd.PID != 3206 || cmd.JobID != scenarioJob || !cmd.DryRun || cmd.User != "alice" || cmd.Intent != "fix" || cmd.ID == "" {
		t.Errorf("command %+v", cmd)
	}
	if body["result"] != "success" || body["node"] != "node-3" || body["id"] != cmd.ID {
		t.Errorf("answer %v, want the agent's result for command %s", body, cmd.ID)
	}
	if got := commands("success"); got != 1 {
		t.Errorf("success count %v, want 1", got)
	}

	// The job is looked up when only the pid is given.
	if code, body := postFix(t, th, testToken, `{"pid":3100}`); code != http.StatusOK || fd.cmds[1].JobID != scenarioJob {
		t.Errorf("pid only: status %d %v, command %+v", code, body, fd.cmds[1])
	}
}

func TestFixAnswersEveryFailureWithAStatusAndACount(t *testing.T) {
	cases := []struct {
		name   string
		fd     *fakeDispatcher
		body   string
		code   int
		result string
	}{
		{"unknown pid", &fakeDispatcher{}, `{"pid":42}`, http.StatusNotFound, resultNotFound},
		{"no pid", &fakeDispatcher{}, `{"node":"node-3"}`, http.StatusBadRequest, resultBadRequest},
		{"not json", &fakeDispatcher{}, `pid=1`, http.StatusBadRequest, resultBadRequest},
		{"unknown field", &fakeDispatcher{}, `{"pid":3206,"force":true}`, http.StatusBadRequest, resultBadRequest},
		{"agent not connected", &fakeDispatcher{err: ErrNotConnected}, `{"pid":3206}`, http.StatusServiceUnavailable, resultUnavailable},
		{"agent silent", &fakeDispatcher{block: true}, `{"node":"node-3","pid":3206}`, http.StatusGatewayTimeout, resultTimeout},
		{"link error", &fakeDispatcher{err: errors.New("socket closed")}, `{"pid":3206}`, http.StatusBadGateway, resultError},
		{"agent failed", &fakeDispatcher{result: "failure"}, `{"pid":3206}`, http.StatusOK, "failure"},
	}
	evs := loadScenario(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			th := newTestHub(t, Options{Dispatcher: c.fd, FixTimeout: 50 * time.Millisecond})
			interleave(evs, 512, th.Ingest)
			code, body := postFix(t, th, testToken, c.body)
			if code != c.code {
				t.Fatalf("status %d (%v), want %d", code, body, c.code)
			}
			if code != http.StatusOK && body["error"] == nil {
				t.Errorf("no error message: %v", body)
			}
			if got := testutil.ToFloat64(th.m.commands.WithLabelValues(c.result)); got != 1 {
				t.Errorf("ark_hub_commands_total{result=%q} = %v, want 1", c.result, got)
			}
		})
	}
}

func TestFixWithoutADispatcherIsUnavailable(t *testing.T) {
	th := newTestHub(t, Options{})
	th.ingestScenario(t)
	if code, body := postFix(t, th, testToken, `{"pid":3206}`); code != http.StatusServiceUnavailable {
		t.Errorf("status %d %v, want 503", code, body)
	}
}

func TestDisconnectedAgentMarksItsHostStale(t *testing.T) {
	fd := &fakeDispatcher{agents: []AgentInfo{{Node: "node-1", Connected: true, Addrs: []string{"10.9.0.1"}}}}
	th := newTestHub(t, Options{Dispatcher: fd})
	for _, n := range []string{"node-1", "node-2", "node-3", "node-4"} {
		th.AgentConnected(n, []string{"10.9.0." + n[len(n)-1:]})
	}
	th.ingestScenario(t)
	th.AgentDisconnected("node-3")

	var ps PSResponse
	th.get(t, "/api/v1/ps?job_id="+scenarioJob, &ps)
	stale := 0
	for _, p := range ps.Processes {
		if p.Stale != (p.Node == "node-3") {
			t.Errorf("%s/%d stale=%v", p.Node, p.PID, p.Stale)
		}
		if p.Stale {
			stale++
		}
	}
	if stale != 8 || len(ps.StaleHosts) != 1 || ps.StaleHosts[0] != "node-3" {
		t.Errorf("%d stale processes, stale_hosts %v; want 8 on node-3", stale, ps.StaleHosts)
	}

	var res WhyResponse
	th.get(t, "/api/v1/why?job_id="+scenarioJob, &res)
	if len(res.StaleHosts) != 1 || res.StaleHosts[0] != "node-3" {
		t.Errorf("why stale_hosts %v, want [node-3]", res.StaleHosts)
	}
	if top := topCause(t, res); top.EntityID != "gpu-6" {
		t.Errorf("the host's graph went with its link: top cause %s", top.EntityID)
	}
	th.get(t, "/api/v1/why?node=node-1", &res)
	if len(res.StaleHosts) != 1 {
		t.Errorf("why node-1 stale_hosts %v, want node-3 which its chain names", res.StaleHosts)
	}

	var agents map[string][]HostInfo
	th.get(t, "/api/v1/agents", &agents)
	if as := agents["agents"]; len(as) != 4 || !as[2].Stale || as[2].Connected || as[0].Stale || as[0].Events == 0 {
		t.Errorf("agents %+v", as)
	}
	if err := testutil.CollectAndCompare(th.m.state, strings.NewReader(`
# HELP ark_hub_agents Hosts the hub knows, by state (connected over the agent link, or stale).
# TYPE ark_hub_agents gauge
ark_hub_agents{state="connected"} 3
ark_hub_agents{state="stale"} 1
`), "ark_hub_agents"); err != nil {
		t.Error(err)
	}

	// A partition: far more hosts stale than the job spans (the job's
	// hosts are then listed once, not asked per stale host). Only the
	// job's own stale host is named.
	for i := range 40 {
		n := fmt.Sprintf("other-%02d", i)
		th.AgentConnected(n, nil)
		th.AgentDisconnected(n)
	}
	th.get(t, "/api/v1/why?job_id="+scenarioJob, &res)
	if len(res.StaleHosts) != 1 || res.StaleHosts[0] != "node-3" {
		t.Errorf("why stale_hosts with 41 stale hosts: %v, want [node-3]", res.StaleHosts)
	}
	if n := len(th.StaleHosts(nil)); n != 41 {
		t.Errorf("%d stale hosts, want 41", n)
	}
	// node-4 runs ranks of the job but no cause names it: it is named
	// because the job runs there.
	th.AgentDisconnected("node-4")
	th.get(t, "/api/v1/why?job_id="+scenarioJob, &res)
	if strings.Join(res.StaleHosts, ",") != "node-3,node-4" {
		t.Errorf("why stale_hosts with node-4 gone too: %v, want [node-3 node-4]", res.StaleHosts)
	}
	th.AgentConnected("node-4", nil)

	th.AgentConnected("node-3", nil)
	if s := th.StaleHosts(nil); slices.Contains(s, "node-3") || len(s) != 40 {
		t.Errorf("stale after node-3 reconnected: %v", s)
	}
}

func TestHostsWithoutALinkGoStaleWhenSilent(t *testing.T) {
	clock := fakeclock.New(time.Unix(1_764_300_000, 0))
	th := newTestHub(t, Options{Now: clock.Now, StaleAfter: time.Minute})
	th.ingestScenario(t)
	if s := th.StaleHosts(nil); len(s) != 0 {
		t.Fatalf("stale at once: %v", s)
	}
	clock.Advance(2 * time.Minute)
	th.Ingest("node-2", []event.Event{{TS: 1764300030000, Type: event.ComputeUtil, EntityID: "gpu-0", PID: 3100, Value: "0"}})
	if s := th.StaleHosts(nil); strings.Join(s, ",") != "node-1,node-3,node-4" {
		t.Errorf("stale %v, want the three silent hosts", s)
	}
}

// Events without a host (OTLP from a resource with no host name) make the
// hub's unnamed host, which goes stale like any silent one but is never
// listed as a stale host of an answer: nothing names it.
func TestWhyNeverListsTheUnnamedHostAsStale(t *testing.T) {
	clock := fakeclock.New(time.Unix(1_764_300_000, 0))
	th := newTestHub(t, Options{Now: clock.Now, StaleAfter: time.Minute})
	th.ingestScenario(t)
	th.apply([]event.Event{{TS: 1764300030000, Type: event.ComputeUtil, EntityID: "gpu-0", Value: "1"}}, sourceOTLP)
	clock.Advance(2 * time.Minute)
	if s := th.StaleHosts(nil); !slices.Contains(s, "") || !slices.Contains(s, "node-3") {
		t.Fatalf("stale %q: want the unnamed host and the silent scenario hosts", s)
	}
	for _, q := range []string{"job_id=" + scenarioJob, "node=node-3"} {
		var res WhyResponse
		th.get(t, "/api/v1/why?"+q, &res)
		if slices.Contains(res.StaleHosts, "") || !slices.Contains(res.StaleHosts, "node-3") {
			t.Errorf("why %s: stale_hosts %q, want node-3 and never the unnamed host", q, res.StaleHosts)
		}
	}
}

func TestIngestSpeaksForTheLinkHostOnlyAndDropsBadEvents(t *testing.T) {
	th := newTestHub(t, Options{})
	th.Ingest("node-9", []event.Event{
		{TS: 1764300000000, Type: event.IntentRun, EntityID: "pid-7", PID: 7, JobID: "j", NodeID: "node-1", Value: "running"},
		{TS: 1764300000000, Type: "bogus.type", EntityID: "x", Value: "1"},
		{TS: 1764300000000, Type: event.ComputeUtil, Value: "1"},
		{Type: event.ComputeUtil, EntityID: "gpu-0", Value: "1"},
	})
	ps := th.Processes(graph.ProcessFilter{})
	if len(ps.Processes) != 1 || ps.Processes[0].Node != "node-9" {
		t.Errorf("processes %+v, want pid 7 on node-9", ps.Processes)
	}
	if got := testutil.ToFloat64(th.m.received.WithLabelValues(sourceLink)); got != 1 {
		t.Errorf("received %v, want 1", got)
	}
	if got := testutil.ToFloat64(th.m.eventsDrop.WithLabelValues(sourceLink, event.ReasonMissingField)); got != 2 {
		t.Errorf("missing_field drops %v, want 2", got)
	}
	if got := testutil.ToFloat64(th.m.eventsDrop.WithLabelValues(sourceLink, event.ReasonUnknownType)); got != 1 {
		t.Errorf("unknown_event_type drops %v, want 1", got)
	}
}

func TestRecentEventsAreFilteredAndBounded(t *testing.T) {
	th := newTestHub(t, Options{})
	th.ingestScenario(t)
	var er EventsResponse
	th.get(t, "/api/v1/events?node=node-3&type=error.hw", &er)
	if len(er.Events) != 1 || er.Events[0].Value != "Xid 79: GPU has fallen off the bus." || er.Events[0].Attrs.Get("xid") != "79" {
		t.Errorf("events %+v, want the one XID 79", er.Events)
	}
	th.get(t, "/api/v1/events?limit=100000", &er)
	if len(er.Events) != 4244 {
		t.Errorf("%d events, want all 4244", len(er.Events))
	}

	th = newTestHub(t, Options{RecentEvents: 1000})
	th.ingestScenario(t)
	th.get(t, "/api/v1/events?limit=5000", &er)
	if len(er.Events) != 1000 {
		t.Errorf("%d events, want the ring's 1000", len(er.Events))
	}
	for i := 1; i < len(er.Events); i++ {
		if er.Events[i].TS < er.Events[i-1].TS-60_000 {
			t.Fatalf("events out of order at %d", i)
		}
	}
	th.get(t, "/api/v1/events", &er)
	if len(er.Events) != defaultEventsLimit {
		t.Errorf("%d events by default, want %d", len(er.Events), defaultEventsLimit)
	}
	var body map[string]string
	if code := th.get(t, "/api/v1/events?type=nope", &body); code != http.StatusBadRequest {
		t.Errorf("unknown type: %d", code)
	}
	if code := th.get(t, "/api/v1/events?limit=0", &body); code != http.StatusBadRequest {
		t.Errorf("zero limit: %d", code)
	}
}

func TestReadyOnlyWhileRunning(t *testing.T) {
	th := newTestHub(t, Options{SettleEvery: time.Millisecond})
	var body map[string]string
	if code := th.get(t, "/readyz", &body); code != http.StatusServiceUnavailable {
		t.Fatalf("before Run: %d, want 503", code)
	}
	if code := th.get(t, "/healthz", &body); code != http.StatusOK {
		t.Fatalf("healthz: %d", code)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- th.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for th.get(t, "/readyz", &body) != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatal("not ready 5s after Run")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if code := th.get(t, "/readyz", &body); code != http.StatusServiceUnavailable {
		t.Errorf("after Run: %d, want 503", code)
	}
}

func TestMetricsEndpointServesTheHubRegistry(t *testing.T) {
	th := newTestHub(t, Options{})
	th.ingestScenario(t)
	th.get(t, "/api/v1/why?job_id="+scenarioJob, nil)
	resp, err := http.Get(th.srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`ark_graph_nodes{type="process"} 32`,
		`ark_graph_nodes{type="host"} 4`,
		`ark_graph_edges{type="MemberOf"} 32`,
		`ark_hub_events_received_total{source="link"} 4244`,
		`ark_hub_events_received_total{source="otlp"} 0`,
		`ark_hub_why_duration_seconds_count 1`,
		`ark_hub_commands_total{result="success"} 0`,
		`ark_hub_otlp_rejected_total{reason="invalid_body"} 0`,
		`ark_hub_agents{state="connected"} 0`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func TestNewFailsOnADuplicateRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := New(Options{Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Options{Registerer: reg}); err == nil {
		t.Error("a second hub on the same registry registered")
	}
}

// The addresses an agent announces let the hub link a drop toward that host
// to its ranks even when they announced no address of their own.
func TestAnnouncedHostAddressesLinkPeers(t *testing.T) {
	h, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UnixMilli()
	h.AgentConnected("node-b", []string{"10.9.0.2"})
	h.Ingest("node-a", []event.Event{{TS: now, Type: event.IntentRun, EntityID: "pid-1", PID: 1, JobID: "j", Value: "running"}})
	h.Ingest("node-b", []event.Event{{TS: now, Type: event.IntentRun, EntityID: "pid-2", PID: 2, JobID: "j", Value: "running"}})
	h.Ingest("node-a", []event.Event{{TS: now + 10, Type: event.TransportDrop, EntityID: "network-ib0", PID: 1, JobID: "j", Value: "3",
		Attrs: event.Attrs{{Key: "peer", Value: "10.9.0.2:43001"}}}})
	ng, ok, err := h.JobGraph("j")
	if err != nil || !ok {
		t.Fatalf("job graph: %v %v", ok, err)
	}
	for _, e := range ng.Edges {
		if e.Source == "node-a/pid-1" && e.Target == "node-b/pid-2" {
			return
		}
	}
	t.Fatalf("no edge node-a/pid-1 → node-b/pid-2 in %+v", ng.Edges)
}
