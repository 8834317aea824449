package diag

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/graph"
	"github.com/ark-gpu/ark/llm"
	"github.com/ark-gpu/ark/rules"
)

// private names of the incident below, none of which may leave with
// --anonymize.
var private = []string{
	"gpu-a17.corp.example", "gpu-b02.corp.example", "ml-team/llama-70b", "llama-70b-worker-0", "llama-70b-worker-1",
	"10.20.0.17", "10.20.0.2", "/home/alice/ckpt/step-100.pt", "alice",
}

// incident is a two-host job whose GPU on host a fell off the bus, with
// pods, addresses, a path and a user in the events.
func incident(t *testing.T) Report {
	t.Helper()
	const a, b, job = "gpu-a17.corp.example", "gpu-b02.corp.example", "ml-team/llama-70b"
	ts := int64(1_764_300_000_000)
	attrs := func(kv ...string) event.Attrs {
		var out event.Attrs
		for i := 0; i+1 < len(kv); i += 2 {
			out = append(out, event.Attr{Key: kv[i], Value: kv[i+1]})
		}
		return out
	}
	evs := []event.Event{
		{TS: ts, Type: event.IntentRun, EntityID: "pid-4242", NodeID: a, PID: 4242, JobID: job, Value: "running",
			Attrs: attrs("rank", "0", "addr", "10.20.0.17:29500", "pod", "llama-70b-worker-0")},
		{TS: ts, Type: event.IntentRun, EntityID: "pid-5151", NodeID: b, PID: 5151, JobID: job, Value: "running",
			Attrs: attrs("rank", "1", "addr", "10.20.0.2:29500", "pod", "llama-70b-worker-1")},
		{TS: ts + 1000, Type: event.ComputeUtil, EntityID: "gpu-0", NodeID: a, PID: 4242, JobID: job, Value: "97"},
		{TS: ts + 1000, Type: event.ComputeUtil, EntityID: "gpu-0", NodeID: b, PID: 5151, JobID: job, Value: "97"},
		{TS: ts + 2000, Type: event.ErrorHW, EntityID: "gpu-0", NodeID: a, PID: 4242,
			Value: "Xid 79 on gpu-a17.corp.example (10.20.0.17, pod llama-70b-worker-0): GPU has fallen off the bus",
			Attrs: attrs("xid", "79", "pod", "llama-70b-worker-0")},
		{TS: ts + 2500, Type: event.ErrorHW, EntityID: "nvme0n1", NodeID: b,
			Value: "I/O error writing /home/alice/ckpt/step-100.pt for 10.20.0.2 (user alice)", Attrs: attrs("user", "alice", "pod", "llama-70b-worker-1")},
		{TS: ts + 3000, Type: event.ProcessState, EntityID: "pid-5151", NodeID: b, PID: 5151, JobID: job, Value: "stalled"},
		{TS: ts + 3000, Type: event.TransportDrop, EntityID: "network-ib0", NodeID: b, PID: 5151, JobID: job, Value: "30",
			Attrs: attrs("peer", "10.20.0.17:29500")},
		{TS: ts + 3000, Type: event.StorageIOPS, EntityID: "nvme0n1", NodeID: b, PID: 5151, JobID: job, Value: "0"},
	}
	g := graph.New(graph.Options{})
	g.ApplyBatch(evs)
	g.Settle()
	rep, err := Diagnose(g, graph.Target{JobID: job}, Options{Rules: rules.Defaults()})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Causes) < 2 || rep.Causes[0].NodeID != a {
		t.Fatalf("causes %+v", rep.Causes)
	}
	return rep
}

// chat is a local chat-completions endpoint that records request bodies.
type chat struct {
	mu     sync.Mutex
	bodies [][]byte
}

func (c *chat) serve(t *testing.T, answer func() string, stream bool) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		c.mu.Lock()
		c.bodies = append(c.bodies, b)
		c.mu.Unlock()
		text := answer()
		if !stream {
			out, _ := json.Marshal(map[string]any{"choices": []any{map[string]any{"message": map[string]string{"role": "assistant", "content": text}}}})
			_, _ = w.Write(out)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; i < len(text); i += 3 { // pieces that split placeholders
			piece, _ := json.Marshal(map[string]any{"choices": []any{map[string]any{"delta": map[string]string{"content": text[i:min(i+3, len(text))]}}}})
			fmt.Fprintf(w, "data: %s\n\n", piece)
		}
		_, _ = io.WriteString(w, "data: [DONE]\n\n")
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestExplainAnonymizedSendsNoPrivateNameAndMapsTheAnswerBack(t *testing.T) {
	rep := incident(t)
	plain, err := Prompt(rep, PromptOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range private {
		if !strings.Contains(plain[1].Content, name) {
			t.Fatalf("the test needs %q in the evidence", name)
		}
	}
	for _, stream := range []bool{false, true} {
		t.Run(fmt.Sprintf("stream=%v", stream), func(t *testing.T) {
			a := llm.NewAnonymizer()
			msgs, err := Prompt(rep, PromptOptions{Anonymizer: a})
			if err != nil {
				t.Fatal(err)
			}
			host, job := a.Replace("gpu-a17.corp.example"), a.Replace("ml-team/llama-70b")
			if host != "HOST_1" || !strings.HasPrefix(job, "JOB_") {
				t.Fatalf("placeholders %q %q", host, job)
			}
			var c chat
			url := c.serve(t, func() string {
				return host + " lost gpu-0, so " + job + " stalled; HOST_99 looks fine."
			}, stream)
			cl, err := llm.New(llm.Config{BaseURL: url, Model: "m", Stream: stream, Timeout: 30 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			unknown, err := Explain(context.Background(), cl, msgs, a, &out)
			if err != nil {
				t.Fatal(err)
			}
			want := "gpu-a17.corp.example lost gpu-0, so ml-team/llama-70b stalled; HOST_99 " + llm.Unknown + " looks fine."
			if out.String() != want || len(unknown) != 1 || unknown[0] != "HOST_99" {
				t.Fatalf("answer %q unknown %v\nwant %q", out.String(), unknown, want)
			}
			if len(c.bodies) != 1 {
				t.Fatalf("%d requests", len(c.bodies))
			}
			for _, name := range private {
				if bytes.Contains(c.bodies[0], []byte(name)) {
					t.Errorf("%q left in the request: %s", name, c.bodies[0])
				}
			}
		})
	}
}

func TestPromptCarriesTheEvidenceSubgraphAndNothingElse(t *testing.T) {
	rep := incident(t)
	msgs, err := Prompt(rep, PromptOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 2 || msgs[0].Role != "system" || msgs[0].Content != systemPrompt || msgs[1].Role != "user" {
		t.Fatalf("messages %+v", msgs)
	}
	dec := json.NewDecoder(strings.NewReader(msgs[1].Content))
	dec.DisallowUnknownFields()
	var ev Evidence
	if err := dec.Decode(&ev); err != nil {
		t.Fatalf("the user message is not just the evidence: %v", err)
	}
	if ev.Target != "job ml-team/llama-70b" || len(ev.Causes) != len(rep.Causes) || ev.Blast == nil || ev.Blast.Ranks != 2 {
		t.Fatalf("evidence %+v", ev)
	}
	// Only the causes' evidence events: no placement, utilisation or
	// throughput samples, which are raw telemetry.
	for _, c := range ev.Causes {
		for _, e := range c.Events {
			if e.Type == event.IntentRun || e.Type == event.ComputeUtil || e.Type == event.StorageIOPS {
				t.Errorf("cause %s carries a raw sample %+v", c.EntityID, e)
			}
		}
	}
	if !strings.Contains(msgs[1].Content, "Xid 79 on gpu-a17.corp.example") || !strings.Contains(msgs[1].Content, `"immediate_action": "RESTART_BM"`) {
		t.Fatalf("the evidence lacks the XID event or its catalog entry:\n%s", msgs[1].Content)
	}
}

func TestPromptTrimsTheEvidenceToTheTokenBudget(t *testing.T) {
	rep := incident(t)
	full, err := Prompt(rep, PromptOptions{TokenBudget: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	small, err := Prompt(rep, PromptOptions{TokenBudget: EstimateTokens(full) - 1})
	if err != nil {
		t.Fatal(err)
	}
	if EstimateTokens(small) >= EstimateTokens(full) {
		t.Fatalf("not trimmed: %d >= %d", EstimateTokens(small), EstimateTokens(full))
	}
	if _, err := Prompt(rep, PromptOptions{TokenBudget: 10}); err == nil || !strings.Contains(err.Error(), "does not fit the token budget") {
		t.Fatalf("a budget too small: %v", err)
	}
}
