package event

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

func decodeAll(t *testing.T, in string, opts ...DecoderOption) ([]Event, []*RejectError, *Decoder) {
	t.Helper()
	d := NewDecoder(strings.NewReader(in), opts...)
	var (
		evs  []Event
		rejs []*RejectError
	)
	for {
		var ev Event
		err := d.Decode(&ev)
		if errors.Is(err, io.EOF) {
			return evs, rejs, d
		}
		var re *RejectError
		if errors.As(err, &re) {
			rejs = append(rejs, re)
			continue
		}
		if err != nil {
			t.Fatalf("Decode: %v", err)
		}
		evs = append(evs, ev)
	}
}

func TestDecodeAcceptsTheWireShape(t *testing.T) {
	in := `{"ts":1764300000000,"event_type":"error.hw","entity_id":"gpu-6","node_id":"node-3","value":"Xid 79: GPU has fallen off the bus.","pid":3206,"attrs":{"xid":"79","pci_bus":"0000:c1:00"}}`
	evs, rejs, _ := decodeAll(t, in)
	if len(rejs) != 0 || len(evs) != 1 {
		t.Fatalf("got %d events, rejections %v", len(evs), rejs)
	}
	want := Event{TS: 1764300000000, Type: ErrorHW, EntityID: "gpu-6", NodeID: "node-3",
		Value: "Xid 79: GPU has fallen off the bus.", PID: 3206,
		Attrs: Attrs{{"xid", "79"}, {"pci_bus", "0000:c1:00"}}}
	if !reflect.DeepEqual(evs[0], want) {
		t.Fatalf("got %+v\nwant %+v", evs[0], want)
	}
}

func TestDecodeFieldForms(t *testing.T) {
	cases := []struct {
		name string
		line string
		want Event
	}{
		{"numeric value", `{"ts":1764300000000,"event_type":"compute.util","entity_id":"gpu-0","value":85}`,
			Event{TS: 1764300000000, Type: ComputeUtil, EntityID: "gpu-0", Value: "85"}},
		{"string value", `{"ts":1764300000000,"event_type":"compute.util","entity_id":"gpu-0","value":"85"}`,
			Event{TS: 1764300000000, Type: ComputeUtil, EntityID: "gpu-0", Value: "85"}},
		{"float value", `{"ts":1764300000000,"event_type":"compute.util","entity_id":"gpu-0","value":-1.5e3}`,
			Event{TS: 1764300000000, Type: ComputeUtil, EntityID: "gpu-0", Value: "-1.5e3"}},
		{"ts in seconds", `{"ts":1764300000,"event_type":"process.state","entity_id":"pid-1","value":"R"}`,
			Event{TS: 1764300000000, Type: ProcessState, EntityID: "pid-1", Value: "R"}},
		{"fractional seconds", `{"ts":1764300000.25,"event_type":"process.state","entity_id":"pid-1","value":"R"}`,
			Event{TS: 1764300000250, Type: ProcessState, EntityID: "pid-1", Value: "R"}},
		{"ts as string", `{"ts":"1764300000001","event_type":"process.state","entity_id":"pid-1","value":"R"}`,
			Event{TS: 1764300000001, Type: ProcessState, EntityID: "pid-1", Value: "R"}},
		{"pid as string", `{"ts":1764300000001,"event_type":"process.state","entity_id":"pid-1","value":"R","pid":"42"}`,
			Event{TS: 1764300000001, Type: ProcessState, EntityID: "pid-1", Value: "R", PID: 42}},
		{"escapes", `{"ts":1764300000001,"event_type":"error.net","entity_id":"network-ib0","value":"a\"b\\c\n\u00e9\ud83d\ude00"}`,
			Event{TS: 1764300000001, Type: ErrorNet, EntityID: "network-ib0", Value: "a\"b\\c\né😀"}},
		{"unknown fields skipped", `{"x":{"y":[1,2,{"z":null}]},"ts":1764300000001,"event_type":"action.exec","entity_id":"pid-1","value":"ok","extra":true}`,
			Event{TS: 1764300000001, Type: ActionExec, EntityID: "pid-1", Value: "ok"}},
		{"nulls for optional fields", `{"ts":1764300000001,"event_type":"action.exec","entity_id":"pid-1","value":"ok","job_id":null,"pid":null,"attrs":null}`,
			Event{TS: 1764300000001, Type: ActionExec, EntityID: "pid-1", Value: "ok"}},
		{"numeric attr kept as text", `{"ts":1764300000001,"event_type":"error.hw","entity_id":"gpu-1","value":"x","attrs":{"xid":79}}`,
			Event{TS: 1764300000001, Type: ErrorHW, EntityID: "gpu-1", Value: "x", Attrs: Attrs{{"xid", "79"}}}},
		{"whitespace and CRLF", " { \"ts\" : 1764300000001 , \"event_type\" : \"intent.run\" , \"entity_id\" : \"pid-9\" , \"value\" : \"running\" } \r",
			Event{TS: 1764300000001, Type: IntentRun, EntityID: "pid-9", Value: "running"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			evs, rejs, _ := decodeAll(t, tc.line+"\n")
			if len(rejs) != 0 {
				t.Fatalf("rejected: %v", rejs[0])
			}
			if len(evs) != 1 {
				t.Fatalf("got %d events", len(evs))
			}
			got := evs[0]
			if len(got.Attrs) == 0 {
				got.Attrs = nil
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestDecodeRejectsBadLinesAndKeepsGoing(t *testing.T) {
	good := `{"ts":1764300000000,"event_type":"compute.util","entity_id":"gpu-0","value":1}`
	cases := []struct {
		line   string
		reason string
	}{
		{`garbage`, ReasonNotJSON},
		{`{"ts":1}`, ReasonMissingField},
		{`{"ts":1764300000000,"event_type":"gpu.melted","entity_id":"gpu-0","value":1}`, ReasonUnknownType},
		{`{"ts":1764300000000,"event_type":"compute.util","value":1}`, ReasonMissingField},
		{`{"ts":1764300000000,"event_type":"compute.util","entity_id":"","value":1}`, ReasonMissingField},
		{`{"event_type":"compute.util","entity_id":"gpu-0","value":1}`, ReasonMissingField},
		{`{"ts":1764300000000,"event_type":"compute.util","entity_id":"gpu-0"}`, ReasonMissingField},
		{`{"ts":1764300000000,"event_type":"compute.util","entity_id":"gpu-0","value":null}`, ReasonMissingField},
		{`{"ts":-5,"event_type":"compute.util","entity_id":"gpu-0","value":1}`, ReasonInvalidField},
		{`{"ts":17,"event_type":"compute.util","entity_id":"gpu-0","value":1}`, ReasonInvalidField},
		{`{"ts":1e30,"event_type":"compute.util","entity_id":"gpu-0","value":1}`, ReasonInvalidField},
		{`{"ts":"soon","event_type":"compute.util","entity_id":"gpu-0","value":1}`, ReasonInvalidField},
		{`{"ts":1764300000000,"event_type":"compute.util","entity_id":"gpu-0","value":true}`, ReasonInvalidField},
		{`{"ts":1764300000000,"event_type":"compute.util","entity_id":"gpu-0","value":{"a":1}}`, ReasonInvalidField},
		{`{"ts":1764300000000,"event_type":"compute.util","entity_id":"gpu-0","value":1,"pid":-3}`, ReasonInvalidField},
		{`{"ts":1764300000000,"event_type":"compute.util","entity_id":"gpu-0","value":1,"pid":1.5}`, ReasonInvalidField},
		{`{"ts":1764300000000,"event_type":"compute.util","entity_id":"gpu-0","value":1,"attrs":{"a":{"b":1}}}`, ReasonInvalidField},
		{`{"ts":1764300000000,"event_type":7,"entity_id":"gpu-0","value":1}`, ReasonInvalidField},
		{`{"ts":1764300000000,"event_type":"compute.util","entity_id":"gpu-0","value":1}}`, ReasonNotJSON},
		{`{"ts":1764300000000,"event_type":"compute.util","entity_id":"gpu-0","value":1`, ReasonNotJSON},
		{`{"ts":1764300000000,"event_type":"compute.util","entity_id":"gpu-0","value":01}`, ReasonNotJSON},
		{"{\"ts\":1764300000000,\"event_type\":\"compute.util\",\"entity_id\":\"gpu-\xff\",\"value\":1}", ReasonNotJSON},
		{`[1,2,3]`, ReasonNotJSON},
		{strings.Repeat("[", 10000), ReasonNotJSON},
	}
	for _, tc := range cases {
		t.Run(tc.line[:min(len(tc.line), 40)], func(t *testing.T) {
			evs, rejs, d := decodeAll(t, good+"\n"+tc.line+"\n"+good+"\n")
			if len(evs) != 2 {
				t.Fatalf("the good lines around a bad one must both decode, got %d", len(evs))
			}
			if len(rejs) != 1 {
				t.Fatalf("want 1 rejection, got %d", len(rejs))
			}
			if rejs[0].Reason != tc.reason {
				t.Fatalf("reason = %q (%s), want %q", rejs[0].Reason, rejs[0].Detail, tc.reason)
			}
			if rejs[0].Line != 2 {
				t.Fatalf("line = %d, want 2", rejs[0].Line)
			}
			if got := d.Rejected()[tc.reason]; got != 1 {
				t.Fatalf("counter for %s = %d, want 1", tc.reason, got)
			}
		})
	}
}

func TestDecodeBoundsLineLength(t *testing.T) {
	good := `{"ts":1764300000000,"event_type":"compute.util","entity_id":"gpu-0","value":1}`
	huge := `{"ts":1764300000000,"event_type":"compute.util","entity_id":"gpu-0","value":"` + strings.Repeat("x", 1<<20) + `"}`
	in := good + "\n" + huge + "\n" + good + "\n" + huge // last line without a newline
	evs, rejs, d := decodeAll(t, in, WithMaxLineBytes(1024))
	if len(evs) != 2 || len(rejs) != 2 {
		t.Fatalf("got %d events and %d rejections, want 2 and 2", len(evs), len(rejs))
	}
	if d.Rejected()[ReasonTooLong] != 2 {
		t.Fatalf("too-long counter = %d", d.Rejected()[ReasonTooLong])
	}
	// A line of exactly the limit is accepted.
	exact := `{"ts":1764300000000,"event_type":"compute.util","entity_id":"gpu-0","value":"`
	exact += strings.Repeat("y", 200-len(exact)-2) + `"}`
	evs, rejs, _ = decodeAll(t, exact+"\n"+exact, WithMaxLineBytes(200))
	if len(evs) != 2 || len(rejs) != 0 {
		t.Fatalf("line of exactly the limit: got %d events, %v", len(evs), rejs)
	}
	_, rejs, _ = decodeAll(t, exact[:len(exact)-2]+`y"}`+"\n", WithMaxLineBytes(200))
	if len(rejs) != 1 || rejs[0].Reason != ReasonTooLong {
		t.Fatalf("one byte over the limit must be rejected, got %v", rejs)
	}
}

func TestDecodeSkipsBlankLines(t *testing.T) {
	good := `{"ts":1764300000000,"event_type":"compute.util","entity_id":"gpu-0","value":1}`
	evs, rejs, _ := decodeAll(t, "\n\n  \r\n"+good+"\n\n")
	if len(evs) != 1 || len(rejs) != 0 {
		t.Fatalf("got %d events, %d rejections", len(evs), len(rejs))
	}
}

func TestDecodeReportsReaderErrors(t *testing.T) {
	boom := errors.New("disk on fire")
	d := NewDecoder(io.MultiReader(strings.NewReader(`{"ts":1764300000000,"event_type":"compute.util","entity_id":"gpu-0","value":1}`+"\n"), errReader{boom}))
	var ev Event
	if err := d.Decode(&ev); err != nil {
		t.Fatalf("first line: %v", err)
	}
	if err := d.Decode(&ev); !errors.Is(err, boom) {
		t.Fatalf("want the reader's error, got %v", err)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func TestEncodeRoundTrips(t *testing.T) {
	evs := []Event{
		{TS: 1764300000000, Type: ErrorHW, EntityID: "gpu-6", NodeID: "node-3", Value: "Xid 79: \"quoted\"\n\ttab \x01 é", PID: 3206,
			JobID: "train/example", Attrs: Attrs{{"xid", "79"}, {"pci_bus", "0000:c1:00"}}},
		{TS: 1764300000, Type: ActionExec, EntityID: "pid-1", Value: ""},
	}
	var buf bytes.Buffer
	enc := NewEncoder(&buf)
	for i := range evs {
		if err := enc.Encode(&evs[i]); err != nil {
			t.Fatal(err)
		}
	}
	got, rejs, _ := decodeAll(t, buf.String())
	if len(rejs) != 0 {
		t.Fatalf("encoder output rejected: %v", rejs[0])
	}
	// A ts in seconds reads back as milliseconds.
	evs[1].TS = 1764300000000
	for i := range got {
		if len(got[i].Attrs) == 0 {
			got[i].Attrs = nil
		}
	}
	if !reflect.DeepEqual(got, evs) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, evs)
	}
	// encoding/json agrees that the output is valid JSON.
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if !json.Valid([]byte(line)) {
			t.Fatalf("invalid JSON: %s", line)
		}
	}
}

func TestEventMarshalsInsideOtherJSON(t *testing.T) {
	in := struct {
		Evidence []Event `json:"evidence"`
	}{Evidence: []Event{{TS: 1764300000000, Type: ErrorNet, EntityID: "network-ib0", Value: "down"}}}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out struct {
		Evidence []Event `json:"evidence"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if out.Evidence[0].EntityID != "network-ib0" || out.Evidence[0].Type != ErrorNet {
		t.Fatalf("got %+v", out.Evidence[0])
	}
}

func TestNumParsesStringAndNumberValues(t *testing.T) {
	for _, v := range []string{"85", " 85 ", "85.0"} {
		ev := Event{Value: v}
		if f, ok := ev.Num(); !ok || f != 85 {
			t.Fatalf("Num(%q) = %v, %v", v, f, ok)
		}
	}
	if _, ok := (&Event{Value: "stalled"}).Num(); ok {
		t.Fatal("a word is not a number")
	}
}
