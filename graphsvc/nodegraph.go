package graphsvc

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/ark-gpu/ark/graph"
)

// NodeGraph is the body of GET /api/v1/graph: the two data frames of
// Grafana's Node Graph panel, as its JSON data sources read them.
type NodeGraph struct {
	Nodes []GraphNode `json:"nodes"`
	Edges []GraphEdge `json:"edges"`
}

// GraphNode is one row of the nodes frame.
type GraphNode struct {
	ID            string `json:"id"`
	Title         string `json:"title"`
	Subtitle      string `json:"subtitle"`
	MainStat      string `json:"mainstat"`
	SecondaryStat string `json:"secondarystat,omitempty"`
	Color         string `json:"color"`
	Kind          string `json:"detail__kind"`
}

// GraphEdge is one row of the edges frame.
type GraphEdge struct {
	ID       string `json:"id"`
	Source   string `json:"source"`
	Target   string `json:"target"`
	MainStat string `json:"mainstat"`
}

// Node colours by health: worse colours win when a node is seen twice.
const (
	colorOK      = "green"
	colorJob     = "blue"
	colorStale   = "gray"
	colorWaiting = "orange" // a stuck process, a symptom, a minor or downstream fault
	colorFault   = "red"    // an active fault, and what it blocks
)

func colorRank(c string) int {
	switch c {
	case colorFault:
		return 4
	case colorWaiting:
		return 3
	case colorStale:
		return 2
	case colorOK, colorJob:
		return 1
	}
	return 0
}

// nodeGraphBuilder collects nodes and edges by id.
type nodeGraphBuilder struct {
	nodes map[string]*GraphNode
	edges map[string]*GraphEdge
}

func (b *nodeGraphBuilder) node(id string) *GraphNode {
	n := b.nodes[id]
	if n == nil {
		n = &GraphNode{ID: id, Title: id, Subtitle: hostOf(id), Color: colorOK, Kind: kindOf(id)}
		if _, local, ok := strings.Cut(id, "/"); ok && n.Subtitle != "" {
			n.Title = local
		}
		switch n.Kind {
		case "resource":
			n.MainStat = graph.ResourceClass(n.Title)
		case "process":
			n.MainStat = "process"
		}
		b.nodes[id] = n
	}
	return n
}

func (n *GraphNode) paint(c string) {
	if colorRank(c) > colorRank(n.Color) {
		n.Color = c
	}
}

func (b *nodeGraphBuilder) edge(from, to, typ, stat string) {
	b.node(from)
	b.node(to)
	id := from + " " + typ + " " + to
	if e := b.edges[id]; e != nil {
		if stat != "" {
			e.MainStat = stat
		}
		return
	}
	if stat == "" {
		stat = typ
	}
	b.edges[id] = &GraphEdge{ID: id, Source: from, Target: to, MainStat: stat}
}

// kindOf guesses a node's kind from its id, for nodes known only by a
// chain hop.
func kindOf(id string) string {
	switch {
	case strings.HasPrefix(id, "job/"):
		return "job"
	case strings.Contains(id, "#"):
		return "error"
	case strings.Contains(id, "/pid-") || strings.HasPrefix(id, "pid-"):
		return "process"
	}
	return "resource"
}

// JobGraph returns the subgraph of one job for Grafana's Node Graph panel:
// its ranks, the resources and remote ranks they use or wait on, and the
// faults Why finds, coloured by health. found is false when the graph does
// not know the job.
func (h *Hub) JobGraph(jobID string) (NodeGraph, bool, error) {
	res, err := h.Why(graph.Target{JobID: jobID}, 0)
	if err != nil {
		return NodeGraph{}, false, err
	}
	if !res.Found {
		return NodeGraph{}, false, nil
	}
	procs := h.g.Processes(graph.ProcessFilter{JobID: jobID})
	stale := map[string]bool{}
	for _, s := range res.StaleHosts {
		stale[s] = true
	}
	b := &nodeGraphBuilder{nodes: map[string]*GraphNode{}, edges: map[string]*GraphEdge{}}

	jobNode := b.node("job/" + jobID)
	jobNode.Title, jobNode.Subtitle, jobNode.Color = jobID, "job", colorJob
	jobNode.MainStat = strconv.Itoa(len(procs)) + " ranks"

	stuck := 0
	for _, p := range procs {
		id := p.Node + "/pid-" + strconv.FormatInt(p.PID, 10)
		n := b.node(id)
		n.Kind = "process"
		if p.Rank != "" {
			n.Title = "rank " + p.Rank
			n.SecondaryStat = "pid " + strconv.FormatInt(p.PID, 10)
		}
		n.MainStat = p.State
		if n.MainStat == "" {
			n.MainStat = "running"
		}
		switch {
		case stale[p.Node]:
			n.paint(colorStale)
			n.MainStat += " (stale host)"
		case p.Stuck:
			n.paint(colorWaiting)
		}
		if p.Stuck {
			stuck++
		}
		b.edge(id, jobNode.ID, graph.MemberOf.String(), "")
		for _, u := range p.Resources {
			r := b.node(u.ID)
			if u.Faulted {
				r.paint(colorFault)
				r.SecondaryStat = "faulted"
			}
			b.edge(id, u.ID, u.Type, fmt.Sprintf("%s ×%d", u.Type, u.Count))
		}
	}
	if stuck > 0 {
		jobNode.SecondaryStat = strconv.Itoa(stuck) + " stuck"
	}

	for i, c := range res.Causes {
		for _, hop := range c.Chain {
			b.edge(hop.From, hop.To, hop.Type, "")
		}
		resID := c.EntityID
		if c.NodeID != "" {
			resID = c.NodeID + "/" + c.EntityID
		}
		r := b.node(resID)
		label := "cause #" + strconv.Itoa(i+1)
		if !strings.HasPrefix(r.MainStat, "cause #") {
			r.MainStat = label
		}
		if c.Kind != "error" {
			r.paint(colorWaiting)
			r.SecondaryStat = c.Summary
			continue
		}
		errID := resID + "#" + string(c.EventType)
		if n := len(c.Chain); n > 0 && c.Chain[n-1].Type == graph.BlockedBy.String() {
			errID = c.Chain[n-1].To
		} else {
			b.edge(resID, errID, graph.BlockedBy.String(), "")
		}
		e := b.node(errID)
		e.Kind = "error"
		e.Title = c.Summary
		e.Subtitle = c.NodeID + " " + c.EntityID
		e.MainStat = c.Severity
		e.SecondaryStat = label
		color := colorWaiting
		if !c.Downstream && !c.Sympathetic && (c.Severity == "fatal" || c.Severity == "degraded" || i == 0) {
			color = colorFault
		}
		e.paint(color)
		r.paint(color)
		if i == 0 {
			jobNode.paint(color)
		}
	}
	return b.frames(), true, nil
}

// frames returns the collected nodes and edges sorted by id.
func (b *nodeGraphBuilder) frames() NodeGraph {
	ng := NodeGraph{Nodes: make([]GraphNode, 0, len(b.nodes)), Edges: make([]GraphEdge, 0, len(b.edges))}
	for _, n := range b.nodes {
		ng.Nodes = append(ng.Nodes, *n)
	}
	for _, e := range b.edges {
		ng.Edges = append(ng.Edges, *e)
	}
	sort.Slice(ng.Nodes, func(i, j int) bool { return ng.Nodes[i].ID < ng.Nodes[j].ID })
	sort.Slice(ng.Edges, func(i, j int) bool { return ng.Edges[i].ID < ng.Edges[j].ID })
	return ng
}
