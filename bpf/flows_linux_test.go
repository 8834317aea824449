package bpf

import (
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// loadOrSkip loads flow.c for this process's pid namespace (the caller
// closes it), skipping when
// the test is not root or the kernel refuses.
func loadOrSkip(t testing.TB) *Flows {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loading eBPF programs needs root")
	}
	f, err := LoadFlows(FlowOptions{PIDNamespace: "/proc/self/ns/pid"})
	if err != nil {
		t.Skipf("eBPF unavailable here: %v", err)
	}
	return f
}

func TestFlowsCountLoopbackBytesBothWaysAndReportTheClose(t *testing.T) {
	f := loadOrSkip(t)
	closed := make(chan FlowEvent, 1024)
	done := make(chan error, 1)
	go func() {
		done <- f.ReadEvents(func(ev *FlowEvent) {
			select {
			case closed <- *ev:
			default:
			}
		}, nil)
	}()
	t.Cleanup(func() {
		require.NoError(t, f.Close())
		require.NoError(t, <-done)
	})
	for _, network := range []string{"tcp4", "tcp6"} {
		t.Run(network, func(t *testing.T) {
			host := "127.0.0.1:0"
			if network == "tcp6" {
				host = "[::1]:0"
			}
			ln, err := net.Listen(network, host)
			require.NoError(t, err)
			defer ln.Close()
			const size = 1 << 20
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				_, _ = io.Copy(io.Discard, c)
			}()
			c, err := net.Dial(network, ln.Addr().String())
			require.NoError(t, err)
			_, err = c.Write(make([]byte, size))
			require.NoError(t, err)
			local := c.LocalAddr().(*net.TCPAddr).AddrPort()
			peer := ln.Addr().(*net.TCPAddr).AddrPort()

			var got *Flow
			require.NoError(t, f.Snapshot(func(_ uint64, fl *Flow) {
				if fl.Sport == local.Port() && fl.Dport == peer.Port() {
					cp := *fl
					got = &cp
				}
			}))
			require.NotNil(t, got, "the client's flow is in the table")
			require.EqualValues(t, size, got.BytesTx)
			require.EqualValues(t, os.Getpid(), got.Pid)
			require.Equal(t, peer.Addr().Unmap(), addrOf(got.Family, got.Daddr).Unmap())

			require.NoError(t, c.Close())
			timeout := time.After(30 * time.Second)
			for {
				select {
				case ev := <-closed:
					if ev.Flow.Sport != local.Port() || ev.Flow.Dport != peer.Port() {
						continue
					}
					require.EqualValues(t, size, ev.Flow.BytesTx, "the close carries the final count")
				case <-timeout:
					t.Fatal("no close event for the client's flow within 30s")
				}
				break
			}
			wg.Wait()
		})
	}
}

func addrOf(family uint16, b [16]uint8) netip.Addr {
	if family == 2 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}
