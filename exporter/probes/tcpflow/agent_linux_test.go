package tcpflow

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter"
	_ "github.com/ark-gpu/ark/exporter/probes/procfs" // the stuck verdict
	"github.com/ark-gpu/ark/graph"
)

// snapshot prints the graph's events when a failure message needs them.
type snapshot struct{ g *graph.Graph }

func (s snapshot) String() string {
	var b strings.Builder
	for _, ev := range s.g.Snapshot() {
		b.WriteString(ev.EntityID + " " + string(ev.Type) + " " + ev.Value + " pid=" + strconv.FormatInt(ev.PID, 10) + "\n")
	}
	return b.String()
}

// The agent with this probe and the procfs probe turns a rank whose peer
// stopped reading into a WaitsOn that peer, and why names the peer's GPU
// fault: nothing is lost on the wire, the stopped rank's host keeps ACKing.
func TestAgentWaitsOnTheStoppedRankAndWhyNamesItsGPU(t *testing.T) {
	requireRoot(t)
	l := newLab(t)
	srv := l.helper(l.b, false, "server", "10.77.0.2:7010", "_")
	cli := l.helper(l.a, false, "client", "10.77.0.2:7010", "0")

	fc, err := exporter.LoadConfig([]byte(`
probes:
  tcpflow:
    interval: 250ms
  procfs:
    interval: 250ms
    stall_window: 2s
`))
	require.NoError(t, err)
	a, err := exporter.New(exporter.Config{
		NodeName: "h1", ListenAddress: "127.0.0.1:0", File: fc,
		Enabled: map[string]bool{"tcpflow": true, "procfs": true},
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	require.Eventually(t, func() bool {
		for _, s := range a.Probes() {
			if s.Name == "tcpflow" && s.State == "inactive" {
				t.Skipf("tcpflow inactive: %s", s.Reason)
			}
		}
		return true
	}, 5*time.Second, 100*time.Millisecond)

	// The probe sees a flow from its next completed send: wait for it
	// before the receiver stops.
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + a.Addr().String() + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), `ark_tcp_bytes_total{direction="tx",peer="10.77.0.2:7010"} `) &&
			!strings.Contains(string(b), `ark_tcp_bytes_total{direction="tx",peer="10.77.0.2:7010"} 0`+"\n")
	}, 30*time.Second, 100*time.Millisecond, "the sender's bytes are counted")
	now := time.Now().UnixMilli()
	for _, ev := range []event.Event{
		{TS: now, Type: event.IntentRun, EntityID: "pid-" + strconv.Itoa(cli.Process.Pid), PID: int64(cli.Process.Pid), JobID: "j", Value: "running",
			Attrs: event.Attrs{{Key: event.AttrRank, Value: "0"}, {Key: event.AttrAddr, Value: "10.77.0.1"}}},
		{TS: now, Type: event.IntentRun, EntityID: "pid-" + strconv.Itoa(srv.Process.Pid), PID: int64(srv.Process.Pid), JobID: "j", Value: "running",
			Attrs: event.Attrs{{Key: event.AttrRank, Value: "1"}, {Key: event.AttrAddr, Value: "10.77.0.2:7010"}}},
		{TS: now, Type: event.ErrorHW, EntityID: "gpu-1", PID: int64(srv.Process.Pid), Value: "Xid 79: GPU has fallen off the bus.",
			Attrs: event.Attrs{{Key: event.AttrXID, Value: "79"}}},
	} {
		require.True(t, a.Publish(&ev))
	}
	require.NoError(t, srv.Process.Signal(syscall.SIGSTOP))

	srvID := "pid-" + strconv.Itoa(srv.Process.Pid)
	var res graph.Result
	require.Eventually(t, func() bool {
		res, err = a.Graph().Why(graph.Target{Node: "h1", PID: int64(cli.Process.Pid)}, 0)
		if err != nil || len(res.Causes) == 0 {
			return false
		}
		c := res.Causes[0]
		return c.XID == 79 && len(c.Chain) > 0 && c.Chain[0].Type == "WaitsOn" && strings.HasSuffix(c.Chain[0].To, srvID)
	}, 60*time.Second, 100*time.Millisecond, "why for the sender names the stopped rank's GPU through a WaitsOn: %+v\ngraph: %+v", &res, snapshot{a.Graph()})
}
