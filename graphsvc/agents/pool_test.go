package agents_test

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/graphsvc/agents"
	"github.com/ark-gpu/ark/link"
)

// Frames are decoded into reused buffers and slices: what OnEvents was
// given must not change when the next frame is decoded.
func TestEventsHandedOnAreNotOverwrittenByTheNextFrame(t *testing.T) {
	// sync.Pool is per P: one P makes the reuse certain.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	h := startHub(t, "", agents.Options{})
	ws := dialRaw(t, h.url(), "node-1")
	now := time.Now().UnixMilli()
	for i, v := range []string{"first-value", "second"} {
		sendRaw(t, ws, &link.Frame{Type: link.TypeEvents, Seq: uint64(i + 1), Events: []event.Event{{
			TS: now, Type: event.ErrorHW, EntityID: "gpu-0", Value: v,
			Attrs: event.Attrs{{Key: "xid", Value: v + "-attr"}},
		}}})
		if _, _, err := ws.Read(context.Background()); err != nil { // the ack
			t.Fatal(err)
		}
	}
	got := h.got.of("node-1")
	if len(got) != 2 {
		t.Fatalf("%d events", len(got))
	}
	if got[0].Value != "first-value" || got[0].Attrs.Get("xid") != "first-value-attr" ||
		got[1].Value != "second" || got[1].Attrs.Get("xid") != "second-attr" {
		t.Fatalf("events changed after they were handed on: %+v", got)
	}
}

// An agent that never answers the close handshake does not hold the hub's
// shutdown past the grace.
func TestCloseIsNotHeldByAnAgentThatStoppedReading(t *testing.T) {
	h := startHub(t, "", agents.Options{})
	dialRaw(t, h.url(), "node-1") // says hello, then never reads again
	eventually(t, "connected", func() bool { return len(h.srv.Agents()) == 1 && h.srv.Agents()[0].Connected })
	start := time.Now()
	done := make(chan struct{})
	go func() { h.srv.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(4500 * time.Millisecond):
		t.Fatal("Close still waiting after 4.5 s (grace 2 s)")
	}
	t.Logf("closed in %s", time.Since(start).Round(time.Millisecond))
}
