package analyze

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ark-gpu/ark/graph"
)

// WriteJSON writes the report as one indented JSON document.
func WriteJSON(w io.Writer, rep Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// Clock formats a timestamp (ms) in UTC to the second.
func Clock(ms int64) string {
	return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05Z")
}

// Ago says how long before at a timestamp was, as an SRE reads it.
func Ago(ts, at int64) string {
	d := time.Duration(at-ts) * time.Millisecond
	switch {
	case d < 0:
		return "+" + (-d).Round(time.Second).String()
	case d < time.Second:
		return "now"
	}
	return d.Round(time.Second).String() + " ago"
}

// ChainLine renders a chain on one line: a -WaitsOn-> b -Consumes-> c.
func ChainLine(chain []graph.Hop) string {
	if len(chain) == 0 {
		return "(the target itself)"
	}
	var b strings.Builder
	b.WriteString(chain[0].From)
	for _, h := range chain {
		b.WriteString(" -")
		b.WriteString(h.Type)
		b.WriteString("-> ")
		b.WriteString(h.To)
	}
	return b.String()
}

// WriteTable writes the report for a person: the verdict first, then each
// cause with one line of chain and its evidence count.
func WriteTable(out io.Writer, rep Report) error {
	var w bytes.Buffer
	writeTable(&w, rep)
	_, err := out.Write(w.Bytes())
	return err
}

func writeTable(w *bytes.Buffer, rep Report) {
	res := rep.Result
	fmt.Fprintf(w, "%s at %s: %d process(es), %d event(s) replayed\n", res.Target, Clock(res.At), res.Ranks, rep.Events)
	switch {
	case !res.Found:
		fmt.Fprintf(w, "%s not found in the recording\n", res.Target)
		return
	case len(res.Causes) == 0:
		fmt.Fprintln(w, "no cause found: nothing this target depends on reports a fault")
		return
	}
	top := res.Causes[0]
	fmt.Fprintf(w, "ROOT CAUSE: %s %s on %s — %s (%d/%d ranks, since %s)\n\n",
		top.Severity, top.EntityID, top.NodeID, top.Summary, top.AffectedRanks, top.TotalRanks, Ago(top.FirstSeen, res.At))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tSCORE\tSEVERITY\tNODE\tENTITY\tCAUSE\tRANKS\tSINCE\tACTION")
	for i, c := range res.Causes {
		action := c.Action
		if action == "" {
			action = "-"
		}
		summary := c.Summary
		if len(summary) > 60 {
			summary = summary[:57] + "..."
		}
		flags := ""
		if c.Flapping {
			flags = " [flapping]"
		}
		if c.Sympathetic {
			flags = " [sympathetic]"
		}
		if c.Downstream {
			flags = " [downstream]"
		}
		fmt.Fprintf(tw, "%d\t%.2f\t%s\t%s\t%s\t%s%s\t%d/%d\t%s\t%s\n", i+1, c.Score, c.Severity, c.NodeID, c.EntityID,
			summary, flags, c.AffectedRanks, c.TotalRanks, Ago(c.FirstSeen, res.At), action)
		for _, r := range c.Related {
			if len(r) > 70 {
				r = r[:67] + "..."
			}
			fmt.Fprintf(tw, "\t\talso: %s\n", r)
		}
		fmt.Fprintf(tw, "\t\tchain: %s\n", ChainLine(c.Chain))
		fmt.Fprintf(tw, "\t\tevidence: %d event(s), %d kept\n", c.Count, len(c.Evidence))
	}
	_ = tw.Flush() // writes to a bytes.Buffer cannot fail
}

// RejectedLine summarizes rejections by reason, or "" when there were none.
func RejectedLine(rejected map[string]uint64) string {
	var parts []string
	var total uint64
	for r, n := range rejected {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", r, n))
			total += n
		}
	}
	if total == 0 {
		return ""
	}
	sort.Strings(parts)
	return fmt.Sprintf("rejected %d line(s): %s", total, strings.Join(parts, " "))
}
