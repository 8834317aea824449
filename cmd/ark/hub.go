package main

import (
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ark-gpu/ark/graph"
	"github.com/ark-gpu/ark/graphsvc/hubd"
)

func newHubCmd() *cobra.Command {
	var (
		addr, tokenFile, cert, key, logLevel, ttl string
		pprofOn                                   bool
		memLimit                                  int64
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
			h, err := hubd.New(hubd.Config{Graph: gopts, TokenFile: tokenFile, Logger: logger, EnablePprof: pprofOn})
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
	f.StringVar(&tokenFile, "token-file", envOr("ARK_TOKEN_FILE", ""), "bearer token that agents and mutating calls must present")
	f.StringVar(&cert, "tls.cert-file", "", "TLS certificate (with --tls.key-file)")
	f.StringVar(&key, "tls.key-file", "", "TLS key")
	f.StringVar(&ttl, "graph.ttl", "", "expire graph nodes and edges without events for this long (default 5m)")
	f.StringVar(&logLevel, "log.level", "info", "log level: debug, info, warn, error")
	f.BoolVar(&pprofOn, "web.enable-pprof", false, "serve Go profiles under /debug/pprof/")
	f.Int64Var(&memLimit, "memory-limit", 0, "soft memory limit for the Go runtime in bytes, e.g. 90% of the container limit (GOMEMLIMIT wins; 0: none)")
	return cmd
}
