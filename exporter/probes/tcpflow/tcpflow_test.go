package tcpflow

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/ark-gpu/ark/exporter/probe"
)

func TestFormatPeerBracketsIPv6AndUnmapsIPv4(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.1:80":           "10.0.0.1:80",
		"[::ffff:10.0.0.1]:80":  "10.0.0.1:80",
		"[fd77::2]:7003":        "[fd77::2]:7003",
		"[2001:db8::1%eth0]:22": "[2001:db8::1%eth0]:22",
	} {
		require.Equal(t, want, FormatPeer(netip.MustParseAddrPort(in)), in)
	}
}

func TestConfigValidateReportsEveryProblem(t *testing.T) {
	c := Config{Interval: -1, StallAfter: -1, IdleExpiry: -2, TopPeers: -1}
	err := c.Validate()
	require.EqualError(t, err, strings.Join([]string{
		"tcpflow: interval must be positive, got -1ns",
		"tcpflow: stall_after must not be negative, got -1ns",
		"tcpflow: idle_expiry (-2ns) must be at least stall_after (-1ns)",
		"tcpflow: top_peers must not be negative, got -1",
	}, "\n"))
	var d Config
	d.defaults(probe.Paths{ProcFS: "/proc"})
	require.NoError(t, d.Validate())
	require.Equal(t, "/proc/self/ns/pid", d.PIDNamespace)
}

func TestPeerMetricsKeepTopNPeersAndFoldTheRestIntoOther(t *testing.T) {
	m := newPeerMetrics(2, time.Minute)
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(m))
	now := time.Unix(1000, 0)
	b := func(peer string, tx, retrans uint64, stalled int) *bucket {
		return &bucket{pid: 1, peer: peer, tx: tx, retrans: retrans, stalled: stalled}
	}
	step := func(bs ...*bucket) {
		all := map[bucketKey]*bucket{}
		for _, x := range bs {
			all[bucketKey{x.pid, x.peer}] = x
		}
		m.update(now, all)
		now = now.Add(time.Second)
	}
	step(b("a:1", 10, 0, 0), b("b:1", 300, 0, 0), b("c:1", 200, 2, 1))
	// The two busiest new peers get labels; a:1 is "other".
	require.Equal(t, 2, testutil.CollectAndCount(m, "ark_tcp_stalled_flows")-1)
	require.InDelta(t, 300, testutil.ToFloat64(mustMetric(t, reg, "ark_tcp_bytes_total", "b:1", "tx")), 0)
	require.InDelta(t, 10, testutil.ToFloat64(mustMetric(t, reg, "ark_tcp_bytes_total", "other", "tx")), 0)
	require.InDelta(t, 1, testutil.ToFloat64(mustMetric(t, reg, "ark_tcp_stalled_flows", "c:1")), 0)
	// A labelled peer keeps its series; the stalled gauge follows the
	// latest interval.
	step(b("b:1", 5, 0, 0), b("c:1", 0, 0, 0))
	require.InDelta(t, 305, testutil.ToFloat64(mustMetric(t, reg, "ark_tcp_bytes_total", "b:1", "tx")), 0)
	require.InDelta(t, 0, testutil.ToFloat64(mustMetric(t, reg, "ark_tcp_stalled_flows", "c:1")), 0)
	// After the idle expiry c:1 leaves and a:1 takes its slot; "other"
	// keeps what it counted.
	now = now.Add(2 * time.Minute)
	step(b("b:1", 1, 0, 0), b("a:1", 7, 0, 0))
	require.InDelta(t, 7, testutil.ToFloat64(mustMetric(t, reg, "ark_tcp_bytes_total", "a:1", "tx")), 0)
	require.InDelta(t, 10, testutil.ToFloat64(mustMetric(t, reg, "ark_tcp_bytes_total", "other", "tx")), 0)
	require.Nil(t, findMetric(t, reg, "ark_tcp_retransmits_total", "c:1"))
}

func TestTrackerStallNeedsAWaiterAndEndsWithProgress(t *testing.T) {
	tr := newTracker(time.Second, time.Minute)
	peer := netip.MustParseAddrPort("10.0.0.2:7000")
	s := Sample{Key: 1, PID: 7, Peer: peer, SndWnd: 65535}
	now := time.Unix(1000, 0)
	read := func(mut func(*Sample)) *bucket {
		mut(&s)
		tr.begin()
		tr.add(&s, now)
		tr.end()
		now = now.Add(time.Second)
		return tr.buckets[bucketKey{7, "10.0.0.2:7000"}]
	}
	require.Zero(t, read(func(*Sample) {}).stalled, "a flow that never carried traffic is not stalled")
	require.EqualValues(t, 100, read(func(s *Sample) { s.TxBytes = 100 }).tx)
	require.Zero(t, read(func(*Sample) {}).stalled, "not yet StallAfter")
	require.Zero(t, read(func(*Sample) {}).stalled, "idle, nobody waits: not stalled")
	got := read(func(s *Sample) { s.SndWnd = 0 })
	require.Equal(t, 1, got.stalled)
	require.True(t, got.zeroWindow)
	require.Equal(t, ReasonZeroWindow, got.reason)
	got = read(func(s *Sample) { s.SndWnd = 1000; s.RxEAGAIN++ })
	require.Equal(t, ReasonRxWait, got.reason)
	got = read(func(s *Sample) { s.Retrans++ })
	require.Equal(t, ReasonRetrans, got.reason)
	require.EqualValues(t, 1, got.retrans)
	require.Zero(t, read(func(s *Sample) { s.TxBytes += 10; s.Retrans++ }).stalled, "progress ends the stall")
	// A flow missing from the table is forgotten.
	tr.begin()
	tr.end()
	require.Empty(t, tr.flows)
}

func findMetric(t *testing.T, g prometheus.Gatherer, name string, labels ...string) prometheus.Collector {
	t.Helper()
	mfs, err := g.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			vals := map[string]bool{}
			for _, l := range m.GetLabel() {
				vals[l.GetValue()] = true
			}
			for _, l := range labels {
				if !vals[l] {
					continue next
				}
			}
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "x"})
			g.Set(v)
			return g
		}
	}
	return nil
}

func mustMetric(t *testing.T, g prometheus.Gatherer, name string, labels ...string) prometheus.Collector {
	t.Helper()
	c := findMetric(t, g, name, labels...)
	require.NotNil(t, c, "%s%v", name, labels)
	return c
}
