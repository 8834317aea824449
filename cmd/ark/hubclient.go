package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ark-gpu/ark/graph"
)

// hubFlags send a command to the hub's HTTP API instead of the local agent.
type hubFlags struct {
	hub       string
	tokenFile string
	node      string
}

func (h *hubFlags) add(cmd *cobra.Command, withNode bool) {
	cmd.Flags().StringVar(&h.hub, "hub", envOr("ARK_HUB", ""), "ask the hub at this URL (http://host:9465) instead of the local agent; why takes a comma-separated list of hubs sharded by job and answers from the one that holds the target")
	cmd.Flags().StringVar(&h.tokenFile, "token-file", "", "bearer token for the hub (default $ARK_TOKEN)")
	if withNode {
		cmd.Flags().StringVar(&h.node, "node", "", "with --hub: the host of the pid")
	}
}

func (h *hubFlags) token() (string, error) {
	if h.tokenFile != "" {
		b, err := os.ReadFile(h.tokenFile)
		if err != nil {
			return "", fmt.Errorf("reading the token: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	return os.Getenv("ARK_TOKEN"), nil
}

// whyAcross asks each hub of a comma-separated --hub list, for hubs
// sharded by job behind a load balancer, and keeps the answer of the first
// that holds the target; with none, the last answer (target not found).
func (h *hubFlags) whyAcross(ctx context.Context, q url.Values, res *graph.Result) error {
	var errs []error
	answered := false
	for _, hub := range strings.Split(h.hub, ",") {
		one := *h
		one.hub = strings.TrimSpace(hub)
		var r graph.Result
		if err := one.do(ctx, http.MethodGet, "/api/v1/why", q, nil, &r); err != nil {
			errs = append(errs, err)
			continue
		}
		*res, answered = r, true
		if r.Found {
			return nil
		}
	}
	if answered {
		return nil
	}
	return errors.Join(errs...)
}

// do calls the hub and decodes a JSON answer into out; an error status
// becomes the hub's error message.
func (h *hubFlags) do(ctx context.Context, method, path string, q url.Values, body, out any) error {
	u := strings.TrimRight(h.hub, "/") + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return usageError{fmt.Errorf("--hub: %w", err)}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	tok, err := h.token()
	if err != nil {
		return err
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("no hub at %s: %w", h.hub, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading the hub's answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return fmt.Errorf("hub: %s (%s)", e.Error, resp.Status)
		}
		return fmt.Errorf("hub: %s", resp.Status)
	}
	if out == nil {
		return nil
	}
	if raw, ok := out.(*json.RawMessage); ok {
		*raw = b
		return nil
	}
	return json.Unmarshal(b, out)
}

var errHubNode = errors.New("--hub with a pid needs --node: pids repeat across hosts")
