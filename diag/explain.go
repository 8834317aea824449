package diag

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/graph"
	"github.com/ark-gpu/ark/llm"
)

// Evidence is the evidence subgraph a model is shown: the causes with their
// chains, the events that evidence them and the catalog's entries, the
// rules that matched and the size of the blast radius. It holds no raw log
// and nothing the diagnosis did not use.
type Evidence struct {
	Target string          `json:"target"`
	At     int64           `json:"at"`
	Causes []EvidenceCause `json:"causes"`
	Rules  []EvidenceRule  `json:"rules_matched"`
	Blast  *EvidenceBlast  `json:"blast_radius,omitempty"`
}

// EvidenceCause is one cause as the model sees it.
type EvidenceCause struct {
	Rank          int           `json:"rank"`
	Node          string        `json:"node,omitempty"`
	EntityID      string        `json:"entity_id"`
	Kind          string        `json:"kind"`
	EventType     event.Type    `json:"event_type"`
	Severity      string        `json:"severity"`
	Summary       string        `json:"summary"`
	XID           int           `json:"xid,omitempty"`
	Catalog       *Catalog      `json:"xid_catalog,omitempty"`
	Flags         []string      `json:"flags,omitempty"`
	FirstSeen     int64         `json:"first_seen"`
	LastSeen      int64         `json:"last_seen"`
	Count         int           `json:"count"`
	AffectedRanks int           `json:"affected_ranks"`
	TotalRanks    int           `json:"total_ranks"`
	Chain         []graph.Hop   `json:"chain"`
	Events        []event.Event `json:"events"`
}

// EvidenceRule is a rule that matched, without its actions.
type EvidenceRule struct {
	Rule     string `json:"rule"`
	Severity string `json:"severity"`
	Targets  int    `json:"targets"`
}

// EvidenceBlast is the blast radius in numbers.
type EvidenceBlast struct {
	Jobs            int     `json:"jobs"`
	Ranks           int     `json:"ranks"`
	StuckRanks      int     `json:"stuck_ranks"`
	Hosts           int     `json:"hosts"`
	GPUs            int     `json:"gpus"`
	GPUHoursLost    float64 `json:"gpu_hours_lost"`
	GPUHoursPerHour float64 `json:"gpu_hours_per_hour"`
}

// EvidenceOf extracts the evidence subgraph of rep, keeping at most
// maxCauses causes and maxEvents events per cause (the latest).
func EvidenceOf(rep Report, maxCauses, maxEvents int) Evidence {
	ev := Evidence{Target: rep.Target.String(), At: rep.At, Causes: []EvidenceCause{}, Rules: []EvidenceRule{}}
	for i, c := range rep.Causes {
		if i == maxCauses {
			break
		}
		ec := EvidenceCause{Rank: i + 1, Node: c.NodeID, EntityID: c.EntityID, Kind: c.Kind, EventType: c.EventType,
			Severity: c.Severity, Summary: c.Summary, XID: c.XID, Catalog: c.Catalog, FirstSeen: c.FirstSeen,
			LastSeen: c.LastSeen, Count: c.Count, AffectedRanks: c.AffectedRanks, TotalRanks: c.TotalRanks,
			Chain: c.Chain, Events: c.Evidence}
		if len(ec.Events) > maxEvents {
			ec.Events = ec.Events[len(ec.Events)-maxEvents:]
		}
		for _, f := range []struct {
			name string
			on   bool
		}{{"downstream", c.Downstream}, {"sympathetic", c.Sympathetic}, {"flapping", c.Flapping}} {
			if f.on {
				ec.Flags = append(ec.Flags, f.name)
			}
		}
		ev.Causes = append(ev.Causes, ec)
	}
	for _, m := range rep.Rules {
		if n := len(ev.Rules); n > 0 && ev.Rules[n-1].Rule == m.Rule {
			ev.Rules[n-1].Targets++
			continue
		}
		ev.Rules = append(ev.Rules, EvidenceRule{Rule: m.Rule, Severity: string(m.Severity), Targets: 1})
	}
	if b := rep.Blast; b != nil {
		ev.Blast = &EvidenceBlast{Jobs: len(b.Jobs), Ranks: b.Ranks, StuckRanks: b.Stuck, Hosts: b.Hosts, GPUs: b.GPUs,
			GPUHoursLost: b.GPUHoursLost, GPUHoursPerHour: b.GPUHoursPerHour}
	}
	return ev
}

// Anonymize registers the private names of ev (hosts, jobs, pods, IPs,
// paths, users) with a and returns ev with each replaced by its
// placeholder.
func Anonymize(ev Evidence, a *llm.Anonymizer) Evidence {
	var texts []string
	addID := func(id string) {
		// graph ids are host/entity, job/ID, or a bare entity
		if rest, ok := strings.CutPrefix(id, "job/"); ok {
			a.Add(llm.Job, rest)
		} else if host, _, ok := strings.Cut(id, "/"); ok {
			a.Add(llm.Host, host)
		}
	}
	for _, c := range ev.Causes {
		a.Add(llm.Host, c.Node)
		for _, h := range c.Chain {
			addID(h.From)
			addID(h.To)
		}
		texts = append(texts, c.Summary)
		for _, e := range c.Events {
			a.Add(llm.Host, e.NodeID)
			a.Add(llm.Job, e.JobID)
			texts = append(texts, e.Value)
			for _, at := range e.Attrs {
				switch at.Key {
				case "addr", "peer":
					a.AddAddr(at.Value)
				case "pod", "pod_name":
					a.Add(llm.Pod, at.Value)
				case "user":
					a.Add(llm.User, at.Value)
				case "namespace", "job":
					a.Add(llm.Job, at.Value)
				case "node", "host", "hostname":
					a.Add(llm.Host, at.Value)
				}
				texts = append(texts, at.Value)
			}
		}
	}
	texts = append(texts, ev.Target)
	for _, t := range texts {
		a.Scan(t)
	}
	if strings.HasPrefix(ev.Target, "job ") {
		a.Add(llm.Job, strings.TrimPrefix(ev.Target, "job "))
	} else if i := strings.LastIndex(ev.Target, " on "); i >= 0 {
		a.Add(llm.Host, ev.Target[i+len(" on "):])
	} else if h, ok := strings.CutPrefix(ev.Target, "node "); ok {
		a.Add(llm.Host, h)
	}

	out := ev
	out.Target = a.Replace(ev.Target)
	out.Causes = make([]EvidenceCause, len(ev.Causes))
	for i, c := range ev.Causes {
		c.Node = a.Replace(c.Node)
		c.Summary = a.Replace(c.Summary)
		chain := make([]graph.Hop, len(c.Chain))
		for j, h := range c.Chain {
			chain[j] = graph.Hop{From: a.Replace(h.From), To: a.Replace(h.To), Type: h.Type}
		}
		c.Chain = chain
		evs := make([]event.Event, len(c.Events))
		for j, e := range c.Events {
			e.NodeID, e.JobID, e.EntityID, e.Value = a.Replace(e.NodeID), a.Replace(e.JobID), a.Replace(e.EntityID), a.Replace(e.Value)
			attrs := make(event.Attrs, len(e.Attrs))
			for k, at := range e.Attrs {
				attrs[k] = event.Attr{Key: at.Key, Value: a.Replace(at.Value)}
			}
			e.Attrs = attrs
			evs[j] = e
		}
		c.Events = evs
		out.Causes[i] = c
	}
	return out
}

// systemPrompt tells the model what it is shown and what it may say.
const systemPrompt = `You help an on-call engineer understand why a GPU training job is stalled.
You are given, as JSON, the evidence subgraph that Ark's deterministic diagnosis used: ranked causes with the chain of dependencies from the job's ranks to each cause, the events that evidence them, NVIDIA's XID catalog entry for each XID, the rules that matched and the blast radius.
Explain in a few short paragraphs what most likely happened, why the first cause explains the stall, and what to check or do next, citing the evidence.
Use only names that appear in the evidence. Names such as HOST_1, JOB_1, POD_1, IP_1, PATH_1 and USER_1 are placeholders for private names: write them exactly as given.
You cannot act: do not claim to have run anything.`

// PromptOptions bound what Prompt sends.
type PromptOptions struct {
	// Anonymize replaces private names with placeholders (and needs the
	// Anonymizer to map them back).
	Anonymizer *llm.Anonymizer
	// TokenBudget bounds the prompt, in estimated tokens (bytes/4); the
	// evidence is trimmed to fit: fewer events per cause, then fewer
	// causes. 0 means 6000.
	TokenBudget int
}

// ErrOverBudget is returned when even the smallest evidence exceeds the
// token budget.
var ErrOverBudget = errors.New("the evidence does not fit the token budget")

// Prompt builds the messages that ask a model to explain rep.
func Prompt(rep Report, o PromptOptions) ([]llm.Message, error) {
	budget := o.TokenBudget
	if budget <= 0 {
		budget = 6000
	}
	var last int
	for _, size := range [][2]int{{5, 8}, {5, 4}, {3, 2}, {2, 1}, {1, 1}} {
		ev := EvidenceOf(rep, size[0], size[1])
		if o.Anonymizer != nil {
			ev = Anonymize(ev, o.Anonymizer)
		}
		b, err := json.MarshalIndent(ev, "", " ")
		if err != nil {
			return nil, fmt.Errorf("encoding the evidence: %w", err)
		}
		msgs := []llm.Message{{Role: "system", Content: systemPrompt}, {Role: "user", Content: string(b)}}
		last = EstimateTokens(msgs)
		if last <= budget {
			return msgs, nil
		}
	}
	return nil, fmt.Errorf("%w: %d tokens at the least, budget %d (--llm.token-budget)", ErrOverBudget, last, budget)
}

// EstimateTokens estimates the tokens of msgs: about four bytes a token
// for English and JSON.
func EstimateTokens(msgs []llm.Message) int {
	n := 0
	for _, m := range msgs {
		n += (len(m.Content)+3)/4 + 4
	}
	return n
}

// Completer answers chat messages; *llm.Client implements it.
type Completer interface {
	Complete(ctx context.Context, msgs []llm.Message, onDelta func(string) error) (string, error)
}

// Explain asks c to explain msgs and writes the answer to w as it
// arrives, with the placeholders of a (nil: none) mapped back. It returns
// the placeholders the model invented (kept, marked unknown).
func Explain(ctx context.Context, c Completer, msgs []llm.Message, a *llm.Anonymizer, w io.Writer) ([]string, error) {
	var r *llm.Restorer
	if a != nil {
		r = a.NewRestorer()
	}
	_, err := c.Complete(ctx, msgs, func(delta string) error {
		if r != nil {
			delta = r.Write(delta)
		}
		_, werr := io.WriteString(w, delta)
		return werr
	})
	if r == nil {
		return nil, err
	}
	if _, werr := io.WriteString(w, r.Flush()); werr != nil && err == nil {
		err = werr
	}
	return r.Unknown, err
}
