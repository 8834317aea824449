package diag

import (
	"bytes"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	"github.com/ark-gpu/ark/graph/analyze"
)

// maxFixLines bounds the fix commands the text lists; -o json has all.
const maxFixLines = 8

// actionText says in words what a catalog action code asks for.
var actionText = map[string]string{
	"RESTART_BM":           "reboot the node (bare metal)",
	"RESTART_VM":           "restart the VM",
	"RESET_GPU":            "reset the GPU",
	"RESTART_APP":          "restart the application",
	"CONTACT_SUPPORT":      "contact NVIDIA support",
	"CHECK_MECHANICALS":    "check the mechanicals (power, cooling, seating)",
	"UPDATE_SWFW":          "update the driver or firmware",
	"CHECK_UVM":            "check the UVM driver",
	"IGNORE":               "no action",
	"WORKFLOW_XID_48":      "double-bit ECC: reset the GPU or reboot; check the retired rows",
	"WORKFLOW_XID_45":      "alone: restart the fabric manager; with other XIDs: follow them",
	"WORKFLOW_NVLINK_ERR":  "follow the NVLink error workflow",
	"WORKFLOW_NVLINK5_ERR": "follow the NVLink5 error workflow",
}

// ActionText is a catalog action code with what it asks for in words.
func ActionText(code string) string {
	code = strings.TrimSpace(code)
	if code == "" {
		return "-"
	}
	if t, ok := actionText[code]; ok {
		return code + " — " + t
	}
	return code
}

// WriteText writes the diagnosis for a person: the root cause and what
// the catalog says, the blast radius, the other causes, the rules that
// matched and the commands to run.
func WriteText(out io.Writer, rep Report) error {
	var w bytes.Buffer
	writeText(&w, rep)
	_, err := out.Write(w.Bytes())
	return err
}

func writeText(w *bytes.Buffer, rep Report) {
	fmt.Fprintf(w, "DIAGNOSIS of %s at %s", rep.Target, analyze.Clock(rep.At))
	if rep.Scope != "" {
		fmt.Fprintf(w, " (%s)", rep.Scope)
	}
	fmt.Fprintf(w, ": %d process(es)\n", rep.Ranks)
	if p := rep.Process; p != nil {
		fmt.Fprintf(w, "process: pid %d on %s  job %s  rank %s  state %s\n", p.PID, dash(p.Node), dash(p.JobID), dash(p.Rank), dash(p.State))
	}
	if len(rep.StaleHosts) > 0 {
		fmt.Fprintf(w, "stale hosts (the hub lost them; what it knows may be old): %s\n", strings.Join(rep.StaleHosts, ", "))
	}
	switch {
	case !rep.Found:
		fmt.Fprintf(w, "%s not found\n", rep.Target)
		return
	case len(rep.Causes) == 0:
		fmt.Fprintln(w, "no cause found: nothing this target depends on reports a fault")
	default:
		top := rep.Causes[0]
		fmt.Fprintf(w, "\nROOT CAUSE: %s %s on %s — %s\n", top.Severity, top.EntityID, dash(top.NodeID), top.Summary)
		fmt.Fprintf(w, "  reached from %d/%d ranks, since %s (%s)\n", top.AffectedRanks, top.TotalRanks,
			analyze.Clock(top.FirstSeen), analyze.Ago(top.FirstSeen, rep.At))
		fmt.Fprintf(w, "  chain: %s\n", analyze.ChainLine(top.Chain))
		writeCatalog(w, top.Catalog)
	}
	writeBlast(w, rep.Blast)
	if len(rep.Causes) > 1 {
		fmt.Fprintln(w, "\nOTHER CAUSES:")
		for i, c := range rep.Causes[1:] {
			flags := ""
			switch {
			case c.Downstream:
				flags = " [downstream]"
			case c.Sympathetic:
				flags = " [sympathetic]"
			case c.Flapping:
				flags = " [flapping]"
			}
			fmt.Fprintf(w, "  %d. %.2f %s %s on %s — %s%s (%d/%d ranks, %s)\n", i+2, c.Score, c.Severity, c.EntityID, dash(c.NodeID),
				c.Summary, flags, c.AffectedRanks, c.TotalRanks, analyze.Ago(c.FirstSeen, rep.At))
			if c.Catalog != nil {
				fmt.Fprintf(w, "     catalog: %s; then %s\n", ActionText(c.Catalog.ImmediateAction), ActionText(c.Catalog.InvestigatoryAction))
			}
		}
	}
	fmt.Fprintf(w, "\nRULES MATCHED: %d\n", len(rep.Rules))
	writeRules(w, rep.Rules)
	fmt.Fprintln(w, "\nSUGGESTED REMEDIATION:")
	if len(rep.Fixes) == 0 && len(rep.Remediation) == 0 {
		fmt.Fprintln(w, "  none from the rules")
	}
	for i, f := range rep.Fixes {
		if i == maxFixLines {
			fmt.Fprintf(w, "  ... and %d more (-o json lists them all)\n", len(rep.Fixes)-i)
			break
		}
		fmt.Fprintf(w, "  %s    # %s: pid %d on %s\n", f.Command, f.Rule, f.PID, dash(f.Node))
	}
	for _, r := range rep.Remediation {
		fmt.Fprintf(w, "  %s\n", r)
	}
}

func writeCatalog(w *bytes.Buffer, c *Catalog) {
	if c == nil {
		return
	}
	fmt.Fprintf(w, "  XID %d %s: %s\n", c.Code, c.Mnemonic, c.Description)
	fmt.Fprintf(w, "    immediate action:     %s\n", ActionText(c.ImmediateAction))
	fmt.Fprintf(w, "    investigatory action: %s\n", ActionText(c.InvestigatoryAction))
}

func writeBlast(w *bytes.Buffer, br *BlastRadius) {
	if br == nil || len(br.Jobs) == 0 {
		return
	}
	fmt.Fprintf(w, "\nBLAST RADIUS of %s on %s since %s:\n", br.EntityID, dash(br.Node), analyze.Clock(br.Onset))
	fmt.Fprintf(w, "  jobs:  %d\n", len(br.Jobs))
	fmt.Fprintf(w, "  ranks: %d on %d host(s), %d stuck\n", br.Ranks, br.Hosts, br.Stuck)
	gpus := strconv.Itoa(br.GPUs)
	if br.GPUsAssumed > 0 {
		gpus += fmt.Sprintf(" (%d assumed: ranks with no GPU known count one each)", br.GPUsAssumed)
	}
	fmt.Fprintf(w, "  GPUs:  %s\n", gpus)
	fmt.Fprintf(w, "  GPU-hours lost: %.2f so far, %.2f per hour while it lasts\n", br.GPUHoursLost, br.GPUHoursPerHour)
	for _, j := range br.Jobs {
		fmt.Fprintf(w, "  job %s: ranks %s on %s; %d GPU(s), %.2f GPU-hours lost\n", dash(j.JobID), rankList(j.Ranks),
			strings.Join(j.Hosts, ","), len(j.GPUs)+j.GPUsAssumed, j.GPUHoursLost)
	}
}

// writeRules lists the matches, one line per rule with its targets.
func writeRules(w *bytes.Buffer, ms []Match) {
	var order []string
	by := map[string][]Match{}
	for _, m := range ms {
		if _, ok := by[m.Rule]; !ok {
			order = append(order, m.Rule)
		}
		by[m.Rule] = append(by[m.Rule], m)
	}
	for _, name := range order {
		group := by[name]
		m := group[0]
		if len(group) == 1 {
			fmt.Fprintf(w, "  %s %s: %s\n", m.Rule, m.Severity, m.Message)
			continue
		}
		var targets []string
		for i, g := range group {
			if i == 6 {
				targets = append(targets, fmt.Sprintf("... %d more", len(group)-i))
				break
			}
			targets = append(targets, matchTarget(g))
		}
		fmt.Fprintf(w, "  %s %s on %d targets: %s\n", m.Rule, m.Severity, len(group), strings.Join(targets, ", "))
	}
}

func matchTarget(m Match) string {
	s := m.EntityID
	if m.PID != 0 {
		s = "pid " + strconv.FormatInt(m.PID, 10)
	}
	if m.Node != "" {
		s = m.Node + " " + s
	}
	return s
}

// rankList writes rank numbers as ranges ("0-7,9"), or pids when a
// process has no rank.
func rankList(rs []Rank) string {
	var nums []int
	var other []string
	for _, r := range rs {
		if n, err := strconv.Atoi(r.Rank); err == nil {
			nums = append(nums, n)
		} else {
			other = append(other, "pid "+strconv.FormatInt(r.PID, 10))
		}
	}
	sort.Ints(nums)
	var parts []string
	for i := 0; i < len(nums); {
		j := i
		for j+1 < len(nums) && nums[j+1] == nums[j]+1 {
			j++
		}
		if j > i {
			parts = append(parts, fmt.Sprintf("%d-%d", nums[i], nums[j]))
		} else {
			parts = append(parts, strconv.Itoa(nums[i]))
		}
		i = j + 1
	}
	parts = append(parts, other...)
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ",")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
