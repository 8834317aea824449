package tcpflow

import (
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ark-gpu/ark/event"
)

func sumValues(evs []event.Event) int64 {
	var n int64
	for i := range evs {
		v, _ := evs[i].Num()
		n += int64(v)
	}
	return n
}

func forFlow(typ event.Type, pid int, peer string) func(*event.Event) bool {
	return func(ev *event.Event) bool {
		return ev.Type == typ && ev.PID == int64(pid) && ev.Attrs.Get(event.AttrPeer) == peer
	}
}

// Retransmits through 20% loss are reported for the client's pid toward
// the server's ip:port, within 20% of what the kernel counted for the
// namespace; a clean flow reports none.
func TestRetransmitsThroughLossMatchTheNamespaceCounter(t *testing.T) {
	requireRoot(t)
	l := newLab(t)
	rec := startProbe(t, Config{})

	// A clean flow first, then the same through loss.
	l.helper(l.b, false, "server", "10.77.0.2:7001", "_")
	clean := l.helper(l.a, false, "client", "10.77.0.2:7001", strconv.Itoa(4<<20))
	require.NoError(t, clean.Wait())
	require.Eventually(t, func() bool {
		return sumValues(rec.match(forFlow(event.TransportBW, clean.Process.Pid, "10.77.0.2:7001"))) > 0
	}, 30*time.Second, 100*time.Millisecond, "the clean client's bytes are reported")
	require.Zero(t, l.retransSegs(l.a), "the clean flow retransmitted nothing")
	require.Empty(t, rec.match(forFlow(event.TransportDrop, clean.Process.Pid, "10.77.0.2:7001")))

	l.loss(l.b, 20)
	before := l.retransSegs(l.a)
	lossy := l.helper(l.a, false, "client", "10.77.0.2:7001", strconv.Itoa(4<<20))
	require.NoError(t, lossy.Wait())
	kernel := l.retransSegs(l.a) - before
	require.Positive(t, kernel, "20%% loss made the kernel retransmit")
	var got int64
	require.Eventually(t, func() bool {
		got = sumValues(rec.match(forFlow(event.TransportDrop, lossy.Process.Pid, "10.77.0.2:7001")))
		return got >= kernel*8/10
	}, 30*time.Second, 100*time.Millisecond, "retransmits reported for the lossy client")
	require.InDelta(t, kernel, got, float64(kernel)*0.2, "probe %d vs TcpRetransSegs %d", got, kernel)
	t.Logf("retransmits: probe %d, TcpRetransSegs %d", got, kernel)
}

// A receiver that stops reading (SIGSTOP: its host keeps ACKing, nothing
// is lost) makes its sender's flow stalled with a zero window within 3s;
// a healthy pair beside it is never reported; SIGCONT ends the stall.
func TestStoppedReceiverStallsItsSendersFlowOnly(t *testing.T) {
	requireRoot(t)
	l := newLab(t)
	rec := startProbe(t, Config{})

	stuckSrv := l.helper(l.b, false, "server", "10.77.0.2:7002", "_")
	stuckCli := l.helper(l.a, false, "client", "10.77.0.2:7002", "0")
	l.helper(l.b, false, "server", "[fd77::2]:7003", "_")
	okCli := l.helper(l.a, false, "client", "[fd77::2]:7003", "0")
	stuckFlow := forFlow(event.TransportBW, stuckCli.Process.Pid, "10.77.0.2:7002")
	okPeer := "[fd77::2]:7003"
	require.Eventually(t, func() bool {
		return len(rec.match(stuckFlow)) > 0 && len(rec.match(forFlow(event.TransportBW, okCli.Process.Pid, okPeer))) > 0
	}, 30*time.Second, 50*time.Millisecond, "both pairs exchange data")

	require.NoError(t, stuckSrv.Process.Signal(syscall.SIGSTOP))
	stopped := time.Now()
	var stall []event.Event
	require.Eventually(t, func() bool {
		stall = rec.match(func(ev *event.Event) bool { return stuckFlow(ev) && isStall(ev) })
		return len(stall) > 0
	}, 3*time.Second, 20*time.Millisecond, "the sender's flow to the stopped receiver is stalled within 3s")
	t.Logf("stall reported %s after SIGSTOP: %v", time.Since(stopped).Round(time.Millisecond), stall[0].Attrs)
	require.Equal(t, "0", stall[0].Value)
	require.Equal(t, "true", stall[0].Attrs.Get(event.AttrZeroWindow))
	require.Equal(t, ReasonZeroWindow, stall[0].Attrs.Get(event.AttrReason))

	// Let it stay stalled a while: the healthy pair goes on unreported.
	require.Eventually(t, func() bool {
		return len(rec.match(func(ev *event.Event) bool { return stuckFlow(ev) && isStall(ev) })) >= 4
	}, 30*time.Second, 50*time.Millisecond, "the stall is reported every interval")

	require.NoError(t, stuckSrv.Process.Signal(syscall.SIGCONT))
	resumed := time.Now().UnixMilli()
	// After SIGCONT the bytes flow again and the stall reports end.
	require.Eventually(t, func() bool {
		after := rec.match(func(ev *event.Event) bool { return stuckFlow(ev) && ev.TS > resumed })
		moving := 0
		for i := range after {
			if isStall(&after[i]) {
				moving = 0
			} else if v, _ := after[i].Num(); v > 0 {
				moving++
			}
		}
		return moving >= 4
	}, 30*time.Second, 50*time.Millisecond, "the flow moves again without stall reports")
	require.Empty(t, rec.match(func(ev *event.Event) bool {
		return ev.PID == int64(okCli.Process.Pid) && isStall(ev)
	}), "the healthy pair is never reported stalled")
}

// An agent sees only the processes of its pid namespace, under the pids
// that namespace gives them.
func TestFlowsOfAnotherPIDNamespaceAreNotReported(t *testing.T) {
	requireRoot(t)
	l := newLab(t)
	l.helper(l.b, false, "server", "10.77.0.2:7004", "_")
	host := l.helper(l.a, false, "client", "10.77.0.2:7004", "0")
	inner := l.helper(l.a, true, "client", "10.77.0.2:7004", "0")

	outside := startProbe(t, Config{})
	inside := startProbe(t, Config{PIDNamespace: "/proc/" + strconv.Itoa(inner.Process.Pid) + "/ns/pid"})

	require.Eventually(t, func() bool {
		return len(outside.match(forFlow(event.TransportBW, host.Process.Pid, "10.77.0.2:7004"))) > 0 &&
			len(inside.match(forFlow(event.TransportBW, 1, "10.77.0.2:7004"))) > 0
	}, 30*time.Second, 50*time.Millisecond, "each agent sees its own client (pid 1 inside the new namespace)")
	require.Empty(t, outside.match(func(ev *event.Event) bool { return ev.PID == int64(inner.Process.Pid) || ev.PID == 1 }),
		"the agent outside does not report the inner client")
	require.Empty(t, inside.match(func(ev *event.Event) bool { return ev.PID != 1 }),
		"the agent inside reports only its namespace's process")
}
