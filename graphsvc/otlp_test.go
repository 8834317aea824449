package graphsvc

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/plog/plogotlp"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/pdata/ptrace/ptraceotlp"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/graph"
)

// otlpBody encodes events as the Collector's otlphttp exporter would.
type otlpBody func(t *testing.T, evs []event.Event) []byte

func tracesProto(t *testing.T, evs []event.Event) []byte {
	b, err := ptraceotlp.NewExportRequestFromTraces(EventsToTraces(evs)).MarshalProto()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func tracesJSON(t *testing.T, evs []event.Event) []byte {
	b, err := ptraceotlp.NewExportRequestFromTraces(EventsToTraces(evs)).MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func logsProto(t *testing.T, evs []event.Event) []byte {
	b, err := plogotlp.NewExportRequestFromLogs(EventsToLogs(evs)).MarshalProto()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func logsJSON(t *testing.T, evs []event.Event) []byte {
	b, err := plogotlp.NewExportRequestFromLogs(EventsToLogs(evs)).MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func gzipped(t *testing.T, b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// post sends body to path with the hub's token and the given headers and
// returns the status, the response body and its Content-Type.
func (th *testHub) post(t *testing.T, path, contentType, encoding string, body []byte) (int, []byte, string) {
	t.Helper()
	return th.postAs(t, "Bearer "+testToken, path, contentType, encoding, body)
}

// postAs is post with this Authorization header ("": none).
func (th *testHub) postAs(t *testing.T, authorization, path, contentType, encoding string, body []byte) (int, []byte, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, th.srv.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	if encoding != "" {
		req.Header.Set("Content-Encoding", encoding)
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, out, resp.Header.Get("Content-Type")
}

func TestOTLPIngestGivesTheSameWhyAsTheAgentLink(t *testing.T) {
	evs := loadScenario(t)
	ref := newTestHub(t, Options{})
	interleave(evs, 256, ref.Ingest)
	want, err := ref.Why(graph.Target{JobID: scenarioJob}, 0)
	if err != nil {
		t.Fatal(err)
	}
	wantJSON, _ := json.Marshal(want)

	cases := []struct {
		name, path, ct, enc string
		body                otlpBody
	}{
		{"traces protobuf", "/v1/traces", contentProtobuf, "", tracesProto},
		{"traces protobuf gzip", "/v1/traces", contentProtobuf, "gzip", tracesProto},
		{"traces JSON", "/v1/traces", contentJSON, "", tracesJSON},
		{"logs protobuf", "/v1/logs", contentProtobuf, "", logsProto},
		{"logs JSON gzip", "/v1/logs", contentJSON + "; charset=utf-8", "gzip", logsJSON},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			th := newTestHub(t, Options{})
			interleave(evs, 256, func(_ string, batch []event.Event) {
				body := c.body(t, batch)
				if c.enc == "gzip" {
					body = gzipped(t, body)
				}
				code, out, ct := th.post(t, c.path, c.ct, c.enc, body)
				if code != http.StatusOK {
					t.Fatalf("status %d: %s", code, out)
				}
				checkExportResponse(t, c.path, ct, out, 0)
			})
			if got := testutil.ToFloat64(th.m.received.WithLabelValues(sourceOTLP)); got != float64(len(evs)) {
				t.Errorf("received over otlp %v, want %d", got, len(evs))
			}
			got, err := th.Why(graph.Target{JobID: scenarioJob}, 0)
			if err != nil {
				t.Fatal(err)
			}
			topCause(t, got)
			if gotJSON, _ := json.Marshal(got); !bytes.Equal(gotJSON, wantJSON) {
				t.Errorf("why over OTLP differs from why over the link:\notlp: %s\nlink: %s", gotJSON, wantJSON)
			}
		})
	}
}

// checkExportResponse decodes an OTLP export response in the encoding its
// Content-Type names and checks the rejected count.
func checkExportResponse(t *testing.T, path, ct string, out []byte, rejected int64) string {
	t.Helper()
	isJSON := ct == contentJSON
	if !isJSON && ct != contentProtobuf {
		t.Fatalf("response Content-Type %q", ct)
	}
	var got int64
	var msg string
	if path == "/v1/traces" {
		resp := ptraceotlp.NewExportResponse()
		err := resp.UnmarshalProto(out)
		if isJSON {
			err = resp.UnmarshalJSON(out)
		}
		if err != nil {
			t.Fatalf("decoding the export response %q: %v", out, err)
		}
		got, msg = resp.PartialSuccess().RejectedSpans(), resp.PartialSuccess().ErrorMessage()
	} else {
		resp := plogotlp.NewExportResponse()
		err := resp.UnmarshalProto(out)
		if isJSON {
			err = resp.UnmarshalJSON(out)
		}
		if err != nil {
			t.Fatalf("decoding the export response %q: %v", out, err)
		}
		got, msg = resp.PartialSuccess().RejectedLogRecords(), resp.PartialSuccess().ErrorMessage()
	}
	if got != rejected {
		t.Errorf("rejected %d (%q), want %d", got, msg, rejected)
	}
	return msg
}

func TestOTLPRefusesBodiesItCannotRead(t *testing.T) {
	good := tracesProto(t, loadScenario(t)[:2])
	cases := []struct {
		name, path, ct, enc string
		body                []byte
		code                int
		reason, errHas      string
	}{
		{"text sent as protobuf", "/v1/traces", contentProtobuf, "", []byte("this is not protobuf at all"),
			http.StatusBadRequest, otlpInvalidBody, "not an OTLP protobuf ExportRequest"},
		{"JSON sent as protobuf", "/v1/logs", contentProtobuf, "", []byte(`{"resourceLogs":[]}`),
			http.StatusBadRequest, otlpInvalidBody, "not an OTLP protobuf ExportRequest"},
		{"protobuf sent as JSON", "/v1/traces", contentJSON, "", good,
			http.StatusBadRequest, otlpInvalidBody, "not an OTLP JSON ExportRequest"},
		{"unknown content type", "/v1/traces", "text/plain", "", good,
			http.StatusUnsupportedMediaType, otlpUnsupportedType, "unsupported Content-Type"},
		{"gzip header on a plain body", "/v1/traces", contentProtobuf, "gzip", good,
			http.StatusBadRequest, otlpBadEncoding, "reading the request body"},
		{"unknown encoding", "/v1/traces", contentProtobuf, "br", good,
			http.StatusBadRequest, otlpBadEncoding, "unsupported Content-Encoding"},
		{"too large", "/v1/traces", contentProtobuf, "", bytes.Repeat([]byte{0}, 2048),
			http.StatusRequestEntityTooLarge, otlpTooLarge, "larger than 1024 bytes"},
		{"too large after gzip", "/v1/traces", contentProtobuf, "gzip", gzipped(t, bytes.Repeat([]byte{0}, 4096)),
			http.StatusRequestEntityTooLarge, otlpTooLarge, "after gzip"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			th := newTestHub(t, Options{MaxBodyBytes: 1024})
			code, out, _ := th.post(t, c.path, c.ct, c.enc, c.body)
			if code != c.code {
				t.Fatalf("status %d (%s), want %d", code, out, c.code)
			}
			var e errorBody
			if err := json.Unmarshal(out, &e); err != nil || !strings.Contains(e.Error, c.errHas) {
				t.Errorf("error %q (%v), want it to contain %q", out, err, c.errHas)
			}
			if got := testutil.ToFloat64(th.m.otlpRejected.WithLabelValues(c.reason)); got != 1 {
				t.Errorf("ark_hub_otlp_rejected_total{reason=%q} = %v, want 1", c.reason, got)
			}
			if n := th.Graph().Stats().Applied; n != 0 {
				t.Errorf("%d events applied from a refused request", n)
			}
		})
	}
}

func TestOTLPDropsSpansWithoutTheArkAttributesAndAppliesTheRest(t *testing.T) {
	td := EventsToTraces([]event.Event{
		{TS: 1764300000000, Type: event.IntentRun, EntityID: "pid-7", PID: 7, JobID: "j", NodeID: "node-1", Value: "running"},
	})
	spans := td.ResourceSpans().At(0).ScopeSpans().At(0).Spans()
	add := func(mutate func(pcommon.Map)) {
		sp := spans.AppendEmpty()
		spans.At(0).CopyTo(sp)
		mutate(sp.Attributes())
	}
	add(func(m pcommon.Map) { m.Remove(AttrEventType) })
	add(func(m pcommon.Map) { m.PutStr(AttrEventType, "gpu.on_fire") })
	add(func(m pcommon.Map) { m.Remove(AttrValue) })
	add(func(m pcommon.Map) { m.PutStr(AttrPID, "seven") })
	noHost := td.ResourceSpans().AppendEmpty()
	spans.At(0).CopyTo(noHost.ScopeSpans().AppendEmpty().Spans().AppendEmpty())
	noTS := spans.AppendEmpty()
	spans.At(0).CopyTo(noTS)
	noTS.SetStartTimestamp(0)

	body, err := ptraceotlp.NewExportRequestFromTraces(td).MarshalProto()
	if err != nil {
		t.Fatal(err)
	}
	th := newTestHub(t, Options{})
	code, out, ct := th.post(t, "/v1/traces", contentProtobuf, "", body)
	if code != http.StatusOK {
		t.Fatalf("status %d: %s", code, out)
	}
	msg := checkExportResponse(t, "/v1/traces", ct, out, 6)
	if !strings.Contains(msg, "missing_field=4") || !strings.Contains(msg, "unknown_event_type=1") || !strings.Contains(msg, "invalid_field=1") {
		t.Errorf("partial success message %q", msg)
	}
	if ps := th.Processes(graph.ProcessFilter{}); len(ps.Processes) != 1 || ps.Processes[0].Node != "node-1" {
		t.Errorf("processes %+v, want the one good span applied", ps.Processes)
	}
	for reason, want := range map[string]float64{event.ReasonMissingField: 4, event.ReasonUnknownType: 1, event.ReasonInvalidField: 1} {
		if got := testutil.ToFloat64(th.m.eventsDrop.WithLabelValues(sourceOTLP, reason)); got != want {
			t.Errorf("ark_hub_events_rejected_total{source=otlp,reason=%s} = %v, want %v", reason, got, want)
		}
	}
}

func TestOTLPReadsTheK8sNodeNameAndOtherValueTypes(t *testing.T) {
	td := ptrace.NewTraces()
	rs := td.ResourceSpans().AppendEmpty()
	rs.Resource().Attributes().PutStr(AttrK8sNodeName, "k8s-node-1")
	sp := rs.ScopeSpans().AppendEmpty().Spans().AppendEmpty()
	sp.SetStartTimestamp(pcommon.Timestamp(1764300000123 * 1e6))
	m := sp.Attributes()
	m.PutStr(AttrEventType, "compute.util")
	m.PutStr(AttrEntityID, "gpu-1")
	m.PutDouble(AttrValue, 97.5)
	m.PutStr(AttrPID, "4242")
	m.PutStr(AttrJobID, "j")
	m.PutInt(AttrPrefix+"rank", 3)
	evs, dropped := TracesToEvents(td)
	want := []event.Event{{TS: 1764300000123, Type: event.ComputeUtil, EntityID: "gpu-1", Value: "97.5", PID: 4242,
		JobID: "j", NodeID: "k8s-node-1", Attrs: event.Attrs{{Key: "rank", Value: "3"}}}}
	if dropped.Total() != 0 || !reflect.DeepEqual(evs, want) {
		t.Errorf("got %+v (dropped %v), want %+v", evs, dropped, want)
	}
}

func TestEventsRoundTripThroughOTLP(t *testing.T) {
	evs := loadScenario(t)
	check := func(name string, got []event.Event, dropped Dropped) {
		t.Helper()
		if dropped.Total() != 0 {
			t.Errorf("%s: dropped %v", name, dropped)
		}
		if len(got) != len(evs) {
			t.Fatalf("%s: %d events, want %d", name, len(got), len(evs))
		}
		// One resource per host: the events come back grouped by host, each
		// host's in order.
		_, wantBy := byHost(evs)
		_, gotBy := byHost(got)
		for h, w := range wantBy {
			for i := range w {
				if !reflect.DeepEqual(gotBy[h][i], w[i]) {
					t.Fatalf("%s: %s event %d:\n got %+v\nwant %+v", name, h, i, gotBy[h][i], w[i])
				}
			}
		}
	}

	req := ptraceotlp.NewExportRequest()
	if err := req.UnmarshalProto(tracesProto(t, evs)); err != nil {
		t.Fatal(err)
	}
	got, dropped := TracesToEvents(req.Traces())
	check("traces protobuf", got, dropped)
	req = ptraceotlp.NewExportRequest()
	if err := req.UnmarshalJSON(tracesJSON(t, evs)); err != nil {
		t.Fatal(err)
	}
	got, dropped = TracesToEvents(req.Traces())
	check("traces JSON", got, dropped)
	lreq := plogotlp.NewExportRequest()
	if err := lreq.UnmarshalProto(logsProto(t, evs)); err != nil {
		t.Fatal(err)
	}
	got, dropped = LogsToEvents(lreq.Logs())
	check("logs protobuf", got, dropped)
}

func TestTraceIDsFollowTheJobAndSpanIDsTheEvent(t *testing.T) {
	a := event.Event{TS: 1764300000000, Type: event.ComputeUtil, EntityID: "gpu-0", PID: 1, JobID: "j", NodeID: "n1", Value: "1"}
	b := a
	b.NodeID, b.PID = "n2", 2
	if TraceIDFor(&a) != TraceIDFor(&b) {
		t.Error("two hosts' events of one job have different trace ids")
	}
	c := a
	c.JobID = ""
	d := b
	d.JobID = ""
	if TraceIDFor(&c) == TraceIDFor(&d) || TraceIDFor(&c) == TraceIDFor(&a) {
		t.Error("without a job, the trace id should follow the host")
	}
	again := a
	if SpanIDFor(&a) != SpanIDFor(&again) || SpanIDFor(&a) == SpanIDFor(&b) {
		t.Error("span ids are not a function of the event")
	}
	later := a
	later.TS++
	if SpanIDFor(&later) == SpanIDFor(&a) {
		t.Error("events at different times share a span id")
	}
	secs := a
	secs.TS = 1764300000
	if SpanIDFor(&secs) != SpanIDFor(&a) {
		t.Error("a ts in seconds should give the span id of the same ts in ms")
	}
}

func TestSpanLinksDrawTheCausalChain(t *testing.T) {
	evs := loadScenario(t)
	td := EventsToTraces(evs)
	type key struct {
		node, entity string
		typ          event.Type
		pid          int64
		ts           int64
	}
	spanOf := map[key]ptrace.Span{}
	byID := map[pcommon.SpanID]pcommon.Map{}
	for _, rs := range td.ResourceSpans().All() {
		node, _ := rs.Resource().Attributes().Get(AttrHostName)
		for _, sp := range rs.ScopeSpans().At(0).Spans().All() {
			ev, reason := eventFrom(node.Str(), sp.Attributes(), uint64(sp.StartTimestamp()), nil)
			if reason != "" {
				t.Fatalf("span %v: %s", sp.Attributes().AsRaw(), reason)
			}
			spanOf[key{ev.NodeID, ev.EntityID, ev.Type, ev.PID, ev.TS}] = sp
			byID[sp.SpanID()] = sp.Attributes()
		}
	}
	linkTo := func(sp ptrace.Span, edge string) []pcommon.Map {
		var out []pcommon.Map
		for _, l := range sp.Links().All() {
			if v, _ := l.Attributes().Get(AttrEdgeType); v.Str() == edge {
				out = append(out, byID[l.SpanID()])
			}
		}
		return out
	}
	// A rank on node-1 drops toward a node-3 rank: WaitsOn its intent.run.
	drop, ok := spanOf[key{"node-1", "network-ib0", event.TransportDrop, 3000, 1764300001000}]
	if !ok {
		t.Fatal("no drop span")
	}
	ls := linkTo(drop, "WaitsOn")
	if len(ls) != 1 {
		t.Fatalf("drop links %d WaitsOn, want 1", len(ls))
	}
	if ent, _ := ls[0].Get(AttrEntityID); ent.Str() != "pid-3200" {
		t.Errorf("drop waits on %s, want pid-3200 (10.9.0.3:29500)", ent.Str())
	}
	// The rank on the faulty GPU consumes it: Consumes the XID 79.
	use := spanOf[key{"node-3", "gpu-6", event.ComputeUtil, 3206, 1764299890000}]
	ls = linkTo(use, "Consumes")
	if len(ls) != 1 {
		t.Fatalf("gpu-6 use links %d Consumes, want 1", len(ls))
	}
	if x, _ := ls[0].Get(AttrPrefix + "xid"); x.Str() != "79" {
		t.Errorf("gpu-6 use links to %v, want the XID 79", ls[0].AsRaw())
	}
	if drop.TraceID() != use.TraceID() {
		t.Error("the job's spans are in different traces")
	}
}

// readmeSpan is the hand-written OTLP/JSON body of README.md.
const readmeSpan = `{"resourceSpans":[{
  "resource":{"attributes":[{"key":"host.name","value":{"stringValue":"node-3"}}]},
  "scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
    "name":"error.hw","startTimeUnixNano":"1764300000000000000","endTimeUnixNano":"1764300000000000000",
    "attributes":[{"key":"ark.event_type","value":{"stringValue":"error.hw"}},
      {"key":"ark.entity_id","value":{"stringValue":"gpu-6"}},
      {"key":"ark.value","value":{"stringValue":"Xid 79: GPU has fallen off the bus."}},
      {"key":"ark.attrs.xid","value":{"stringValue":"79"}}]}]}]}]}`

func TestOTLPJSONWrittenByHandIsApplied(t *testing.T) {
	th := newTestHub(t, Options{})
	code, out, ct := th.post(t, "/v1/traces", contentJSON, "", []byte(readmeSpan))
	if code != http.StatusOK {
		t.Fatalf("status %d: %s", code, out)
	}
	checkExportResponse(t, "/v1/traces", ct, out, 0)
	var res WhyResponse
	th.get(t, "/api/v1/why?node=node-3", &res)
	if top := topCause(t, res); top.EntityID != "gpu-6" || top.XID != 79 {
		t.Errorf("top cause %+v", top)
	}
}
