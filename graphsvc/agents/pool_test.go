package agents_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

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

// Reviews in flight are bounded: past the bound an agent is told to come
// back (503) at once instead of queuing on the API server, and strings that
// are not tokens never reach it.
func TestTokenReviewsInFlightAreBounded(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	calls := 0
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		calls++
		mu.Unlock()
		<-release
		http.Error(w, "gone", http.StatusServiceUnavailable)
	}))
	defer api.Close()
	defer close(release)
	client, err := kubernetes.NewForConfig(&rest.Config{Host: api.URL})
	if err != nil {
		t.Fatal(err)
	}
	auth := &agents.TokenReview{Client: client, Users: []string{"u"}, MaxInFlight: 1, Timeout: 10 * time.Second}
	req := func(tok string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, link.Path, nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		return r
	}
	jwt := "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
	go func() { _, _ = auth.Authenticate(req(jwt)) }()
	eventually(t, "the first review in flight", func() bool { mu.Lock(); defer mu.Unlock(); return calls == 1 })
	if _, err := auth.Authenticate(req(strings.Replace(jwt, "x", "y", 1))); !errors.Is(err, agents.ErrBusy) {
		t.Fatalf("second review while one is in flight: %v, want ErrBusy", err)
	}
	if _, err := auth.Authenticate(req("garbage with spaces")); !errors.Is(err, agents.ErrUnauthenticated) {
		t.Fatalf("a non-token: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if calls != 1 {
		t.Fatalf("%d reviews reached the API server, want 1", calls)
	}
}
