package tcpflow

import (
	"net/netip"
	"strconv"
	"time"
)

// Sample is one flow's state as the kernel reported it: counters since the
// flow was first seen, and the TCP state at its latest segment.
type Sample struct {
	Key         uint64 // the socket
	PID         int64  // owner, in the agent's pid namespace
	Local, Peer netip.AddrPort
	TxBytes     uint64
	RxBytes     uint64
	Retrans     uint64
	RxEAGAIN    uint64
	SndUna      uint32
	RcvNxt      uint32
	SndWnd      uint32
	// Closed: the final counters of a flow that closed.
	Closed bool
}

// Stall reasons (attrs.reason on a stall event).
const (
	ReasonZeroWindow = "zero_window"    // the peer does not read: its window is 0
	ReasonRetrans    = "retransmitting" // the peer (or the path) does not acknowledge
	ReasonRxWait     = "rx_wait"        // the owner polls for data that does not come
)

// flowState is what user space remembers of one flow between reads.
type flowState struct {
	last         Sample
	lastProgress time.Time
	retransAtP   uint64 // retransmits when progress was last seen
	carried      bool   // the flow has moved data
	seen         uint64 // generation of the latest read that listed it
}

// bucket is one (pid, peer) for one interval.
type bucket struct {
	pid        int64
	peer       string
	local      netip.Addr
	tx, rx     uint64
	retrans    uint64
	stalled    int           // flows stalled now
	stalledFor time.Duration // the longest
	zeroWindow bool
	reason     string
}

type bucketKey struct {
	pid  int64
	peer string
}

// tracker turns successive reads of the kernel's flow table into
// per-(pid, peer) deltas and stall verdicts.
type tracker struct {
	stallAfter time.Duration
	idle       time.Duration
	flows      map[uint64]*flowState
	buckets    map[bucketKey]*bucket
	gen        uint64
	peers      map[netip.AddrPort]string // formatting cache
}

func newTracker(stallAfter, idle time.Duration) *tracker {
	return &tracker{
		stallAfter: stallAfter,
		idle:       idle,
		flows:      map[uint64]*flowState{},
		buckets:    map[bucketKey]*bucket{},
		peers:      map[netip.AddrPort]string{},
	}
}

// FormatPeer writes an address as attrs.peer does: ip:port, IPv6 in
// brackets, IPv4-mapped IPv6 as IPv4.
func FormatPeer(ap netip.AddrPort) string {
	a := ap.Addr().Unmap()
	if a.Is4() {
		return a.String() + ":" + strconv.Itoa(int(ap.Port()))
	}
	return "[" + a.String() + "]:" + strconv.Itoa(int(ap.Port()))
}

func (t *tracker) peer(ap netip.AddrPort) string {
	if s, ok := t.peers[ap]; ok {
		return s
	}
	if len(t.peers) > 4*len(t.flows)+1024 {
		clear(t.peers)
	}
	s := FormatPeer(ap)
	t.peers[ap] = s
	return s
}

// begin starts a read of the table at now.
func (t *tracker) begin() {
	t.gen++
	clear(t.buckets)
}

// add folds one sample read at now into the interval's buckets.
func (t *tracker) add(s *Sample, now time.Time) {
	if s.PID <= 0 || !s.Peer.Addr().IsValid() || s.Peer.Port() == 0 {
		return // not owned yet, or not connected
	}
	st := t.flows[s.Key]
	if st == nil || st.last.PID != s.PID || st.last.Peer != s.Peer {
		// A new flow, or the socket's memory reused by another one.
		st = &flowState{lastProgress: now}
		t.flows[s.Key] = st
	}
	prev := &st.last
	dtx := sub(s.TxBytes, prev.TxBytes)
	drx := sub(s.RxBytes, prev.RxBytes)
	dre := sub(s.Retrans, prev.Retrans)
	deagain := sub(s.RxEAGAIN, prev.RxEAGAIN)
	progress := dtx > 0 || drx > 0 ||
		(st.carried && (s.SndUna != prev.SndUna || s.RcvNxt != prev.RcvNxt))
	if progress {
		st.carried = true
		st.lastProgress = now
		st.retransAtP = s.Retrans
	}
	st.last = *s
	st.seen = t.gen

	k := bucketKey{s.PID, t.peer(s.Peer)}
	b := t.buckets[k]
	if b == nil {
		b = &bucket{pid: s.PID, peer: k.peer, local: s.Local.Addr()}
		t.buckets[k] = b
	}
	b.tx += dtx
	b.rx += drx
	b.retrans += dre
	if s.Closed {
		delete(t.flows, s.Key)
		return
	}
	stalledFor := now.Sub(st.lastProgress)
	if progress || !st.carried || stalledFor < t.stallAfter || stalledFor > t.idle {
		return
	}
	var reason string
	switch {
	case s.SndWnd == 0:
		reason = ReasonZeroWindow
	case s.Retrans > st.retransAtP:
		reason = ReasonRetrans
	case deagain > 0:
		reason = ReasonRxWait
	default:
		return // idle: nobody waits on it
	}
	b.stalled++
	if stalledFor > b.stalledFor {
		b.stalledFor = stalledFor
	}
	if reason == ReasonZeroWindow {
		b.zeroWindow = true
	}
	if b.reason == "" || reason == ReasonZeroWindow {
		b.reason = reason
	}
}

// end finishes a read: flows the table no longer lists are forgotten.
func (t *tracker) end() {
	for k, st := range t.flows {
		if st.seen != t.gen {
			delete(t.flows, k)
		}
	}
}

func sub(a, b uint64) uint64 {
	if a < b {
		return a // the counter restarted (a reused socket)
	}
	return a - b
}
