//go:build !arkagent

package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/ark-gpu/ark/graph"
	"github.com/ark-gpu/ark/graphsvc/hubd"
	"github.com/ark-gpu/ark/remediator"
)

func newHubCmd() *cobra.Command {
	var (
		addr, tokenFile, cert, key, logLevel, ttl string
		pprofOn, checkConfig                      bool
		memLimit                                  int64
		rem                                       = hubd.RemediationConfig{LeaderElect: true}
		policyFile                                string
		tokenReview, allowUnbound                 bool
		trAudiences, trUsers                      []string
		nodeTokenFile                             string
	)
	cmd := &cobra.Command{
		Use:   "hub",
		Short: "Run the hub: the cross-node causal graph, the agent link, the HTTP API and OTLP ingest",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logger, err := newLogger(logLevel)
			if err != nil {
				return usageError{err}
			}
			gopts := graph.Options{}
			if ttl != "" {
				d, err := parseDuration(ttl)
				if err != nil {
					return usageError{fmt.Errorf("--graph.ttl: %w", err)}
				}
				gopts.TTL = d
			}
			if os.Getenv("GOMEMLIMIT") == "" && memLimit > 0 {
				// The hub runs under a memory limit (512Mi in deploy/):
				// collect harder near it rather than be killed.
				debug.SetMemoryLimit(memLimit)
			}
			if checkConfig {
				if policyFile == "" {
					return usageError{errors.New("--check-config needs --remediation.policy")}
				}
				if _, err := remediator.LoadFile(policyFile); err != nil {
					return err
				}
				_, _ = fmt.Fprintf(cmd.OutOrStdout(), "%s: remediation policy OK\n", policyFile)
				return nil
			}
			cfg := hubd.Config{Graph: gopts, TokenFile: tokenFile, NodeTokenFile: nodeTokenFile, Logger: logger, EnablePprof: pprofOn}
			if tokenReview {
				cfg.AgentTokenReview = &hubd.TokenReviewConfig{Kubeconfig: rem.Kubeconfig, Audiences: trAudiences, Users: trUsers,
					AllowUnbound: allowUnbound}
			}
			if policyFile != "" {
				rem.PolicyFile = policyFile
				cfg.Remediation = &rem
			}
			h, err := hubd.New(cfg)
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return fmt.Errorf("listening on %s: %w", addr, err)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			logger.Info("starting ark hub", "addr", ln.Addr().String(), "version", version)
			return h.Serve(ctx, ln, cert, key)
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "web.listen-address", ":9465", "address for the API, the agent link, OTLP and /metrics")
	f.StringVar(&tokenFile, "token-file", envOr("ARK_TOKEN_FILE", ""), "shared bearer token: agents, OTLP senders and fix present it, and may then speak for any node")
	f.StringVar(&nodeTokenFile, "agent-auth.node-token-file", "", "per-node tokens, node:token lines: an agent or OTLP sender presenting one speaks only for its node")
	f.StringVar(&cert, "tls.cert-file", "", "TLS certificate (with --tls.key-file)")
	f.StringVar(&key, "tls.key-file", "", "TLS key")
	f.StringVar(&ttl, "graph.ttl", "", "expire graph nodes and edges without events for this long (default 5m)")
	f.StringVar(&logLevel, "log.level", "info", "log level: debug, info, warn, error")
	f.BoolVar(&pprofOn, "web.enable-pprof", false, "serve Go profiles under /debug/pprof/")
	f.BoolVar(&tokenReview, "agent-auth.tokenreview", false, "also accept agents and OTLP senders whose Kubernetes ServiceAccount token the TokenReview API accepts (in-cluster or --kubeconfig), each only for the node of the pod the token is bound to")
	f.BoolVar(&allowUnbound, "agent-auth.allow-unbound-tokens", false, "with --agent-auth.tokenreview, accept tokens bound to no node (clusters before Kubernetes 1.30) for every node")
	f.StringSliceVar(&trAudiences, "agent-auth.audience", []string{"ark-hub"}, "audiences an agent's token must be bound to")
	f.StringSliceVar(&trUsers, "agent-auth.users", []string{"system:serviceaccount:ark-system:ark-agent"}, "users that may connect as agents")
	f.BoolVar(&checkConfig, "check-config", false, "check the remediation policy (--remediation.policy) and exit")
	f.StringVar(&policyFile, "remediation.policy", "", "remediation policy file; serves the Alertmanager webhook at /api/v1/alerts (off without it)")
	f.BoolVar(&rem.DryRun, "remediation.dry-run", false, "run every check, record Events and audit dry_run, but change nothing")
	f.StringVar(&rem.AuditFile, "remediation.audit-file", "/var/log/ark/remediation-audit.log", "audit log of every remediation step")
	f.StringVar(&rem.BasicAuthFile, "remediation.basic-auth-file", "", "user:password lines the webhook accepts as basic auth (the hub token is always accepted as a bearer token)")
	f.StringVar(&rem.Kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig for the remediator (default: in-cluster ServiceAccount)")
	f.BoolVar(&rem.LeaderElect, "leader-elect", true, "elect one remediating replica through a Lease")
	f.StringVar(&rem.Election.Namespace, "leader-elect.namespace", envOr("POD_NAMESPACE", "ark-system"), "namespace of the Lease")
	f.StringVar(&rem.Election.Name, "leader-elect.lease-name", "ark-hub", "name of the Lease")
	f.StringVar(&rem.Election.Identity, "leader-elect.identity", hostIdentity(), "this replica's identity in the Lease")
	f.DurationVar(&rem.Election.LeaseDuration, "leader-elect.lease-duration", 15*time.Second, "how long a lease is held without renewal")
	f.DurationVar(&rem.Election.RenewDeadline, "leader-elect.renew-deadline", 10*time.Second, "how long the leader tries to renew before giving up")
	f.DurationVar(&rem.Election.RetryPeriod, "leader-elect.retry-period", 2*time.Second, "how often candidates try to acquire or renew")
	f.Int64Var(&memLimit, "memory-limit", 0, "soft memory limit for the Go runtime in bytes, e.g. 90% of the container limit (GOMEMLIMIT wins; 0: none)")
	return cmd
}

// hostIdentity is POD_NAME in a pod, else the host name and pid.
func hostIdentity() string {
	if p := os.Getenv("POD_NAME"); p != "" {
		return p
	}
	h, _ := os.Hostname()
	return fmt.Sprintf("%s-%d", h, os.Getpid())
}
