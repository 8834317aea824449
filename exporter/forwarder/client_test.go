package forwarder

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/graphsvc/agents"
	"github.com/ark-gpu/ark/link"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// recorder keeps what a hub applied.
type recorder struct {
	mu     sync.Mutex
	events []event.Event
	nodes  []string
}

func (r *recorder) onEvents(node string, evs []event.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, evs...)
	for range evs {
		r.nodes = append(r.nodes, node)
	}
}

func (r *recorder) snapshot() []event.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]event.Event(nil), r.events...)
}

// hub is a real agent link server on loopback.
type hub struct {
	srv  *agents.Server
	http *httptest.Server
	rec  *recorder
}

func startHub(t *testing.T, addr string, opts agents.Options) *hub {
	t.Helper()
	h := &hub{rec: &recorder{}}
	if opts.OnEvents == nil {
		opts.OnEvents = h.rec.onEvents
	}
	srv, err := agents.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	h.srv = srv
	mux := http.NewServeMux()
	mux.Handle(link.Path, srv)
	h.http = httptest.NewUnstartedServer(mux)
	if addr != "" {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("listening again on %s: %v", addr, err)
		}
		h.http.Listener.Close()
		h.http.Listener = l
	}
	h.http.Start()
	return h
}

func (h *hub) url() string { return "ws://" + h.http.Listener.Addr().String() + link.Path }

func (h *hub) close() {
	h.srv.Close()
	h.http.Close()
}

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// run starts c and returns a function that stops it and waits.
func run(t *testing.T, c *Client) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func fastOptions(url string, reg prometheus.Registerer) Options {
	return Options{
		URL: url, Node: "node-1", Addrs: []string{"10.0.0.1"}, Version: "test", Registerer: reg,
		BackoffMin: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond, FlushEvery: 10 * time.Millisecond,
	}
}

func TestBufferWhileTheHubIsAwayKeepsErrorsAndSendsThemAfterTheSnapshot(t *testing.T) {
	addr := freeAddr(t)
	reg := prometheus.NewRegistry()
	opts := fastOptions("ws://"+addr+link.Path, reg)
	opts.Buffer = 100
	opts.Snapshot = func() []event.Event {
		return []event.Event{{TS: t0, Type: event.IntentRun, EntityID: "pid-1", PID: 1, JobID: "j", Value: "1"}}
	}
	c, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, c)

	var batch []event.Event
	for i := range 550 {
		if i%11 == 0 { // 50 errors among 500 samples of new keys
			batch = append(batch, event.Event{TS: t0 + int64(i), Type: event.ErrorHW, EntityID: "gpu-0", Value: fmt.Sprintf("Xid %d", i)})
			continue
		}
		batch = append(batch, event.Event{TS: t0 + int64(i), Type: event.ComputeUtil, EntityID: "gpu-0", PID: int64(100 + i), Value: "50"})
	}
	c.Sink(batch)
	if got := c.Buffered(); got != 100 {
		t.Fatalf("buffered %d events, want the limit 100", got)
	}
	if got := testutil.ToFloat64(c.dropped); got != 450 {
		t.Errorf("ark_forwarder_events_total{outcome=dropped} = %v, want 450", got)
	}
	if got := testutil.ToFloat64(c.connected); got != 0 {
		t.Errorf("ark_forwarder_connected = %v while the hub is away", got)
	}

	h := startHub(t, addr, agents.Options{Insecure: true})
	defer h.close()
	eventually(t, "the snapshot and the buffer", func() bool { return len(h.rec.snapshot()) == 101 })
	got := h.rec.snapshot()
	if got[0].Type != event.IntentRun {
		t.Errorf("first event applied is %s, want the snapshot's intent.run", got[0].Type)
	}
	errs := 0
	for i, e := range got[1:] {
		if e.Type == event.ErrorHW {
			errs++
		}
		if i > 0 && e.TS <= got[i].TS {
			t.Errorf("buffer sent out of order: ts %d after %d", e.TS, got[i].TS)
		}
	}
	if errs != 50 {
		t.Errorf("the hub got %d of the 50 errors", errs)
	}
	eventually(t, "the connected gauge", func() bool { return testutil.ToFloat64(c.connected) == 1 })
	stop()
	if got := testutil.ToFloat64(c.connected); got != 0 {
		t.Errorf("ark_forwarder_connected = %v after Run returned", got)
	}
}

// fakeHub speaks the link by hand, so a test controls the acks.
type fakeHub struct {
	http   *httptest.Server
	frames chan link.Frame
	conns  chan *websocket.Conn
	wg     sync.WaitGroup
}

func startFakeHub(t *testing.T) *fakeHub {
	t.Helper()
	f := &fakeHub{frames: make(chan link.Frame, 100), conns: make(chan *websocket.Conn, 10)}
	f.http = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.wg.Add(1)
		defer f.wg.Done()
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer ws.CloseNow()
		ws.SetReadLimit(link.MaxFrameBytes)
		ctx := context.Background()
		if _, _, err := ws.Read(ctx); err != nil { // hello
			return
		}
		b, _ := link.Encode(&link.Frame{Type: link.TypeWelcome, V: link.Version})
		if err := ws.Write(ctx, websocket.MessageText, b); err != nil {
			return
		}
		f.conns <- ws
		for {
			_, b, err := ws.Read(ctx)
			if err != nil {
				return
			}
			fr, err := link.Decode(b)
			if err != nil {
				t.Errorf("the forwarder sent a bad frame: %v", err)
				return
			}
			f.frames <- fr
		}
	}))
	return f
}

func (f *fakeHub) close() {
	f.http.Close()
	f.wg.Wait()
}

func (f *fakeHub) next(t *testing.T, typ string) link.Frame {
	t.Helper()
	select {
	case fr := <-f.frames:
		if fr.Type != typ {
			t.Fatalf("got a %s frame, want %s", fr.Type, typ)
		}
		return fr
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s frame", typ)
	}
	return link.Frame{}
}

func TestUnacknowledgedBatchesHoldTheWindowAndAreResentAfterReconnect(t *testing.T) {
	f := startFakeHub(t)
	defer f.close()
	opts := fastOptions("ws"+strings.TrimPrefix(f.http.URL, "http"), nil)
	opts.Window = 2
	opts.FlushAt = 1
	c, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, c)
	defer stop()
	ws := <-f.conns
	if fr := f.next(t, link.TypeSnapshot); !fr.Done {
		t.Fatal("an empty snapshot must still say done")
	}
	send := func(i int) {
		c.Sink([]event.Event{{TS: t0 + int64(i), Type: event.ErrorHW, EntityID: "gpu-0", Value: fmt.Sprint(i)}})
	}
	send(1)
	if fr := f.next(t, link.TypeEvents); fr.Seq != 1 || fr.Events[0].Value != "1" {
		t.Fatalf("first batch %+v", fr)
	}
	send(2)
	f.next(t, link.TypeEvents)
	send(3)
	select {
	case fr := <-f.frames:
		t.Fatalf("a third batch went out with two unacknowledged: %+v", fr)
	case <-time.After(300 * time.Millisecond): // many flush ticks
	}
	b, _ := link.Encode(&link.Frame{Type: link.TypeAck, Seq: 1})
	if err := ws.Write(context.Background(), websocket.MessageText, b); err != nil {
		t.Fatal(err)
	}
	if fr := f.next(t, link.TypeEvents); fr.Seq != 3 || fr.Events[0].Value != "3" {
		t.Fatalf("after the ack: %+v", fr)
	}

	// The link drops with batches 2 and 3 unacknowledged: they go again,
	// after the new link's snapshot.
	ws.CloseNow()
	<-f.conns
	f.next(t, link.TypeSnapshot)
	fr := f.next(t, link.TypeEvents)
	var vals []string
	for _, e := range fr.Events {
		vals = append(vals, e.Value)
	}
	if strings.Join(vals, ",") != "2,3" || fr.Seq != 1 {
		t.Fatalf("resent batch seq %d with %v, want seq 1 with 2,3", fr.Seq, vals)
	}
}

func TestTheTokenFileIsReadAtEachConnect(t *testing.T) {
	reg := prometheus.NewRegistry()
	connected := make(chan string, 1)
	h := startHub(t, "", agents.Options{Token: "new-token", OnConnect: func(node string, _ []string) { connected <- node }})
	defer h.close()
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("old-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	opts := fastOptions(h.url(), reg)
	opts.TokenFile = tok
	c, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, c)
	defer stop()
	eventually(t, "a refused connect", func() bool {
		return testutil.ToFloat64(c.connects.WithLabelValues("failure")) >= 2
	})
	select {
	case <-connected:
		t.Fatal("connected with the old token")
	default:
	}
	if err := os.WriteFile(tok, []byte("new-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case node := <-connected:
		if node != "node-1" {
			t.Errorf("connected as %q", node)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("never connected with the rotated token")
	}
}

func TestNewChecksItsOptions(t *testing.T) {
	for _, tt := range []struct {
		opts Options
		want string
	}{
		{Options{Node: "n"}, "forwarder: the hub URL is required"},
		{Options{URL: "ftp://x", Node: "n"}, `forwarder: hub URL "ftp://x": want ws://, wss://, http:// or https://`},
		{Options{URL: "ws://x"}, "forwarder: the node name is required"},
	} {
		if _, err := New(tt.opts); err == nil || err.Error() != tt.want {
			t.Errorf("New(%+v) = %v, want %q", tt.opts, err, tt.want)
		}
	}
}
