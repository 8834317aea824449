package tcpflow

import (
	"cmp"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// OtherPeer is the peer label of the peers beyond the top N.
const OtherPeer = "other"

var (
	retransDesc = prometheus.NewDesc("ark_tcp_retransmits_total",
		"TCP segments retransmitted toward a peer by processes in the agent's pid namespace; peers beyond the top N as peer=\"other\".",
		[]string{"peer"}, nil)
	bytesDesc = prometheus.NewDesc("ark_tcp_bytes_total",
		"TCP payload bytes sent (tx) to and read (rx) from a peer by processes in the agent's pid namespace; peers beyond the top N as peer=\"other\".",
		[]string{"peer", "direction"}, nil)
	stalledDesc = prometheus.NewDesc("ark_tcp_stalled_flows",
		"TCP flows to a peer that carried traffic and now make no progress while someone waits on them (zero window, retransmitting, polled for data).",
		[]string{"peer"}, nil)
)

type peerTotals struct {
	retrans, tx, rx float64
	stalled         int
	active          time.Time // latest interval with traffic or a stall
}

// peerMetrics keeps the per-peer series with bounded cardinality: at most
// topN peers have their own label; a peer enters when a slot is free (the
// busiest new peers first) and leaves after idle without traffic, and
// everything else adds to peer="other". Every series only grows, so
// rate() over it is right whatever the churn.
type peerMetrics struct {
	mu    sync.Mutex
	topN  int
	idle  time.Duration
	peers map[string]*peerTotals
	other peerTotals
}

func newPeerMetrics(topN int, idle time.Duration) *peerMetrics {
	return &peerMetrics{topN: topN, idle: idle, peers: map[string]*peerTotals{}}
}

// update adds one interval's buckets.
func (m *peerMetrics) update(now time.Time, buckets map[bucketKey]*bucket) {
	type delta struct {
		peer        string
		tx, rx, ret uint64
		stalled     int
	}
	byPeer := map[string]*delta{}
	for _, b := range buckets {
		d := byPeer[b.peer]
		if d == nil {
			d = &delta{peer: b.peer}
			byPeer[b.peer] = d
		}
		d.tx += b.tx
		d.rx += b.rx
		d.ret += b.retrans
		d.stalled += b.stalled
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, p := range m.peers {
		p.stalled = 0
		if _, busy := byPeer[k]; !busy && now.Sub(p.active) > m.idle {
			delete(m.peers, k)
		}
	}
	m.other.stalled = 0
	var fresh []*delta
	for _, d := range byPeer {
		if d.tx == 0 && d.rx == 0 && d.ret == 0 && d.stalled == 0 {
			continue
		}
		if _, ok := m.peers[d.peer]; ok {
			m.add(m.peers[d.peer], d.tx, d.rx, d.ret, d.stalled, now)
			continue
		}
		fresh = append(fresh, d)
	}
	slices.SortFunc(fresh, func(a, b *delta) int {
		return cmp.Or(cmp.Compare(b.tx+b.rx, a.tx+a.rx), cmp.Compare(b.ret, a.ret), cmp.Compare(a.peer, b.peer))
	})
	for _, d := range fresh {
		p := &m.other
		if len(m.peers) < m.topN {
			p = &peerTotals{}
			m.peers[d.peer] = p
		}
		m.add(p, d.tx, d.rx, d.ret, d.stalled, now)
	}
}

func (m *peerMetrics) add(p *peerTotals, tx, rx, ret uint64, stalled int, now time.Time) {
	p.tx += float64(tx)
	p.rx += float64(rx)
	p.retrans += float64(ret)
	p.stalled += stalled
	p.active = now
}

// Describe implements prometheus.Collector.
func (m *peerMetrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- retransDesc
	ch <- bytesDesc
	ch <- stalledDesc
}

// Collect implements prometheus.Collector.
func (m *peerMetrics) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	defer m.mu.Unlock()
	emit := func(peer string, p *peerTotals) {
		ch <- prometheus.MustNewConstMetric(retransDesc, prometheus.CounterValue, p.retrans, peer)
		ch <- prometheus.MustNewConstMetric(bytesDesc, prometheus.CounterValue, p.tx, peer, "tx")
		ch <- prometheus.MustNewConstMetric(bytesDesc, prometheus.CounterValue, p.rx, peer, "rx")
		ch <- prometheus.MustNewConstMetric(stalledDesc, prometheus.GaugeValue, float64(p.stalled), peer)
	}
	for peer, p := range m.peers {
		emit(peer, p)
	}
	emit(OtherPeer, &m.other)
}
