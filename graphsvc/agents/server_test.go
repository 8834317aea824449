package agents_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/forwarder"
	"github.com/ark-gpu/ark/graphsvc/agents"
	"github.com/ark-gpu/ark/internal/auth"
	"github.com/ark-gpu/ark/link"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const t0 = int64(1_700_000_000_000)

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

// applied keeps what OnEvents saw, by node.
type applied struct {
	mu     sync.Mutex
	byNode map[string][]event.Event
}

func (a *applied) onEvents(node string, evs []event.Event) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.byNode == nil {
		a.byNode = map[string][]event.Event{}
	}
	a.byNode[node] = append(a.byNode[node], evs...)
}

func (a *applied) of(node string) []event.Event {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]event.Event(nil), a.byNode[node]...)
}

func (a *applied) nodes() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.byNode)
}

type testHub struct {
	srv  *agents.Server
	http *httptest.Server
	reg  *prometheus.Registry
	got  *applied
}

// startHub serves an agent link on loopback (on addr when given).
func startHub(t *testing.T, addr string, opts agents.Options) *testHub {
	t.Helper()
	h := &testHub{reg: prometheus.NewRegistry(), got: &applied{}}
	opts.Registerer = h.reg
	if opts.OnEvents == nil {
		opts.OnEvents = h.got.onEvents
	}
	if opts.Token == "" && opts.Auth == nil {
		opts.Insecure = true
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
	var once sync.Once
	t.Cleanup(func() { once.Do(h.stop) })
	return h
}

func (h *testHub) stop() {
	h.srv.Close()
	h.http.Close()
}

func (h *testHub) url() string { return "ws://" + h.http.Listener.Addr().String() + link.Path }

func (h *testHub) rejected(reason string) float64 {
	return counterValue(h.reg, "ark_hub_frames_rejected_total", "reason", reason)
}

func counterValue(g prometheus.Gatherer, name, label, value string) float64 {
	mfs, err := g.Gather()
	if err != nil {
		return -1
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := label == ""
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					match = true
				}
			}
			if match {
				if m.GetCounter() != nil {
					return m.GetCounter().GetValue()
				}
				return m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

// startAgent runs a real forwarder against url until the test ends.
func startAgent(t *testing.T, url, node string, opts forwarder.Options) *forwarder.Client {
	t.Helper()
	opts.URL, opts.Node = url, node
	if opts.BackoffMin == 0 {
		opts.BackoffMin, opts.BackoffMax = 10*time.Millisecond, 50*time.Millisecond
	}
	opts.FlushEvery = 10 * time.Millisecond
	c, err := forwarder.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := c.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

// dialRaw connects by hand and, when node is not empty, says hello and
// reads the welcome.
func dialRaw(t *testing.T, url, node string) *websocket.Conn {
	t.Helper()
	ws, _, err := websocket.Dial(context.Background(), url, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.CloseNow() })
	if node == "" {
		return ws
	}
	sendRaw(t, ws, &link.Frame{Type: link.TypeHello, V: link.Version, Node: node})
	_, b, err := ws.Read(context.Background())
	if err != nil {
		t.Fatalf("waiting for welcome: %v", err)
	}
	if f, err := link.Decode(b); err != nil || f.Type != link.TypeWelcome {
		t.Fatalf("got %s (%v), want welcome", b, err)
	}
	return ws
}

func sendRaw(t *testing.T, ws *websocket.Conn, f *link.Frame) {
	t.Helper()
	b, err := link.Encode(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := ws.Write(context.Background(), websocket.MessageText, b); err != nil {
		t.Fatal(err)
	}
}

// closeOf reads until the link closes and returns how.
func closeOf(ws *websocket.Conn) (websocket.CloseError, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		_, _, err := ws.Read(ctx)
		if err == nil {
			continue
		}
		var ce websocket.CloseError
		if errors.As(err, &ce) {
			return ce, nil
		}
		return websocket.CloseError{}, err
	}
}

func TestForwarderSnapshotAndEventsReachOnEventsUnderTheHelloNode(t *testing.T) {
	connected := make(chan []string, 1)
	h := startHub(t, "", agents.Options{OnConnect: func(node string, addrs []string) {
		if node == "node-1" {
			connected <- addrs
		}
	}})
	c := startAgent(t, h.url(), "node-1", forwarder.Options{
		Addrs: []string{"10.0.0.1", "10.0.1.1"},
		Snapshot: func() []event.Event {
			// An agent that names another host still writes into its own.
			return []event.Event{
				{TS: t0, Type: event.IntentRun, EntityID: "pid-7", PID: 7, JobID: "j", Value: "1", NodeID: "node-2"},
				{TS: t0, Type: event.ComputeUtil, EntityID: "gpu-0", PID: 7, Value: "90"},
			}
		},
	})
	if addrs := <-connected; strings.Join(addrs, ",") != "10.0.0.1,10.0.1.1" {
		t.Errorf("OnConnect addrs %v", addrs)
	}
	eventually(t, "the snapshot", func() bool { return len(h.got.of("node-1")) == 2 })
	c.Sink([]event.Event{
		{TS: t0 + 1000, Type: event.ErrorHW, EntityID: "gpu-0", Value: "Xid 79", NodeID: "node-2"},
		{TS: t0 + 1000, Type: event.ProcessState, EntityID: "pid-7", PID: 7, Value: "D"},
	})
	eventually(t, "the events", func() bool { return len(h.got.of("node-1")) == 4 })
	for _, e := range h.got.of("node-1") {
		if e.NodeID != "node-1" {
			t.Errorf("%s applied with node_id %q, want node-1", e.Type, e.NodeID)
		}
	}
	if h.got.nodes() != 1 {
		t.Errorf("events applied under %d nodes, want 1", h.got.nodes())
	}
	as := h.srv.Agents()
	if len(as) != 1 || as[0].Node != "node-1" || !as[0].Connected || len(as[0].Addrs) != 2 || as[0].Since.IsZero() {
		t.Errorf("Agents() = %+v", as)
	}
	if got := counterValue(h.reg, "ark_hub_link_events_received_total", "", ""); got != 4 {
		t.Errorf("ark_hub_link_events_received_total = %v, want 4", got)
	}
	if got := counterValue(h.reg, "ark_hub_link_agents", "state", "connected"); got != 1 {
		t.Errorf("ark_hub_link_agents{state=connected} = %v, want 1", got)
	}
}

func TestAnAgentWithoutTheTokenGets401AndNothingIsApplied(t *testing.T) {
	h := startHub(t, "", agents.Options{Token: "s3cret"})
	for _, hdr := range []string{"", "Bearer wrong", "Basic s3cret"} {
		opts := &websocket.DialOptions{HTTPHeader: http.Header{}}
		if hdr != "" {
			opts.HTTPHeader.Set("Authorization", hdr)
		}
		ws, resp, err := websocket.Dial(context.Background(), h.url(), opts)
		if err == nil {
			ws.CloseNow()
			t.Fatalf("Authorization %q: connected", hdr)
		}
		if resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("Authorization %q: %v, want 401", hdr, err)
		}
	}
	if got := counterValue(h.reg, "ark_hub_link_auth_failures_total", "", ""); got != 3 {
		t.Errorf("ark_hub_link_auth_failures_total = %v, want 3", got)
	}
	if h.got.nodes() != 0 || len(h.srv.Agents()) != 0 {
		t.Errorf("an unauthenticated agent left a trace: %d nodes applied, agents %+v", h.got.nodes(), h.srv.Agents())
	}
	// The right token gets in.
	ws, resp, err := websocket.Dial(context.Background(), h.url(), &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer s3cret"}}})
	if err != nil {
		t.Fatalf("with the token: %v (%v)", err, resp)
	}
	ws.CloseNow()
}

func TestABadFrameClosesOnlyThatLink(t *testing.T) {
	h := startHub(t, "", agents.Options{})
	good := startAgent(t, h.url(), "good", forwarder.Options{})
	sent := 0
	goodStillWorks := func(t *testing.T) {
		t.Helper()
		sent++
		good.Sink([]event.Event{{TS: t0 + int64(sent), Type: event.ErrorNet, EntityID: "network-ib0", Value: "flap"}})
		eventually(t, "the good agent's event", func() bool { return len(h.got.of("good")) == sent })
	}
	goodStillWorks(t)

	tests := []struct {
		name   string
		hello  bool   // say hello first
		frame  []byte // then send this
		reason string // counted
		code   websocket.StatusCode
		says   string // in the close reason
	}{
		{"garbage", true, []byte("\x00not json{"), "malformed", websocket.StatusPolicyViolation, "malformed frame"},
		{"unknown frame type", true, []byte(`{"type":"bogus"}`), "unknown_type", websocket.StatusPolicyViolation, `unknown frame type "bogus"`},
		{"a frame only the hub sends", true, []byte(`{"type":"ack","seq":3}`), "unexpected", websocket.StatusPolicyViolation, "unexpected ack frame"},
		{"an event that breaks the contract", true, []byte(`{"type":"events","seq":1,"events":[{"ts":1,"event_type":"nope","entity_id":"x","value":1}]}`), "malformed", websocket.StatusPolicyViolation, "malformed frame"},
		{"events before hello", false, []byte(`{"type":"events","seq":1}`), "unexpected", websocket.StatusPolicyViolation, "expected hello, got events"},
		{"a node name that reaches into another namespace", false, []byte(`{"type":"hello","v":1,"node":"good/pid-1"}`), "bad_node", websocket.StatusPolicyViolation, `invalid node name "good/pid-1"`},
		{"an old protocol", false, []byte(`{"type":"hello","v":0,"node":"old"}`), "malformed", websocket.StatusPolicyViolation, "protocol version 0"},
		{"an event with 100,000 attrs", true, manyAttrsFrame(100_000), "too_many_attrs", websocket.StatusPolicyViolation, "too_many_attrs: more than 64 attrs"},
		{"oversized", true, append(append([]byte(`{"type":"events","seq":1,"message":"`), strings.Repeat("x", link.MaxFrameBytes)...), `"}`...), "too_big", 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := h.rejected(tt.reason)
			node := ""
			if tt.hello {
				node = "bad"
			}
			ws := dialRaw(t, h.url(), node)
			_ = ws.Write(context.Background(), websocket.MessageText, tt.frame) // an oversized write may break off
			ce, err := closeOf(ws)
			if tt.code != 0 {
				if err != nil || ce.Code != tt.code || !strings.Contains(ce.Reason, tt.says) {
					t.Errorf("closed with %v %v, want %v with %q", ce, err, tt.code, tt.says)
				}
			}
			eventually(t, "the rejection count", func() bool { return h.rejected(tt.reason) == before+1 })
			goodStillWorks(t)
		})
	}
	if got := h.got.of("bad"); len(got) != 0 {
		t.Errorf("a rejected link applied %d events", len(got))
	}
	if as := h.srv.Agents(); len(as) != 2 || as[0].Node != "bad" || as[0].Connected || !as[1].Connected {
		t.Errorf("Agents() = %+v, want bad disconnected and good connected", as)
	}
}

// manyAttrsFrame is an events frame of one event with n distinct attrs.
func manyAttrsFrame(n int) []byte {
	ev := event.Event{TS: t0, Type: event.ErrorHW, EntityID: "gpu-0", Value: "x", Attrs: make(event.Attrs, n)}
	for i := range ev.Attrs {
		ev.Attrs[i] = event.Attr{Key: "k" + strconv.Itoa(i), Value: "v"}
	}
	b, err := link.Encode(&link.Frame{Type: link.TypeEvents, Seq: 1, Events: []event.Event{ev}})
	if err != nil {
		panic(err)
	}
	return b
}

func TestHelloMustComeInTime(t *testing.T) {
	h := startHub(t, "", agents.Options{HelloTimeout: 50 * time.Millisecond})
	ws := dialRaw(t, h.url(), "")
	ce, err := closeOf(ws)
	if err != nil || ce.Code != websocket.StatusPolicyViolation || !strings.Contains(ce.Reason, "no hello within 50ms") {
		t.Errorf("closed with %v %v", ce, err)
	}
	if got := h.rejected("no_hello"); got != 1 {
		t.Errorf("no_hello rejections = %v", got)
	}
}

func TestEventsAreAcknowledgedAfterOnEventsReturns(t *testing.T) {
	var applied atomic.Bool
	h := startHub(t, "", agents.Options{OnEvents: func(string, []event.Event) {
		time.Sleep(20 * time.Millisecond) // an ack sent before the apply would beat this
		applied.Store(true)
	}})
	ws := dialRaw(t, h.url(), "n1")
	sendRaw(t, ws, &link.Frame{Type: link.TypeEvents, Seq: 7, Events: []event.Event{{TS: t0, Type: event.ComputeUtil, EntityID: "gpu-0", PID: 1, Value: "5"}}})
	_, b, err := ws.Read(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	f, err := link.Decode(b)
	if err != nil || f.Type != link.TypeAck || f.Seq != 7 {
		t.Fatalf("got %s, want ack 7", b)
	}
	if !applied.Load() {
		t.Error("the ack came before OnEvents returned")
	}
}

func TestASecondLinkForTheSameNodeReplacesTheFirst(t *testing.T) {
	var disconnects atomic.Int32
	h := startHub(t, "", agents.Options{OnDisconnect: func(string) { disconnects.Add(1) }})
	first := dialRaw(t, h.url(), "n1")
	second := dialRaw(t, h.url(), "n1")
	ce, err := closeOf(first)
	if err != nil || ce.Code != websocket.StatusPolicyViolation || !strings.Contains(ce.Reason, "replaced") {
		t.Errorf("first link closed with %v %v", ce, err)
	}
	sendRaw(t, second, &link.Frame{Type: link.TypeEvents, Seq: 1, Events: []event.Event{{TS: t0, Type: event.ErrorHW, EntityID: "gpu-1", Value: "x"}}})
	eventually(t, "the second link's events", func() bool { return len(h.got.of("n1")) == 1 })
	if as := h.srv.Agents(); len(as) != 1 || !as[0].Connected {
		t.Errorf("Agents() = %+v", as)
	}
	if n := disconnects.Load(); n != 0 {
		t.Errorf("OnDisconnect ran %d times for a replaced link", n)
	}
	second.CloseNow()
	eventually(t, "the disconnect", func() bool { return disconnects.Load() == 1 })
	if as := h.srv.Agents(); len(as) != 1 || as[0].Connected {
		t.Errorf("Agents() = %+v after the link closed", as)
	}
	if got := counterValue(h.reg, "ark_hub_link_agents", "state", "stale"); got != 1 {
		t.Errorf("ark_hub_link_agents{state=stale} = %v", got)
	}
}

func TestHubRestartTheForwarderReconnectsAndResendsItsSnapshot(t *testing.T) {
	var disconnected atomic.Bool
	h1 := startHub(t, "", agents.Options{OnDisconnect: func(string) { disconnected.Store(true) }})
	addr := h1.http.Listener.Addr().String()
	var snaps atomic.Int32
	c := startAgent(t, h1.url(), "node-1", forwarder.Options{Snapshot: func() []event.Event {
		snaps.Add(1)
		return []event.Event{{TS: t0, Type: event.IntentRun, EntityID: "pid-7", PID: 7, JobID: "j", Value: "1"}}
	}})
	eventually(t, "the first hub's snapshot", func() bool { return len(h1.got.of("node-1")) == 1 })
	h1.stop()
	if !disconnected.Load() {
		t.Error("OnDisconnect did not run when the hub closed")
	}
	c.Sink([]event.Event{{TS: t0 + 1000, Type: event.ErrorHW, EntityID: "gpu-0", Value: "Xid 48"}}) // while away

	h2 := startHub(t, addr, agents.Options{})
	eventually(t, "the second hub's snapshot and the buffered error", func() bool { return len(h2.got.of("node-1")) == 2 })
	got := h2.got.of("node-1")
	if got[0].Type != event.IntentRun || got[1].Type != event.ErrorHW {
		t.Errorf("second hub got %s then %s, want the snapshot then the error", got[0].Type, got[1].Type)
	}
	if n := snaps.Load(); n != 2 {
		t.Errorf("snapshot taken %d times, want once per link", n)
	}
}

// handler is a fake control plane.
type handler struct {
	release chan struct{} // "slow" commands wait for it
	calls   atomic.Int32
}

func (h *handler) HandleCommand(ctx context.Context, cmd link.Command) link.Result {
	h.calls.Add(1)
	if cmd.Action == "slow" {
		select {
		case <-h.release:
		case <-ctx.Done():
			return link.Result{Result: "failure", Error: ctx.Err().Error()}
		}
	}
	return link.Result{PID: cmd.PID, JobID: cmd.JobID, Action: cmd.Action, Result: "success", Details: "by " + cmd.User}
}

// Acks are bounded by a write deadline on the connection; once written,
// the deadline must not stay behind for the library's pongs and the
// hub's commands on a link that then goes quiet.
func TestAQuietLinkAfterAnAckStillAnswersPingsAndTakesCommands(t *testing.T) {
	h := startHub(t, "", agents.Options{WriteTimeout: 50 * time.Millisecond})
	ws := dialRaw(t, h.url(), "n1")
	sendRaw(t, ws, &link.Frame{Type: link.TypeEvents, Seq: 1, Events: []event.Event{{TS: t0, Type: event.ComputeUtil, EntityID: "gpu-0", PID: 1, Value: "5"}}})
	_, b, err := ws.Read(context.Background())
	if f, derr := link.Decode(b); err != nil || derr != nil || f.Type != link.TypeAck || f.Seq != 1 {
		t.Fatalf("got %s (%v, %v), want ack 1", b, err, derr)
	}
	time.Sleep(200 * time.Millisecond) // four write timeouts
	// Reading in the background lets the client see the pong and the command.
	frames := make(chan link.Frame, 4)
	go func() {
		for {
			_, b, err := ws.Read(context.Background())
			if err != nil {
				close(frames)
				return
			}
			if f, err := link.Decode(b); err == nil {
				frames <- f
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := ws.Ping(ctx); err != nil {
		t.Fatalf("ping after a quiet spell: %v", err)
	}
	go func() {
		_, _ = h.srv.Dispatch(ctx, "n1", link.Command{ID: "c1", Intent: "fix", PID: 1, Action: "Signal"})
	}()
	select {
	case f, ok := <-frames:
		if !ok || f.Type != link.TypeCommand || f.Command.ID != "c1" {
			t.Fatalf("got %+v (open %v), want command c1", f, ok)
		}
	case <-ctx.Done():
		t.Fatal("no command within 5s")
	}
	if got := h.rejected("write"); got != 0 {
		t.Errorf("rejected{write} = %v", got)
	}
}

func TestDispatchReachesTheAgentsCommandHandler(t *testing.T) {
	h := startHub(t, "", agents.Options{})
	hd := &handler{release: make(chan struct{})}
	startAgent(t, h.url(), "node-1", forwarder.Options{Commands: hd})
	eventually(t, "the agent", func() bool { as := h.srv.Agents(); return len(as) == 1 && as[0].Connected })

	// A slow command does not hold up the next one: they run concurrently.
	slow := make(chan error, 1)
	go func() {
		res, err := h.srv.Dispatch(context.Background(), "node-1", link.Command{ID: "slow-1", Intent: "fix", PID: 7, Action: "slow", User: "ops"})
		if err == nil && res.ID != "slow-1" {
			err = errors.New("wrong id " + res.ID)
		}
		slow <- err
	}()
	eventually(t, "the slow command to start", func() bool { return hd.calls.Load() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := h.srv.Dispatch(ctx, "node-1", link.Command{Intent: "fix", PID: 42, JobID: "j", Action: "Signal", User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Result != "success" || res.Node != "node-1" || res.PID != 42 || res.Details != "by alice" || res.ID == "" {
		t.Errorf("result %+v", res)
	}
	close(hd.release)
	if err := <-slow; err != nil {
		t.Errorf("slow command: %v", err)
	}
	if got := counterValue(h.reg, "ark_hub_link_commands_total", "result", "success"); got != 2 {
		t.Errorf("ark_hub_link_commands_total{result=success} = %v, want 2", got)
	}
}

func TestDispatchTimesOutWhenTheAgentDoesNotAnswer(t *testing.T) {
	h := startHub(t, "", agents.Options{})
	hd := &handler{release: make(chan struct{})}
	defer close(hd.release)
	startAgent(t, h.url(), "node-1", forwarder.Options{Commands: hd})
	eventually(t, "the agent", func() bool { as := h.srv.Agents(); return len(as) == 1 && as[0].Connected })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := h.srv.Dispatch(ctx, "node-1", link.Command{Intent: "fix", PID: 7, Action: "slow"})
	if !errors.Is(err, agents.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Dispatch = %v, want ErrTimeout wrapping the deadline", err)
	}
	if got := counterValue(h.reg, "ark_hub_link_commands_total", "result", "timeout"); got != 1 {
		t.Errorf("timeouts counted %v", got)
	}
}

func TestDispatchToAnUnknownNodeIsErrNoAgent(t *testing.T) {
	h := startHub(t, "", agents.Options{})
	_, err := h.srv.Dispatch(context.Background(), "nowhere", link.Command{Intent: "fix", PID: 1})
	if !errors.Is(err, agents.ErrNoAgent) {
		t.Errorf("Dispatch = %v, want ErrNoAgent", err)
	}
	// An agent without a command handler answers with a failure.
	startAgent(t, h.url(), "bare", forwarder.Options{})
	eventually(t, "the agent", func() bool { return len(h.srv.Agents()) == 1 })
	res, err := h.srv.Dispatch(context.Background(), "bare", link.Command{Intent: "fix", PID: 1})
	if err != nil || res.Result != "failure" || res.Error == "" {
		t.Errorf("Dispatch to an agent without a handler = %+v, %v", res, err)
	}
}

func TestNewServerNeedsAWayToAuthenticate(t *testing.T) {
	if _, err := agents.NewServer(agents.Options{}); err == nil || err.Error() != "agents: a token, an authenticator or Insecure is required" {
		t.Errorf("NewServer without auth: %v", err)
	}
}

// RFC 7235: "bearer" and "BEARER" name the same scheme.
func TestTheBearerSchemeIsCaseInsensitive(t *testing.T) {
	h := startHub(t, "", agents.Options{Token: "s3cret"})
	for _, scheme := range []string{"bearer", "BEARER"} {
		ws, resp, err := websocket.Dial(context.Background(), h.url(),
			&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {scheme + " s3cret"}}})
		if err != nil {
			t.Fatalf("scheme %q: %v (%v)", scheme, err, resp)
		}
		ws.CloseNow()
	}
}

// A per-node token speaks for its node only: hello as another node closes
// the link with the reason, and that node's own link stays.
func TestANodeTokenMaySayHelloOnlyAsItsNode(t *testing.T) {
	nt, err := auth.ParseNodeTokens([]byte("node-1:tok-1\nnode-3:tok-3\n"), "node-tokens")
	if err != nil {
		t.Fatal(err)
	}
	h := startHub(t, "", agents.Options{Auth: auth.AnyOf{auth.Token("shared"), nt}})
	if _, f, err := dialWith(t, h.url(), "tok-3", "node-3"); err != nil || f.Type != link.TypeWelcome {
		t.Fatalf("node-3 with its token: %v %v", f, err)
	}
	_, _, err = dialWith(t, h.url(), "tok-1", "node-3")
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.StatusPolicyViolation || !strings.Contains(ce.Reason, `may not connect as node "node-3"`) {
		t.Fatalf("node-1's token as node-3: %v, want a policy-violation close naming node-3", err)
	}
	if got := h.rejected("node_mismatch"); got != 1 {
		t.Errorf(`ark_hub_frames_rejected_total{reason="node_mismatch"} = %v, want 1`, got)
	}
	agentsByNode := map[string]agents.AgentInfo{}
	for _, a := range h.srv.Agents() {
		agentsByNode[a.Node] = a
	}
	if a := agentsByNode["node-3"]; !a.Connected || a.Identity != "node-token" {
		t.Errorf("node-3's own link after the forged hello: %+v, want still connected", a)
	}
	// The shared token still speaks for any node.
	if _, f, err := dialWith(t, h.url(), "shared", "node-7"); err != nil || f.Type != link.TypeWelcome {
		t.Fatalf("the shared token as node-7: %v %v", f, err)
	}
}
