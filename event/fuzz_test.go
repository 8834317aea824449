package event

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"testing"
)

// FuzzDecode feeds arbitrary bytes to the decoder. It must never panic or
// hang, every line must be either accepted or rejected with a known reason,
// and an accepted event must survive an encode/decode round trip.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"ts":1764300000000,"event_type":"error.hw","entity_id":"gpu-6","node_id":"node-3","value":"Xid 79","pid":3206,"attrs":{"xid":"79"}}`))
	f.Add([]byte("garbage\n{\"ts\":1}\n"))
	f.Add([]byte(`{"ts":"17","event_type":"compute.util","entity_id":"\u00e9\ud800","value":1e5,"x":[{"y":null}]}`))
	f.Add([]byte(`{"ts":1.5,"event_type":"intent.run","entity_id":"pid-1","value":"r","attrs":{"a":1,"b":true,"c":null}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		d := NewDecoder(bytes.NewReader(data), WithMaxLineBytes(256))
		var n uint64
		for {
			var ev Event
			err := d.Decode(&ev)
			if errors.Is(err, io.EOF) {
				break
			}
			n++
			if n > uint64(len(data))+1 {
				t.Fatalf("decoder produced more results than input lines")
			}
			var re *RejectError
			if errors.As(err, &re) {
				if reasonIndex(re.Reason) == 0 && re.Reason != ReasonNotJSON {
					t.Fatalf("unknown reason %q", re.Reason)
				}
				continue
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if !ev.Type.Valid() || ev.EntityID == "" || ev.TS <= 0 {
				t.Fatalf("accepted an invalid event: %+v", ev)
			}
			line := AppendJSON(nil, &ev)
			if !json.Valid(line) {
				t.Fatalf("encoder wrote invalid JSON: %s", line)
			}
			var back Event
			if err := Unmarshal(line, &back); err != nil {
				t.Fatalf("re-decoding %s: %v", line, err)
			}
			if ev.TS < secondsCutoff {
				t.Fatalf("accepted ts %d below the seconds cutoff", ev.TS)
			}
			if len(ev.Attrs) == 0 {
				ev.Attrs = nil
			}
			if len(back.Attrs) == 0 {
				back.Attrs = nil
			}
			if !reflect.DeepEqual(ev, back) {
				t.Fatalf("round trip changed the event:\n%+v\n%+v", ev, back)
			}
		}
		if d.Accepted()+d.RejectedTotal() != n {
			t.Fatalf("counters %d+%d do not add up to %d results", d.Accepted(), d.RejectedTotal(), n)
		}
	})
}
