package tcpflow

import (
	"net/netip"

	"github.com/ark-gpu/ark/bpf"
)

// bpfSource reads bpf/flow.c's table and ring buffer.
type bpfSource struct {
	flows *bpf.Flows
	s     Sample
}

func openBPF(cfg Config) (source, error) {
	f, err := bpf.LoadFlows(bpf.FlowOptions{PIDNamespace: cfg.PIDNamespace, MaxFlows: cfg.MaxFlows})
	if err != nil {
		return nil, err
	}
	return &bpfSource{flows: f}, nil
}

// toSample converts the kernel's record of socket sk.
func toSample(s *Sample, sk uint64, fl *bpf.Flow, closed bool) {
	*s = Sample{
		Key:      sk,
		PID:      int64(fl.Pid),
		Local:    netip.AddrPortFrom(addr(fl.Family, &fl.Saddr), fl.Sport),
		Peer:     netip.AddrPortFrom(addr(fl.Family, &fl.Daddr), fl.Dport),
		TxBytes:  fl.BytesTx,
		RxBytes:  fl.BytesRx,
		Retrans:  fl.Retrans,
		RxEAGAIN: fl.RxEagain,
		SndUna:   fl.SndUna,
		RcvNxt:   fl.RcvNxt,
		SndWnd:   fl.SndWnd,
		Closed:   closed,
	}
}

// afInet is AF_INET; anything else flow.c records is AF_INET6.
const afInet = 2

func addr(family uint16, b *[16]uint8) netip.Addr {
	if family == afInet {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(*b).Unmap()
}

func (b *bpfSource) snapshot(fn func(*Sample)) error {
	return b.flows.Snapshot(func(sk uint64, fl *bpf.Flow) {
		toSample(&b.s, sk, fl, false)
		fn(&b.s)
	})
}

func (b *bpfSource) readClosed(fn func(*Sample)) error {
	var s Sample
	return b.flows.ReadEvents(func(ev *bpf.FlowEvent) {
		toSample(&s, ev.Sk, &ev.Flow, true)
		fn(&s)
	}, nil)
}

func (b *bpfSource) lost() uint64 {
	n, _ := b.flows.Lost()
	return n
}

func (b *bpfSource) close() error { return b.flows.Close() }
