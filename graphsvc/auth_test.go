package graphsvc

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/graph"
	"github.com/ark-gpu/ark/internal/auth"
)

// forgeries are what an attacker on the network sent in the red-team pass:
// an XID 79 on a healthy GPU of node-1, and a clear of node-3's real one.
func forgeries() (xid, clear event.Event) {
	const ts = 1764300600000
	xid = event.Event{TS: ts, Type: event.ErrorHW, EntityID: "gpu-0", NodeID: "node-1", Value: "Xid 79: GPU has fallen off the bus.",
		Attrs: event.Attrs{{Key: event.AttrXID, Value: "79"}}}
	clear = event.Event{TS: ts, Type: event.ErrorHW, EntityID: "gpu-6", NodeID: "node-3", Value: "Xid 79: GPU has fallen off the bus.",
		Attrs: event.Attrs{{Key: event.AttrXID, Value: "79"}, {Key: "cleared", Value: "true"}}}
	return xid, clear
}

// whyJSON is the hub's answer for the job, node-1 and node-3, as JSON.
func whyJSON(t *testing.T, th *testHub) string {
	t.Helper()
	var out []string
	for _, target := range []graph.Target{{JobID: scenarioJob}, {Node: "node-1"}, {Node: "node-3"}} {
		res, err := th.Why(target, 0)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(res)
		out = append(out, string(b))
	}
	return strings.Join(out, "\n")
}

// Issue 12 item 1: anonymous OTLP forged an XID and cleared the real one.
// Every write into the graph now authenticates: 401, and the graph — what
// why answers, and what the remediator acts on — is unchanged.
func TestAnonymousOTLPIsRefusedAndTheGraphStaysUnchanged(t *testing.T) {
	th := newTestHub(t, Options{})
	th.ingestScenario(t)
	before := whyJSON(t, th)
	if c := topCause(t, mustWhy(t, th, graph.Target{JobID: scenarioJob})); c.NodeID != "node-3" {
		t.Fatalf("the scenario's first cause is on %s, want node-3", c.NodeID)
	}
	xid, clear := forgeries()
	for _, forged := range []event.Event{xid, clear} {
		for _, path := range []string{"/v1/traces", "/v1/logs"} {
			body := tracesProto(t, []event.Event{forged})
			if path == "/v1/logs" {
				body = logsProto(t, []event.Event{forged})
			}
			for _, authz := range []string{"", "Bearer wrong", "Basic " + testToken, "Bearer" + testToken} {
				code, out, _ := th.postAs(t, authz, path, contentProtobuf, "", body)
				if code != http.StatusUnauthorized {
					t.Errorf("%s %s with Authorization %q: %d %s, want 401", path, forged.EntityID, authz, code, out)
				}
			}
		}
	}
	if got := whyJSON(t, th); got != before {
		t.Fatalf("anonymous OTLP changed the graph:\nbefore: %s\nafter:  %s", before, got)
	}
	if got := testutil.ToFloat64(th.m.otlpRejected.WithLabelValues(otlpUnauthenticated)); got != 16 {
		t.Errorf(`ark_hub_otlp_rejected_total{reason="unauthenticated"} = %v, want 16`, got)
	}
	if got := testutil.ToFloat64(th.m.received.WithLabelValues(sourceOTLP)); got != 0 {
		t.Errorf("events received over OTLP = %v, want 0", got)
	}
	// The same requests with the token are applied: the refusal above is
	// what kept the graph as it was.
	if code, out, _ := th.post(t, "/v1/traces", contentProtobuf, "", tracesProto(t, []event.Event{xid, clear})); code != http.StatusOK {
		t.Fatalf("with the token: %d %s", code, out)
	}
	if got := whyJSON(t, th); got == before {
		t.Fatal("the forged events with the token changed nothing: the test proves nothing")
	}
}

func mustWhy(t *testing.T, th *testHub, target graph.Target) WhyResponse {
	t.Helper()
	res, err := th.Why(target, 0)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// A sender whose credential is bound to a node (a per-node token, a
// TokenReview'd agent) speaks only for that node: a request naming any
// other host is refused whole (403) and nothing of it is applied.
func TestANodeBoundOTLPSenderSpeaksOnlyForItsHost(t *testing.T) {
	nt, err := auth.ParseNodeTokens([]byte("node-1:tok-1\n"), "node-tokens")
	if err != nil {
		t.Fatal(err)
	}
	th := newTestHub(t, Options{Auth: auth.AnyOf{auth.Token(testToken), nt}})
	th.ingestScenario(t)
	before := whyJSON(t, th)
	xid, clear := forgeries()
	for _, c := range []struct {
		name, path, ct string
		body           otlpBody
		evs            []event.Event
	}{
		{"another host's event", "/v1/traces", contentProtobuf, tracesProto, []event.Event{clear}},
		{"its own and another host's", "/v1/traces", contentProtobuf, tracesProto, []event.Event{xid, clear}},
		{"another host's, logs in JSON", "/v1/logs", contentJSON, logsJSON, []event.Event{clear}},
	} {
		code, out, _ := th.postAs(t, "Bearer tok-1", c.path, c.ct, "", c.body(t, c.evs))
		if code != http.StatusForbidden || !strings.Contains(string(out), `may not send events for host \"node-3\"`) {
			t.Errorf("%s: %d %s, want 403 naming node-3", c.name, code, out)
		}
	}
	if got := whyJSON(t, th); got != before {
		t.Fatalf("a node-1 credential changed node-3:\nbefore: %s\nafter:  %s", before, got)
	}
	if got := testutil.ToFloat64(th.m.otlpRejected.WithLabelValues(otlpForbidden)); got != 3 {
		t.Errorf(`ark_hub_otlp_rejected_total{reason="forbidden"} = %v, want 3`, got)
	}
	// Its own host's events are applied.
	if code, out, _ := th.postAs(t, "Bearer tok-1", "/v1/logs", contentProtobuf, "", logsProto(t, []event.Event{xid})); code != http.StatusOK {
		t.Fatalf("node-1's token, node-1's event: %d %s", code, out)
	}
	if got := testutil.ToFloat64(th.m.received.WithLabelValues(sourceOTLP)); got != 1 {
		t.Errorf("events received over OTLP = %v, want 1", got)
	}
	// A fix may reach any node: the shared token only.
	if code, out := postFix(t, th, "tok-1", `{"node":"node-1","pid":3000}`); code != http.StatusUnauthorized {
		t.Errorf("fix with a node token: %d %v, want 401", code, out)
	}
}

// RFC 7235: the scheme is case-insensitive, on every authenticated path.
func TestTheBearerSchemeIsCaseInsensitiveForOTLPAndFix(t *testing.T) {
	th := newTestHub(t, Options{})
	xid, _ := forgeries()
	for _, scheme := range []string{"bearer", "BEARER"} {
		if code, out, _ := th.postAs(t, scheme+" "+testToken, "/v1/traces", contentProtobuf, "", tracesProto(t, []event.Event{xid})); code != http.StatusOK {
			t.Errorf("OTLP with scheme %q: %d %s", scheme, code, out)
		}
		// No agent link in this hub: past authentication, fix answers 503.
		code, out, _ := th.postAs(t, scheme+" "+testToken, "/api/v1/fix", contentJSON, "", []byte(`{"node":"node-1","pid":1}`))
		if code != http.StatusServiceUnavailable {
			t.Errorf("fix with scheme %q: %d %s, want 503 (authenticated, no agent link)", scheme, code, out)
		}
	}
}
