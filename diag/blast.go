package diag

import (
	"slices"
	"sort"
	"strings"

	"github.com/ark-gpu/ark/graph"
)

// BlastRadius is what the leading fault costs: the jobs it stalls, their
// ranks and GPUs, and the GPU-hours lost since it began. A training job is
// synchronous — one lost rank idles every GPU of the job — so every GPU of
// an affected job counts from the fault's onset.
type BlastRadius struct {
	// Node and EntityID name the fault measured (the leading cause).
	Node     string `json:"node,omitempty"`
	EntityID string `json:"entity_id"`
	// Onset is when the fault began (ms); At when it was measured.
	Onset int64       `json:"onset"`
	At    int64       `json:"at"`
	Jobs  []JobImpact `json:"jobs"`
	// Totals over the jobs.
	Ranks int `json:"ranks"`
	Stuck int `json:"stuck_ranks"`
	Hosts int `json:"hosts"`
	GPUs  int `json:"gpus"`
	// GPUsAssumed counts ranks with no GPU known to the graph, counted as
	// one GPU each (the usual one rank per GPU); they are included in GPUs.
	GPUsAssumed int `json:"gpus_assumed"`
	// GPUHoursLost is GPUs × the time since Onset; GPUHoursPerHour what
	// each further hour costs while the fault lasts.
	GPUHoursLost    float64 `json:"gpu_hours_lost"`
	GPUHoursPerHour float64 `json:"gpu_hours_per_hour"`
}

// JobImpact is one job a fault stalls.
type JobImpact struct {
	JobID           string   `json:"job_id"`
	Ranks           []Rank   `json:"ranks"`
	Stuck           int      `json:"stuck_ranks"`
	Hosts           []string `json:"hosts"`
	GPUs            []string `json:"gpus"`
	GPUsAssumed     int      `json:"gpus_assumed"`
	GPUHoursLost    float64  `json:"gpu_hours_lost"`
	GPUHoursPerHour float64  `json:"gpu_hours_per_hour"`
	ranks           []graph.Process
}

// Rank is one process of an affected job.
type Rank struct {
	Node  string   `json:"node,omitempty"`
	PID   int64    `json:"pid"`
	Rank  string   `json:"rank,omitempty"`
	State string   `json:"state,omitempty"`
	Stuck bool     `json:"stuck"`
	GPUs  []string `json:"gpus,omitempty"`
}

const msPerHour = 3_600_000

// leading returns the cause the blast radius measures: the first error
// that is not a consequence of another, else the first cause.
func leading(cs []graph.Cause) (graph.Cause, bool) {
	for _, c := range cs {
		if c.Kind == "error" && !c.Downstream {
			return c, true
		}
	}
	if len(cs) > 0 {
		return cs[0], true
	}
	return graph.Cause{}, false
}

// sameFault reports whether a and b are the same device's fault.
func sameFault(a, b graph.Cause) bool { return a.NodeID == b.NodeID && a.EntityID == b.EntityID }

// blastRadius measures the leading cause of res: the jobs of the target
// and of the processes on the faulty device that reach it.
func blastRadius(g *graph.Graph, t graph.Target, res graph.Result) *BlastRadius {
	top, ok := leading(res.Causes)
	if !ok {
		return nil
	}
	br := &BlastRadius{Node: top.NodeID, EntityID: top.EntityID, Onset: top.FirstSeen, At: res.At, Jobs: []JobImpact{}}
	jobs := map[string]bool{}
	var loose []graph.Process // target processes without a job
	if t.JobID != "" {
		jobs[t.JobID] = true
	} else {
		for _, p := range g.Processes(graph.ProcessFilter{Node: t.Node, PID: t.PID}) {
			if p.JobID != "" {
				jobs[p.JobID] = false // to check
			} else if t.PID != 0 {
				loose = append(loose, p)
			}
		}
	}
	// Other jobs on the faulty device are hit too.
	dev := top.EntityID
	if top.NodeID != "" {
		dev = top.NodeID + "/" + top.EntityID
	}
	for _, p := range g.Processes(graph.ProcessFilter{Node: top.NodeID}) {
		if p.JobID == "" {
			continue
		}
		for _, r := range p.Resources {
			if r.ID == dev {
				if _, ok := jobs[p.JobID]; !ok {
					jobs[p.JobID] = false
				}
			}
		}
	}
	ids := make([]string, 0, len(jobs))
	for id := range jobs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	hosts := map[string]bool{}
	for _, id := range ids {
		if !jobs[id] && !reaches(g, id, top, res.At) {
			continue
		}
		br.add(jobImpact(id, g.Processes(graph.ProcessFilter{JobID: id})), hosts)
	}
	if len(loose) > 0 {
		br.add(jobImpact("", loose), hosts)
	}
	br.Hosts = len(hosts)
	if lost := float64(br.At-br.Onset) / msPerHour; lost > 0 {
		for i := range br.Jobs {
			j := &br.Jobs[i]
			j.GPUHoursLost = round2(j.GPUHoursPerHour * lost)
		}
		br.GPUHoursLost = round2(br.GPUHoursPerHour * lost)
	}
	return br
}

// reaches reports whether job's own causes include the fault top.
func reaches(g *graph.Graph, job string, top graph.Cause, at int64) bool {
	res, err := g.Why(graph.Target{JobID: job}, at)
	if err != nil {
		return false
	}
	for _, c := range res.Causes {
		if sameFault(c, top) {
			return true
		}
	}
	return false
}

func (br *BlastRadius) add(j JobImpact, hosts map[string]bool) {
	if len(j.Ranks) == 0 {
		return
	}
	br.Jobs = append(br.Jobs, j)
	br.Ranks += len(j.Ranks)
	br.Stuck += j.Stuck
	br.GPUs += len(j.GPUs) + j.GPUsAssumed
	br.GPUsAssumed += j.GPUsAssumed
	br.GPUHoursPerHour += j.GPUHoursPerHour
	for _, h := range j.Hosts {
		hosts[h] = true
	}
}

func jobImpact(id string, procs []graph.Process) JobImpact {
	j := JobImpact{JobID: id, Ranks: []Rank{}, Hosts: []string{}, GPUs: []string{}, ranks: procs}
	gpus := map[string]bool{}
	hosts := map[string]bool{}
	for _, p := range procs {
		r := Rank{Node: p.Node, PID: p.PID, Rank: p.Rank, State: p.State, Stuck: p.Stuck}
		for _, u := range p.Resources {
			local := u.ID[strings.LastIndexByte(u.ID, '/')+1:]
			if !strings.HasPrefix(strings.ToLower(local), "gpu") || slices.Contains(r.GPUs, u.ID) {
				continue
			}
			r.GPUs = append(r.GPUs, u.ID)
			if !gpus[u.ID] {
				gpus[u.ID] = true
				j.GPUs = append(j.GPUs, u.ID)
			}
		}
		if len(r.GPUs) == 0 {
			j.GPUsAssumed++
		}
		if r.Stuck {
			j.Stuck++
		}
		if p.Node != "" && !hosts[p.Node] {
			hosts[p.Node] = true
			j.Hosts = append(j.Hosts, p.Node)
		}
		j.Ranks = append(j.Ranks, r)
	}
	sort.Strings(j.GPUs)
	sort.Strings(j.Hosts)
	j.GPUHoursPerHour = float64(len(j.GPUs) + j.GPUsAssumed)
	return j
}

func round2(f float64) float64 {
	return float64(int64(f*100+0.5)) / 100
}
