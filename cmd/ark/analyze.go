package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/graph"
	"github.com/ark-gpu/ark/graph/analyze"
)

func newAnalyzeCmd() *cobra.Command {
	var (
		input   string
		jobID   string
		node    string
		pid     int64
		at      int64
		output  string
		maxLine int
		ttl     string
	)
	cmd := &cobra.Command{
		Use:   "analyze --input FILE|- (--job ID | --node N [--pid P]) [--at TS_MS] [-o table|json]",
		Short: "Replay a recording of events and explain why a target is stalled",
		Long: `analyze replays a JSONL recording of Ark events into a causal graph and
ranks the root causes of a job's, a process's or a host's trouble, evaluated at
--at (milliseconds since the epoch) or else at the recording's last event.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			target := graph.Target{JobID: jobID, Node: node, PID: pid}
			switch {
			case input == "":
				return usageError{errors.New("--input is required (a file, or - for stdin)")}
			case jobID != "" && (node != "" || pid != 0):
				return usageError{errors.New("give either --job or --node [--pid], not both")}
			case jobID == "" && node == "" && pid == 0:
				return usageError{errors.New("a target is required: --job ID, --node N --pid P, or --node N")}
			case pid != 0 && node == "":
				return usageError{errors.New("--pid needs --node: pids repeat across hosts")}
			case output != "table" && output != "json":
				return usageError{fmt.Errorf("unknown output %q: want table or json", output)}
			}
			gopts := graph.Options{}
			if ttl != "" {
				d, err := parseDuration(ttl)
				if err != nil {
					return usageError{fmt.Errorf("--graph.ttl: %w", err)}
				}
				gopts.TTL = d
			}
			r := cmd.InOrStdin()
			if input != "-" {
				f, err := os.Open(input)
				if err != nil {
					return fmt.Errorf("opening recording: %w", err)
				}
				defer func() { _ = f.Close() }() // read-only
				r = f
			}
			stderr := cmd.ErrOrStderr()
			shown := 0
			rep, err := analyze.Run(r, analyze.Options{
				Target: target, At: at, MaxLineBytes: maxLine, Graph: gopts,
				OnReject: func(re *event.RejectError) {
					if shown < 5 {
						fmt.Fprintln(stderr, "ark: skipped", re)
					}
					shown++
				},
			})
			if err != nil {
				return err
			}
			if line := analyze.RejectedLine(rep.Rejected); line != "" {
				fmt.Fprintln(stderr, "ark:", line)
			}
			if !rep.Found {
				fmt.Fprintf(stderr, "ark: %s does not appear in the recording\n", target)
			}
			if output == "json" {
				return analyze.WriteJSON(cmd.OutOrStdout(), rep)
			}
			return analyze.WriteTable(cmd.OutOrStdout(), rep)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&input, "input", "i", "", "recording to replay (JSONL), or - for stdin")
	f.StringVar(&jobID, "job", "", "explain this job")
	f.StringVar(&node, "node", "", "explain this host, or the process --pid on it")
	f.Int64Var(&pid, "pid", 0, "explain this process (needs --node)")
	f.Int64Var(&at, "at", 0, "evaluate at this time, in ms since the epoch (default: the last event)")
	f.StringVarP(&output, "output", "o", "table", "output format: table or json")
	f.IntVar(&maxLine, "max-line-bytes", event.DefaultMaxLineBytes, "longest accepted line")
	f.StringVar(&ttl, "graph.ttl", "", "expire nodes and edges without events for this long (default 5m)")
	return cmd
}
