package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ark-gpu/ark/exporter"
	"github.com/ark-gpu/ark/exporter/ipc"
	"github.com/ark-gpu/ark/exporter/probe"

	// The probes register themselves.
	_ "github.com/ark-gpu/ark/exporter/probes/execprobe"
	_ "github.com/ark-gpu/ark/exporter/probes/jobs"
	_ "github.com/ark-gpu/ark/exporter/probes/kmsg"
	_ "github.com/ark-gpu/ark/exporter/probes/nvml"
	_ "github.com/ark-gpu/ark/exporter/probes/procfs"
	_ "github.com/ark-gpu/ark/exporter/probes/tcpflow"
)

// probeOverrides replace registered probes' factories; a test build
// (-tags nvmlmock) fills it.
var probeOverrides = map[string]probe.Factory{}

func newAgentCmd() *cobra.Command {
	var (
		cfg        exporter.Config
		configFile string
		logLevel   string
		graphTTL   string
		enable     = map[string]*bool{}
		disable    = map[string]*bool{}
	)
	paths := probe.DefaultPaths()
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the node agent: probes, local causal graph, Prometheus exporter",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logger, err := newLogger(logLevel)
			if err != nil {
				return usageError{err}
			}
			cfg.Logger = logger
			cfg.Paths = paths
			if graphTTL != "" {
				d, err := parseDuration(graphTTL)
				if err != nil {
					return usageError{fmt.Errorf("--graph.ttl: %w", err)}
				}
				cfg.GraphTTL = d
			}
			if configFile != "" {
				fc, err := exporter.LoadConfigFile(configFile)
				if err != nil {
					return err
				}
				cfg.File = fc
				if err := fc.Decode("executor", &cfg.Control.Executor); err != nil {
					return err
				}
			}
			cfg.Enabled = map[string]bool{}
			for name, on := range enable {
				off := disable[name]
				switch {
				case *on && *off:
					return usageError{fmt.Errorf("--probe.%s and --no-probe.%s both given", name, name)}
				case cmd.Flags().Changed("probe." + name):
					cfg.Enabled[name] = true
				case cmd.Flags().Changed("no-probe." + name):
					cfg.Enabled[name] = false
				}
			}
			if cfg.NodeName == "" {
				cfg.NodeName = hostname()
			}
			cfg.Factories = probeOverrides
			a, err := exporter.New(cfg)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			go func() {
				for {
					select {
					case <-ctx.Done():
						return
					case <-hup:
						errs := a.ReloadRules()
						logger.Info("rules reloaded on SIGHUP", "problems", len(errs))
					}
				}
			}()
			logger.Info("starting ark agent", "node", cfg.NodeName, "version", version)
			return a.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.ListenAddress, "web.listen-address", ":9464", "address for /metrics and /healthz")
	f.StringVar(&cfg.NodeName, "node-name", os.Getenv("NODE_NAME"), "this host's name in events (default: $NODE_NAME or the hostname)")
	f.StringVar(&configFile, "config.file", "", "agent config file (YAML, one section per probe)")
	f.StringVar(&graphTTL, "graph.ttl", "", "expire graph nodes and edges without events for this long (default 5m)")
	f.StringVar(&logLevel, "log.level", "info", "log level: debug, info, warn, error")
	f.BoolVar(&cfg.EnablePprof, "web.enable-pprof", false, "serve Go profiles under /debug/pprof/")
	f.IntVar(&cfg.BusBuffer, "bus.buffer", 1<<12, "events buffered per bus subscriber before drops")
	f.StringVar(&cfg.Control.Socket, "ipc.socket", ipc.DefaultSocket, "control socket for ark ps/why/diag/fix/events (\"\" serves none)")
	f.StringVar(&cfg.Control.SocketGroup, "ipc.group", "", "group owning the control socket (its members may run read-only commands)")
	f.StringVar(&cfg.Control.AdminGroup, "ipc.admin-group", "", "group whose members may run fix besides root")
	f.StringVar(&cfg.Control.Audit.Path, "audit.file", "/var/log/ark/audit.log", "audit log of every action (\"\" disables actions)")
	f.IntVar(&cfg.Control.Audit.MaxSizeMB, "audit.max-size-mb", 100, "rotate the audit log at this size")
	f.IntVar(&cfg.Control.Audit.MaxBackups, "audit.max-backups", 10, "rotated audit logs to keep")
	f.StringVar(&cfg.Control.RulesDir, "rules.dir", "", "directory of rule files, loaded over the default rules and reloaded on change or SIGHUP")
	f.StringVar(&cfg.Hub.URL, "hub.url", "", "stream folded events to this hub (ws:// or http://host:port) and take its commands")
	f.StringVar(&cfg.Hub.TokenFile, "hub.token-file", "", "bearer token for the hub, read at each connect")
	f.StringSliceVar(&cfg.Hub.Addrs, "hub.addrs", nil, "this host's addresses, announced to the hub for cross-node waits (default: its global unicast addresses)")
	f.StringVar(&paths.ProcFS, "path.procfs", paths.ProcFS, "procfs mountpoint")
	f.StringVar(&paths.SysFS, "path.sysfs", paths.SysFS, "sysfs mountpoint")
	f.StringVar(&paths.DevKmsg, "path.kmsg", paths.DevKmsg, "kernel log device (or a file/FIFO for tests)")
	f.StringVar(&paths.PodResources, "path.pod-resources", paths.PodResources, "kubelet PodResources socket")
	for _, s := range probe.Specs() {
		state := "disabled"
		if s.Default {
			state = "enabled"
		}
		enable[s.Name] = f.Bool("probe."+s.Name, false, fmt.Sprintf("enable the %s probe: %s (default %s)", s.Name, s.Help, state))
		disable[s.Name] = f.Bool("no-probe."+s.Name, false, "disable the "+s.Name+" probe")
	}
	f.SortFlags = true
	return cmd
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return "unknown"
	}
	return h
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.ToUpper(level))); err != nil {
		return nil, fmt.Errorf("--log.level: %w", err)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}
