package exporter

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/executor"
	"github.com/ark-gpu/ark/exporter/ipc"
	"github.com/ark-gpu/ark/graph"
	"github.com/ark-gpu/ark/internal/audit"
	"github.com/ark-gpu/ark/link"
	"github.com/ark-gpu/ark/rules"
)

// ControlConfig is the agent's local control plane: the socket, the audit
// log, the rules and the executor.
type ControlConfig struct {
	// Socket is the unix socket path ("" serves none).
	Socket string
	// SocketGroup owns the socket; AdminGroup may run fix besides root.
	SocketGroup, AdminGroup string
	// Audit configures the audit log (Path "" keeps no log: fix is then
	// refused, since every action must be audited).
	Audit audit.Config
	// RulesDir holds rule files, loaded on top of the default rules and
	// reloaded on change or Reload.
	RulesDir string
	// Executor is the executor's config (hooks, unverified pids).
	Executor executor.Config
}

// control holds the agent's control plane.
type control struct {
	a       *Agent
	audit   *audit.Log
	exec    *executor.Executor
	rules   *rules.Watcher
	recent  *eventRing
	matches *matchLog
}

func (a *Agent) newControl() (*control, error) {
	cc := a.cfg.Control
	c := &control{a: a, recent: newEventRing(4096), matches: newMatchLog(32)}
	w, err := rules.NewWatcher(rules.WatcherOptions{
		Dir: cc.RulesDir, Defaults: true, Logger: a.log.With("component", "rules"), Registerer: a.reg,
	})
	if err != nil {
		return nil, fmt.Errorf("loading rules: %w", err)
	}
	c.rules = w
	if cc.Audit.Path != "" {
		acfg := cc.Audit
		acfg.Mirror = c.mirror
		l, err := audit.Open(acfg)
		if err != nil {
			return nil, fmt.Errorf("opening audit log: %w", err)
		}
		c.audit = l
		x, err := executor.New(executor.Options{
			Config: cc.Executor, Auditor: l, Membership: membership{a}, Logger: a.log.With("component", "executor"),
			ProcFS: a.cfg.Paths.ProcFS, Node: a.cfg.NodeName,
		})
		if err != nil {
			_ = l.Close()
			return nil, fmt.Errorf("executor: %w", err)
		}
		c.exec = x
	}
	a.bus.Subscribe("control", a.cfg.BusBuffer, c.observe)
	return c, nil
}

// mirror puts an audit entry on the bus as an action.exec event.
func (c *control) mirror(e audit.Entry) {
	ev := event.Event{
		TS: e.Timestamp.UnixMilli(), Type: event.ActionExec, EntityID: "pid-" + strconv.FormatInt(e.Target.PID, 10),
		PID: e.Target.PID, JobID: e.Target.JobID, NodeID: e.Target.Node, Value: string(e.Result),
		Attrs: event.Attrs{{Key: "action", Value: e.Action}, {Key: "user", Value: e.User}},
	}
	if ev.TS <= 0 {
		ev.TS = c.a.cfg.Now().UnixMilli()
	}
	c.a.Publish(&ev)
}

// observe evaluates the rules on each event and keeps recent events for
// `ark events`.
func (c *control) observe(batch []event.Event) {
	g := graphView{c.a.graph}
	rs := c.rules.RuleSet()
	c.recent.addBatch(batch)
	for i := range batch {
		ev := &batch[i]
		if !rs.Triggers(ev.Type) {
			continue
		}
		in := rules.Input{Event: ev, Graph: g}
		if ev.PID > 0 {
			in.Process = rules.Process{PID: ev.PID, JobID: ev.JobID}
			if job, state, rank, ok := c.a.graph.ProcessInfo(ev.NodeID, ev.PID); ok {
				in.Process = rules.Process{PID: ev.PID, JobID: job, State: state, Rank: rank}
			}
		}
		in.Edge.Type, in.Edge.From, in.Edge.To = graph.EdgeFor(ev, c.a.graph.Options().QDepthThreshold)
		// Rules on an agent see this host's ids without the host prefix
		// ("network-ib0", "pid-42"), as rule authors write them.
		in.Edge.From = strings.TrimPrefix(in.Edge.From, ev.NodeID+"/")
		in.Edge.To = strings.TrimPrefix(in.Edge.To, ev.NodeID+"/")
		for _, m := range rs.Evaluate(in) {
			c.matches.add(ev, m)
			c.a.log.Info("rule matched", "rule", m.Rule, "severity", m.Severity, "pid", m.Target.PID, "entity", m.EntityID, "message", m.Message)
		}
	}
}

// membership answers the executor from the graph.
type membership struct{ a *Agent }

func (m membership) JobOf(pid int64) (string, bool) { return m.a.graph.JobOf(m.a.cfg.NodeName, pid) }

// graphView answers the rules' graph helpers.
type graphView struct{ g *graph.Graph }

func (v graphView) ErrorsReachable(node string, pid int64) []rules.ErrorInfo {
	res, err := v.g.Why(graph.Target{Node: node, PID: pid}, 0)
	if err != nil {
		return nil
	}
	var out []rules.ErrorInfo
	for _, c := range res.Causes {
		if c.Kind != "error" {
			continue
		}
		out = append(out, rules.ErrorInfo{EntityID: c.EntityID, EventType: c.EventType, Severity: c.Severity, XID: c.XID, Summary: c.Summary})
	}
	return out
}

func (v graphView) WaitsOn(node string, pid int64, prefix string) bool {
	for _, p := range v.g.Processes(graph.ProcessFilter{Node: node, PID: pid}) {
		for _, r := range p.Resources {
			local := r.ID
			if i := strings.LastIndexByte(local, '/'); i >= 0 {
				local = local[i+1:]
			}
			if r.Type == graph.WaitsOn.String() && strings.HasPrefix(local, prefix) {
				return true
			}
		}
	}
	return false
}

// ---- recent events and rule matches ----

type eventRing struct {
	mu   sync.Mutex
	buf  []event.Event
	next int
	full bool
	subs map[chan event.Event]struct{}
}

func newEventRing(n int) *eventRing {
	return &eventRing{buf: make([]event.Event, n), subs: map[chan event.Event]struct{}{}}
}

// addBatch keeps the events as they are: strings are immutable, and the
// bus copies an event's attrs once and no subscriber changes them.
func (r *eventRing) addBatch(batch []event.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range batch {
		r.buf[r.next] = batch[i]
		r.next = (r.next + 1) % len(r.buf)
		if r.next == 0 {
			r.full = true
		}
		for ch := range r.subs {
			select {
			case ch <- batch[i]:
			default: // a slow follower misses events rather than stalling the bus
			}
		}
	}
}

func (r *eventRing) last(n int, keep func(*event.Event) bool) []event.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var all []event.Event
	if r.full {
		all = append(all, r.buf[r.next:]...)
	}
	all = append(all, r.buf[:r.next]...)
	var out []event.Event
	for i := len(all) - 1; i >= 0 && len(out) < n; i-- {
		if keep(&all[i]) {
			out = append(out, all[i])
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

func (r *eventRing) subscribe() (chan event.Event, func()) {
	ch := make(chan event.Event, 256)
	r.mu.Lock()
	r.subs[ch] = struct{}{}
	r.mu.Unlock()
	return ch, func() {
		r.mu.Lock()
		delete(r.subs, ch)
		r.mu.Unlock()
	}
}

// matchLog keeps the latest rule matches per pid.
type matchLog struct {
	mu    sync.Mutex
	per   int
	byPID map[int64][]MatchRecord
}

// MatchRecord is a rule match with when it happened.
type MatchRecord struct {
	TS    int64       `json:"ts"`
	Match rules.Match `json:"match"`
}

func newMatchLog(per int) *matchLog { return &matchLog{per: per, byPID: map[int64][]MatchRecord{}} }

func (l *matchLog) add(ev *event.Event, m rules.Match) {
	pid := m.Target.PID
	if pid == 0 {
		pid = ev.PID
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	s := append(l.byPID[pid], MatchRecord{TS: ev.TS, Match: m})
	if len(s) > l.per {
		s = s[len(s)-l.per:]
	}
	l.byPID[pid] = s
}

func (l *matchLog) get(pid int64) []MatchRecord {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]MatchRecord(nil), l.byPID[pid]...)
}

// ---- IPC commands ----

// PSArgs, WhyArgs... are the IPC argument shapes shared with the CLI.
type (
	// PSArgs filters ps.
	PSArgs struct {
		JobID string `json:"job_id,omitempty"`
	}
	// TargetArgs names a process or a job.
	TargetArgs struct {
		PID   int64  `json:"pid,omitempty"`
		JobID string `json:"job_id,omitempty"`
	}
	// FixArgs asks for an action on a process.
	FixArgs struct {
		PID    int64             `json:"pid"`
		Action string            `json:"action,omitempty"`
		Params map[string]string `json:"params,omitempty"`
		DryRun bool              `json:"dry_run,omitempty"`
	}
	// EventsArgs filters events.
	EventsArgs struct {
		Follow bool   `json:"follow,omitempty"`
		Type   string `json:"type,omitempty"`
		PID    int64  `json:"pid,omitempty"`
		Limit  int    `json:"limit,omitempty"`
	}
)

// Diagnosis is the answer of diag: the cause, the rules that matched and
// the actions they suggest.
type Diagnosis struct {
	Process   *graph.Process `json:"process,omitempty"`
	Why       graph.Result   `json:"why"`
	Matches   []MatchRecord  `json:"matches"`
	Suggested []rules.Action `json:"suggested_actions"`
}

// FixResult is the answer of fix.
type FixResult struct {
	PID     int64        `json:"pid"`
	JobID   string       `json:"job_id,omitempty"`
	Action  string       `json:"action"`
	Result  audit.Result `json:"result"`
	Details string       `json:"details"`
	Error   string       `json:"error,omitempty"`
}

func decodeArgs(raw json.RawMessage, v any) error {
	if len(raw) == 0 {
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return ipc.Errorf(ipc.CodeBadRequest, "bad arguments: %v", err)
	}
	return nil
}

func (c *control) register(s *ipc.Server) {
	s.Handle("ps", ipc.Command{Handler: c.ps})
	s.Handle("why", ipc.Command{Handler: c.why})
	s.Handle("diag", ipc.Command{Handler: c.diag})
	s.Handle("events", ipc.Command{Handler: c.events})
	s.Handle("fix", ipc.Command{Admin: true, Handler: c.fix})
}

func (c *control) ps(_ context.Context, _ ipc.Peer, raw json.RawMessage, _ func(any) error) (any, error) {
	var args PSArgs
	if err := decodeArgs(raw, &args); err != nil {
		return nil, err
	}
	ps := c.a.graph.Processes(graph.ProcessFilter{Node: c.a.cfg.NodeName, JobID: args.JobID})
	if ps == nil {
		ps = []graph.Process{}
	}
	return ps, nil
}

func (c *control) target(args TargetArgs) (graph.Target, error) {
	switch {
	case args.JobID != "" && args.PID != 0:
		return graph.Target{}, ipc.Errorf(ipc.CodeBadRequest, "give a pid or a job id, not both")
	case args.JobID != "":
		return graph.Target{JobID: args.JobID}, nil
	case args.PID > 0:
		return graph.Target{Node: c.a.cfg.NodeName, PID: args.PID}, nil
	}
	return graph.Target{}, ipc.Errorf(ipc.CodeBadRequest, "a pid or a job id is required")
}

func (c *control) why(_ context.Context, _ ipc.Peer, raw json.RawMessage, _ func(any) error) (any, error) {
	var args TargetArgs
	if err := decodeArgs(raw, &args); err != nil {
		return nil, err
	}
	t, err := c.target(args)
	if err != nil {
		return nil, err
	}
	res, err := c.a.graph.Why(t, 0)
	if err != nil {
		return nil, ipc.Errorf(ipc.CodeBadRequest, "%v", err)
	}
	if !res.Found {
		return nil, ipc.Errorf(ipc.CodeNotFound, "%s is not tracked by this agent", t)
	}
	return res, nil
}

func (c *control) diagnose(pid int64) (Diagnosis, error) {
	ps := c.a.graph.Processes(graph.ProcessFilter{Node: c.a.cfg.NodeName, PID: pid})
	if len(ps) == 0 {
		return Diagnosis{}, ipc.Errorf(ipc.CodeNotFound, "pid %d is not tracked by this agent", pid)
	}
	d := Diagnosis{Process: &ps[0], Matches: c.matches.get(pid), Suggested: []rules.Action{}}
	d.Why, _ = c.a.graph.Why(graph.Target{Node: c.a.cfg.NodeName, PID: pid}, 0)
	if d.Matches == nil {
		d.Matches = []MatchRecord{}
	}
	seen := map[string]bool{}
	// Most recent matches first: they describe the present.
	for i := len(d.Matches) - 1; i >= 0; i-- {
		for _, act := range d.Matches[i].Match.Actions {
			key := string(act.Type) + fmt.Sprint(act.Params)
			if !seen[key] {
				seen[key] = true
				d.Suggested = append(d.Suggested, act)
			}
		}
	}
	return d, nil
}

func (c *control) diag(_ context.Context, _ ipc.Peer, raw json.RawMessage, _ func(any) error) (any, error) {
	var args TargetArgs
	if err := decodeArgs(raw, &args); err != nil {
		return nil, err
	}
	if args.PID <= 0 {
		return nil, ipc.Errorf(ipc.CodeBadRequest, "diag needs a pid")
	}
	return c.diagnose(args.PID)
}

// executable reports whether the agent's executor runs this action type
// (Quarantine is a suggestion for the hub's remediator).
func executable(t rules.ActionType) bool {
	switch t {
	case "Signal", "GracefulShutdown", "RunHook", "ReportOnly":
		return true
	}
	return false
}

func (c *control) fix(ctx context.Context, peer ipc.Peer, raw json.RawMessage, _ func(any) error) (any, error) {
	var args FixArgs
	if err := decodeArgs(raw, &args); err != nil {
		return nil, err
	}
	return c.doFix(ctx, peer.User(), args)
}

// HandleCommand runs a command from the hub through the same checks,
// executor and audit log as a local fix.
func (c *control) HandleCommand(ctx context.Context, cmd link.Command) link.Result {
	res := link.Result{ID: cmd.ID, Node: c.a.cfg.NodeName, PID: cmd.PID, JobID: cmd.JobID, Action: cmd.Action}
	if cmd.Intent != "fix" {
		res.Result, res.Error = string(audit.Failure), fmt.Sprintf("unknown intent %q", cmd.Intent)
		return res
	}
	out, err := c.doFix(ctx, "hub:"+cmd.User, FixArgs{PID: cmd.PID, Action: cmd.Action, Params: cmd.Params, DryRun: cmd.DryRun})
	if err != nil {
		res.Result, res.Error = string(audit.Failure), err.Error()
		return res
	}
	res.JobID, res.Action, res.Result, res.Details, res.Error = out.JobID, out.Action, string(out.Result), out.Details, out.Error
	return res
}

func (c *control) doFix(ctx context.Context, user string, args FixArgs) (FixResult, error) {
	if args.PID <= 0 {
		return FixResult{}, ipc.Errorf(ipc.CodeBadRequest, "fix needs a pid")
	}
	if c.exec == nil {
		return FixResult{}, ipc.Errorf(ipc.CodeFailed, "this agent has no audit log configured (--audit.file), so it takes no actions")
	}
	d, err := c.diagnose(args.PID)
	if err != nil {
		return FixResult{}, err
	}
	action, params := args.Action, args.Params
	if action == "" {
		for _, s := range d.Suggested {
			if executable(s.Type) && s.Type != "ReportOnly" {
				action, params = string(s.Type), s.Params
				break
			}
		}
		if action == "" {
			return FixResult{}, ipc.Errorf(ipc.CodeNotFound, "no rule suggests an action for pid %d: name one with --action", args.PID)
		}
	}
	p := d.Process
	res := c.exec.Execute(ctx, executor.Request{
		Action: action, Params: params, PID: p.PID, JobID: p.JobID, Node: c.a.cfg.NodeName,
		User: user, DryRun: args.DryRun, ExpectedStartTime: p.StartTime, ExpectedJobID: p.JobID,
	})
	out := FixResult{PID: p.PID, JobID: p.JobID, Action: action, Result: res.Result, Details: res.Details}
	if res.Err != nil {
		out.Error = res.Err.Error()
	}
	return out, nil
}

func (c *control) events(ctx context.Context, _ ipc.Peer, raw json.RawMessage, send func(any) error) (any, error) {
	var args EventsArgs
	if err := decodeArgs(raw, &args); err != nil {
		return nil, err
	}
	if args.Type != "" {
		if _, ok := event.ParseType(args.Type); !ok {
			return nil, ipc.Errorf(ipc.CodeBadRequest, "unknown event type %q", args.Type)
		}
	}
	keep := func(ev *event.Event) bool {
		return (args.Type == "" || string(ev.Type) == args.Type) && (args.PID == 0 || ev.PID == args.PID)
	}
	if args.Limit <= 0 {
		args.Limit = 100
	}
	if !args.Follow {
		evs := c.recent.last(args.Limit, keep)
		if evs == nil {
			evs = []event.Event{}
		}
		return evs, nil
	}
	ch, cancel := c.recent.subscribe()
	defer cancel()
	for _, ev := range c.recent.last(args.Limit, keep) {
		if err := send(ev); err != nil {
			return nil, err
		}
	}
	hb := time.NewTicker(30 * time.Second)
	defer hb.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case ev := <-ch:
			if keep(&ev) {
				if err := send(ev); err != nil {
					return nil, err
				}
			}
		case <-hb.C:
			// A heartbeat (a null result) finds out whether the client
			// is still there.
			if err := send(nil); err != nil {
				return nil, err
			}
		}
	}
}
