package graphsvc

import (
	"crypto/sha256"
	"encoding/binary"
	"strconv"
	"strings"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/plog"
	"go.opentelemetry.io/collector/pdata/ptrace"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/graph"
)

// The OTLP mapping of an event (docs/events.md, "The same event over OTLP"), shared by the hub's
// ingest and the collector receiver.
const (
	// Resource attributes naming the host.
	AttrHostName    = "host.name"
	AttrK8sNodeName = "k8s.node.name"
	// Span and log record attributes.
	AttrEventType = "ark.event_type"
	AttrEntityID  = "ark.entity_id"
	AttrValue     = "ark.value"
	AttrJobID     = "ark.job_id"
	AttrPID       = "process.pid"
	// AttrPrefix prefixes each of the event's attrs.
	AttrPrefix = "ark.attrs."
	// AttrEdgeType is the link attribute naming the edge a link stands for.
	AttrEdgeType = "ark.edge.type"
	// ScopeName is the instrumentation scope of the spans and records.
	ScopeName = "github.com/ark-gpu/ark"
)

// TraceIDFor derives an event's trace id from its job, or its host when it
// has no job, so one job's events share a trace and a load-balancing
// exporter that routes by trace id sends them to one hub.
func TraceIDFor(ev *event.Event) pcommon.TraceID {
	h := sha256.New()
	if ev.JobID != "" {
		h.Write([]byte("job\x00" + ev.JobID))
	} else {
		h.Write([]byte("node\x00" + ev.NodeID))
	}
	var id pcommon.TraceID
	copy(id[:], h.Sum(nil))
	return id
}

// SpanIDFor derives an event's span id from (node, entity, type, ts), and
// the pid when there is one: per-process samples of one device at one
// instant are distinct events.
func SpanIDFor(ev *event.Event) pcommon.SpanID {
	h := sha256.New()
	var ts [8]byte
	binary.BigEndian.PutUint64(ts[:], uint64(event.NormalizeTS(ev.TS)))
	h.Write([]byte(ev.NodeID + "\x00" + ev.EntityID + "\x00" + string(ev.Type) + "\x00"))
	h.Write(ts[:])
	if ev.PID != 0 {
		h.Write([]byte("\x00" + strconv.FormatInt(ev.PID, 10)))
	}
	var id pcommon.SpanID
	copy(id[:], h.Sum(nil))
	if id.IsEmpty() {
		id[7] = 1 // an all-zero id is invalid
	}
	return id
}

// qdepthThreshold is the graph's default, so links agree with the hub's
// edges.
var qdepthThreshold = graph.New(graph.Options{}).Options().QDepthThreshold

// EventsToTraces encodes events as spans, one resource per host in the
// order hosts first appear. A span's links point to the spans, in the same
// batch, of the events it depends on, with the edge type in ark.edge.type:
// a use of or wait on a faulted device links to the fault, a wait on a
// peer to the intent.run of the rank behind that address, and a stuck
// process to the fault of the device it last used and to its intent.run.
func EventsToTraces(evs []event.Event) ptrace.Traces {
	td := ptrace.NewTraces()
	if len(evs) == 0 {
		return td
	}
	ids := make([]spanRef, len(evs))
	for i := range evs {
		ids[i] = spanRef{TraceIDFor(&evs[i]), SpanIDFor(&evs[i])}
	}
	links := linksFor(evs)
	scopes := map[string]ptrace.SpanSlice{}
	for i := range evs {
		ev := &evs[i]
		spans, ok := scopes[ev.NodeID]
		if !ok {
			rs := td.ResourceSpans().AppendEmpty()
			if ev.NodeID != "" {
				rs.Resource().Attributes().PutStr(AttrHostName, ev.NodeID)
			}
			ss := rs.ScopeSpans().AppendEmpty()
			ss.Scope().SetName(ScopeName)
			spans = ss.Spans()
			scopes[ev.NodeID] = spans
		}
		sp := spans.AppendEmpty()
		sp.SetName(string(ev.Type))
		sp.SetKind(ptrace.SpanKindInternal)
		sp.SetTraceID(ids[i].trace)
		sp.SetSpanID(ids[i].span)
		ts := pcommon.Timestamp(event.NormalizeTS(ev.TS) * 1e6)
		sp.SetStartTimestamp(ts)
		sp.SetEndTimestamp(ts)
		if ev.Type.IsError() {
			sp.Status().SetCode(ptrace.StatusCodeError)
			sp.Status().SetMessage(ev.Value)
		}
		putEventAttrs(sp.Attributes(), ev)
		for _, l := range links[i] {
			sl := sp.Links().AppendEmpty()
			sl.SetTraceID(ids[l.to].trace)
			sl.SetSpanID(ids[l.to].span)
			sl.Attributes().PutStr(AttrEdgeType, l.typ.String())
		}
	}
	return td
}

// EventsToLogs encodes events as log records, one resource per host; each
// record carries the trace and span id its span would have.
func EventsToLogs(evs []event.Event) plog.Logs {
	ld := plog.NewLogs()
	scopes := map[string]plog.LogRecordSlice{}
	for i := range evs {
		ev := &evs[i]
		recs, ok := scopes[ev.NodeID]
		if !ok {
			rl := ld.ResourceLogs().AppendEmpty()
			if ev.NodeID != "" {
				rl.Resource().Attributes().PutStr(AttrHostName, ev.NodeID)
			}
			sl := rl.ScopeLogs().AppendEmpty()
			sl.Scope().SetName(ScopeName)
			recs = sl.LogRecords()
			scopes[ev.NodeID] = recs
		}
		lr := recs.AppendEmpty()
		lr.SetTimestamp(pcommon.Timestamp(event.NormalizeTS(ev.TS) * 1e6))
		lr.SetEventName(string(ev.Type))
		lr.SetTraceID(TraceIDFor(ev))
		lr.SetSpanID(SpanIDFor(ev))
		lr.SetSeverityNumber(plog.SeverityNumberInfo)
		if ev.Type.IsError() {
			lr.SetSeverityNumber(plog.SeverityNumberError)
		}
		lr.Body().SetStr(ev.Value)
		putEventAttrs(lr.Attributes(), ev)
	}
	return ld
}

type spanRef struct {
	trace pcommon.TraceID
	span  pcommon.SpanID
}

type spanLink struct {
	to  int // index of the linked event
	typ graph.EdgeType
}

// linksFor works out, for each event, the events of the batch it depends
// on. Faults and ranks are indexed first so a link may point forward in
// the batch: a batch is a window, not a causal order.
func linksFor(evs []event.Event) [][]spanLink {
	faultOf := map[string]int{} // resource id → its latest fault event
	rankOf := map[string]int{}  // process id → its intent.run
	addrOf := map[string]int{}  // announced address → the intent.run
	for i := range evs {
		t, from, _ := graph.EdgeFor(&evs[i], qdepthThreshold)
		switch t {
		case graph.BlockedBy:
			faultOf[from] = i
		case graph.MemberOf:
			rankOf[from] = i
			if a := evs[i].Attrs.Get(event.AttrAddr); a != "" {
				addrOf[a] = i
			}
		}
	}
	links := make([][]spanLink, len(evs))
	lastUsed := map[string]string{} // process id → the resource it used last, in batch order
	for i := range evs {
		ev := &evs[i]
		t, from, to := graph.EdgeFor(ev, qdepthThreshold)
		add := func(j int, typ graph.EdgeType) {
			if j != i {
				links[i] = append(links[i], spanLink{j, typ})
			}
		}
		switch {
		case t == graph.Consumes || (t == graph.WaitsOn && to != ""):
			lastUsed[from] = to
			if j, ok := faultOf[to]; ok {
				add(j, t)
			}
			if peer := ev.Attrs.Get(event.AttrPeer); t == graph.WaitsOn && peer != "" {
				if j, ok := addrOf[peer]; ok {
					add(j, graph.WaitsOn)
				}
			}
		case t == graph.WaitsOn: // a stuck process: it waits on what it used last
			if j, ok := faultOf[lastUsed[from]]; ok {
				add(j, graph.WaitsOn)
			}
			if j, ok := rankOf[from]; ok {
				add(j, graph.MemberOf)
			}
		}
	}
	return links
}

func putEventAttrs(m pcommon.Map, ev *event.Event) {
	m.EnsureCapacity(4 + len(ev.Attrs))
	m.PutStr(AttrEventType, string(ev.Type))
	m.PutStr(AttrEntityID, ev.EntityID)
	m.PutStr(AttrValue, ev.Value)
	if ev.JobID != "" {
		m.PutStr(AttrJobID, ev.JobID)
	}
	if ev.PID != 0 {
		m.PutInt(AttrPID, ev.PID)
	}
	for _, a := range ev.Attrs {
		m.PutStr(AttrPrefix+a.Key, a.Value)
	}
}

// Dropped counts the spans or records that could not be read as events,
// by reason (one of event.Reasons).
type Dropped map[string]int

// Total returns how many were dropped.
func (d Dropped) Total() int {
	n := 0
	for _, c := range d {
		n += c
	}
	return n
}

// TracesToEvents reads the events of the spans in td (§3.1), dropping and
// counting spans that lack a host, a known event type, an entity, a value
// or a start time.
func TracesToEvents(td ptrace.Traces) ([]event.Event, Dropped) {
	dropped := Dropped{}
	var evs []event.Event
	for _, rs := range td.ResourceSpans().All() {
		node := hostName(rs.Resource().Attributes())
		for _, ss := range rs.ScopeSpans().All() {
			for _, sp := range ss.Spans().All() {
				ev, reason := eventFrom(node, sp.Attributes(), uint64(sp.StartTimestamp()), nil)
				if reason != "" {
					dropped[reason]++
					continue
				}
				evs = append(evs, ev)
			}
		}
	}
	return evs, dropped
}

// LogsToEvents reads the events of the log records in ld (§3.1). A record
// without ark.value takes its body as the value, and one without a
// timestamp its observed time.
func LogsToEvents(ld plog.Logs) ([]event.Event, Dropped) {
	dropped := Dropped{}
	var evs []event.Event
	for _, rl := range ld.ResourceLogs().All() {
		node := hostName(rl.Resource().Attributes())
		for _, sl := range rl.ScopeLogs().All() {
			for _, lr := range sl.LogRecords().All() {
				ts := uint64(lr.Timestamp())
				if ts == 0 {
					ts = uint64(lr.ObservedTimestamp())
				}
				body := lr.Body()
				ev, reason := eventFrom(node, lr.Attributes(), ts, &body)
				if reason != "" {
					dropped[reason]++
					continue
				}
				evs = append(evs, ev)
			}
		}
	}
	return evs, dropped
}

func hostName(res pcommon.Map) string {
	for _, k := range []string{AttrHostName, AttrK8sNodeName} {
		if v, ok := res.Get(k); ok && v.AsString() != "" {
			return v.AsString()
		}
	}
	return ""
}

// eventFrom builds one event from a span's or record's attributes; reason
// is "" when the event is usable.
func eventFrom(node string, attrs pcommon.Map, tsNanos uint64, body *pcommon.Value) (event.Event, string) {
	ev := event.Event{NodeID: node, TS: int64(tsNanos / 1e6)}
	var typ string
	hasValue := false
	bad := false
	tooMany := false
	for k, v := range attrs.All() {
		switch k {
		case AttrEventType:
			typ = v.AsString()
		case AttrEntityID:
			ev.EntityID = v.AsString()
		case AttrValue:
			ev.Value, hasValue = v.AsString(), true
		case AttrJobID:
			ev.JobID = v.AsString()
		case AttrPID:
			pid, ok := pidOf(v)
			if !ok {
				bad = true
			}
			ev.PID = pid
		default:
			if key, ok := strings.CutPrefix(k, AttrPrefix); ok && key != "" {
				if len(ev.Attrs) == event.MaxAttrs {
					tooMany = true
					continue
				}
				ev.Attrs = append(ev.Attrs, event.Attr{Key: key, Value: v.AsString()})
			}
		}
	}
	ev.Attrs.Compact()
	if !hasValue && body != nil && body.Type() != pcommon.ValueTypeEmpty {
		ev.Value, hasValue = body.AsString(), true
	}
	if typ == "" {
		return ev, event.ReasonMissingField
	}
	t, ok := event.ParseType(typ)
	if !ok {
		return ev, event.ReasonUnknownType
	}
	ev.Type = t
	switch {
	case node == "", ev.EntityID == "", !hasValue, ev.TS <= 0:
		return ev, event.ReasonMissingField
	case bad:
		return ev, event.ReasonInvalidField
	case tooMany:
		return ev, event.ReasonTooManyAttrs
	}
	return ev, ""
}

// pidOf reads process.pid, an int by the semantic conventions, or a
// string of digits.
func pidOf(v pcommon.Value) (int64, bool) {
	switch v.Type() {
	case pcommon.ValueTypeInt:
		return v.Int(), v.Int() >= 0
	case pcommon.ValueTypeStr:
		pid, err := strconv.ParseInt(v.Str(), 10, 64)
		return pid, err == nil && pid >= 0
	case pcommon.ValueTypeDouble:
		f := v.Double()
		return int64(f), f >= 0 && f == float64(int64(f))
	}
	return 0, false
}
