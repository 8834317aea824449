// Package tcpflow is the agent's eBPF flow probe: from kernel tracepoints
// (bpf/flow.c) it reports, per process and peer, the bytes moved each way,
// the retransmits, and the flows that carried traffic and stopped making
// progress while someone waits on them. A GPU that fell off the bus drops
// no packet: its rank stops reading, and the ranks sending to it see a
// zero window. docs/flows.md is the event contract.
package tcpflow

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probe"
)

func init() {
	probe.Register(probe.Spec{
		Name:    "tcpflow",
		Help:    "TCP flows per process and peer from eBPF tracepoints: bytes, retransmits, stalls",
		Default: true,
		New:     New,
	})
}

// Config is the probe's section of the agent config.
type Config struct {
	// Interval between reads of the kernel's flow table (default 1s).
	Interval time.Duration `yaml:"interval" json:"interval"`
	// StallAfter is how long a flow that carried traffic must make no
	// progress, with someone waiting on it, to be stalled (default 1s).
	StallAfter time.Duration `yaml:"stall_after" json:"stall_after"`
	// IdleExpiry: a flow without progress this long is no longer reported,
	// and a peer without traffic this long loses its own metric series
	// (default 10m).
	IdleExpiry time.Duration `yaml:"idle_expiry" json:"idle_expiry"`
	// TopPeers is how many peers get their own metric series; the rest are
	// peer="other" (default 64).
	TopPeers int `yaml:"top_peers" json:"top_peers"`
	// MaxFlows sizes the kernel's LRU table of flows (default 65536).
	MaxFlows uint32 `yaml:"max_flows" json:"max_flows"`
	// PIDNamespace is the pid namespace whose processes are reported, under
	// its pids (default <procfs>/self/ns/pid: the agent's own).
	PIDNamespace string `yaml:"pid_namespace" json:"pid_namespace"`
}

func (c *Config) defaults(paths probe.Paths) {
	if c.Interval == 0 {
		c.Interval = time.Second
	}
	if c.StallAfter == 0 {
		c.StallAfter = time.Second
	}
	if c.IdleExpiry == 0 {
		c.IdleExpiry = 10 * time.Minute
	}
	if c.TopPeers == 0 {
		c.TopPeers = 64
	}
	if c.MaxFlows == 0 {
		c.MaxFlows = 65536
	}
	if c.PIDNamespace == "" {
		c.PIDNamespace = paths.Proc("self", "ns", "pid")
	}
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	if c.Interval <= 0 {
		errs = append(errs, fmt.Errorf("tcpflow: interval must be positive, got %s", c.Interval))
	}
	if c.StallAfter < 0 {
		errs = append(errs, fmt.Errorf("tcpflow: stall_after must not be negative, got %s", c.StallAfter))
	}
	if c.IdleExpiry < c.StallAfter {
		errs = append(errs, fmt.Errorf("tcpflow: idle_expiry (%s) must be at least stall_after (%s)", c.IdleExpiry, c.StallAfter))
	}
	if c.TopPeers < 0 {
		errs = append(errs, fmt.Errorf("tcpflow: top_peers must not be negative, got %d", c.TopPeers))
	}
	return errors.Join(errs...)
}

// source is the kernel side: bpf/flow.c on Linux.
type source interface {
	// snapshot calls fn for every flow in the kernel's table.
	snapshot(fn func(*Sample)) error
	// readClosed calls fn for each flow that closes, until close.
	readClosed(fn func(*Sample)) error
	// lost is how many closes the kernel could not report.
	lost() uint64
	close() error
}

// maxClosedBacklog bounds the closes waiting for the next read.
const maxClosedBacklog = 1 << 16

// Probe reports TCP flows.
type Probe struct {
	env     probe.Env
	cfg     Config
	open    func(Config) (source, error)
	now     func() time.Time
	peers   *peerMetrics
	flows   prometheus.Gauge
	dropped prometheus.Counter
	trk     *tracker

	mu       sync.Mutex
	closed   []Sample
	spare    []Sample
	lastLost uint64
	lastPoll time.Time
	ifaces   ifaceNames
	ev       event.Event
}

// New builds the probe from env.
func New(env probe.Env) (probe.Probe, error) {
	var cfg Config
	if env.Config != nil {
		if err := env.Config(&cfg); err != nil {
			return nil, err
		}
	}
	cfg.defaults(env.Paths)
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return newProbe(env, cfg, openBPF)
}

func newProbe(env probe.Env, cfg Config, open func(Config) (source, error)) (*Probe, error) {
	p := &Probe{
		env:   env,
		cfg:   cfg,
		open:  open,
		now:   time.Now,
		peers: newPeerMetrics(cfg.TopPeers, cfg.IdleExpiry),
		flows: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ark_tcp_flows_tracked",
			Help: "TCP flows the eBPF flow probe follows.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ark_tcp_flow_closes_dropped_total",
			Help: "Closed TCP flows whose final counters were lost (ring buffer or backlog full).",
		}),
		trk: newTracker(cfg.StallAfter, cfg.IdleExpiry),
	}
	if env.Registerer != nil {
		var err error
		if p.peers, err = probe.RegisterOrReuse(env.Registerer, p.peers); err != nil {
			return nil, err
		}
		if p.flows, err = probe.RegisterOrReuse(env.Registerer, p.flows); err != nil {
			return nil, err
		}
		if p.dropped, err = probe.RegisterOrReuse(env.Registerer, p.dropped); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// Run loads the programs, reports every interval until ctx ends, then
// detaches them. When the kernel or the agent's privileges refuse the
// programs it returns ErrNoData with the reason.
func (p *Probe) Run(ctx context.Context, sink probe.Sink) error {
	src, err := p.open(p.cfg)
	if err != nil {
		return fmt.Errorf("tcpflow: %w: %w", probe.ErrNoData, err)
	}
	done := make(chan error, 1)
	go func() {
		done <- src.readClosed(func(s *Sample) {
			p.mu.Lock()
			defer p.mu.Unlock()
			if len(p.closed) >= maxClosedBacklog {
				p.dropped.Inc()
				return
			}
			p.closed = append(p.closed, *s)
		})
	}()
	err = probe.Poll(ctx, p.env, p.cfg.Interval, func(context.Context) error {
		return p.poll(src, sink)
	})
	cerr := src.close()
	if rerr := <-done; rerr != nil {
		cerr = errors.Join(cerr, rerr)
	}
	if cerr != nil && p.env.Logger != nil {
		p.env.Logger.Warn("tcpflow: detaching", "err", cerr)
	}
	return err
}

func (p *Probe) poll(src source, sink probe.Sink) error {
	now := p.now()
	t := p.trk
	t.begin()
	err := src.snapshot(func(s *Sample) { t.add(s, now) })
	p.mu.Lock()
	closed := p.closed
	p.closed = p.spare[:0]
	p.mu.Unlock()
	for i := range closed {
		t.add(&closed[i], now)
	}
	p.spare = closed
	if err != nil {
		return err
	}
	t.end()
	if n := src.lost(); n > p.lastLost {
		p.dropped.Add(float64(n - p.lastLost))
		p.lastLost = n
	}
	p.flows.Set(float64(len(t.flows)))
	p.peers.update(now, t.buckets)

	secs := p.cfg.Interval.Seconds()
	if !p.lastPoll.IsZero() {
		secs = now.Sub(p.lastPoll).Seconds()
	}
	p.lastPoll = now
	p.ifaces.refresh(now)
	for _, b := range t.buckets {
		p.emit(sink, now, b, secs)
	}
	return nil
}

func (p *Probe) emit(sink probe.Sink, now time.Time, b *bucket, secs float64) {
	ev := &p.ev
	ev.TS = now.UnixMilli()
	ev.EntityID = p.ifaces.entity(b.local)
	ev.PID = b.pid
	ev.NodeID = p.env.NodeName
	send := func(typ event.Type, value string, attrs ...event.Attr) {
		ev.Type = typ
		ev.Value = value
		ev.Attrs = append(append(ev.Attrs[:0], event.Attr{Key: event.AttrPeer, Value: b.peer}), attrs...)
		sink.Emit(ev)
	}
	if b.tx > 0 {
		send(event.TransportBW, rate(b.tx, secs), event.Attr{Key: event.AttrDirection, Value: "tx"})
	}
	if b.rx > 0 {
		send(event.TransportBW, rate(b.rx, secs), event.Attr{Key: event.AttrDirection, Value: "rx"})
	}
	if b.retrans > 0 {
		send(event.TransportDrop, strconv.FormatUint(b.retrans, 10))
	}
	if b.stalled > 0 {
		send(event.TransportBW, "0",
			event.Attr{Key: event.AttrStalledForMS, Value: strconv.FormatInt(b.stalledFor.Milliseconds(), 10)},
			event.Attr{Key: event.AttrZeroWindow, Value: strconv.FormatBool(b.zeroWindow)},
			event.Attr{Key: event.AttrReason, Value: b.reason})
	}
}

func rate(n uint64, secs float64) string {
	if secs <= 0 {
		secs = 1
	}
	return strconv.FormatFloat(float64(n)/secs, 'f', 0, 64)
}

// ifaceNames maps local addresses to the interface that holds them, for
// entity ids (network-eth0), re-read every ifaceRefresh.
type ifaceNames struct {
	at    time.Time
	names map[netip.Addr]string
}

const ifaceRefresh = 30 * time.Second

// unknownIface names the entity of a flow whose local address no
// interface of the agent's network namespace holds.
const unknownIface = "network-tcp"

func (n *ifaceNames) refresh(now time.Time) {
	if n.names != nil && now.Sub(n.at) < ifaceRefresh {
		return
	}
	n.at = now
	n.names = map[netip.Addr]string{}
	ifs, err := net.Interfaces()
	if err != nil {
		return
	}
	for _, ifc := range ifs {
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if pfx, err := netip.ParsePrefix(a.String()); err == nil {
				n.names[pfx.Addr().Unmap()] = "network-" + ifc.Name
			}
		}
	}
}

func (n *ifaceNames) entity(local netip.Addr) string {
	if name, ok := n.names[local.Unmap()]; ok {
		return name
	}
	return unknownIface
}
