package graphsvc

import (
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ark-gpu/ark/event"
)

// A span past event.MaxAttrs ark.attrs.* is dropped like any bad span,
// counted under the event package's reason; the rest of the request is
// applied, and repeated keys keep the last value.
func TestOTLPDropsASpanWithMoreThanMaxAttrs(t *testing.T) {
	ok := event.Event{TS: 1764300000000, Type: event.ErrorHW, EntityID: "gpu-1", NodeID: "node-1", Value: "Xid 79",
		Attrs: event.Attrs{{Key: event.AttrXID, Value: "79"}}}
	many := ok
	many.EntityID = "gpu-2"
	many.Attrs = nil
	for i := range 1000 {
		many.Attrs = append(many.Attrs, event.Attr{Key: "k" + strconv.Itoa(i), Value: "v"})
	}
	th := newTestHub(t, Options{})
	code, out, ct := th.post(t, "/v1/traces", contentProtobuf, "", tracesProto(t, []event.Event{ok, many}))
	if code != http.StatusOK {
		t.Fatalf("status %d: %s", code, out)
	}
	if msg := checkExportResponse(t, "/v1/traces", ct, out, 1); !strings.Contains(msg, "too_many_attrs=1") {
		t.Errorf("partial success message %q", msg)
	}
	if got := testutil.ToFloat64(th.m.eventsDrop.WithLabelValues(sourceOTLP, event.ReasonTooManyAttrs)); got != 1 {
		t.Errorf(`ark_hub_events_rejected_total{source="otlp",reason="too_many_attrs"} = %v, want 1`, got)
	}
	if got := testutil.ToFloat64(th.m.received.WithLabelValues(sourceOTLP)); got != 1 {
		t.Errorf("applied %v events, want the one within the bound", got)
	}
}
