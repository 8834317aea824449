package llm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// chatServer is a local chat-completions endpoint: it records each request
// and answers with handle.
type chatServer struct {
	*httptest.Server
	mu     sync.Mutex
	bodies [][]byte
	auth   []string
	calls  atomic.Int32
}

func newChatServer(t *testing.T, handle func(w http.ResponseWriter, r *http.Request, call int)) *chatServer {
	t.Helper()
	s := &chatServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/chat/completions" {
			http.Error(w, "wrong endpoint "+r.Method+" "+r.URL.Path, http.StatusNotFound)
			return
		}
		b, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.bodies = append(s.bodies, b)
		s.auth = append(s.auth, r.Header.Get("Authorization"))
		s.mu.Unlock()
		handle(w, r, int(s.calls.Add(1)))
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *chatServer) client(t *testing.T, mod func(*Config)) *Client {
	t.Helper()
	cfg := Config{BaseURL: s.URL + "/v1", Model: "test-model", APIKey: "sk-test", Backoff: time.Millisecond, Timeout: 30 * time.Second}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func completionJSON(content string) string {
	b, _ := json.Marshal(map[string]any{"id": "x", "object": "chat.completion",
		"choices": []any{map[string]any{"index": 0, "message": map[string]string{"role": "assistant", "content": content}, "finish_reason": "stop"}}})
	return string(b)
}

var msgs = []Message{{Role: "system", Content: "be brief"}, {Role: "user", Content: `{"causes":[]}`}}

func TestCompleteSendsTheChatCompletionsRequest(t *testing.T) {
	s := newChatServer(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, completionJSON("the GPU fell off the bus"))
	})
	c := s.client(t, func(c *Config) { c.MaxTokens = 77 })
	var got []string
	answer, err := c.Complete(context.Background(), msgs, func(d string) error { got = append(got, d); return nil })
	if err != nil || answer != "the GPU fell off the bus" || strings.Join(got, "") != answer {
		t.Fatalf("answer %q deltas %q err %v", answer, got, err)
	}
	var req map[string]any
	if err := json.Unmarshal(s.bodies[0], &req); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"model": "test-model", "max_tokens": 77.0, "temperature": 0.2, "stream": false,
		"messages": []any{map[string]any{"role": "system", "content": "be brief"}, map[string]any{"role": "user", "content": `{"causes":[]}`}}}
	if fmt.Sprint(req) != fmt.Sprint(want) {
		t.Fatalf("request\n got %v\nwant %v", req, want)
	}
	if s.auth[0] != "Bearer sk-test" {
		t.Fatalf("authorization %q", s.auth[0])
	}
}

func TestCompleteReadsAStreamedAnswer(t *testing.T) {
	s := newChatServer(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
		w.Header().Set("Content-Type", "text/event-stream")
		for _, piece := range []string{"the GPU ", "fell off ", "the bus"} {
			b, _ := json.Marshal(map[string]any{"choices": []any{map[string]any{"index": 0, "delta": map[string]string{"content": piece}}}})
			fmt.Fprintf(w, ": keep-alive\n\ndata: %s\n\n", b)
			w.(http.Flusher).Flush()
		}
		_, _ = io.WriteString(w, "data: {\"choices\":[],\"usage\":{\"total_tokens\":9}}\n\ndata: [DONE]\n\n")
	})
	c := s.client(t, func(c *Config) { c.Stream = true })
	var got []string
	answer, err := c.Complete(context.Background(), msgs, func(d string) error { got = append(got, d); return nil })
	if err != nil || answer != "the GPU fell off the bus" || len(got) != 3 {
		t.Fatalf("answer %q deltas %q err %v", answer, got, err)
	}
	if !strings.Contains(string(s.bodies[0]), `"stream":true`) {
		t.Fatalf("the request must ask for a stream: %s", s.bodies[0])
	}
}

func TestCompleteErrors(t *testing.T) {
	cases := []struct {
		name    string
		handle  func(w http.ResponseWriter, call int)
		want    error
		msg     string
		calls   int32
		answer  string
		timeout time.Duration
	}{
		{name: "401 is not retried", handle: func(w http.ResponseWriter, _ int) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"error":{"message":"Incorrect API key provided","type":"invalid_request_error"}}`)
		}, want: ErrUnauthorized, msg: "401 Unauthorized: Incorrect API key provided", calls: 1},
		{name: "429 is retried", handle: func(w http.ResponseWriter, call int) {
			if call < 3 {
				w.Header().Set("Retry-After", "0")
				http.Error(w, `{"error":"slow down"}`, http.StatusTooManyRequests)
				return
			}
			_, _ = io.WriteString(w, completionJSON("after two 429s"))
		}, calls: 3, answer: "after two 429s"},
		{name: "500 is retried then reported", handle: func(w http.ResponseWriter, _ int) {
			http.Error(w, "upstream model crashed", http.StatusInternalServerError)
		}, msg: "500 Internal Server Error: upstream model crashed", calls: 4},
		{name: "non-JSON", handle: func(w http.ResponseWriter, _ int) {
			w.Header().Set("Content-Type", "text/html")
			_, _ = io.WriteString(w, "<html>proxy login</html>")
		}, want: ErrBadResponse, msg: `not JSON (Content-Type "text/html")`, calls: 1},
		{name: "empty choices", handle: func(w http.ResponseWriter, _ int) {
			_, _ = io.WriteString(w, `{"id":"x","choices":[]}`)
		}, want: ErrBadResponse, msg: "the choice list is empty", calls: 1},
		{name: "slower than the timeout", handle: func(w http.ResponseWriter, _ int) {
			time.Sleep(2 * time.Second)
			_, _ = io.WriteString(w, completionJSON("too late"))
		}, want: ErrTimeout, msg: "no answer within the timeout (300ms)", calls: 1, timeout: 300 * time.Millisecond},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newChatServer(t, func(w http.ResponseWriter, _ *http.Request, call int) { tc.handle(w, call) })
			c := s.client(t, func(c *Config) {
				if tc.timeout > 0 {
					c.Timeout = tc.timeout
				}
			})
			answer, err := c.Complete(context.Background(), msgs, nil)
			if tc.answer != "" {
				if err != nil || answer != tc.answer {
					t.Fatalf("answer %q err %v", answer, err)
				}
			} else {
				if err == nil {
					t.Fatalf("want an error, got answer %q", answer)
				}
				if tc.want != nil && !errors.Is(err, tc.want) {
					t.Fatalf("error %v is not %v", err, tc.want)
				}
				if !strings.Contains(err.Error(), tc.msg) {
					t.Fatalf("error %q does not say %q", err, tc.msg)
				}
			}
			if got := s.calls.Load(); got != tc.calls {
				t.Fatalf("%d calls, want %d", got, tc.calls)
			}
		})
	}
}

func TestConfigValidateReportsEveryProblem(t *testing.T) {
	err := Config{BaseURL: "localhost:11434", MaxTokens: -1}.Validate()
	want := "invalid base URL \"localhost:11434\": want http:// or https://\nmissing model (--llm.model)\ninvalid max tokens -1: want a positive number"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v\nwant %s", err, want)
	}
}
