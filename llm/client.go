// Package llm is a small client of the OpenAI-compatible chat-completions
// API (OpenAI, vLLM, Ollama, LocalAI, llama.cpp's server...), and an
// Anonymizer that replaces private names with stable placeholders before a
// text leaves the cluster and maps them back in the answer.
package llm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Config configures a Client.
type Config struct {
	// BaseURL is the API root, e.g. http://localhost:11434/v1; requests go
	// to BaseURL/chat/completions.
	BaseURL string
	// Model names the model.
	Model string
	// APIKey is sent as a bearer token when set.
	APIKey string
	// Timeout bounds a whole answer, retries included (default 60s).
	Timeout time.Duration
	// Retries is how many times a 429, a 5xx or a failed connection is
	// retried (default 3; negative: none).
	Retries int
	// Backoff is the first wait before a retry, doubled each time, with
	// jitter (default 500ms); a Retry-After header overrides it.
	Backoff time.Duration
	// MaxTokens bounds the answer (max_tokens; default 1024).
	MaxTokens int
	// Stream asks for a streamed answer; an endpoint that answers with
	// one JSON document is read as such.
	Stream bool
	// HTTPClient defaults to a client without a timeout of its own.
	HTTPClient *http.Client
}

// Validate reports every problem of c at once.
func (c Config) Validate() error {
	var errs []error
	if c.BaseURL == "" {
		errs = append(errs, errors.New("missing base URL (--llm.base-url)"))
	} else if !strings.HasPrefix(c.BaseURL, "http://") && !strings.HasPrefix(c.BaseURL, "https://") {
		errs = append(errs, fmt.Errorf("invalid base URL %q: want http:// or https://", c.BaseURL))
	}
	if c.Model == "" {
		errs = append(errs, errors.New("missing model (--llm.model)"))
	}
	if c.MaxTokens < 0 {
		errs = append(errs, fmt.Errorf("invalid max tokens %d: want a positive number", c.MaxTokens))
	}
	return errors.Join(errs...)
}

func (c Config) withDefaults() Config {
	if c.Timeout <= 0 {
		c.Timeout = 60 * time.Second
	}
	if c.Retries == 0 {
		c.Retries = 3
	}
	if c.Backoff <= 0 {
		c.Backoff = 500 * time.Millisecond
	}
	if c.MaxTokens == 0 {
		c.MaxTokens = 1024
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{}
	}
	return c
}

// Message is one chat message.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// Request is the body of a chat-completions request.
type Request struct {
	Model       string    `json:"model"`
	Messages    []Message `json:"messages"`
	MaxTokens   int       `json:"max_tokens,omitempty"`
	Temperature float64   `json:"temperature"`
	Stream      bool      `json:"stream"`
}

// Errors a caller may tell apart.
var (
	// ErrUnauthorized: the endpoint refused the key (401, 403).
	ErrUnauthorized = errors.New("the endpoint refused the API key")
	// ErrBadResponse: the answer is not a chat completion (not JSON, no
	// choices, no content).
	ErrBadResponse = errors.New("the endpoint's answer is not a chat completion")
	// ErrTimeout: no complete answer within the timeout.
	ErrTimeout = errors.New("no answer within the timeout")
)

// StatusError is an HTTP error status from the endpoint.
type StatusError struct {
	Code    int
	Message string // the endpoint's error message, if it gave one
}

func (e *StatusError) Error() string {
	s := fmt.Sprintf("the endpoint answered %d %s", e.Code, http.StatusText(e.Code))
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// retryable reports whether a status is worth another try.
func (e *StatusError) retryable() bool {
	return e.Code == http.StatusTooManyRequests || e.Code >= 500
}

// Client calls one chat-completions endpoint.
type Client struct {
	cfg Config
}

// New returns a client for cfg.
func New(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("llm: %w", err)
	}
	return &Client{cfg: cfg.withDefaults()}, nil
}

// URL is where requests go.
func (c *Client) URL() string { return strings.TrimRight(c.cfg.BaseURL, "/") + "/chat/completions" }

// Body is the exact request body Complete sends for msgs.
func (c *Client) Body(msgs []Message) ([]byte, error) {
	return BodyFor(c.cfg, msgs)
}

// BodyFor is the request body for msgs under cfg, without a client: what
// --print-prompt shows.
func BodyFor(cfg Config, msgs []Message) ([]byte, error) {
	cfg = cfg.withDefaults()
	b, err := json.Marshal(Request{Model: cfg.Model, Messages: msgs, MaxTokens: cfg.MaxTokens, Temperature: 0.2, Stream: cfg.Stream})
	if err != nil {
		return nil, fmt.Errorf("encoding the request: %w", err)
	}
	return b, nil
}

// Complete sends msgs and returns the answer. When the endpoint streams,
// onDelta (if set) gets each piece as it arrives; otherwise it gets the
// whole answer once. A 429, a 5xx or a failed connection is retried with
// backoff until the timeout; once a piece was delivered nothing is retried.
func (c *Client) Complete(ctx context.Context, msgs []Message, onDelta func(string) error) (string, error) {
	body, err := c.Body(msgs)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeoutCause(ctx, c.cfg.Timeout, ErrTimeout)
	defer cancel()
	wait := c.cfg.Backoff
	for attempt := 0; ; attempt++ {
		answer, delivered, retryAfter, err := c.once(ctx, body, onDelta)
		if err == nil {
			return answer, nil
		}
		if errors.Is(context.Cause(ctx), ErrTimeout) {
			return answer, fmt.Errorf("%w (%s): %w", ErrTimeout, c.cfg.Timeout, err)
		}
		if ctx.Err() != nil || delivered || attempt >= c.cfg.Retries || !retryable(err) {
			return answer, err
		}
		d := retryAfter
		if d <= 0 {
			d = wait + time.Duration(rand.Int64N(int64(wait)/5+1))
			wait *= 2
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			if errors.Is(context.Cause(ctx), ErrTimeout) {
				return "", fmt.Errorf("%w (%s): last try: %w", ErrTimeout, c.cfg.Timeout, err)
			}
			return "", ctx.Err()
		case <-t.C:
		}
	}
}

func retryable(err error) bool {
	var se *StatusError
	if errors.As(err, &se) {
		return se.retryable()
	}
	var ce *connError
	return errors.As(err, &ce)
}

// connError is a failure to reach the endpoint or read its answer.
type connError struct{ err error }

func (e *connError) Error() string { return e.err.Error() }
func (e *connError) Unwrap() error { return e.err }

// maxAnswerBytes bounds what is read of one answer.
const maxAnswerBytes = 8 << 20

// once makes one request. delivered says whether onDelta got anything.
func (c *Client) once(ctx context.Context, body []byte, onDelta func(string) error) (answer string, delivered bool, retryAfter time.Duration, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.URL(), bytes.NewReader(body))
	if err != nil {
		return "", false, 0, fmt.Errorf("llm: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	if c.cfg.Stream {
		req.Header.Set("Accept", "text/event-stream, application/json")
	} else {
		req.Header.Set("Accept", "application/json")
	}
	if c.cfg.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+c.cfg.APIKey)
	}
	resp, err := c.cfg.HTTPClient.Do(req)
	if err != nil {
		return "", false, 0, &connError{fmt.Errorf("calling %s: %w", c.URL(), err)}
	}
	defer func() { _ = resp.Body.Close() }()
	rd := io.LimitReader(resp.Body, maxAnswerBytes)
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(rd, 4096)) // the status says enough when this fails
		se := &StatusError{Code: resp.StatusCode, Message: errorMessage(b)}
		if se.Code == http.StatusUnauthorized || se.Code == http.StatusForbidden {
			return "", false, 0, fmt.Errorf("%w: %w", ErrUnauthorized, se)
		}
		return "", false, parseRetryAfter(resp.Header.Get("Retry-After")), se
	}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		return readStream(rd, onDelta)
	}
	b, err := io.ReadAll(rd)
	if err != nil {
		return "", false, 0, &connError{fmt.Errorf("reading the answer: %w", err)}
	}
	answer, err = readCompletion(b, resp.Header.Get("Content-Type"))
	if err != nil {
		return "", false, 0, err
	}
	if onDelta != nil {
		if err := onDelta(answer); err != nil {
			return answer, true, 0, err
		}
	}
	return answer, true, 0, nil
}

// completion is the part of a chat completion (or a stream chunk) read.
type completion struct {
	Choices []struct {
		Message *struct {
			Content string `json:"content"`
		} `json:"message"`
		Delta *struct {
			Content string `json:"content"`
		} `json:"delta"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
	Error *apiError `json:"error"`
}

type apiError struct {
	Message string `json:"message"`
	Type    string `json:"type"`
}

// errorMessage finds the message of an error body ({"error": {"message": ...}}
// or {"error": "..."}), or a bounded excerpt of a body that is not one.
func errorMessage(b []byte) string {
	var obj struct {
		Error json.RawMessage `json:"error"`
	}
	if json.Unmarshal(b, &obj) == nil && len(obj.Error) > 0 {
		var e apiError
		if json.Unmarshal(obj.Error, &e) == nil && e.Message != "" {
			return e.Message
		}
		var s string
		if json.Unmarshal(obj.Error, &s) == nil {
			return s
		}
	}
	return excerpt(b)
}

func excerpt(b []byte) string {
	s := strings.Join(strings.Fields(string(b)), " ")
	if len(s) > 120 {
		s = s[:117] + "..."
	}
	return s
}

func readCompletion(b []byte, contentType string) (string, error) {
	var c completion
	if err := json.Unmarshal(b, &c); err != nil {
		return "", fmt.Errorf("%w: not JSON (Content-Type %q): %q", ErrBadResponse, contentType, excerpt(b))
	}
	if c.Error != nil {
		return "", fmt.Errorf("%w: the endpoint reported an error: %s", ErrBadResponse, c.Error.Message)
	}
	if len(c.Choices) == 0 {
		return "", fmt.Errorf("%w: the choice list is empty", ErrBadResponse)
	}
	if c.Choices[0].Message == nil {
		return "", fmt.Errorf("%w: the first choice has no message", ErrBadResponse)
	}
	return c.Choices[0].Message.Content, nil
}

// readStream reads server-sent events ("data: {chunk}" lines, ending with
// "data: [DONE]") and hands each content delta to onDelta.
func readStream(r io.Reader, onDelta func(string) error) (string, bool, time.Duration, error) {
	var answer strings.Builder
	delivered, choices := false, false
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		data, ok := strings.CutPrefix(line, "data:")
		if !ok {
			continue // comments, event names, ids, blank separators
		}
		data = strings.TrimSpace(data)
		if data == "[DONE]" {
			break
		}
		var c completion
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			return answer.String(), delivered, 0, fmt.Errorf("%w: a streamed chunk is not JSON: %q", ErrBadResponse, excerpt([]byte(data)))
		}
		if c.Error != nil {
			return answer.String(), delivered, 0, fmt.Errorf("%w: the endpoint reported an error mid-stream: %s", ErrBadResponse, c.Error.Message)
		}
		if len(c.Choices) == 0 {
			continue // usage chunks carry no choice
		}
		choices = true
		d := c.Choices[0].Delta
		if d == nil && c.Choices[0].Message != nil {
			d = c.Choices[0].Message
		}
		if d == nil || d.Content == "" {
			continue
		}
		answer.WriteString(d.Content)
		if onDelta != nil {
			delivered = true
			if err := onDelta(d.Content); err != nil {
				return answer.String(), delivered, 0, err
			}
		}
	}
	if err := sc.Err(); err != nil {
		return answer.String(), delivered, 0, &connError{fmt.Errorf("reading the stream: %w", err)}
	}
	if !choices {
		return "", delivered, 0, fmt.Errorf("%w: the stream carried no choice", ErrBadResponse)
	}
	return answer.String(), delivered, 0, nil
}

// maxRetryAfter caps a Retry-After the endpoint asks for.
const maxRetryAfter = 30 * time.Second

func parseRetryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && s >= 0 {
		return min(time.Duration(s)*time.Second, maxRetryAfter)
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(time.Until(t), 0), maxRetryAfter)
	}
	return 0
}
