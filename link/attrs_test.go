package link

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/ark-gpu/ark/event"
)

// manyAttrsFrame is an events frame of one event with n distinct attrs.
func manyAttrsFrame(n int) []byte {
	var b strings.Builder
	b.WriteString(`{"type":"events","seq":1,"events":[{"ts":1764300000000,"event_type":"error.hw","entity_id":"gpu-0","value":"x","attrs":{`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"k%d":"v"`, i)
	}
	b.WriteString("}}]}")
	return []byte(b.String())
}

// A frame whose event passes event.MaxAttrs is refused with the event
// package's reason, on the fast path and the slow one alike.
func TestAFrameWithAnEventPastMaxAttrsIsRefused(t *testing.T) {
	var f Frame
	if err := DecodeInto(manyAttrsFrame(event.MaxAttrs), &f); err != nil || len(f.Events[0].Attrs) != event.MaxAttrs {
		t.Fatalf("at the bound: %v", err)
	}
	err := DecodeInto(manyAttrsFrame(100_000), &f)
	var re *event.RejectError
	if !errors.Is(err, ErrBadFrame) || !errors.As(err, &re) || re.Reason != event.ReasonTooManyAttrs {
		t.Fatalf("100,000 attrs: %v, want a bad frame with too_many_attrs", err)
	}
}

// BenchmarkDecodeIntoManyAttrs is the hub's decode of a 1.3 MB frame of
// one event with 100,000 attrs, the red-team frame that took a worker
// 15–17 s: now refused at the 65th attr, then once more by the slow path.
func BenchmarkDecodeIntoManyAttrs(b *testing.B) {
	fr := manyAttrsFrame(100_000)
	var f Frame
	b.SetBytes(int64(len(fr)))
	b.ReportAllocs()
	for b.Loop() {
		if err := DecodeInto(fr, &f); err == nil {
			b.Fatal("accepted")
		}
	}
}
