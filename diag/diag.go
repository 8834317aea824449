// Package diag turns the causal graph's answer into a diagnosis an on-call
// engineer can act on: the ranked causes with what NVIDIA's XID catalog
// says to do about each, the rules that match, the exact `ark fix` commands
// a human can run, and the blast radius — the ranks, jobs and GPUs a fault
// idles and the GPU-hours it has cost. It is deterministic and offline;
// Explain optionally asks a language model to put it in words.
package diag

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/graph"
	"github.com/ark-gpu/ark/rules"
	"github.com/ark-gpu/ark/xid"
)

// Options configure Diagnose.
type Options struct {
	// At evaluates the graph at this time (ms); 0 means its clock.
	At int64
	// Rules are evaluated, with cooldowns of their own, on the causes'
	// evidence and on each rank's current state; nil evaluates none.
	Rules *rules.RuleSet
	// Matches are rule matches already recorded live (the agent's); they
	// join those found on the evidence.
	Matches []Match
	// Scope says where the answer comes from: "host gpu-1", "hub", "recording x.jsonl".
	Scope string
	// Hub is the hub URL the fix commands go through ("" runs them on the
	// local agent).
	Hub string
}

// Report is a diagnosis.
type Report struct {
	Target graph.Target `json:"target"`
	At     int64        `json:"at"`
	Scope  string       `json:"scope,omitempty"`
	Found  bool         `json:"found"`
	// Ranks is how many processes of the target were considered.
	Ranks int `json:"ranks"`
	// Process is the target process, for a pid target.
	Process *graph.Process `json:"process,omitempty"`
	Causes  []Cause        `json:"causes"`
	Rules   []Match        `json:"rules"`
	// Fixes are the actions the matched rules suggest that `ark fix` runs.
	Fixes []Fix `json:"fixes"`
	// Remediation lists what the rules suggest to the hub's remediator
	// (it acts on the alert, not on ark fix).
	Remediation []string     `json:"remediation"`
	Blast       *BlastRadius `json:"blast_radius,omitempty"`
	// StaleHosts are hosts the answer involves that the hub lost.
	StaleHosts []string `json:"stale_hosts,omitempty"`
}

// Cause is a ranked cause and, for an XID, what the catalog says.
type Cause struct {
	graph.Cause
	Catalog *Catalog `json:"catalog,omitempty"`
}

// Catalog is the XID catalog's entry for a cause's code.
type Catalog struct {
	Code                int    `json:"code"`
	Mnemonic            string `json:"mnemonic"`
	Description         string `json:"description"`
	ImmediateAction     string `json:"immediate_action"`
	InvestigatoryAction string `json:"investigatory_action"`
}

// Match is one rule that matches, and on what.
type Match struct {
	TS       int64          `json:"ts"`
	Rule     string         `json:"rule"`
	Severity rules.Severity `json:"severity"`
	Node     string         `json:"node,omitempty"`
	PID      int64          `json:"pid,omitempty"`
	JobID    string         `json:"job_id,omitempty"`
	EntityID string         `json:"entity_id"`
	Message  string         `json:"message"`
	Actions  []rules.Action `json:"actions"`
}

// MatchOf records a rule match of the rules package at time ts.
func MatchOf(ts int64, m rules.Match) Match {
	return Match{TS: ts, Rule: m.Rule, Severity: m.Severity, Node: m.Target.Node, PID: m.Target.PID, JobID: m.Target.JobID,
		EntityID: m.EntityID, Message: m.Message, Actions: m.Actions}
}

// Fix is one action `ark fix` can run, with the exact command.
type Fix struct {
	Node    string            `json:"node,omitempty"`
	PID     int64             `json:"pid"`
	JobID   string            `json:"job_id,omitempty"`
	Action  string            `json:"action"`
	Params  map[string]string `json:"params,omitempty"`
	Rule    string            `json:"rule"`
	Command string            `json:"command"`
}

// Diagnose explains t from g.
func Diagnose(g *graph.Graph, t graph.Target, opts Options) (Report, error) {
	res, err := g.Why(t, opts.At)
	if err != nil {
		return Report{}, fmt.Errorf("diagnosing %s: %w", t, err)
	}
	rep := Report{Target: t, At: res.At, Scope: opts.Scope, Found: res.Found, Ranks: res.Ranks,
		Causes: make([]Cause, 0, len(res.Causes)), Rules: []Match{}, Fixes: []Fix{}, Remediation: []string{}}
	if !res.Found {
		return rep, nil
	}
	if t.PID != 0 {
		if ps := g.Processes(graph.ProcessFilter{Node: t.Node, PID: t.PID}); len(ps) > 0 {
			rep.Process = &ps[0]
		}
	}
	for _, c := range res.Causes {
		rep.Causes = append(rep.Causes, Cause{Cause: c, Catalog: catalogOf(c.XID)})
	}
	rep.Blast = blastRadius(g, t, res)
	matches := append([]Match(nil), opts.Matches...)
	if opts.Rules != nil {
		matches = append(matches, evaluate(g, opts.Rules.Fresh(), rep)...)
	}
	rep.Rules = dedupMatches(matches)
	rep.Fixes, rep.Remediation = suggest(rep.Rules, opts.Hub)
	return rep, nil
}

func catalogOf(code int) *Catalog {
	if code == 0 {
		return nil
	}
	e, ok := xid.Lookup(code)
	if !ok {
		return nil
	}
	return &Catalog{Code: e.Code, Mnemonic: e.Mnemonic, Description: e.Description,
		ImmediateAction: e.ImmediateAction, InvestigatoryAction: e.InvestigatoryAction}
}

// evaluate runs rs on the causes' evidence and on each considered rank's
// current state, as the agent would on the live events.
func evaluate(g *graph.Graph, rs *rules.RuleSet, rep Report) []Match {
	var evs []event.Event
	for _, c := range rep.Causes {
		evs = append(evs, c.Evidence...)
	}
	var procs []graph.Process
	switch {
	case rep.Blast != nil:
		for _, j := range rep.Blast.Jobs {
			procs = append(procs, j.ranks...)
		}
	case rep.Process != nil:
		procs = append(procs, *rep.Process)
	}
	for _, p := range procs {
		if p.State == "" {
			continue
		}
		evs = append(evs, event.Event{TS: p.StateTS, Type: event.ProcessState, EntityID: "pid-" + strconv.FormatInt(p.PID, 10),
			NodeID: p.Node, PID: p.PID, JobID: p.JobID, Value: p.State})
	}
	var out []Match
	for i := range evs {
		ev := &evs[i]
		if !rs.Triggers(ev.Type) {
			continue
		}
		for _, m := range rs.Evaluate(rules.InputFor(ev, g)) {
			out = append(out, MatchOf(ev.TS, m))
		}
	}
	return out
}

// dedupMatches keeps one match per rule and target, the latest, ordered
// by severity then rule, node and pid.
func dedupMatches(ms []Match) []Match {
	type key struct {
		rule, node, entity string
		pid                int64
	}
	latest := map[key]Match{}
	for _, m := range ms {
		k := key{m.Rule, m.Node, m.EntityID, m.PID}
		if m.PID != 0 {
			k.entity = ""
		}
		if old, ok := latest[k]; !ok || m.TS > old.TS {
			latest[k] = m
		}
	}
	out := make([]Match, 0, len(latest))
	for _, m := range latest {
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if sa, sb := severityRank(a.Severity), severityRank(b.Severity); sa != sb {
			return sa > sb
		}
		if a.Rule != b.Rule {
			return a.Rule < b.Rule
		}
		if a.Node != b.Node {
			return a.Node < b.Node
		}
		if a.PID != b.PID {
			return a.PID < b.PID
		}
		return a.EntityID < b.EntityID
	})
	return out
}

func severityRank(s rules.Severity) int {
	switch s {
	case rules.SeverityCritical:
		return 2
	case rules.SeverityWarning:
		return 1
	}
	return 0
}

// fixable reports whether `ark fix` runs this action type; Quarantine is
// the remediator's, ReportOnly does nothing worth a command.
func fixable(t rules.ActionType) bool {
	switch t {
	case rules.ActionSignal, rules.ActionGracefulShutdown, rules.ActionRunHook:
		return true
	}
	return false
}

// suggest turns the matches' actions into `ark fix` commands and the
// remediator's suggestions.
func suggest(ms []Match, hub string) ([]Fix, []string) {
	fixes := []Fix{}
	rem := []string{}
	seen := map[string]bool{}
	for _, m := range ms {
		for _, a := range m.Actions {
			switch {
			case fixable(a.Type) && m.PID > 0:
				f := Fix{Node: m.Node, PID: m.PID, JobID: m.JobID, Action: string(a.Type), Params: a.Params, Rule: m.Rule}
				f.Command = FixCommand(f, hub)
				if !seen[f.Command] {
					seen[f.Command] = true
					fixes = append(fixes, f)
				}
			case a.Type == rules.ActionQuarantine:
				where := m.Node
				if where == "" {
					where = "the host"
				}
				s := "quarantine " + where
				if c := a.Class(); c != "" {
					s += " as " + c
				}
				s += " (" + m.Rule + "): the hub's remediator taints and drains it when the alert fires"
				if !seen[s] {
					seen[s] = true
					rem = append(rem, s)
				}
			}
		}
	}
	return fixes, rem
}

// FixCommand is the command line that runs f: on the local agent, or
// through the hub at hub.
func FixCommand(f Fix, hub string) string {
	parts := []string{"ark", "fix", strconv.FormatInt(f.PID, 10)}
	if hub != "" {
		parts = append(parts, "--hub", shellQuote(hub))
		if f.Node != "" {
			parts = append(parts, "--node", shellQuote(f.Node))
		}
	}
	parts = append(parts, "--action", shellQuote(f.Action))
	keys := make([]string, 0, len(f.Params))
	for k := range f.Params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		parts = append(parts, "--param", shellQuote(k+"="+f.Params[k]))
	}
	return strings.Join(parts, " ")
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	safe := func(r rune) bool {
		return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=@,+%", r)
	}
	if s != "" && strings.IndexFunc(s, func(r rune) bool { return !safe(r) }) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
