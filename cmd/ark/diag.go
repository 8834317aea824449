package main

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ark-gpu/ark/diag"
	"github.com/ark-gpu/ark/exporter"
	"github.com/ark-gpu/ark/graph"
	"github.com/ark-gpu/ark/graph/analyze"
	"github.com/ark-gpu/ark/llm"
	"github.com/ark-gpu/ark/rules"
)

// llmFlags configure --explain.
type llmFlags struct {
	explain, anonymize, printPrompt bool
	cfg                             llm.Config
	keyFile                         string
	budget                          int
}

func (l *llmFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.BoolVar(&l.explain, "explain", false, "also ask a chat-completions endpoint to explain the evidence (printed under the diagnosis)")
	f.BoolVar(&l.anonymize, "anonymize", false, "replace host, pod, job, IP, path and user names with placeholders before sending, and map them back")
	f.BoolVar(&l.printPrompt, "print-prompt", false, "print the request --explain would send, and send nothing")
	f.StringVar(&l.cfg.BaseURL, "llm.base-url", envOr("ARK_LLM_BASE_URL", ""), "OpenAI-compatible API root, e.g. http://localhost:11434/v1 (Ollama), http://vllm:8000/v1")
	f.StringVar(&l.cfg.Model, "llm.model", envOr("ARK_LLM_MODEL", ""), "model name")
	f.StringVar(&l.keyFile, "llm.api-key-file", "", "file holding the API key (default $ARK_LLM_API_KEY, then $OPENAI_API_KEY; none for a local server)")
	f.DurationVar(&l.cfg.Timeout, "llm.timeout", 60*time.Second, "give up on the explanation after this long, retries included")
	f.IntVar(&l.cfg.Retries, "llm.retries", 3, "retries on 429, 5xx and failed connections, with exponential backoff")
	f.IntVar(&l.cfg.MaxTokens, "llm.max-tokens", 1024, "most tokens the answer may use (max_tokens)")
	f.IntVar(&l.budget, "llm.token-budget", 6000, "most tokens the prompt may use (estimated); the evidence is trimmed to fit")
	f.BoolVar(&l.cfg.Stream, "llm.stream", true, "ask for a streamed answer (an endpoint that does not stream is read whole)")
}

func (l *llmFlags) check() error {
	if l.cfg.Retries <= 0 {
		l.cfg.Retries = -1 // llm.Config reads 0 as its default
	}
	if !l.explain && !l.printPrompt {
		if l.anonymize {
			return usageError{errors.New("--anonymize needs --explain or --print-prompt")}
		}
		return nil
	}
	if l.budget <= 0 {
		return usageError{fmt.Errorf("--llm.token-budget must be positive, got %d", l.budget)}
	}
	if l.explain && !l.printPrompt {
		if err := l.cfg.Validate(); err != nil {
			return usageError{fmt.Errorf("--explain: %w", err)}
		}
	}
	return nil
}

func (l *llmFlags) apiKey() (string, error) {
	if l.keyFile != "" {
		b, err := os.ReadFile(l.keyFile)
		if err != nil {
			return "", fmt.Errorf("reading the API key: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	if k := os.Getenv("ARK_LLM_API_KEY"); k != "" {
		return k, nil
	}
	return os.Getenv("OPENAI_API_KEY"), nil
}

func newDiagCmd() *cobra.Command {
	var (
		f     clientFlags
		h     hubFlags
		l     llmFlags
		job   string
		input string
		at    int64
	)
	cmd := &cobra.Command{
		Use:   "diag <pid> | --job ID | --node N",
		Short: "Diagnose a process, a job or a host: causes, the XID catalog's actions, rules, ark fix commands, blast radius",
		Long: `diag explains a target from the causal graph — the local agent's, the hub's
(--hub) or a recording's (--input) — and says what to do: the ranked causes,
what NVIDIA's XID catalog says for each code, the rules that match, the exact
` + "`ark fix`" + ` commands, and the blast radius: the ranks, jobs and GPUs the fault
idles and the GPU-hours lost so far and per hour. All of it is computed
offline.

--explain also sends the evidence subgraph (causes, chains, their events —
never raw logs) to an OpenAI-compatible chat-completions endpoint and prints
its answer under the diagnosis; --anonymize replaces private names first.
The model only reads: diag never acts.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(); err != nil {
				return err
			}
			if err := l.check(); err != nil {
				return err
			}
			if l.explain && f.output == "json" && !l.printPrompt {
				return usageError{errors.New("--explain writes text: use -o table")}
			}
			t, err := diagTarget(args, job, h.node)
			if err != nil {
				return err
			}
			var rep diag.Report
			switch {
			case input != "" && h.hub != "":
				return usageError{errors.New("give --input or --hub, not both")}
			case at > 0 && input == "" && h.hub == "":
				return usageError{errors.New("--at needs --input or --hub: the agent answers about now")}
			case input != "":
				rep, err = diagRecording(cmd, input, t, at)
			case h.hub != "":
				rep, err = diagHub(cmd, &h, t, at)
			default:
				err = f.call(cmd, "diag", exporter.DiagArgs{PID: t.PID, JobID: t.JobID, Node: t.Node}, &rep)
			}
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if f.output == "json" && !l.printPrompt {
				return printJSON(out, rep)
			}
			if err := diag.WriteText(out, rep); err != nil {
				return err
			}
			if !l.explain && !l.printPrompt {
				return nil
			}
			return explain(cmd, &l, rep)
		},
	}
	f.add(cmd)
	h.add(cmd, true)
	l.add(cmd)
	cmd.Flags().StringVar(&job, "job", "", "diagnose this job")
	cmd.Flags().StringVarP(&input, "input", "i", "", "diagnose from a recording of events (JSONL) instead of an agent")
	cmd.Flags().Int64Var(&at, "at", 0, "with --input or --hub: evaluate at this time, in ms since the epoch")
	cmd.Flag("node").Usage = "diagnose this host; with a pid and --hub or --input: the pid's host"
	return cmd
}

// diagTarget reads the target: a pid (with its host when it is not the
// local agent's), a job, or a host.
func diagTarget(args []string, job, node string) (graph.Target, error) {
	switch {
	case len(args) == 1 && job != "":
		return graph.Target{}, usageError{errors.New("give a pid or --job, not both")}
	case len(args) == 1:
		pid, err := parsePID(args[0])
		if err != nil {
			return graph.Target{}, err
		}
		return graph.Target{PID: pid, Node: node}, nil
	case job != "" && node != "":
		return graph.Target{}, usageError{errors.New("give --job or --node, not both")}
	case job != "":
		return graph.Target{JobID: job}, nil
	case node != "":
		return graph.Target{Node: node}, nil
	}
	return graph.Target{}, usageError{errors.New("a pid, --job or --node is required")}
}

func diagRecording(cmd *cobra.Command, input string, t graph.Target, at int64) (diag.Report, error) {
	if t.PID != 0 && t.Node == "" {
		return diag.Report{}, usageError{errors.New("--input with a pid needs --node: pids repeat across hosts")}
	}
	fh, err := os.Open(input)
	if err != nil {
		return diag.Report{}, fmt.Errorf("opening recording: %w", err)
	}
	defer func() { _ = fh.Close() }() // read-only
	g, lr, err := analyze.Load(fh, analyze.Options{At: at})
	if err != nil {
		return diag.Report{}, err
	}
	if line := analyze.RejectedLine(lr.Rejected); line != "" {
		fmt.Fprintln(cmd.ErrOrStderr(), "ark:", line)
	}
	rep, err := diag.Diagnose(g, t, diag.Options{At: at, Rules: rules.Defaults(), Scope: "recording " + input})
	if err != nil {
		return rep, err
	}
	if !rep.Found {
		return rep, fmt.Errorf("%s does not appear in the recording", t)
	}
	return rep, nil
}

func diagHub(cmd *cobra.Command, h *hubFlags, t graph.Target, at int64) (diag.Report, error) {
	q := url.Values{}
	switch {
	case t.JobID != "":
		q.Set("job_id", t.JobID)
	case t.PID != 0 && t.Node == "":
		return diag.Report{}, usageError{errHubNode}
	default:
		q.Set("node", t.Node)
		if t.PID != 0 {
			q.Set("pid", strconv.FormatInt(t.PID, 10))
		}
	}
	if at > 0 {
		q.Set("at", strconv.FormatInt(at, 10))
	}
	var rep diag.Report
	err := h.do(cmd.Context(), http.MethodGet, "/api/v1/diag", q, nil, &rep)
	return rep, err
}

// explain prints the prompt, or asks the endpoint and prints its answer
// under the diagnosis. The diagnosis is already out: a failure here says
// why there is no explanation and exits 1.
func explain(cmd *cobra.Command, l *llmFlags, rep diag.Report) error {
	out := cmd.OutOrStdout()
	var anon *llm.Anonymizer
	if l.anonymize {
		anon = llm.NewAnonymizer()
	}
	msgs, err := diag.Prompt(rep, diag.PromptOptions{Anonymizer: anon, TokenBudget: l.budget})
	if err != nil {
		return fmt.Errorf("explanation unavailable: %w", err)
	}
	if l.printPrompt {
		body, err := llm.BodyFor(l.cfg, msgs)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "\nPROMPT (not sent; POST %s/chat/completions, about %d tokens", strings.TrimRight(l.cfg.BaseURL, "/"), diag.EstimateTokens(msgs))
		if anon != nil {
			fmt.Fprintf(out, ", %d names anonymized", anon.Len())
		}
		fmt.Fprintln(out, "):")
		_, err = fmt.Fprintf(out, "%s\n", body)
		return err
	}
	key, err := l.apiKey()
	if err != nil {
		return fmt.Errorf("explanation unavailable: %w", err)
	}
	cfg := l.cfg
	cfg.APIKey = key
	c, err := llm.New(cfg)
	if err != nil {
		return usageError{err}
	}
	note := ""
	if anon != nil {
		note = fmt.Sprintf("; %d names anonymized and mapped back", anon.Len())
	}
	fmt.Fprintf(out, "\nEXPLANATION (%s at %s%s; advisory: it acts on nothing):\n", cfg.Model, c.URL(), note)
	unknown, err := diag.Explain(cmd.Context(), c, msgs, anon, out)
	fmt.Fprintln(out)
	if len(unknown) > 0 {
		fmt.Fprintf(out, "note: the answer names %d placeholder(s) that stand for nothing in the evidence, kept and marked unknown: %s\n",
			len(unknown), strings.Join(unknown, ", "))
	}
	if err != nil {
		return fmt.Errorf("explanation unavailable: %w", err)
	}
	return nil
}
