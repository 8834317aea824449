package arkreceiver

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probes/execprobe"
)

// Where a file seen for the first time is read from.
const (
	StartAtBeginning = "beginning"
	StartAtEnd       = "end"
)

// Defaults of the fields left out.
const (
	defaultPollInterval  = 200 * time.Millisecond
	defaultFlushInterval = 200 * time.Millisecond
	defaultMaxBatch      = 4096
	defaultStartAt       = StartAtBeginning
)

// Config is the ark receiver's configuration:
//
//	receivers:
//	  ark:
//	    include: [/var/log/ark/*.jsonl]
//	    storage: file_storage
//	    listen: {endpoint: /run/ark/events.sock, transport: unix}
//	    exec:
//	      programs:
//	        - {name: nccl-watch, command: /opt/probes/nccl-watch.py}
type Config struct {
	// Include are glob patterns of JSONL files to tail; a file is followed
	// across rotation (rename and a new file, or truncation).
	Include []string `mapstructure:"include"`
	// StartAt is where a file first seen is read from: beginning or end.
	// A file with a checkpoint resumes at its offset either way.
	StartAt string `mapstructure:"start_at"`
	// PollInterval is how often files are checked for new lines and new
	// files.
	PollInterval time.Duration `mapstructure:"poll_interval"`
	// StorageID names a storage extension that keeps each file's offset,
	// written after the lines before it were delivered, so a restart
	// neither loses nor repeats a line. Without it a restart honours
	// start_at.
	StorageID *component.ID `mapstructure:"storage"`

	// Listen accepts JSONL on a socket: one event per line, any number of
	// connections.
	Listen ListenConfig `mapstructure:"listen"`

	// Exec runs external probe programs with the Ark agent's semantics
	// (process groups, restarts with backoff, rate limits).
	Exec execprobe.Config `mapstructure:"exec"`

	// MaxLineBytes is the longest accepted line.
	MaxLineBytes int `mapstructure:"max_line_bytes"`
	// MaxBatch caps the events converted and sent in one batch.
	MaxBatch int `mapstructure:"max_batch"`
	// FlushInterval is the longest a socket or exec event waits for its
	// batch.
	FlushInterval time.Duration `mapstructure:"flush_interval"`

	// HostName is node_id for events that carry none.
	HostName string `mapstructure:"host_name"`
	// K8sNodeName also sets the resource attribute k8s.node.name to the
	// host, for hosts named after their Kubernetes node (the agent's
	// default in a DaemonSet).
	K8sNodeName bool `mapstructure:"k8s_node_name"`
	// HostEventsPerJob emits a host-level fault (error.hw, error.net,
	// topo.link_down without a job) once for each job whose ranks use the
	// device, tagged with that job, so that routing by trace id delivers
	// it to every hub that owns one of those jobs.
	HostEventsPerJob bool `mapstructure:"host_events_per_job"`

	// prevent unkeyed literal initialization
	_ struct{}
}

// ListenConfig is a socket to accept JSONL on.
type ListenConfig struct {
	// Endpoint is host:port for tcp, a path for unix; empty: no socket.
	Endpoint string `mapstructure:"endpoint"`
	// Transport is tcp or unix.
	Transport string `mapstructure:"transport"`
}

func createDefaultConfig() component.Config {
	return &Config{
		StartAt:          defaultStartAt,
		PollInterval:     defaultPollInterval,
		MaxLineBytes:     event.DefaultMaxLineBytes,
		MaxBatch:         defaultMaxBatch,
		FlushInterval:    defaultFlushInterval,
		HostEventsPerJob: true,
		Listen:           ListenConfig{Transport: "tcp"},
	}
}

// Unmarshal reads the configuration and fills the exec programs'
// defaults, which their own validation expects.
func (cfg *Config) Unmarshal(conf *confmap.Conf) error {
	if err := conf.Unmarshal(cfg); err != nil {
		return err
	}
	cfg.Exec.SetDefaults()
	return nil
}

// Validate reports every problem at once. The exec programs are checked
// by their own Validate, which the Collector calls on the exec section.
func (cfg *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if len(cfg.Include) == 0 && cfg.Listen.Endpoint == "" && len(cfg.Exec.Programs) == 0 {
		bad("no input: set include, listen.endpoint or exec.programs")
	}
	for _, p := range cfg.Include {
		if _, err := filepath.Match(p, ""); err != nil {
			bad("include %q: %v", p, err)
		}
	}
	if cfg.StartAt != StartAtBeginning && cfg.StartAt != StartAtEnd {
		bad("start_at must be %q or %q, got %q", StartAtBeginning, StartAtEnd, cfg.StartAt)
	}
	if cfg.PollInterval <= 0 {
		bad("poll_interval must be positive, got %s", cfg.PollInterval)
	}
	if cfg.StorageID != nil && len(cfg.Include) == 0 {
		bad("storage is set but no file is included")
	}
	if cfg.Listen.Endpoint != "" && cfg.Listen.Transport != "tcp" && cfg.Listen.Transport != "unix" {
		bad("listen.transport must be tcp or unix, got %q", cfg.Listen.Transport)
	}
	if cfg.MaxLineBytes <= 0 {
		bad("max_line_bytes must be positive, got %d", cfg.MaxLineBytes)
	}
	if cfg.MaxBatch <= 0 {
		bad("max_batch must be positive, got %d", cfg.MaxBatch)
	}
	if cfg.FlushInterval <= 0 {
		bad("flush_interval must be positive, got %s", cfg.FlushInterval)
	}
	return errors.Join(errs...)
}
