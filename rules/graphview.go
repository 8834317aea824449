package rules

import (
	"strings"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/graph"
)

// GraphView answers conditions' graph helpers from a causal graph.
type GraphView struct{ G *graph.Graph }

// ErrorsReachable returns the live errors the process reaches.
func (v GraphView) ErrorsReachable(node string, pid int64) []ErrorInfo {
	res, err := v.G.Why(graph.Target{Node: node, PID: pid}, 0)
	if err != nil {
		return nil
	}
	var out []ErrorInfo
	for _, c := range res.Causes {
		if c.Kind != "error" {
			continue
		}
		out = append(out, ErrorInfo{EntityID: c.EntityID, EventType: c.EventType, Severity: c.Severity, XID: c.XID, Summary: c.Summary})
	}
	return out
}

// WaitsOn reports whether the process waits on a resource whose entity id
// starts with prefix.
func (v GraphView) WaitsOn(node string, pid int64, prefix string) bool {
	for _, p := range v.G.Processes(graph.ProcessFilter{Node: node, PID: pid}) {
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

// InputFor is what ev is evaluated with against g: the process as the graph
// knows it, the edge the event makes, and g for the graph helpers. Ids on
// the event's own host lose the host prefix ("network-ib0", "pid-42"), as
// rule authors write them.
func InputFor(ev *event.Event, g *graph.Graph) Input {
	in := Input{Event: ev, Graph: GraphView{g}}
	if ev.PID > 0 {
		in.Process = Process{PID: ev.PID, JobID: ev.JobID}
		if job, state, rank, ok := g.ProcessInfo(ev.NodeID, ev.PID); ok {
			in.Process = Process{PID: ev.PID, JobID: job, State: state, Rank: rank}
		}
	}
	in.Edge.Type, in.Edge.From, in.Edge.To = graph.EdgeFor(ev, g.Options().QDepthThreshold)
	in.Edge.From = strings.TrimPrefix(in.Edge.From, ev.NodeID+"/")
	in.Edge.To = strings.TrimPrefix(in.Edge.To, ev.NodeID+"/")
	return in
}

// Fresh returns the same rules with cooldowns of their own: a diagnosis
// evaluates them on a snapshot without starting the live set's cooldowns.
func (rs *RuleSet) Fresh() *RuleSet {
	if rs == nil {
		return nil
	}
	out, _ := build(rs.rules, nil) // names were checked when rs was built
	return out
}
