package link

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/ark-gpu/ark/event"
)

const evJSON = `{"ts":1764300000000,"event_type":"error.hw","entity_id":"gpu-6","node_id":"node-3","value":"Xid 79","pid":3206,"attrs":{"xid":"79","msg":"a \"quoted\" {brace}"}}`

// same reports whether two decoded frames say the same thing; an empty
// and a missing events list are the same.
func same(a, b *Frame) bool {
	if len(a.Events) == 0 && len(b.Events) == 0 {
		a2, b2 := *a, *b
		a2.Events, b2.Events = nil, nil
		return reflect.DeepEqual(a2, b2)
	}
	return reflect.DeepEqual(a, b)
}

func slow(t testing.TB, b []byte) (Frame, error) {
	t.Helper()
	var f Frame
	err := decodeSlow(b, &f)
	return f, err
}

func TestTheFastPathDecodesWhatEncodingJSONDecodes(t *testing.T) {
	for _, in := range []string{
		`{"type":"events","seq":7,"events":[` + evJSON + `,` + evJSON + `]}`,
		` { "type" : "snapshot" , "events" : [ ` + evJSON + ` ] , "done" : true } `,
		`{"type":"snapshot","events":[],"done":false}`,
		`{"type":"ack","seq":18446744073709551615}`,
		`{"type":"hello","v":1}`,
		`{}`,
	} {
		var f Frame
		if !decodeFast([]byte(in), &f) {
			t.Errorf("%s: not taken by the fast path", in)
			continue
		}
		want, err := slow(t, []byte(in))
		if err != nil {
			t.Fatalf("%s: encoding/json: %v", in, err)
		}
		if !same(&f, &want) {
			t.Errorf("%s:\nfast %+v\nslow %+v", in, f, want)
		}
	}
}

// Everything unusual goes to encoding/json: DecodeInto then answers as it
// always did, with its error or its lenient reading.
func TestUnusualFramesTakeTheSlowPath(t *testing.T) {
	for _, in := range []string{
		`{"type":"hello","v":1,"node":"n1","addrs":["10.0.0.1"]}`, // other fields
		`{"Type":"events","events":[]}`,                           // encoding/json matches keys in any case
		`{"type":"ev\u0065nts","events":[]}`,                      // escapes
		`{"type":"events","events":null}`,
		`{"type":"events","type":"ack"}`, // repeated key: the last wins there
		`{"type":"events","seq":-1}`,
		`{"type":"events","seq":1.5}`,
		`{"seq":007}`,                           // found by FuzzDecodeFast: JSON has no leading zeros
		`{"type":"events","events":[{"ts":1}]}`, // an event the event decoder refuses
		`{"type":"events","events":[` + evJSON + `,]}`,
		`{"type":"events"} x`,
		`{"type":"events"`,
		`[` + evJSON + `]`,
		`{"type":"events","events":[{"a":"\"}` + strings.Repeat("[", 100) + `"}]}`,
		"{\"type\":\"\xff\"}",
	} {
		var f Frame
		if decodeFast([]byte(in), &f) {
			t.Errorf("%s: taken by the fast path", in)
		}
	}
}

func TestDecodeIntoRefusesWhatItRefusedBefore(t *testing.T) {
	for in, want := range map[string]error{
		`{"type":"events","events":[{"ts":1}]}`: ErrBadFrame,
		`{"type":"events","seq":-1}`:            ErrBadFrame,
		`{"type":"ack","seq":01}`:               ErrBadFrame,
		`{"type":"nonsense"}`:                   ErrUnknownType,
		`{"type":"hello","v":1}`:                ErrBadFrame, // no node
		`not json`:                              ErrBadFrame,
	} {
		var f Frame
		if err := DecodeInto([]byte(in), &f); !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", in, err, want)
		}
	}
	big := `{"type":"events","events":[` + strings.TrimSuffix(strings.Repeat(evJSON+",", MaxBatch+1), ",") + `]}`
	var f Frame
	if err := DecodeInto([]byte(big), &f); !errors.Is(err, ErrBadFrame) || !strings.Contains(err.Error(), fmt.Sprint(MaxBatch+1)) {
		t.Errorf("a batch of %d: %v", MaxBatch+1, err)
	}
}

// Decoding into a reused frame leaves nothing of the previous one.
func TestDecodeIntoReusesOnlyTheCapacity(t *testing.T) {
	var f Frame
	if err := DecodeInto([]byte(`{"type":"events","seq":3,"events":[`+evJSON+`,`+evJSON+`]}`), &f); err != nil {
		t.Fatal(err)
	}
	if err := DecodeInto([]byte(`{"type":"ack","seq":4}`), &f); err != nil {
		t.Fatal(err)
	}
	if f.Type != TypeAck || f.Seq != 4 || len(f.Events) != 0 || f.Events[:cap(f.Events)][0].EntityID != "" {
		t.Errorf("reused frame %+v", f)
	}
}

// FuzzDecodeFast: whatever the fast path accepts, encoding/json accepts
// and reads the same way.
func FuzzDecodeFast(f *testing.F) {
	f.Add([]byte(`{"type":"events","seq":7,"events":[` + evJSON + `]}`))
	f.Add([]byte(`{"type":"snapshot","events":[],"done":true}`))
	f.Add([]byte(`{"type":"ack","seq":1}`))
	f.Add([]byte(`{"type":"events","events":[{"ts":1764300000000,"event_type":"compute.util","entity_id":"gpu-0","value":"\u00e9"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var fast Frame
		if !decodeFast(b, &fast) {
			return
		}
		want, err := slow(t, b)
		if err != nil {
			t.Fatalf("fast path took %q, encoding/json refuses it: %v", b, err)
		}
		if !same(&fast, &want) {
			t.Fatalf("%q:\nfast %+v\nslow %+v", b, fast, want)
		}
	})
}

func benchFrame() []byte {
	evs := make([]event.Event, 4)
	for i := range evs {
		if err := event.Unmarshal([]byte(evJSON), &evs[i]); err != nil {
			panic(err)
		}
	}
	b, err := json.Marshal(&Frame{Type: TypeEvents, Seq: 12345, Events: evs})
	if err != nil {
		panic(err)
	}
	return b
}

// BenchmarkDecodeInto is the hub's per-frame decode (a 4-event batch);
// BenchmarkDecodeEncodingJSON is what it cost with encoding/json alone.
func BenchmarkDecodeInto(b *testing.B) {
	fr := benchFrame()
	var f Frame
	b.SetBytes(int64(len(fr)))
	b.ReportAllocs()
	for b.Loop() {
		if err := DecodeInto(fr, &f); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeEncodingJSON(b *testing.B) {
	fr := benchFrame()
	var f Frame
	b.SetBytes(int64(len(fr)))
	b.ReportAllocs()
	for b.Loop() {
		clear(f.Events[:cap(f.Events)])
		f = Frame{Events: f.Events[:0]}
		if err := decodeSlow(fr, &f); err != nil {
			b.Fatal(err)
		}
	}
}

// The hand-encoded ack is the ack frame: what encoding/json makes of it is
// what Encode would have sent.
func TestAppendAckIsTheAckFrame(t *testing.T) {
	for _, seq := range []uint64{0, 7, 18446744073709551615} {
		b := AppendAck([]byte("stale"), seq)[len("stale"):]
		got, err := slow(t, b)
		if err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		enc, _ := Encode(&Frame{Type: TypeAck, Seq: seq})
		want, _ := slow(t, enc)
		if !same(&got, &want) {
			t.Errorf("%s decodes to %+v, Encode's %s to %+v", b, got, enc, want)
		}
	}
}
