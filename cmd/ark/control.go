package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"os/user"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter"
	"github.com/ark-gpu/ark/exporter/ipc"
	"github.com/ark-gpu/ark/graph"
	"github.com/ark-gpu/ark/graph/analyze"
	"github.com/ark-gpu/ark/internal/audit"
	"github.com/ark-gpu/ark/link"
	"github.com/ark-gpu/ark/rules"
)

// clientFlags are the flags every command talking to an agent has.
type clientFlags struct {
	socket  string
	output  string
	timeout time.Duration
}

func (f *clientFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.socket, "socket", envOr("ARK_SOCKET", ipc.DefaultSocket), "the agent's control socket")
	cmd.Flags().StringVarP(&f.output, "output", "o", "table", "output format: table or json")
	cmd.Flags().DurationVar(&f.timeout, "timeout", 30*time.Second, "give up after this long")
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func (f *clientFlags) check() error {
	if f.output != "table" && f.output != "json" {
		return usageError{fmt.Errorf("unknown output %q: want table or json", f.output)}
	}
	return nil
}

// call runs one command against the agent.
func (f *clientFlags) call(cmd *cobra.Command, name string, args, out any) error {
	ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
	defer cancel()
	c, err := ipc.Dial(ctx, f.socket)
	if err != nil {
		return err
	}
	defer func() { _ = c.Close() }()
	return c.Call(ctx, name, args, out)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func parsePID(s string) (int64, error) {
	pid, err := strconv.ParseInt(s, 10, 64)
	if err != nil || pid <= 0 {
		return 0, usageError{fmt.Errorf("not a pid: %q", s)}
	}
	return pid, nil
}

func newPSCmd() *cobra.Command {
	var f clientFlags
	var h hubFlags
	var job string
	cmd := &cobra.Command{
		Use:   "ps",
		Short: "List the processes the local agent tracks, with job, GPUs, state and top resource",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.check(); err != nil {
				return err
			}
			var ps []graph.Process
			if h.hub != "" {
				var resp struct {
					Processes []struct {
						graph.Process
						Stale bool `json:"stale"`
					} `json:"processes"`
				}
				q := url.Values{}
				if job != "" {
					q.Set("job_id", job)
				}
				if h.node != "" {
					q.Set("node", h.node)
				}
				if f.output == "json" {
					var raw json.RawMessage
					if err := h.do(cmd.Context(), http.MethodGet, "/api/v1/ps", q, nil, &raw); err != nil {
						return err
					}
					_, err := cmd.OutOrStdout().Write(append(raw, '\n'))
					return err
				}
				if err := h.do(cmd.Context(), http.MethodGet, "/api/v1/ps", q, nil, &resp); err != nil {
					return err
				}
				for _, p := range resp.Processes {
					if p.Stale {
						p.State += " (stale host)"
					}
					ps = append(ps, p.Process)
				}
			} else if err := f.call(cmd, "ps", exporter.PSArgs{JobID: job}, &ps); err != nil {
				return err
			}
			if f.output == "json" {
				return printJSON(cmd.OutOrStdout(), ps)
			}
			var b bytes.Buffer
			tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NODE\tPID\tJOB\tRANK\tSTATE\tGPUS\tTOP RESOURCE\tLAST SEEN")
			for _, p := range ps {
				var gpus []string
				top := "-"
				for _, r := range p.Resources {
					local := r.ID[strings.LastIndexByte(r.ID, '/')+1:]
					if graph.ResourceClass(local) == "gpu" && !contains(gpus, local) {
						gpus = append(gpus, local)
					}
					if top == "-" {
						top = local
						if r.Type == graph.WaitsOn.String() {
							top += " (waits)"
						}
						if r.Faulted {
							top += " FAULT"
						}
					}
				}
				state := p.State
				if state == "" {
					state = "?"
				}
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", dash(p.Node), p.PID, dash(p.JobID), dash(p.Rank), state,
					dash(strings.Join(gpus, ",")), top, time.UnixMilli(p.LastSeen).UTC().Format(time.TimeOnly))
			}
			_ = tw.Flush()
			_, err := cmd.OutOrStdout().Write(b.Bytes())
			return err
		},
	}
	f.add(cmd)
	h.add(cmd, true)
	cmd.Flags().StringVar(&job, "job", "", "only this job's processes")
	return cmd
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newWhyCmd() *cobra.Command {
	var f clientFlags
	var h hubFlags
	var job string
	cmd := &cobra.Command{
		Use:   "why <pid> | --job ID",
		Short: "Explain why a process or a job is stalled, from the local agent's causal graph",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(); err != nil {
				return err
			}
			var ta exporter.TargetArgs
			switch {
			case len(args) == 1 && job != "":
				return usageError{errors.New("give a pid or --job, not both")}
			case len(args) == 1:
				pid, err := parsePID(args[0])
				if err != nil {
					return err
				}
				ta.PID = pid
			case job != "":
				ta.JobID = job
			default:
				return usageError{errors.New("a pid or --job is required")}
			}
			var res graph.Result
			if h.hub != "" {
				q := url.Values{}
				switch {
				case ta.JobID != "":
					q.Set("job_id", ta.JobID)
				case h.node == "":
					return usageError{errHubNode}
				default:
					q.Set("node", h.node)
					q.Set("pid", strconv.FormatInt(ta.PID, 10))
				}
				if err := h.do(cmd.Context(), http.MethodGet, "/api/v1/why", q, nil, &res); err != nil {
					return err
				}
			} else if err := f.call(cmd, "why", ta, &res); err != nil {
				return err
			}
			if f.output == "json" {
				return printJSON(cmd.OutOrStdout(), res)
			}
			return analyze.WriteTable(cmd.OutOrStdout(), analyze.Report{Result: res})
		},
	}
	f.add(cmd)
	h.add(cmd, true)
	cmd.Flags().StringVar(&job, "job", "", "explain this job")
	return cmd
}

func newDiagCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   "diag <pid>",
		Short: "Rule-based diagnosis of one process: matched rules, the cause chain, suggested actions",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(); err != nil {
				return err
			}
			pid, err := parsePID(args[0])
			if err != nil {
				return err
			}
			var d exporter.Diagnosis
			if err := f.call(cmd, "diag", exporter.TargetArgs{PID: pid}, &d); err != nil {
				return err
			}
			if f.output == "json" {
				return printJSON(cmd.OutOrStdout(), d)
			}
			w := cmd.OutOrStdout()
			if d.Process != nil {
				fmt.Fprintf(w, "pid %d  job %s  rank %s  state %s\n", d.Process.PID, dash(d.Process.JobID), dash(d.Process.Rank), dash(d.Process.State))
			}
			if len(d.Why.Causes) == 0 {
				fmt.Fprintln(w, "cause: none found")
			} else {
				c := d.Why.Causes[0]
				fmt.Fprintf(w, "cause: %s %s on %s: %s\n       %s\n", c.Severity, c.EntityID, c.NodeID, c.Summary, analyze.ChainLine(c.Chain))
			}
			fmt.Fprintf(w, "rules matched: %d\n", len(d.Matches))
			for _, m := range d.Matches {
				fmt.Fprintf(w, "  %s  %-22s %s %s\n", time.UnixMilli(m.TS).UTC().Format(time.TimeOnly), m.Match.Rule, m.Match.Severity, m.Match.Message)
			}
			if len(d.Suggested) == 0 {
				fmt.Fprintln(w, "suggested actions: none")
			} else {
				fmt.Fprintln(w, "suggested actions:")
				for _, a := range d.Suggested {
					fmt.Fprintf(w, "  %s %s\n", a.Type, formatParams(a.Params))
				}
			}
			return nil
		},
	}
	f.add(cmd)
	return cmd
}

func formatParams(p map[string]string) string {
	if len(p) == 0 {
		return ""
	}
	var parts []string
	for k, v := range p {
		parts = append(parts, k+"="+v)
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

func newFixCmd() *cobra.Command {
	var (
		f      clientFlags
		h      hubFlags
		action string
		params []string
		dryRun bool
		yes    bool
	)
	cmd := &cobra.Command{
		Use:   "fix <pid> [--action NAME] [--param k=v] [--dry-run] [--yes]",
		Short: "Act on a process through the agent's allow-listed executor (audited)",
		Long: `fix runs one allow-listed action on a tracked process: the one the rules
suggest (see ark diag), or --action Signal|GracefulShutdown|RunHook|ReportOnly
with --param. The agent verifies the process is the one it saw (start time)
and writes an audit entry; --dry-run makes every check and acts on nothing.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(); err != nil {
				return err
			}
			pid, err := parsePID(args[0])
			if err != nil {
				return err
			}
			fa := exporter.FixArgs{PID: pid, Action: action, DryRun: dryRun}
			for _, p := range params {
				k, v, ok := strings.Cut(p, "=")
				if !ok || k == "" {
					return usageError{fmt.Errorf("--param wants key=value, got %q", p)}
				}
				if fa.Params == nil {
					fa.Params = map[string]string{}
				}
				fa.Params[k] = v
			}
			if !dryRun && !yes {
				ok, err := confirm(cmd, fmt.Sprintf("act on pid %d (%s)? [y/N] ", pid, dash(action)))
				if err != nil {
					return err
				}
				if !ok {
					return usageError{errors.New("not confirmed: nothing done (use --yes to skip the question)")}
				}
			}
			var res exporter.FixResult
			if h.hub != "" {
				if h.node == "" {
					return usageError{errHubNode}
				}
				var lr link.Result
				body := map[string]any{"node": h.node, "pid": fa.PID, "action": fa.Action, "params": fa.Params, "dry_run": fa.DryRun, "user": currentUser()}
				if err := h.do(cmd.Context(), http.MethodPost, "/api/v1/fix", nil, body, &lr); err != nil {
					return err
				}
				res = exporter.FixResult{PID: lr.PID, JobID: lr.JobID, Action: lr.Action, Result: audit.Result(lr.Result), Details: lr.Details, Error: lr.Error}
			} else if err := f.call(cmd, "fix", fa, &res); err != nil {
				return err
			}
			if f.output == "json" {
				if err := printJSON(cmd.OutOrStdout(), res); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "%s on pid %d: %s", res.Action, res.PID, res.Result)
				if res.Details != "" {
					fmt.Fprintf(cmd.OutOrStdout(), " (%s)", res.Details)
				}
				fmt.Fprintln(cmd.OutOrStdout())
			}
			if res.Result == "failure" {
				return fmt.Errorf("fix failed: %s", res.Error)
			}
			return nil
		},
	}
	f.add(cmd)
	h.add(cmd, true)
	cmd.Flags().StringVar(&action, "action", "", "action to run (default: the one the rules suggest)")
	cmd.Flags().StringArrayVar(&params, "param", nil, "action parameter key=value (repeatable), e.g. signal=SIGUSR1")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "make every check and audit, act on nothing")
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	return cmd
}

// confirm asks on the terminal; without one it refuses rather than guess.
func confirm(cmd *cobra.Command, question string) (bool, error) {
	in := cmd.InOrStdin()
	if f, ok := in.(*os.File); ok {
		if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err != nil {
			return false, usageError{errors.New("refusing to act without confirmation: stdin is not a terminal (use --yes)")}
		}
	}
	fmt.Fprint(cmd.ErrOrStderr(), question)
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return false, err
	}
	a := strings.ToLower(strings.TrimSpace(line))
	return a == "y" || a == "yes", nil
}

func newEventsCmd() *cobra.Command {
	var (
		f      clientFlags
		follow bool
		typ    string
		pid    int64
		limit  int
	)
	cmd := &cobra.Command{
		Use:   "events [-f]",
		Short: "Show the agent's recent events, or follow them",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.check(); err != nil {
				return err
			}
			args := exporter.EventsArgs{Follow: follow, Type: typ, PID: pid, Limit: limit}
			w := cmd.OutOrStdout()
			show := func(ev event.Event) {
				if f.output == "json" {
					b, _ := json.Marshal(ev)
					fmt.Fprintln(w, string(b))
					return
				}
				fmt.Fprintf(w, "%s  %-15s %-16s %-8s pid=%-7d %s\n", time.UnixMilli(ev.TS).UTC().Format("15:04:05.000"),
					ev.Type, ev.EntityID, ev.NodeID, ev.PID, ev.Value)
			}
			if !follow {
				var evs []event.Event
				if err := f.call(cmd, "events", args, &evs); err != nil {
					return err
				}
				for _, ev := range evs {
					show(ev)
				}
				return nil
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			c, err := ipc.Dial(ctx, f.socket)
			if err != nil {
				return err
			}
			defer func() { _ = c.Close() }()
			err = c.Stream(ctx, "events", args, func(raw json.RawMessage) error {
				if string(raw) == "null" {
					return nil // heartbeat
				}
				var ev event.Event
				if err := json.Unmarshal(raw, &ev); err != nil {
					return err
				}
				show(ev)
				return nil
			}, nil)
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events")
	cmd.Flags().StringVar(&typ, "type", "", "only events of this type")
	cmd.Flags().Int64Var(&pid, "pid", 0, "only events of this pid")
	cmd.Flags().IntVar(&limit, "limit", 100, "how many recent events")
	return cmd
}

func newRulesCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "rules", Short: "Work with rule files"}
	cmd.AddCommand(&cobra.Command{
		Use:   "check DIR|FILE",
		Short: "Validate rule files offline: YAML, CEL conditions, actions",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			errs := rules.Check(args[0])
			for _, err := range errs {
				fmt.Fprintln(cmd.ErrOrStderr(), err)
			}
			if len(errs) > 0 {
				return fmt.Errorf("%d problem(s) in %s", len(errs), args[0])
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: ok\n", args[0])
			return nil
		},
	})
	return cmd
}

// currentUser names who runs the CLI, for the hub's audit trail.
func currentUser() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "uid=" + strconv.Itoa(os.Getuid())
}
