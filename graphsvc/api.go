package graphsvc

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/graph"
	"github.com/ark-gpu/ark/internal/auth"
	"github.com/ark-gpu/ark/link"
)

// APIPrefix is where the hub's HTTP API lives.
const APIPrefix = "/api/v1"

// maxFixBody bounds a POST /api/v1/fix body.
const maxFixBody = 64 << 10

func (h *Hub) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+APIPrefix+"/ps", h.handlePS)
	mux.HandleFunc("GET "+APIPrefix+"/why", h.handleWhy)
	mux.HandleFunc("GET "+APIPrefix+"/diag", h.handleDiag)
	mux.HandleFunc("GET "+APIPrefix+"/graph", h.handleGraph)
	mux.HandleFunc("POST "+APIPrefix+"/fix", h.handleFix)
	mux.HandleFunc("GET "+APIPrefix+"/events", h.handleEvents)
	mux.HandleFunc("GET "+APIPrefix+"/agents", h.handleAgents)
	mux.HandleFunc("POST /v1/traces", h.handleTraces)
	mux.HandleFunc("POST /v1/logs", h.handleLogs)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !h.ready.Load() {
			writeError(w, http.StatusServiceUnavailable, "hub not started")
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	if h.gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(h.gatherer, promhttp.HandlerOpts{
			ErrorLog: slogPrinter{h}, ErrorHandling: promhttp.ContinueOnError,
		}))
	}
	return mux
}

// slogPrinter adapts the hub's logger to promhttp's error log.
type slogPrinter struct{ h *Hub }

func (p slogPrinter) Println(v ...any) { p.h.log.Warn("serving metrics", "err", fmt.Sprint(v...)) }

// errorBody is every error response: {"error": "..."}.
type errorBody struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v) // the client went away; nothing to do
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, errorBody{Error: msg})
}

// ---- ps ----

// PSProcess is one process of GET /api/v1/ps: what the graph knows, and
// whether its host is stale.
type PSProcess struct {
	graph.Process
	Stale bool `json:"stale"`
}

// PSResponse is the body of GET /api/v1/ps.
type PSResponse struct {
	Processes  []PSProcess `json:"processes"`
	StaleHosts []string    `json:"stale_hosts"`
}

// Processes returns the processes matching f, each marked stale when the
// hub has lost its host.
func (h *Hub) Processes(f graph.ProcessFilter) PSResponse {
	procs := h.g.Processes(f)
	stale := map[string]bool{}
	for _, s := range h.StaleHosts(nil) {
		stale[s] = true
	}
	out := PSResponse{Processes: make([]PSProcess, len(procs)), StaleHosts: []string{}}
	seen := map[string]bool{}
	for i, p := range procs {
		out.Processes[i] = PSProcess{Process: p, Stale: stale[p.Node]}
		if stale[p.Node] && !seen[p.Node] {
			seen[p.Node] = true
			out.StaleHosts = append(out.StaleHosts, p.Node)
		}
	}
	return out
}

func (h *Hub) handlePS(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := graph.ProcessFilter{Node: q.Get("node"), JobID: q.Get("job_id")}
	if s := q.Get("pid"); s != "" {
		pid, err := strconv.ParseInt(s, 10, 64)
		if err != nil || pid <= 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid pid %q: want a positive integer", s))
			return
		}
		f.PID = pid
	}
	writeJSON(w, http.StatusOK, h.Processes(f))
}

// ---- why ----

// WhyResponse is the body of GET /api/v1/why: the same cause shape as
// `ark analyze -o json`, plus the stale hosts the answer involves.
type WhyResponse struct {
	graph.Result
	StaleHosts []string `json:"stale_hosts"`
}

// Why explains t at time at (ms; 0 means the graph's clock) and names the
// stale hosts among those the answer involves.
func (h *Hub) Why(t graph.Target, at int64) (WhyResponse, error) {
	start := time.Now()
	defer func() { h.m.why.Observe(time.Since(start).Seconds()) }()
	res, err := h.g.Why(t, at)
	if err != nil {
		return WhyResponse{}, fmt.Errorf("explaining %s: %w", t, err)
	}
	return WhyResponse{Result: res, StaleHosts: h.staleIn(t, res)}, nil
}

// staleIn returns the stale hosts that the target runs on or a cause
// names: those hosts, looked up one by one among the hosts without a live
// link — never a listing of every stale host, of which a partition has
// thousands.
func (h *Hub) staleIn(t graph.Target, res graph.Result) []string {
	h.mu.Lock()
	linked := len(h.unlinked) == 0
	h.mu.Unlock()
	if linked {
		return []string{}
	}
	named := map[string]bool{t.Node: true}
	for _, c := range res.Causes {
		named[hostOf(c.NodeID)] = true
		for _, hop := range c.Chain {
			named[hostOf(hop.From)] = true
			named[hostOf(hop.To)] = true
		}
	}
	if t.JobID != "" {
		for _, host := range h.g.JobHosts(t.JobID) {
			named[host] = true
		}
	}
	// No host: a job target's node, a cause on a job, OTLP without a
	// host name. The hub's unnamed host is never one to report.
	delete(named, "")
	return h.StaleHosts(named)
}

// hostOf returns the host of a namespaced graph id ("node-7/gpu-3").
func hostOf(id string) string {
	if strings.HasPrefix(id, "job/") {
		return ""
	}
	host, _, ok := strings.Cut(id, "/")
	if !ok {
		return ""
	}
	return host
}

// parseTarget reads job_id, or node and pid, or node, and at.
func parseTarget(r *http.Request) (graph.Target, int64, error) {
	q := r.URL.Query()
	t := graph.Target{JobID: q.Get("job_id"), Node: q.Get("node")}
	if s := q.Get("pid"); s != "" {
		pid, err := strconv.ParseInt(s, 10, 64)
		if err != nil || pid <= 0 {
			return t, 0, fmt.Errorf("invalid pid %q: want a positive integer", s)
		}
		t.PID = pid
	}
	var at int64
	if s := q.Get("at"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v < 0 {
			return t, 0, fmt.Errorf("invalid at %q: want milliseconds since the epoch", s)
		}
		at = event.NormalizeTS(v)
	}
	switch {
	case t.JobID != "" && (t.Node != "" || t.PID != 0):
		return t, 0, errors.New("give job_id, or node and pid, or node; not job_id with node or pid")
	case t.PID != 0 && t.Node == "":
		return t, 0, errors.New("pid needs node: pids are per host")
	case t.JobID == "" && t.Node == "":
		return t, 0, errors.New("missing target: give job_id, or node and pid, or node")
	}
	return t, at, nil
}

func (h *Hub) handleWhy(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	t, at, err := parseTarget(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	res, err := h.Why(t, at)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if !res.Found {
		writeError(w, http.StatusNotFound, t.String()+" not found")
		return
	}
	buf := encodeBuffers.Get().(*bytes.Buffer)
	defer putEncodeBuffer(buf)
	buf.Reset()
	if err := json.NewEncoder(buf).Encode(res); err != nil {
		writeError(w, http.StatusInternalServerError, "encoding the answer: "+err.Error())
		return
	}
	// The hub's own time for the answer, from the handler's start to the
	// body encoded (W3C Server-Timing, in ms): a client tells it apart
	// from the time its request and the answer spent in the network and
	// in run queues. hack/whyprobe reports both.
	w.Header().Set("Server-Timing", serverTiming("why", time.Since(start)))
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(buf.Bytes()) // the client went away; nothing to do
}

// serverTiming formats one Server-Timing metric with its duration in ms.
func serverTiming(name string, d time.Duration) string {
	return name + ";dur=" + strconv.FormatFloat(float64(d.Nanoseconds())/1e6, 'f', 3, 64)
}

// encodeBuffers hold answers while they are encoded; a rare huge one is
// not kept.
var encodeBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func putEncodeBuffer(b *bytes.Buffer) {
	if b.Cap() <= 1<<20 {
		encodeBuffers.Put(b)
	}
}

// ---- graph ----

func (h *Hub) handleGraph(w http.ResponseWriter, r *http.Request) {
	job := r.URL.Query().Get("job_id")
	if job == "" {
		writeError(w, http.StatusBadRequest, "missing job_id")
		return
	}
	ng, found, err := h.JobGraph(job)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if !found {
		writeError(w, http.StatusNotFound, "job "+job+" not found")
		return
	}
	writeJSON(w, http.StatusOK, ng)
}

// ---- events ----

// EventsResponse is the body of GET /api/v1/events.
type EventsResponse struct {
	Events []event.Event `json:"events"`
}

const defaultEventsLimit = 100

func (h *Hub) handleEvents(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	node := q.Get("node")
	var typ event.Type
	if s := q.Get("type"); s != "" {
		t, ok := event.ParseType(s)
		if !ok {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("unknown event type %q", s))
			return
		}
		typ = t
	}
	limit := defaultEventsLimit
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid limit %q: want a positive integer", s))
			return
		}
		limit = min(n, h.opts.RecentEvents)
	}
	evs := h.recent.recent(limit, func(ev *event.Event) bool {
		return (node == "" || ev.NodeID == node) && (typ == "" || ev.Type == typ)
	})
	writeJSON(w, http.StatusOK, EventsResponse{Events: evs})
}

// ---- agents ----

func (h *Hub) handleAgents(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string][]HostInfo{"agents": h.Agents()})
}

// ---- fix ----

// FixRequest is the body of POST /api/v1/fix.
type FixRequest struct {
	// Node is the host of PID; empty means the host where the graph sees
	// PID (within JobID when given), which must be only one.
	Node   string            `json:"node,omitempty"`
	PID    int64             `json:"pid"`
	JobID  string            `json:"job_id,omitempty"`
	Action string            `json:"action,omitempty"` // empty: what the agent's rules suggest
	Params map[string]string `json:"params,omitempty"`
	DryRun bool              `json:"dry_run,omitempty"`
	// User is who asks, for the agent's audit log (default "hub").
	User string `json:"user,omitempty"`
}

// authorized reports whether r carries the hub's shared token: a fix may
// reach any node, so a node-bound credential does not do.
func (h *Hub) authorized(r *http.Request) bool {
	got, ok := auth.Bearer(r)
	return ok && auth.Token(h.opts.Token).Matches(got)
}

func (h *Hub) fixFailed(w http.ResponseWriter, code int, result, msg string) {
	h.m.commands.WithLabelValues(result).Inc()
	writeError(w, code, msg)
}

func (h *Hub) handleFix(w http.ResponseWriter, r *http.Request) {
	if !h.authorized(r) {
		w.Header().Set("WWW-Authenticate", auth.Challenge)
		h.fixFailed(w, http.StatusUnauthorized, resultUnauthorized, "missing or invalid bearer token")
		return
	}
	var req FixRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxFixBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		h.fixFailed(w, http.StatusBadRequest, resultBadRequest, "invalid fix request: "+err.Error())
		return
	}
	if req.PID <= 0 {
		h.fixFailed(w, http.StatusBadRequest, resultBadRequest, "invalid fix request: pid must be a positive integer")
		return
	}
	node, code, err := h.hostOfPID(req)
	if err != nil {
		result := resultNotFound
		if code == http.StatusConflict {
			result = resultBadRequest
		}
		h.fixFailed(w, code, result, err.Error())
		return
	}
	if h.opts.Dispatcher == nil {
		h.fixFailed(w, http.StatusServiceUnavailable, resultUnavailable, "no agent link: the hub cannot reach agents")
		return
	}
	if req.JobID == "" {
		req.JobID, _ = h.g.JobOf(node, req.PID)
	}
	user := req.User
	if user == "" {
		user = "hub"
	}
	cmd := link.Command{ID: commandID(), Intent: "fix", PID: req.PID, JobID: req.JobID, Action: req.Action,
		Params: req.Params, DryRun: req.DryRun, User: user}
	ctx, cancel := context.WithTimeout(r.Context(), h.opts.FixTimeout)
	defer cancel()
	res, err := h.opts.Dispatcher.Dispatch(ctx, node, cmd)
	switch {
	case errors.Is(err, ErrNotConnected):
		h.fixFailed(w, http.StatusServiceUnavailable, resultUnavailable, fmt.Sprintf("agent of %s: %v", node, err))
		return
	case errors.Is(err, context.DeadlineExceeded):
		h.fixFailed(w, http.StatusGatewayTimeout, resultTimeout,
			fmt.Sprintf("agent of %s did not answer within %s", node, h.opts.FixTimeout))
		return
	case err != nil:
		h.fixFailed(w, http.StatusBadGateway, resultError, fmt.Sprintf("dispatching to the agent of %s: %v", node, err))
		return
	}
	if res.Node == "" {
		res.Node = node
	}
	result := res.Result
	if !knownResult(result) {
		result = resultError
	}
	h.m.commands.WithLabelValues(result).Inc()
	h.log.Info("fix dispatched", "node", node, "pid", req.PID, "job_id", req.JobID, "action", res.Action,
		"result", res.Result, "user", user, "id", cmd.ID)
	writeJSON(w, http.StatusOK, res)
}

// knownResult reports whether r is one of the agent's result values, so a
// misbehaving agent cannot create label values.
func knownResult(r string) bool {
	switch r {
	case "success", "partial_failure", "failure", "dry_run":
		return true
	}
	return false
}

// hostOfPID finds the host a fix goes to, with the HTTP status to answer
// when there is none or more than one.
func (h *Hub) hostOfPID(req FixRequest) (string, int, error) {
	if req.Node != "" {
		return req.Node, 0, nil
	}
	procs := h.g.Processes(graph.ProcessFilter{PID: req.PID, JobID: req.JobID})
	hosts := map[string]bool{}
	for _, p := range procs {
		hosts[p.Node] = true
	}
	switch len(hosts) {
	case 0:
		if req.JobID != "" {
			return "", http.StatusNotFound, fmt.Errorf("pid %d of job %s not found: give node", req.PID, req.JobID)
		}
		return "", http.StatusNotFound, fmt.Errorf("pid %d not found: give node", req.PID)
	case 1:
		return procs[0].Node, 0, nil
	}
	names := make([]string, 0, len(hosts))
	for n := range hosts {
		names = append(names, n)
	}
	sort.Strings(names)
	return "", http.StatusConflict, fmt.Errorf("pid %d runs on several hosts (%s): give node or job_id",
		req.PID, strings.Join(names, ", "))
}

// commandID returns a random id for one command.
func commandID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}
