// Package exporter is Ark's node agent: it runs the probes, fans their
// events out on a bus to the local causal graph and the metrics, and serves
// them as a Prometheus exporter (docs/README.md).
package exporter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/forwarder"
	"github.com/ark-gpu/ark/exporter/ipc"
	"github.com/ark-gpu/ark/exporter/podresources"
	"github.com/ark-gpu/ark/exporter/probe"
	"github.com/ark-gpu/ark/graph"
	"github.com/ark-gpu/ark/graph/graphmetrics"
	"github.com/ark-gpu/ark/link"
)

// Config configures an Agent.
type Config struct {
	NodeName      string
	ListenAddress string // --web.listen-address; "" serves no HTTP
	Paths         probe.Paths
	File          *FileConfig // the parsed --config.file, may be nil
	GraphTTL      time.Duration
	// Enabled overrides each probe's default (--probe.X / --no-probe.X).
	Enabled map[string]bool
	// BusBuffer is each bus subscriber's buffer, in events (default 4096,
	// about 0.5 MiB: a subscriber drains at once when it is half full).
	BusBuffer int
	Logger    *slog.Logger
	// Factories replace registered probes' factories (tests inject mocks).
	Factories map[string]probe.Factory
	// Pods and GPUs, when set, are handed to every probe.
	Pods probe.PodLookup
	GPUs probe.GPUResolver
	// Now is the clock (default time.Now).
	Now func() time.Time
	// EnablePprof serves net/http/pprof under /debug/pprof/.
	EnablePprof bool
	// StateDir is where probes keep what must outlive the agent (--state.dir;
	// "" keeps nothing): the exec probe's records of the programs it runs.
	StateDir string
	// Control is the local control plane: socket, audit, rules, executor.
	Control ControlConfig
	// Hub, when its URL is set, streams folded events to the hub and takes
	// its commands.
	Hub HubConfig
}

// HubConfig is the agent's link to the hub.
type HubConfig struct {
	URL       string   // ws(s):// or http(s):// of the hub; link.Path is added when missing
	TokenFile string   // bearer token, read at each connect
	Addrs     []string // this host's addresses, announced for cross-node edges
}

// ProbeStatus says how a probe is doing.
type ProbeStatus struct {
	Name   string `json:"name"`
	State  string `json:"state"` // running, inactive, failed, disabled
	Reason string `json:"reason,omitempty"`
}

// Agent is the node agent.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	reg     *prometheus.Registry
	bus     *Bus
	graph   *graph.Graph
	tracker *tracker
	counts  *eventCounters

	probeDur     *prometheus.GaugeVec
	probeSuccess *prometheus.GaugeVec

	pods *podresources.Client // nil when cfg.Pods was given
	gpus lateGPUs
	ctl  *control
	fwd  *forwarder.Client // nil without a hub

	mu     sync.Mutex
	status map[string]*ProbeStatus
	ready  chan struct{}
	srv    *http.Server
	lis    net.Listener
}

// New builds an agent; Run starts it.
func New(cfg Config) (*Agent, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.BusBuffer <= 0 {
		cfg.BusBuffer = 1 << 12
	}
	if cfg.Paths == (probe.Paths{}) {
		cfg.Paths = probe.DefaultPaths()
	}
	if cfg.NodeName == "" {
		return nil, errors.New("agent: node name is required")
	}
	if err := cfg.File.checkProbes(probe.Specs()); err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), collectors.NewGoCollector())
	g := graph.New(graph.Options{TTL: cfg.GraphTTL})
	a := &Agent{
		cfg:     cfg,
		log:     cfg.Logger,
		reg:     reg,
		bus:     NewBus(reg),
		graph:   g,
		tracker: newTracker(g.Options().TTL, func() int64 { return cfg.Now().UnixMilli() }),
		counts:  newEventCounters(reg),
		probeDur: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ark_probe_duration_seconds",
			Help: "How long the probe's last poll (or state change) took.",
		}, []string{"probe"}),
		probeSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ark_probe_success",
			Help: "Whether the probe's last poll succeeded (1) or failed (0).",
		}, []string{"probe"}),
		status: map[string]*ProbeStatus{},
		ready:  make(chan struct{}),
	}
	reg.MustRegister(a.probeDur, a.probeSuccess, graphmetrics.NewCollector(g), a.tracker)
	if cfg.GPUs != nil {
		a.gpus.set(cfg.GPUs)
	}
	if cfg.Pods == nil && cfg.Paths.PodResources != "" {
		// Pod attribution from the kubelet, when there is one.
		a.pods = podresources.New(cfg.Paths.PodResources,
			podresources.WithLogger(cfg.Logger.With("component", "podresources")),
			podresources.WithRegisterer(reg))
		a.cfg.Pods = a.pods
	}
	a.bus.Subscribe("graph", cfg.BusBuffer, g.ApplyBatch)
	a.bus.Subscribe("metrics", cfg.BusBuffer, a.tracker.observe)
	ctl, err := a.newControl()
	if err != nil {
		return nil, err
	}
	a.ctl = ctl
	if cfg.Hub.URL != "" {
		u, err := url.Parse(cfg.Hub.URL)
		if err != nil {
			return nil, fmt.Errorf("hub URL: %w", err)
		}
		if u.Path == "" || u.Path == "/" {
			u.Path = link.Path // the hub's base URL was given
		}
		addrs := cfg.Hub.Addrs
		if len(addrs) == 0 {
			addrs = hostAddrs()
		}
		fwd, err := forwarder.New(forwarder.Options{
			URL: u.String(), TokenFile: cfg.Hub.TokenFile, Node: cfg.NodeName, Addrs: addrs, Version: "ark",
			Logger: cfg.Logger.With("component", "forwarder"), Registerer: reg,
			Snapshot: g.Snapshot, Commands: ctl,
		})
		if err != nil {
			return nil, err
		}
		a.fwd = fwd
		a.bus.Subscribe("hub", cfg.BusBuffer, fwd.Sink)
	}
	return a, nil
}

// ReloadRules reloads the rule files (the agent's SIGHUP) and returns the
// problems found; files that fail keep their previous rules.
func (a *Agent) ReloadRules() []error { return a.ctl.rules.Reload() }

// Graph returns the agent's local causal graph.
func (a *Agent) Graph() *graph.Graph { return a.graph }

// Registry returns the agent's metrics registry.
func (a *Agent) Registry() *prometheus.Registry { return a.reg }

// Bus returns the agent's event bus; subscribe before Run.
func (a *Agent) Bus() *Bus { return a.bus }

// Tracker lists the processes the agent follows.
func (a *Agent) Tracker() probe.Tracker { return a.tracker }

// Addr returns the HTTP listener's address once Run has started it.
func (a *Agent) Addr() net.Addr {
	<-a.ready
	if a.lis == nil {
		return nil
	}
	return a.lis.Addr()
}

// Probes returns the probes' status, sorted by name.
func (a *Agent) Probes() []ProbeStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]ProbeStatus, 0, len(a.status))
	for _, s := range a.status {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (a *Agent) setStatus(name, state, reason string) {
	a.mu.Lock()
	a.status[name] = &ProbeStatus{Name: name, State: state, Reason: reason}
	a.mu.Unlock()
}

// Publish validates ev, fills in the node name, counts it and puts it on the
// bus. Probes reach it through their Sink.
func (a *Agent) Publish(ev *event.Event) bool {
	if !ev.Type.Valid() {
		a.counts.reject(event.ReasonUnknownType)
		return false
	}
	if ev.EntityID == "" || ev.TS <= 0 {
		a.counts.reject(event.ReasonMissingField)
		return false
	}
	if ev.NodeID == "" {
		ev.NodeID = a.cfg.NodeName
	}
	a.counts.byType[ev.Type].Inc()
	return a.bus.Publish(ev)
}

// Handler serves /metrics, /healthz and a landing page.
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(a.log.Handler(), slog.LevelError),
		ErrorHandling: promhttp.ContinueOnError,
	}))
	if a.cfg.EnablePprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = fmt.Fprintf(w, "<html><head><title>Ark agent</title></head><body><h1>Ark agent on %s</h1><p><a href=\"/metrics\">Metrics</a></p><ul>", a.cfg.NodeName)
		for _, s := range a.Probes() {
			_, _ = fmt.Fprintf(w, "<li>%s: %s %s</li>", s.Name, s.State, s.Reason)
		}
		_, _ = fmt.Fprint(w, "</ul></body></html>")
	})
	return mux
}

// Run starts the HTTP server, the bus and the probes, and blocks until ctx
// ends or the listener fails.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	if a.cfg.ListenAddress != "" {
		lis, err := net.Listen("tcp", a.cfg.ListenAddress)
		if err != nil {
			close(a.ready)
			return fmt.Errorf("listening on %s: %w", a.cfg.ListenAddress, err)
		}
		a.lis = lis
		a.srv = &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 10 * time.Second}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serving metrics: %w", err)
				cancel()
			}
		}()
		a.log.Info("serving metrics", "addr", lis.Addr().String())
	}
	close(a.ready)

	busCtx, stopBus := context.WithCancel(context.Background())
	var busWG sync.WaitGroup
	busWG.Add(1)
	go func() {
		defer busWG.Done()
		a.bus.Run(busCtx)
	}()

	// Expire the graph on the wall clock, so a quiet host forgets.
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(30 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				a.graph.Expire(a.cfg.Now().UnixMilli())
			}
		}
	}()

	if a.pods != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.pods.Run(ctx); err != nil {
				a.log.Info("no pod attribution", "reason", err)
			}
		}()
	}
	if a.fwd != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.fwd.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
				a.log.Error("hub forwarder stopped", "err", err)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := a.ctl.rules.Run(ctx); err != nil {
			a.log.Error("rules watcher stopped", "err", err)
		}
	}()
	if a.cfg.Control.Socket != "" {
		srv, err := ipc.NewServer(ipc.Config{Path: a.cfg.Control.Socket, Group: a.cfg.Control.SocketGroup,
			AdminGroup: a.cfg.Control.AdminGroup, Logger: a.log.With("component", "ipc")})
		if err == nil {
			err = srv.Listen()
		}
		if err != nil {
			cancel()
			wg.Wait()
			stopBus()
			busWG.Wait()
			return fmt.Errorf("control socket: %w", err)
		}
		a.ctl.register(srv)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(ctx); err != nil {
				a.log.Error("control socket stopped", "err", err)
			}
		}()
		a.log.Info("control socket ready", "path", a.cfg.Control.Socket)
	}

	a.startProbes(ctx, &wg)
	<-ctx.Done()
	if a.srv != nil {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = a.srv.Shutdown(sctx)
		scancel()
	}
	wg.Wait()
	stopBus()
	busWG.Wait()
	if a.ctl.audit != nil {
		if err := a.ctl.audit.Close(); err != nil {
			a.log.Error("closing audit log", "err", err)
		}
	}
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

func (a *Agent) startProbes(ctx context.Context, wg *sync.WaitGroup) {
	type built struct {
		name  string
		p     probe.Probe
		env   probe.Env
		ready chan struct{} // closed at the probe's first poll or exit
	}
	var resolvers, others []built
	for _, spec := range probe.Specs() {
		enabled := spec.Default
		if v, ok := a.cfg.Enabled[spec.Name]; ok {
			enabled = v
		}
		if !enabled {
			a.setStatus(spec.Name, "disabled", "")
			continue
		}
		factory := spec.New
		if f, ok := a.cfg.Factories[spec.Name]; ok {
			factory = f
		}
		env := a.env(spec.Name)
		ready := make(chan struct{})
		var once sync.Once
		observe := env.Observe
		env.Observe = func(d time.Duration, err error) {
			observe(d, err)
			once.Do(func() { close(ready) })
		}
		p, err := factory(env)
		if err != nil {
			if errors.Is(err, probe.ErrNoData) {
				a.setStatus(spec.Name, "inactive", err.Error())
				continue
			}
			a.setStatus(spec.Name, "failed", err.Error())
			a.log.Error("probe could not start", "probe", spec.Name, "err", err)
			continue
		}
		b := built{spec.Name, p, env, ready}
		if r, ok := p.(probe.GPUResolver); ok {
			a.gpus.set(r)
			resolvers = append(resolvers, b)
		} else {
			others = append(others, b)
		}
	}
	var startWG sync.WaitGroup
	start := func(b built) {
		a.setStatus(b.name, "running", "")
		wg.Add(1)
		startWG.Add(1)
		exited := make(chan struct{})
		go func() {
			defer wg.Done()
			defer close(exited)
			a.runProbe(ctx, b.name, b.p, b.env, &startWG)
		}()
		go func() {
			select {
			case <-exited:
			case <-ctx.Done():
			case <-b.ready:
				return
			}
			b.env.Observe(0, nil) // unblock waiters; harmless after exit
		}()
	}
	// Probes that resolve PCI bus ids to GPUs (NVML) go first and get a
	// moment to discover the GPUs, so the kernel-log probe names an XID's
	// GPU from the first line it reads.
	for _, b := range resolvers {
		start(b)
	}
	for _, b := range resolvers {
		select {
		case <-b.ready:
		case <-time.After(5 * time.Second):
		case <-ctx.Done():
		}
	}
	for _, b := range others {
		start(b)
	}
	// Give probes a moment to report absent hardware, so the startup log
	// says which are inactive and why.
	done := make(chan struct{})
	go func() { startWG.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
	case <-ctx.Done():
	}
	var running, inactive []string
	for _, s := range a.Probes() {
		switch s.State {
		case "inactive":
			inactive = append(inactive, s.Name+" ("+s.Reason+")")
		case "running":
			running = append(running, s.Name)
		}
	}
	a.log.Info("probes started", "running", running, "inactive", inactive)
}

func (a *Agent) env(name string) probe.Env {
	return probe.Env{
		Logger:     a.log.With("probe", name),
		Paths:      a.cfg.Paths,
		NodeName:   a.cfg.NodeName,
		StateDir:   a.cfg.StateDir,
		Registerer: a.reg,
		Config:     a.cfg.File.section(name),
		Observe: func(d time.Duration, err error) {
			a.probeDur.WithLabelValues(name).Set(d.Seconds())
			ok := 1.0
			if err != nil {
				ok = 0
			}
			a.probeSuccess.WithLabelValues(name).Set(ok)
		},
		Reject:  a.counts.reject,
		Tracker: a.tracker,
		Pods:    a.cfg.Pods,
		GPUs:    &a.gpus,
	}
}

// lateGPUs resolves PCI bus ids through whichever probe can (NVML), even
// one built after the probe asking (kmsg).
type lateGPUs struct {
	mu sync.RWMutex
	r  probe.GPUResolver
}

func (l *lateGPUs) set(r probe.GPUResolver) {
	l.mu.Lock()
	if l.r == nil {
		l.r = r
	}
	l.mu.Unlock()
}

// GPUIndexByPCI implements probe.GPUResolver.
func (l *lateGPUs) GPUIndexByPCI(bus string) (int, bool) {
	l.mu.RLock()
	r := l.r
	l.mu.RUnlock()
	if r == nil {
		return 0, false
	}
	return r.GPUIndexByPCI(bus)
}

// Restart backoff for a probe whose Run fails.
const (
	probeBackoffMin = time.Second
	probeBackoffMax = time.Minute
)

func (a *Agent) runProbe(ctx context.Context, name string, p probe.Probe, env probe.Env, started *sync.WaitGroup) {
	sink := probe.SinkFunc(a.Publish)
	backoff := probeBackoffMin
	first := true
	for {
		// A probe that reaches its first poll without ErrNoData counts as
		// started; Run returning at once with ErrNoData is reported.
		t0 := time.Now()
		errc := make(chan error, 1)
		go func() { errc <- p.Run(ctx, sink) }()
		var err error
		if first {
			select {
			case err = <-errc:
			case <-time.After(500 * time.Millisecond):
				started.Done()
				first = false
				err = <-errc
			}
		} else {
			err = <-errc
		}
		if first {
			started.Done()
			first = false
		}
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, probe.ErrNoData):
			a.setStatus(name, "inactive", err.Error())
			a.log.Debug("probe inactive", "probe", name, "reason", err)
			return
		case err == nil:
			a.setStatus(name, "stopped", "")
			return
		}
		a.setStatus(name, "failed", err.Error())
		env.Observe(time.Since(t0), err)
		if time.Since(t0) > 10*probeBackoffMax {
			backoff = probeBackoffMin
		}
		a.log.Warn("probe failed, restarting", "probe", name, "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, probeBackoffMax)
		a.setStatus(name, "running", "")
	}
}

// hostAddrs is what an agent announces to the hub when not told: the
// host's global unicast addresses (the agent runs with hostNetwork), which
// its ranks' peers see.
func hostAddrs() []string {
	ifs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []string
	for _, a := range ifs {
		ipn, ok := a.(*net.IPNet)
		if !ok || !ipn.IP.IsGlobalUnicast() {
			continue
		}
		out = append(out, ipn.IP.String())
	}
	return out
}
