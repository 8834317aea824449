// Package probe is the agent's probe framework: a one-method interface,
// a registry that probe packages fill from init(), and the environment a
// probe is built with (logger, paths, config, metrics). It follows
// node_exporter's collector pattern: one package per probe, enabled with
// --probe.<name> / --no-probe.<name>, and ErrNoData when the hardware is
// absent.
package probe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ark-gpu/ark/event"
)

// ErrNoData means the probe's source is absent on this host (no NVIDIA
// driver, no kernel log): the agent logs it at debug level, reports the
// probe inactive and carries on.
var ErrNoData = errors.New("no data: source absent on this host")

// Sink receives a probe's events. Emit never blocks; it returns false when
// the event was dropped (the bus is full), which the bus has counted.
// The sink copies what it keeps, so the probe may reuse ev.
type Sink interface {
	Emit(ev *event.Event) bool
}

// SinkFunc adapts a function to Sink.
type SinkFunc func(ev *event.Event) bool

// Emit calls f.
func (f SinkFunc) Emit(ev *event.Event) bool { return f(ev) }

// Probe produces events until ctx ends. It returns ErrNoData (possibly
// wrapped) at once when its source is absent, nil when ctx ended, or an
// error when it failed and should be restarted by the runner.
type Probe interface {
	Run(ctx context.Context, sink Sink) error
}

// Paths are the host paths probes read, each from a --path.* flag so tests
// point them at fixtures.
type Paths struct {
	ProcFS       string // --path.procfs, default /proc
	SysFS        string // --path.sysfs, default /sys
	DevKmsg      string // --path.kmsg, default /dev/kmsg
	PodResources string // --path.pod-resources, default /var/lib/kubelet/pod-resources/kubelet.sock
}

// DefaultPaths are the real host's paths.
func DefaultPaths() Paths {
	return Paths{
		ProcFS:       "/proc",
		SysFS:        "/sys",
		DevKmsg:      "/dev/kmsg",
		PodResources: "/var/lib/kubelet/pod-resources/kubelet.sock",
	}
}

// Proc joins elements under the procfs root.
func (p Paths) Proc(elem ...string) string {
	return filepath.Join(append([]string{p.ProcFS}, elem...)...)
}

// Sys joins elements under the sysfs root.
func (p Paths) Sys(elem ...string) string {
	return filepath.Join(append([]string{p.SysFS}, elem...)...)
}

// Tracked is a process Ark follows: a rank seen in the events.
type Tracked struct {
	PID   int64
	JobID string
	// StartTime is the process start time in clock ticks since boot
	// (/proc/<pid>/stat field 22) when known, 0 otherwise.
	StartTime uint64
	// GPUUtil is the latest GPU utilisation (%) reported for the process,
	// and GPUUtilTS its time in ms; GPUUtilTS is 0 when none was seen.
	GPUUtil   float64
	GPUUtilTS int64
}

// Tracker lists the processes Ark follows on this host.
type Tracker interface {
	Tracked() []Tracked
}

// PodRef names the Kubernetes container a device is assigned to.
type PodRef struct {
	Pod, Namespace, Container string
}

// PodLookup finds the container a device (a GPU UUID, say) is assigned to,
// from the kubelet's PodResources API.
type PodLookup interface {
	LookupDevice(deviceID string) (PodRef, bool)
}

// GPUResolver maps a PCI bus id ("0000:9b:00.0", any case, with or without
// the function) to a GPU index, when a probe knows it (NVML does).
type GPUResolver interface {
	GPUIndexByPCI(busID string) (int, bool)
}

// Env is what a probe is built with.
type Env struct {
	Logger   *slog.Logger
	Paths    Paths
	NodeName string
	// StateDir is a directory the probe may keep state in across agent
	// restarts; "" means none.
	StateDir string
	// Registerer registers the probe's own metrics.
	Registerer prometheus.Registerer
	// Config decodes this probe's section of the agent config file into v;
	// it leaves v untouched when there is no section.
	Config func(v any) error
	// Observe records one poll or state change of the probe:
	// ark_probe_duration_seconds{probe} and ark_probe_success{probe}.
	Observe func(d time.Duration, err error)
	// Reject, when set, counts an input line the probe could not use in
	// ark_events_rejected_total{reason} (the event.Reason* values).
	Reject func(reason string)
	// Tracker, Pods and GPUs may be nil.
	Tracker Tracker
	Pods    PodLookup
	GPUs    GPUResolver
}

// Factory builds a probe.
type Factory func(env Env) (Probe, error)

// Spec describes a registered probe.
type Spec struct {
	Name    string
	Help    string
	Default bool // enabled unless --no-probe.<name>
	New     Factory
}

var (
	mu       sync.Mutex
	registry = map[string]Spec{}
)

// Register adds a probe; probe packages call it from init(). It panics on a
// duplicate name, a programming error.
func Register(s Spec) {
	mu.Lock()
	defer mu.Unlock()
	if s.Name == "" || s.New == nil {
		panic("probe: Register needs a name and a factory")
	}
	if _, dup := registry[s.Name]; dup {
		panic(fmt.Sprintf("probe: %q registered twice", s.Name))
	}
	registry[s.Name] = s
}

// Specs returns the registered probes sorted by name.
func Specs() []Spec {
	mu.Lock()
	defer mu.Unlock()
	out := make([]Spec, 0, len(registry))
	for _, s := range registry {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Poll runs poll every interval until ctx ends, observing each run. It
// returns poll's first error if that is ErrNoData, so an absent source is
// reported at once; later errors are observed and the loop goes on.
func Poll(ctx context.Context, env Env, interval time.Duration, poll func(context.Context) error) error {
	first := true
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		start := time.Now()
		err := poll(ctx)
		if env.Observe != nil {
			env.Observe(time.Since(start), err)
		}
		if err != nil {
			if first && errors.Is(err, ErrNoData) {
				return err
			}
			if env.Logger != nil && !errors.Is(err, context.Canceled) {
				env.Logger.Warn("probe poll failed", "err", err)
			}
		}
		first = false
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// RegisterOrReuse registers c on reg, or returns the collector already
// registered under the same description: a probe built twice with the same
// registry, or two probes sharing a metric (kmsg and NVML count XIDs).
func RegisterOrReuse[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, fmt.Errorf("registering metrics: %w", err)
	}
	return c, nil
}
