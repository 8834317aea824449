package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
)

// chatEndpoint is a local chat-completions server answering body with
// status; it counts the requests.
func chatEndpoint(t *testing.T, status int, contentType, body string) (string, *atomic.Int32) {
	t.Helper()
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", contentType)
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/v1", &calls
}

func TestDiagOfflineNamesTheGPUTheActionTheRanksAndTheGPUHours(t *testing.T) {
	code, out, errs := runArk(t, "", "diag", "--input", example, "--job", "train/example")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{
		"ROOT CAUSE: fatal gpu-6 on node-3 — Xid 79: GPU has fallen off the bus.",
		"immediate action:     RESTART_BM",
		"job train/example: ranks 0-31 on node-1,node-2,node-3,node-4; 32 GPU(s), 0.26 GPU-hours lost",
		"GPU-hours lost: 0.26 so far, 32.00 per hour while it lasts",
		"ark fix 3000 --action Signal --param signal=SIGUSR1",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestDiagExplainFailuresStillPrintTheDiagnosis(t *testing.T) {
	cases := []struct {
		name, contentType, body string
		status                  int
		want                    string
	}{
		{"non-JSON", "text/html", "<html>sign in</html>", http.StatusOK, "not JSON"},
		{"empty choices", "application/json", `{"choices":[]}`, http.StatusOK, "the choice list is empty"},
		{"401", "application/json", `{"error":{"message":"bad key"}}`, http.StatusUnauthorized, "refused the API key"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			url, _ := chatEndpoint(t, tc.status, tc.contentType, tc.body)
			code, out, errs := runArk(t, "", "diag", "--input", example, "--job", "train/example",
				"--explain", "--llm.base-url", url, "--llm.model", "m", "--llm.retries", "0")
			if code != exitFailure || !strings.Contains(out, "ROOT CAUSE: fatal gpu-6 on node-3") ||
				!strings.Contains(errs, "explanation unavailable") || !strings.Contains(errs, tc.want) {
				t.Fatalf("exit %d\nstdout %s\nstderr %s", code, out, errs)
			}
		})
	}
}

func TestDiagExplainMarksAHostTheModelInvented(t *testing.T) {
	url, _ := chatEndpoint(t, http.StatusOK, "application/json",
		`{"choices":[{"message":{"role":"assistant","content":"HOST_1 lost gpu-6; HOST_42 is fine."}}]}`)
	code, out, errs := runArk(t, "", "diag", "--input", example, "--job", "train/example",
		"--explain", "--anonymize", "--llm.base-url", url, "--llm.model", "m")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if !strings.Contains(out, "node-3 lost gpu-6; HOST_42 [unknown: not in the evidence] is fine.") || !strings.Contains(out, "1 placeholder(s)") {
		t.Fatalf("output:\n%s", out)
	}
}

func TestDiagPrintPromptSendsNothing(t *testing.T) {
	url, calls := chatEndpoint(t, http.StatusOK, "application/json", `{}`)
	code, out, errs := runArk(t, "", "diag", "--input", example, "--job", "train/example",
		"--print-prompt", "--anonymize", "--llm.base-url", url, "--llm.model", "m")
	if code != exitOK || calls.Load() != 0 {
		t.Fatalf("exit %d, %d requests: %s", code, calls.Load(), errs)
	}
	prompt := out[strings.Index(out, "PROMPT (not sent"):]
	if !strings.Contains(prompt, `"model":"m"`) || strings.Contains(prompt, "node-3") || strings.Contains(prompt, "train/example") {
		t.Fatalf("prompt:\n%s", prompt)
	}
}

func TestDiagUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"diag", "--input", example}, "a pid, --job or --node is required"},
		{[]string{"diag", "--input", example, "3000"}, "needs --node"},
		{[]string{"diag", "--input", example, "--job", "j", "--explain"}, "missing base URL"},
		{[]string{"diag", "--input", example, "--job", "j", "--anonymize"}, "--anonymize needs --explain"},
	} {
		code, out, errs := runArk(t, "", tc.args...)
		if code != exitUsage || !strings.Contains(errs, tc.want) {
			t.Errorf("%v: exit %d %s %s", tc.args, code, out, errs)
		}
	}
}

func TestDiagOnTheAgentByPIDJobAndHost(t *testing.T) {
	ta := startTestAgent(t)
	cmd, _ := ta.rank(t)
	pid := strconv.Itoa(cmd.Process.Pid)
	for _, args := range [][]string{{pid}, {pid, "--node", "gpu-host-1"}, {"--job", "j1"}, {"--node", "gpu-host-1"}} {
		code, out, errs := runArk(t, "", append([]string{"diag", "--socket", ta.socket}, args...)...)
		if code != exitOK || !strings.Contains(out, "(host gpu-host-1)") || !strings.Contains(out, "ROOT CAUSE: ") ||
			!strings.Contains(out, "network-ib0 on gpu-host-1") || !strings.Contains(out, "job j1: ranks 0 on gpu-host-1; 1 GPU(s)") {
			t.Errorf("diag %v: exit %d\n%s\n%s", args, code, out, errs)
		}
	}
	code, _, errs := runArk(t, "", "diag", "--node", "gpu-host-2", "--socket", ta.socket)
	if code != exitFailure || !strings.Contains(errs, "this agent serves host gpu-host-1, not gpu-host-2: ask the hub") {
		t.Fatalf("another host: exit %d %s", code, errs)
	}
	code, _, errs = runArk(t, "", "diag", "--job", "j1", "--at", "1", "--socket", ta.socket)
	if code != exitUsage || !strings.Contains(errs, "--at needs --input or --hub") {
		t.Fatalf("--at on the agent: exit %d %s", code, errs)
	}
}
