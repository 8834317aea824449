// Package hubd assembles `ark hub`: the hub core (graphsvc) with the agent
// link server (graphsvc/agents) mounted at link.Path.
package hubd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/graph"
	"github.com/ark-gpu/ark/graphsvc"
	"github.com/ark-gpu/ark/graphsvc/agents"
	"github.com/ark-gpu/ark/internal/auth"
	"github.com/ark-gpu/ark/link"
)

// Config configures a hub.
type Config struct {
	Graph graph.Options
	// Token authenticates agents, OTLP senders and mutating API calls, for
	// every node; TokenFile is read when Token is empty.
	Token, TokenFile string
	// NodeTokenFile, when set, holds per-node tokens ("node:token" lines,
	// auth.ParseNodeTokens): an agent or OTLP sender presenting one speaks
	// only for its node.
	NodeTokenFile     string
	CertFile, KeyFile string
	Logger            *slog.Logger
	// EnablePprof serves net/http/pprof under /debug/pprof/.
	EnablePprof bool
	// AgentTokenReview, when set, also accepts agents presenting a
	// Kubernetes ServiceAccount token that the TokenReview API accepts.
	AgentTokenReview *TokenReviewConfig
	// Remediation, when set, serves the Alertmanager webhook at
	// /api/v1/alerts and runs the remediator.
	Remediation *RemediationConfig
}

// TokenReviewConfig configures agent authentication through the
// Kubernetes TokenReview API.
type TokenReviewConfig struct {
	Kubeconfig string // empty: in-cluster
	Audiences  []string
	Users      []string
	// AllowUnbound accepts tokens bound to no node, for every node.
	AllowUnbound bool
}

// Hub is a running hub's parts.
type Hub struct {
	Core  *graphsvc.Hub
	Link  *agents.Server
	Token string

	rem *remediation
}

// New builds the hub.
func New(cfg Config) (*Hub, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	token := cfg.Token
	if token == "" && cfg.TokenFile != "" {
		b, err := os.ReadFile(cfg.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("reading the hub token: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	if token == "" {
		return nil, errors.New("a token is required (--token-file): agents and fix must authenticate")
	}
	reg := prometheus.NewRegistry()
	// The hub's own process and runtime, as on the agent.
	reg.MustRegister(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), collectors.NewGoCollector())
	h := &Hub{Token: token}
	var core *graphsvc.Hub
	authn, err := writers(cfg, token)
	if err != nil {
		return nil, err
	}
	ls, err := agents.NewServer(agents.Options{
		Auth: authn, Logger: cfg.Logger.With("component", "link"), Registerer: reg,
		OnEvents:     func(node string, evs []event.Event) { core.Ingest(node, evs) },
		OnConnect:    func(node string, addrs []string) { core.AgentConnected(node, addrs) },
		OnDisconnect: func(node string) { core.AgentDisconnected(node) },
	})
	if err != nil {
		return nil, err
	}
	h.Link = ls
	core, err = graphsvc.New(graphsvc.Options{
		Graph: cfg.Graph, Token: token, Auth: authn, Logger: cfg.Logger, Registerer: reg, Gatherer: reg,
		Dispatcher: dispatcher{ls},
	})
	if err != nil {
		return nil, err
	}
	core.Handle(link.Path, ls)
	if cfg.EnablePprof {
		core.Handle("/debug/pprof/", http.HandlerFunc(pprof.Index))
		core.Handle("/debug/pprof/profile", http.HandlerFunc(pprof.Profile))
		core.Handle("/debug/pprof/symbol", http.HandlerFunc(pprof.Symbol))
		core.Handle("/debug/pprof/trace", http.HandlerFunc(pprof.Trace))
	}
	h.Core = core
	if cfg.Remediation != nil {
		h.rem, err = newRemediation(*cfg.Remediation, token, core, dispatcher{ls}, reg, cfg.Logger.With("component", "remediator"))
		if err != nil {
			return nil, err
		}
		core.Handle("/api/v1/alerts", h.rem.r)
	} else {
		core.Handle("/api/v1/alerts", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"error":"remediation is off: start the hub with --remediation.policy"}` + "\n"))
		}))
	}
	return h, nil
}

// writers authenticates whoever writes into the graph, agents on the link
// and OTLP senders alike: the shared token for every node, then per-node
// tokens and node-bound ServiceAccount tokens for their own node.
func writers(cfg Config, token string) (auth.Authenticator, error) {
	authn := auth.AnyOf{auth.Token(token)}
	if cfg.NodeTokenFile != "" {
		nt, err := auth.LoadNodeTokens(cfg.NodeTokenFile)
		if err != nil {
			return nil, err
		}
		authn = append(authn, nt)
	}
	if tr := cfg.AgentTokenReview; tr != nil {
		client, err := kubeClient(tr.Kubeconfig)
		if err != nil {
			return nil, err
		}
		authn = append(authn, &auth.TokenReview{Client: client, Audiences: tr.Audiences, Users: tr.Users,
			AllowUnbound: tr.AllowUnbound})
	}
	return authn, nil
}

// Serve runs the hub on ln until ctx ends.
func (h *Hub) Serve(ctx context.Context, ln net.Listener, certFile, keyFile string) error {
	defer func() { _ = h.Link.Close() }()
	if h.rem != nil {
		// The remediator outlives the HTTP server's drain: alerts accepted
		// until the last request are still worked, then it stops (with its
		// own grace for running remediations) and releases the lease.
		rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		done := make(chan struct{})
		go func() {
			defer close(done)
			h.rem.run(rctx)
		}()
		defer func() {
			cancel()
			<-done
		}()
	}
	return h.Core.Serve(ctx, ln, certFile, keyFile)
}

// dispatcher adapts the link server to the hub core.
type dispatcher struct{ s *agents.Server }

func (d dispatcher) Dispatch(ctx context.Context, node string, cmd link.Command) (link.Result, error) {
	res, err := d.s.Dispatch(ctx, node, cmd)
	if errors.Is(err, agents.ErrNoAgent) {
		return res, fmt.Errorf("%w: %w", graphsvc.ErrNotConnected, err)
	}
	return res, err
}

func (d dispatcher) Agents() []graphsvc.AgentInfo {
	in := d.s.Agents()
	out := make([]graphsvc.AgentInfo, 0, len(in))
	for _, a := range in {
		out = append(out, graphsvc.AgentInfo{Node: a.Node, Addrs: a.Addrs, Connected: a.Connected, Since: a.Since, LastSeen: a.LastSeen})
	}
	return out
}
