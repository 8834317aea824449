package rules

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/graph"
)

// Input is what one evaluation sees: the event, the graph edge applying it
// produced or refreshed (zero when none), the process it concerns (zero
// when none) and the graph for the graph.* helpers (nil: they find
// nothing).
type Input struct {
	Event   *event.Event
	Edge    Edge
	Process Process
	Graph   Graph
}

// Edge is a graph edge as conditions see it: `edge.type`, `edge.from`,
// `edge.to`. The agent passes its own host's ids without the host prefix
// ("pid-42", "network-ib0"); ids on other hosts keep it ("node-3/pid-42").
type Edge struct {
	Type     graph.EdgeType
	From, To string
}

// Process is the event's process as conditions see it (`node.pid`,
// `node.job_id`, `node.state`, `node.rank`).
type Process struct {
	PID   int64
	JobID string
	State string
	Rank  string
}

// Match is one rule that fired on an event. Actions is shared with the
// rule: read it, do not modify it.
type Match struct {
	Rule      string       `json:"rule"`
	Severity  Severity     `json:"severity"`
	Actions   []Action     `json:"actions"`
	Target    graph.Target `json:"target"`
	EntityID  string       `json:"entity_id"`
	EventType event.Type   `json:"event_type"`
	Message   string       `json:"message"`
}

// RuleSet is a compiled, indexed, immutable set of rules. Evaluate is safe
// for concurrent use.
type RuleSet struct {
	rules []*Rule
	index map[event.Type][]entry
	state *state
}

// entry is one trigger of a rule in an event type's list; a nil program
// always holds.
type entry struct {
	rule *Rule
	prg  cel.Program
}

// state outlives one RuleSet: a reload keeps cooldowns and counters.
type state struct {
	mu         sync.Mutex
	now        func() time.Time
	until      map[coolKey]time.Time
	evalErrors atomic.Uint64
}

// coolKey is (rule, target). A device-level event without a process is
// keyed by its entity too, so two GPUs of one host cool down apart.
type coolKey struct {
	rule   string
	target graph.Target
	entity string
}

// maxCooldowns bounds the cooldown table; expired entries are swept when
// it is reached.
const maxCooldowns = 1 << 16

func newState() *state {
	return &state{now: time.Now, until: make(map[coolKey]time.Time)}
}

// allow reports whether the rule may fire for key now, and starts its
// cooldown if so.
func (s *state) allow(k coolKey, d time.Duration) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if t, ok := s.until[k]; ok && now.Before(t) {
		return false
	}
	if d <= 0 {
		return true
	}
	if len(s.until) >= maxCooldowns {
		for key, t := range s.until {
			if !now.Before(t) {
				delete(s.until, key)
			}
		}
	}
	s.until[k] = now.Add(d)
	return true
}

// build indexes rules by event type. A rule whose name is already taken is
// reported and left out. st carries cooldowns over from a previous set; nil
// starts afresh.
func build(rules []*Rule, st *state) (*RuleSet, []error) {
	if st == nil {
		st = newState()
	}
	rs := &RuleSet{index: make(map[event.Type][]entry), state: st}
	var errs []error
	seen := make(map[string]*Rule, len(rules))
	for _, r := range rules {
		if first := seen[r.Name]; first != nil {
			errs = append(errs, &Error{File: r.File, Line: r.Line, Rule: r.Name,
				Err: fmt.Errorf("duplicate rule name, first defined at %s:%d", first.File, first.Line)})
			continue
		}
		seen[r.Name] = r
		rs.rules = append(rs.rules, r)
		for _, t := range r.Triggers {
			e := entry{rule: r, prg: t.prg}
			if t.EventType == AnyEventType {
				for _, et := range event.Types {
					rs.index[et] = append(rs.index[et], e)
				}
				continue
			}
			et := event.Type(t.EventType)
			rs.index[et] = append(rs.index[et], e)
		}
	}
	return rs, errs
}

// Rules returns the set's rules in load order.
func (rs *RuleSet) Rules() []*Rule {
	if rs == nil {
		return nil
	}
	return append([]*Rule(nil), rs.rules...)
}

// Triggers reports whether any rule triggers on events of type t, so a
// caller can skip building an Input for the others.
func (rs *RuleSet) Triggers(t event.Type) bool {
	return rs != nil && len(rs.index[t]) > 0
}

// Len returns how many rules the set holds.
func (rs *RuleSet) Len() int {
	if rs == nil {
		return 0
	}
	return len(rs.rules)
}

// SetClock replaces the clock cooldowns are measured with (time.Now by
// default), e.g. with the event time for an offline replay. Call it before
// the first Evaluate.
func (rs *RuleSet) SetClock(now func() time.Time) {
	rs.state.mu.Lock()
	rs.state.now = now
	rs.state.mu.Unlock()
}

// EvalErrors returns how many condition evaluations failed (a missing
// map key, a type mismatch at run time); a failed condition does not
// match.
func (rs *RuleSet) EvalErrors() uint64 { return rs.state.evalErrors.Load() }

// Evaluate runs the rules that trigger on in.Event's type and returns
// those that matched and are not cooling down for their target. It
// allocates nothing when no rule matches.
func (rs *RuleSet) Evaluate(in Input) []Match {
	if rs == nil || in.Event == nil {
		return nil
	}
	entries := rs.index[in.Event.Type]
	if len(entries) == 0 {
		return nil
	}
	var act *activation
	var out []Match
	var last *Rule
	for _, e := range entries {
		if e.rule == last {
			continue // another trigger of a rule that already matched
		}
		if e.prg != nil {
			if act == nil {
				act = getActivation(&in)
			}
			v, _, err := e.prg.Eval(act)
			if err != nil {
				rs.state.evalErrors.Add(1)
				continue
			}
			if v != types.True {
				continue
			}
		}
		last = e.rule
		if m, ok := rs.fire(e.rule, &in); ok {
			out = append(out, m)
		}
	}
	if act != nil {
		act.release()
	}
	return out
}

func (rs *RuleSet) fire(r *Rule, in *Input) (Match, bool) {
	ev := in.Event
	t := graph.Target{Node: ev.NodeID, PID: ev.PID, JobID: ev.JobID}
	if t.PID == 0 {
		t.PID = in.Process.PID
	}
	if t.PID == 0 && strings.HasPrefix(ev.EntityID, "pid-") {
		t.PID, _ = strconv.ParseInt(ev.EntityID[len("pid-"):], 10, 64)
	}
	if t.JobID == "" {
		t.JobID = in.Process.JobID
	}
	k := coolKey{rule: r.Name, target: t}
	if t.PID == 0 {
		k.entity = ev.EntityID
	}
	if !rs.state.allow(k, r.Cooldown) {
		return Match{}, false
	}
	return Match{
		Rule:      r.Name,
		Severity:  r.Severity,
		Actions:   r.Actions,
		Target:    t,
		EntityID:  ev.EntityID,
		EventType: ev.Type,
		Message:   message(r, ev, t),
	}, true
}

// message says in one line what fired and on what.
func message(r *Rule, ev *event.Event, t graph.Target) string {
	var b strings.Builder
	b.WriteString(r.Name)
	if r.Description != "" {
		b.WriteString(" (")
		b.WriteString(r.Description)
		b.WriteByte(')')
	}
	fmt.Fprintf(&b, ": %s on %s value %q", ev.Type, ev.EntityID, ev.Value)
	if x := ev.Attrs.Get(event.AttrXID); x != "" {
		fmt.Fprintf(&b, " xid %s", x)
	}
	if t.PID != 0 {
		fmt.Fprintf(&b, " pid %d", t.PID)
	}
	if t.JobID != "" {
		fmt.Fprintf(&b, " job %s", t.JobID)
	}
	if t.Node != "" {
		fmt.Fprintf(&b, " node %s", t.Node)
	}
	return b.String()
}
