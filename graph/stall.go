package graph

import (
	"strings"

	"github.com/ark-gpu/ark/event"
)

// A flow that stopped making progress is a wait only for a rank that is
// stuck: a GPU that fell off the bus drops no packet, its rank just stops
// reading, and the ranks sending to it see a zero window. The flow probe
// reports such a flow as transport.bw with value 0 and attrs.stalled_for_ms
// every interval while it lasts; a healthy rank's flow that pauses (an
// idle phase of the job) must not become a wait, so the peer is remembered
// on the process and linked only while the process is stuck, whichever of
// the two arrives first.

// maxStalledPeers bounds the stalled peers remembered per process.
const maxStalledPeers = 16

// stallFresh is how long a stall report stays current: the probe repeats
// it every interval while the flow makes no progress.
const stallFresh int64 = 30_000

// stalledPeer is a peer a process's flow stalled toward.
type stalledPeer struct {
	peer string
	last int64
}

// IsFlowStall reports whether ev is a flow probe's stall signal: a
// transport.bw of value 0 with attrs.stalled_for_ms and a peer.
func IsFlowStall(ev *event.Event) bool {
	if ev.Type != event.TransportBW || ev.Attrs.Get(event.AttrPeer) == "" {
		return false
	}
	if _, ok := ev.Attrs.Lookup(event.AttrStalledForMS); !ok {
		return false
	}
	n, ok := ev.Num()
	return ok && n == 0
}

// noteStall remembers that proc's flow to peer made no progress at ts,
// and links the wait when proc is stuck.
func (g *Graph) noteStall(proc *node, peer string, ts int64) {
	p := proc.proc
	found := false
	for i := range p.stalled {
		if p.stalled[i].peer == peer {
			p.stalled[i].last = max(p.stalled[i].last, ts)
			found = true
			break
		}
	}
	if !found {
		if len(p.stalled) >= maxStalledPeers {
			oldest := 0
			for i := range p.stalled {
				if p.stalled[i].last < p.stalled[oldest].last {
					oldest = i
				}
			}
			p.stalled[oldest] = p.stalled[len(p.stalled)-1]
			p.stalled = p.stalled[:len(p.stalled)-1]
		}
		p.stalled = append(p.stalled, stalledPeer{peer: strings.Clone(peer), last: ts})
	}
	if IsStuckState(p.state) && ts >= p.stateTS-stallFresh {
		g.waitOnPeer(proc, peer, ts)
	}
}

// stuckWithStalls links a process that just reported a stuck state to the
// peers its flows recently stalled toward.
func (g *Graph) stuckWithStalls(proc *node, ts int64) {
	for _, s := range proc.proc.stalled {
		if s.last >= ts-stallFresh {
			g.waitOnPeer(proc, s.peer, ts)
		}
	}
}
