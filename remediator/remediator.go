// Package remediator turns Alertmanager notifications into safe, audited
// actions: it taints the faulty node, sets a node condition, records a
// Kubernetes Event, asks the node's agent to act on the ranks there (e.g.
// SIGUSR1 so they checkpoint) and evicts the node's pods through the
// Eviction API, respecting PodDisruptionBudgets.
//
// Before acting it asks the causal graph whether the node's alert is a
// symptom of a fault on another node; if so it acts on that root node only
// and records the alert as suppressed. A per-node cooldown kept in a node
// annotation, a circuit breaker, dry-run and leader election keep it safe.
package remediator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/retry"

	"github.com/ark-gpu/ark/internal/audit"
	"github.com/ark-gpu/ark/link"
)

// Root is the root cause the graph names for a node's trouble.
type Root struct {
	// Node is the host of the fault.
	Node string
	// Class is the fault class the fault belongs to.
	Class Class
	// Summary says what the fault is ("gpu-3 XID 79: fell off the bus").
	Summary string
}

// Graph is what the remediator asks the hub's causal graph.
type Graph interface {
	// RootCause returns the first cause of the stall of node's ranks, or
	// false when the graph knows none.
	RootCause(node string) (Root, bool)
	// Ranks returns the processes of jobs running on node.
	Ranks(node string) []Rank
}

// Rank is a process an agent action targets.
type Rank struct {
	PID   int64
	JobID string
}

// Agents dispatches a command to a node's agent and waits for its result.
type Agents interface {
	Dispatch(ctx context.Context, node string, cmd link.Command) (link.Result, error)
}

// Auditor records one audit entry (internal/audit.Log).
type Auditor interface {
	Write(ctx context.Context, e audit.Entry) error
}

// Options configures a Remediator.
type Options struct {
	Policy *Policy
	Client kubernetes.Interface
	// Graph and Agents may be nil: then nothing is suppressed and
	// agent_action steps report that no agent link exists.
	Graph  Graph
	Agents Agents
	Audit  Auditor
	// Recorder records Events on nodes; built on Client when nil.
	Recorder record.EventRecorder
	// DryRun runs every check, records Events and audits dry_run, but
	// changes nothing.
	DryRun bool
	// IsLeader says whether this replica acts; nil means always.
	IsLeader func() bool
	// Auth checks a webhook request; nil refuses every request.
	Auth      func(user, password, bearer string) bool
	Logger    *slog.Logger
	Metrics   *Metrics
	Workers   int   // concurrent remediations (default 32)
	QueueSize int   // alerts waiting for a worker (default 4096)
	MaxBody   int64 // webhook body limit in bytes (default 4 MiB)
	AgentWait time.Duration
	// ShutdownGrace is how long running remediations may go on after Run's
	// context ends (default 30s).
	ShutdownGrace time.Duration
	Now           func() time.Time
	User          string // the audit log's user (default "ark-remediator")
}

// Remediator handles Alertmanager webhooks and runs remediations.
type Remediator struct {
	o     Options
	kube  *Kube
	log   *slog.Logger
	m     *Metrics
	queue chan job

	nodeLocks sync.Map // node → *sync.Mutex: one remediation per node at a time
	breaker   sync.Mutex
	dryMu     sync.Mutex
	dryRun    map[string]time.Time // dry-run cooldown, which must not write annotations

	closed   atomic.Bool
	acceptMu sync.RWMutex // orders enqueues before the close of the queue
	wg       sync.WaitGroup
	stopRec  func()
}

// job is one alert accepted by the webhook.
type job struct {
	status      string // firing, resolved
	alertname   string
	fingerprint string
	class       Class
	node        string
	labels      map[string]string
	received    time.Time
}

// Defaults for Options.
const (
	DefaultWorkers   = 32
	DefaultQueueSize = 4096
	DefaultMaxBody   = 4 << 20
	DefaultAgentWait = 30 * time.Second
)

// New builds a remediator; Run starts its workers.
func New(o Options) (*Remediator, error) {
	if o.Policy == nil {
		return nil, errors.New("remediator: a policy is required")
	}
	if o.Client == nil {
		return nil, errors.New("remediator: a Kubernetes client is required")
	}
	if o.Audit == nil {
		return nil, errors.New("remediator: an audit log is required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
	if o.Workers <= 0 {
		o.Workers = DefaultWorkers
	}
	if o.QueueSize <= 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.MaxBody <= 0 {
		o.MaxBody = DefaultMaxBody
	}
	if o.AgentWait <= 0 {
		o.AgentWait = DefaultAgentWait
	}
	if o.ShutdownGrace <= 0 {
		o.ShutdownGrace = 30 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.User == "" {
		o.User = "ark-remediator"
	}
	r := &Remediator{o: o, kube: NewKube(o.Client), log: o.Logger, m: o.Metrics,
		queue: make(chan job, o.QueueSize), dryRun: map[string]time.Time{}}
	if o.Recorder == nil {
		rec, stop := newRecorder(o.Client)
		r.o.Recorder, r.stopRec = rec, stop
	}
	return r, nil
}

// Run works the queue until ctx ends. Then the webhook answers 503 (so
// Alertmanager re-sends to the next leader), the alerts already accepted
// are still worked, and running remediations get ShutdownGrace to finish
// their steps before their context is cancelled.
func (r *Remediator) Run(ctx context.Context) error {
	work, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := make(chan struct{})
	for range r.o.Workers {
		r.wg.Go(func() {
			for {
				select {
				case j := <-r.queue:
					r.m.queued.Dec()
					r.handle(work, j)
				case <-stop:
					// Drain: what was answered "queued" is worked.
					for {
						select {
						case j := <-r.queue:
							r.m.queued.Dec()
							r.handle(work, j)
						default:
							return
						}
					}
				}
			}
		})
	}
	<-ctx.Done()
	r.acceptMu.Lock() // no webhook is between its closed check and its enqueue
	r.closed.Store(true)
	r.acceptMu.Unlock()
	close(stop)
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	t := time.NewTimer(r.o.ShutdownGrace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		r.log.Warn("remediations still running at shutdown; cancelling them", "grace", r.o.ShutdownGrace)
		cancel()
		<-done
	}
	if r.stopRec != nil {
		r.stopRec()
	}
	return nil
}

// enqueue hands a job to the workers; false when the queue is full or the
// remediator is stopping.
func (r *Remediator) enqueue(j job) (ok, closed bool) {
	r.acceptMu.RLock()
	defer r.acceptMu.RUnlock()
	if r.closed.Load() {
		return false, true
	}
	select {
	case r.queue <- j:
		r.m.queued.Inc()
		return true, false
	default:
		return false, false
	}
}

// lockOrSkip takes s.node's lock unless a remediation of the node is
// running; then it audits and counts the alert as in_progress. The alerts
// a job-wide stall sends for dozens of nodes, all pointing at one root
// node, must not park every worker behind it.
func (r *Remediator) lockOrSkip(ctx context.Context, s step) (unlock func(), ok bool) {
	v, _ := r.nodeLocks.LoadOrStore(s.node, &sync.Mutex{})
	mu := v.(*sync.Mutex)
	if !mu.TryLock() {
		r.m.alerts.WithLabelValues(s.j.status, "in_progress").Inc()
		r.audit(ctx, s, "in_progress", audit.Success, 0, "", "nothing done: a remediation of "+s.node+" is running")
		return nil, false
	}
	return mu.Unlock, true
}

func (r *Remediator) handle(ctx context.Context, j job) {
	if r.o.IsLeader != nil && !r.o.IsLeader() {
		// Leadership moved while the alert waited: the new leader gets it
		// from Alertmanager's re-send.
		r.m.alerts.WithLabelValues(j.status, "not_leader").Inc()
		r.log.Warn("dropping a queued alert: no longer the remediation leader", "alertname", j.alertname, "node", j.node)
		return
	}
	if j.status == "resolved" {
		r.resolve(ctx, j)
		return
	}
	r.remediate(ctx, j)
}

// step is the context of one remediation, for audit entries.
type step struct {
	j     job
	node  string
	class Class
	cause string
}

func (r *Remediator) audit(ctx context.Context, s step, action string, res audit.Result, pid int64, jobID, details string) {
	if r.o.DryRun && res == audit.Success {
		res = audit.DryRun
	}
	r.m.actions.WithLabelValues(string(s.class), action, string(res)).Inc()
	e := audit.Entry{User: r.o.User, Action: action, Target: audit.Target{PID: pid, JobID: jobID, Node: s.node},
		Result: res, Details: details, Params: map[string]string{
			"class": string(s.class), "alertname": s.j.alertname, "alert_node": s.j.node, "fingerprint": s.j.fingerprint,
		}}
	if s.cause != "" {
		e.Params["cause"] = s.cause
	}
	if err := r.o.Audit.Write(ctx, e); err != nil {
		// An action whose record is lost is still reported in the log.
		r.log.Error("writing the audit log", "err", err, "action", action, "node", s.node, "result", string(res))
	}
	lvl := slog.LevelInfo
	if res == audit.Failure || res == audit.PartialFailure {
		lvl = slog.LevelWarn
	}
	r.log.Log(ctx, lvl, "remediation step", "action", action, "node", s.node, "class", string(s.class),
		"result", string(res), "pid", pid, "details", details, "alertname", s.j.alertname)
}

func (r *Remediator) remediate(ctx context.Context, j job) {
	s := step{j: j, node: j.node, class: j.class}
	if *r.o.Policy.BlastRadius && r.o.Graph != nil {
		if root, ok := r.o.Graph.RootCause(j.node); ok && root.Node != "" && root.Node != j.node {
			exists, err := r.kube.NodeExists(ctx, root.Node)
			switch {
			case err != nil:
				r.log.Warn("checking the root cause's node; acting on the alert's node", "err", err, "root", root.Node)
			case !exists:
				r.log.Warn("the root cause's host is not a Kubernetes node; acting on the alert's node",
					"root", root.Node, "node", j.node)
			default:
				r.m.alerts.WithLabelValues("firing", "suppressed").Inc()
				r.audit(ctx, s, "suppress", audit.Success, 0, "",
					fmt.Sprintf("%s on %s is a symptom of %s on %s: acting on %s only", j.alertname, j.node,
						root.Summary, root.Node, root.Node))
				s.node, s.cause = root.Node, root.Summary
				if root.Class.Valid() && r.o.Policy.Classes[root.Class] != nil {
					s.class = root.Class
				}
			}
		}
	}
	unlock, ok := r.lockOrSkip(ctx, s)
	if !ok {
		return
	}
	defer unlock()

	cp := r.o.Policy.Classes[s.class]
	taintFirst := len(cp.Steps) > 0 && cp.Steps[0].Type == StepTaint
	if !r.claim(ctx, &s, taintFirst) {
		return
	}
	steps := cp.Steps
	if taintFirst {
		r.audit(ctx, s, string(StepTaint), audit.Success, 0, "",
			fmt.Sprintf("taint %s=%s:NoSchedule", TaintKey, s.class))
		r.m.taintLatency.Observe(r.o.Now().Sub(j.received).Seconds())
		steps = steps[1:]
	}
	for i, st := range steps {
		if ctx.Err() != nil {
			r.notRun(ctx, s, steps[i:], "the hub is shutting down")
			return
		}
		if !r.runStep(ctx, s, st) && st.Type == StepTaint {
			// Evicting from a node that is not tainted would put the pods
			// straight back on it.
			r.notRun(ctx, s, steps[i+1:], "the taint failed")
			r.m.alerts.WithLabelValues("firing", "failed").Inc()
			return
		}
	}
	r.m.alerts.WithLabelValues("firing", "remediated").Inc()
}

// claim checks the cooldown and the circuit breaker and records the action
// on the node (with the taint when taint is the first step). It audits and
// returns false when the remediation must not go on. A node in cooldown is
// not a new node for the breaker, so the cooldown is checked first.
func (r *Remediator) claim(ctx context.Context, s *step, taint bool) bool {
	now := r.o.Now()
	cooldown := time.Duration(r.o.Policy.Cooldown)
	n, err := r.o.Client.CoreV1().Nodes().Get(ctx, s.node, metav1.GetOptions{})
	if err != nil {
		r.audit(ctx, *s, "claim", audit.Failure, 0, "", "reading the node: "+err.Error())
		r.m.alerts.WithLabelValues("firing", "failed").Inc()
		return false
	}
	last, ok := remediatedAt(n)
	if r.o.DryRun {
		r.dryMu.Lock()
		if t, found := r.dryRun[s.node]; found && (!ok || t.After(last)) {
			last, ok = t, true
		}
		r.dryMu.Unlock()
	}
	if ok && now.Sub(last) < cooldown {
		r.inCooldown(ctx, *s, last)
		return false
	}
	if v, tainted := taintValue(n); tainted && v == string(s.class) && !r.o.DryRun {
		// Alertmanager re-sends a firing alert every repeat_interval: a
		// node already quarantined for this class gets nothing new.
		r.m.alerts.WithLabelValues("firing", "already_quarantined").Inc()
		r.audit(ctx, *s, "already_quarantined", audit.Success, 0, "",
			fmt.Sprintf("nothing done: %s already carries %s=%s", s.node, TaintKey, s.class))
		return false
	}
	br := r.o.Policy.CircuitBreaker
	if r.o.Policy.HasTaintStep(s.class) && (br.MaxTaintedRatio < 1 || *br.MaxNodesPerHour > 0) {
		// Checks and claims are one at a time, so two nodes cannot both
		// pass a breaker that has room for one.
		r.breaker.Lock()
		defer r.breaker.Unlock()
		if err := r.checkBreaker(ctx, n, now); err != nil {
			r.m.alerts.WithLabelValues("firing", "breaker").Inc()
			r.audit(ctx, *s, "circuit_breaker", audit.Failure, 0, "", err.Error())
			return false
		}
	}
	if r.o.DryRun {
		r.dryMu.Lock()
		r.dryRun[s.node] = now
		r.dryMu.Unlock()
		return true
	}
	err = retry.OnError(retry.DefaultBackoff, transient, func() error {
		var err error
		last, err = r.kube.Claim(ctx, s.node, s.class, s.j.alertname+"/"+s.j.fingerprint, cooldown, now, taint)
		return err
	})
	switch {
	case errors.Is(err, ErrCooldown):
		// Another replica claimed it between the read and the write.
		r.inCooldown(ctx, *s, last)
		return false
	case err != nil:
		action := "claim"
		if taint {
			action = string(StepTaint)
		}
		r.audit(ctx, *s, action, audit.Failure, 0, "", "recording the remediation on the node: "+err.Error())
		r.m.alerts.WithLabelValues("firing", "failed").Inc()
		return false
	}
	return true
}

func (r *Remediator) inCooldown(ctx context.Context, s step, last time.Time) {
	r.m.alerts.WithLabelValues("firing", "cooldown").Inc()
	until := last.Add(time.Duration(r.o.Policy.Cooldown))
	r.audit(ctx, s, "cooldown", audit.Success, 0, "",
		fmt.Sprintf("nothing done: %s was remediated at %s, cooldown until %s", s.node,
			last.UTC().Format(time.RFC3339), until.UTC().Format(time.RFC3339)))
}

// checkBreaker refuses node n past either limit. A node that already
// carries Ark's taint adds nothing to the tainted share.
func (r *Remediator) checkBreaker(ctx context.Context, n *corev1.Node, now time.Time) error {
	br := r.o.Policy.CircuitBreaker
	c, err := r.kube.CountNodes(ctx, n.Name, now.Add(-time.Hour))
	if err != nil {
		return fmt.Errorf("circuit breaker: cannot count nodes, refusing to act: %w", err)
	}
	if c.Self != nil {
		// Fresher than the node read before: another replica may have
		// claimed it since, and the claim will then find the cooldown.
		n = c.Self
	}
	r.dryMu.Lock()
	for node, t := range r.dryRun {
		if now.Sub(t) < time.Hour && node != n.Name {
			c.Recent++
			c.Tainted++
		}
	}
	r.dryMu.Unlock()
	adds := 1
	if hasTaint(n) {
		adds = 0
	}
	// At least one node may always be tainted: a small cluster with one
	// dead GPU must not be refused by a share meant for large ones.
	allowed := max(1, int(math.Floor(br.MaxTaintedRatio*float64(c.Nodes))))
	if br.MaxTaintedRatio < 1 && c.Tainted+adds > allowed {
		return fmt.Errorf("circuit breaker open: %d of %d nodes already carry %s and tainting %s would pass max_tainted_ratio %.2f (%d nodes)",
			c.Tainted, c.Nodes, TaintKey, n.Name, br.MaxTaintedRatio, allowed)
	}
	if t, ok := remediatedAt(n); ok && now.Sub(t) < time.Hour {
		return nil // already counted in the last hour: not a new node
	}
	if m := *br.MaxNodesPerHour; m > 0 && c.Recent >= m {
		return fmt.Errorf("circuit breaker open: %d nodes remediated in the last hour, max_nodes_per_hour is %d; %s left alone",
			c.Recent, m, n.Name)
	}
	return nil
}

// runStep runs one step and reports whether it succeeded.
func (r *Remediator) runStep(ctx context.Context, s step, st Step) bool {
	switch st.Type {
	case StepTaint:
		if r.o.DryRun {
			r.audit(ctx, s, string(st.Type), audit.DryRun, 0, "", fmt.Sprintf("would taint %s=%s:NoSchedule", TaintKey, s.class))
			return true
		}
		if err := r.kube.Taint(ctx, s.node, s.class); err != nil {
			r.audit(ctx, s, string(st.Type), audit.Failure, 0, "", err.Error())
			return false
		}
		r.audit(ctx, s, string(st.Type), audit.Success, 0, "", fmt.Sprintf("taint %s=%s:NoSchedule", TaintKey, s.class))
	case StepCondition:
		if r.o.DryRun {
			r.audit(ctx, s, string(st.Type), audit.DryRun, 0, "", "would set "+string(ConditionType)+"=True")
			return true
		}
		if err := r.kube.SetCondition(ctx, s.node, corev1.ConditionTrue, string(s.class), r.message(s)); err != nil {
			r.audit(ctx, s, string(st.Type), audit.Failure, 0, "", err.Error())
			return false
		}
		r.audit(ctx, s, string(st.Type), audit.Success, 0, "", string(ConditionType)+"=True")
	case StepEvent:
		msg := r.message(s)
		if r.o.DryRun {
			msg = "dry run, nothing changed: " + msg
		}
		// The recorder sends in the background and retries; a send it
		// gives up on is logged by client-go.
		r.o.Recorder.Event(nodeRef(s.node), corev1.EventTypeWarning, string(ConditionType), msg)
		r.audit(ctx, s, string(st.Type), audit.Success, 0, "", "Event recorded: "+msg)
	case StepAgentAction:
		r.agentAction(ctx, s, st)
	case StepWait:
		t := time.NewTimer(time.Duration(st.Duration))
		defer t.Stop()
		select {
		case <-ctx.Done():
			r.audit(ctx, s, string(st.Type), audit.Failure, 0, "", "wait cut short: "+ctx.Err().Error())
			return false
		case <-t.C:
		}
		r.audit(ctx, s, string(st.Type), audit.Success, 0, "", "waited "+st.Duration.String())
	case StepEvict:
		r.evict(ctx, s)
	}
	return true
}

// notRun audits the steps a remediation did not get to.
func (r *Remediator) notRun(ctx context.Context, s step, steps []Step, why string) {
	for _, st := range steps {
		r.audit(ctx, s, string(st.Type), audit.Failure, 0, "", "not run: "+why)
	}
}

func (r *Remediator) message(s step) string {
	msg := fmt.Sprintf("%s on %s (alert %s)", s.class, s.node, s.j.alertname)
	if s.cause != "" {
		msg += ": " + s.cause
	}
	return msg
}

func (r *Remediator) agentAction(ctx context.Context, s step, st Step) {
	action := "agent:" + st.Action
	if r.o.Graph == nil || r.o.Agents == nil {
		r.audit(ctx, s, action, audit.Failure, 0, "", "no causal graph or agent link: the hub cannot reach agents")
		return
	}
	ranks := r.o.Graph.Ranks(s.node)
	if len(ranks) == 0 {
		r.audit(ctx, s, action, audit.Success, 0, "", "no ranks of a job known on "+s.node+": nothing to do")
		return
	}
	var wg sync.WaitGroup
	for _, rk := range ranks {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, r.o.AgentWait)
			defer cancel()
			res, err := r.o.Agents.Dispatch(cctx, s.node, link.Command{ID: commandID(), Intent: "fix", PID: rk.PID,
				JobID: rk.JobID, Action: st.Action, Params: st.Params, DryRun: r.o.DryRun, User: r.o.User})
			switch {
			case err != nil:
				r.audit(ctx, s, action, audit.Failure, rk.PID, rk.JobID, "dispatching to the agent: "+err.Error())
			default:
				result := audit.Result(res.Result)
				if !result.Valid() {
					result = audit.Failure
				}
				details := res.Details
				if res.Error != "" && res.Error != res.Details {
					details = strings.TrimSpace(details + " " + res.Error)
				}
				r.audit(ctx, s, action, result, rk.PID, rk.JobID, "agent answered: "+details)
			}
		})
	}
	wg.Wait()
}

func (r *Remediator) evict(ctx context.Context, s step) {
	pods, err := r.kube.PodsToEvict(ctx, s.node)
	if err != nil {
		r.audit(ctx, s, string(StepEvict), audit.Failure, 0, "", err.Error())
		return
	}
	if len(pods) == 0 {
		r.audit(ctx, s, string(StepEvict), audit.Success, 0, "", "no pods to evict")
		return
	}
	if r.o.DryRun {
		r.audit(ctx, s, string(StepEvict), audit.DryRun, 0, "", fmt.Sprintf("would evict %d pods: %s", len(pods), podNames(pods)))
		return
	}
	results := r.kube.Evict(ctx, pods, r.o.Policy.Eviction)
	var ok, blocked, failed []string
	for _, e := range results {
		name := e.Namespace + "/" + e.Name
		switch {
		case e.Err == nil:
			ok = append(ok, name)
		case e.Blocked > 0:
			blocked = append(blocked, name)
		default:
			failed = append(failed, name+" ("+e.Err.Error()+")")
		}
		r.m.evictions.WithLabelValues(evictResult(e)).Inc()
	}
	res := audit.Success
	details := fmt.Sprintf("evicted %d of %d pods", len(ok), len(pods))
	if len(blocked)+len(failed) > 0 {
		res = audit.PartialFailure
		if len(ok) == 0 {
			res = audit.Failure
		}
		if len(blocked) > 0 {
			details += fmt.Sprintf("; still blocked by a PodDisruptionBudget after %s: %s", r.o.Policy.Eviction.Timeout,
				strings.Join(blocked, ", "))
		}
		if len(failed) > 0 {
			details += "; failed: " + strings.Join(failed, ", ")
		}
	}
	r.audit(ctx, s, string(StepEvict), res, 0, "", details)
}

func evictResult(e EvictResult) string {
	switch {
	case e.Err == nil && e.Blocked > 0:
		return "evicted_after_retry"
	case e.Err == nil:
		return "evicted"
	case e.Blocked > 0:
		return "blocked"
	}
	return "error"
}

func podNames(pods []corev1.Pod) string {
	names := make([]string, len(pods))
	for i, p := range pods {
		names[i] = p.Namespace + "/" + p.Name
	}
	return strings.Join(names, ", ")
}

// resolve handles a resolved alert: the policy says whether the taint
// stays (default: a human clears hardware faults) or goes.
func (r *Remediator) resolve(ctx context.Context, j job) {
	s := step{j: j, node: j.node, class: j.class}
	cp := r.o.Policy.Classes[j.class]
	unlock, ok := r.lockOrSkip(ctx, s)
	if !ok {
		return
	}
	defer unlock()
	if cp.OnResolved != Untaint {
		r.m.alerts.WithLabelValues("resolved", "kept").Inc()
		r.audit(ctx, s, "resolved", audit.Success, 0, "", "alert resolved; taint and condition kept (on_resolved: keep): a human clears hardware faults")
		return
	}
	n, err := r.o.Client.CoreV1().Nodes().Get(ctx, j.node, metav1.GetOptions{})
	if err != nil {
		r.audit(ctx, s, "untaint", audit.Failure, 0, "", "reading the node: "+err.Error())
		return
	}
	if v, ok := taintValue(n); !ok || v != string(j.class) {
		// Another class's fault (or none) holds the node: this alert's
		// resolution clears nothing.
		r.m.alerts.WithLabelValues("resolved", "kept").Inc()
		r.audit(ctx, s, "resolved", audit.Success, 0, "", fmt.Sprintf("alert resolved; %s carries no %s=%s taint to remove", j.node, TaintKey, j.class))
		return
	}
	if r.o.DryRun {
		r.audit(ctx, s, "untaint", audit.DryRun, 0, "", "would remove "+TaintKey+" and set "+string(ConditionType)+"=False")
		return
	}
	// The cooldown goes with the taint: if the fault comes back, the node
	// is quarantined again at once.
	if err := r.kube.Untaint(ctx, j.node); err != nil {
		r.audit(ctx, s, "untaint", audit.Failure, 0, "", err.Error())
		return
	}
	if hasCondition(n) {
		if err := r.kube.SetCondition(ctx, j.node, corev1.ConditionFalse, "AlertResolved", j.alertname+" resolved"); err != nil {
			r.audit(ctx, s, "untaint", audit.PartialFailure, 0, "", "taint removed; setting the condition: "+err.Error())
			return
		}
	}
	r.m.alerts.WithLabelValues("resolved", "untainted").Inc()
	r.o.Recorder.Event(nodeRef(j.node), corev1.EventTypeNormal, string(ConditionType)+"Cleared", j.alertname+" resolved; taint removed")
	r.audit(ctx, s, "untaint", audit.Success, 0, "", "taint and cooldown removed, "+string(ConditionType)+"=False")
}

func nodeRef(node string) *corev1.ObjectReference {
	// Node events carry the node name as UID, as the kubelet's do.
	return &corev1.ObjectReference{Kind: "Node", Name: node, UID: types.UID(node), APIVersion: "v1"}
}
