package graphsvc

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"sort"
	"strings"

	"go.opentelemetry.io/collector/pdata/plog/plogotlp"
	"go.opentelemetry.io/collector/pdata/ptrace/ptraceotlp"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/internal/auth"
)

// OTLP/HTTP content types.
const (
	contentProtobuf = "application/x-protobuf"
	contentJSON     = "application/json"
)

// otlpError is a request the hub refuses as a whole.
type otlpError struct {
	code   int
	reason string // one of otlpReasons
	msg    string
}

func (e *otlpError) Error() string { return e.msg }

// otlpSignal is what differs between /v1/traces and /v1/logs.
type otlpSignal struct {
	name string // "traces" or "logs"
	// decode reads the body in the given encoding into events.
	decode func(body []byte, json bool) ([]event.Event, Dropped, error)
	// respond encodes the export response with the partial success.
	respond func(json bool, rejected int64, msg string) ([]byte, error)
}

var tracesSignal = otlpSignal{
	name: "traces",
	decode: func(body []byte, json bool) ([]event.Event, Dropped, error) {
		req := ptraceotlp.NewExportRequest()
		var err error
		if json {
			err = req.UnmarshalJSON(body)
		} else {
			err = req.UnmarshalProto(body)
		}
		if err != nil {
			return nil, nil, err
		}
		evs, d := TracesToEvents(req.Traces())
		return evs, d, nil
	},
	respond: func(json bool, rejected int64, msg string) ([]byte, error) {
		resp := ptraceotlp.NewExportResponse()
		if rejected > 0 {
			resp.PartialSuccess().SetRejectedSpans(rejected)
			resp.PartialSuccess().SetErrorMessage(msg)
		}
		if json {
			return resp.MarshalJSON()
		}
		return resp.MarshalProto()
	},
}

var logsSignal = otlpSignal{
	name: "logs",
	decode: func(body []byte, json bool) ([]event.Event, Dropped, error) {
		req := plogotlp.NewExportRequest()
		var err error
		if json {
			err = req.UnmarshalJSON(body)
		} else {
			err = req.UnmarshalProto(body)
		}
		if err != nil {
			return nil, nil, err
		}
		evs, d := LogsToEvents(req.Logs())
		return evs, d, nil
	},
	respond: func(json bool, rejected int64, msg string) ([]byte, error) {
		resp := plogotlp.NewExportResponse()
		if rejected > 0 {
			resp.PartialSuccess().SetRejectedLogRecords(rejected)
			resp.PartialSuccess().SetErrorMessage(msg)
		}
		if json {
			return resp.MarshalJSON()
		}
		return resp.MarshalProto()
	},
}

func (h *Hub) handleTraces(w http.ResponseWriter, r *http.Request) { h.serveOTLP(w, r, tracesSignal) }
func (h *Hub) handleLogs(w http.ResponseWriter, r *http.Request)   { h.serveOTLP(w, r, logsSignal) }

// serveOTLP reads one OTLP/HTTP export request as the Collector's otlphttp
// exporter sends it, applies its events and answers in the request's
// encoding, with a partial success naming what was dropped.
//
// Ingest writes into the graph, so it authenticates like the agent link,
// before the body is read; a credential bound to a node may only send
// that node's events, or nothing of the request is applied.
func (h *Hub) serveOTLP(w http.ResponseWriter, r *http.Request, sig otlpSignal) {
	oerr := h.ingestOTLP(w, r, sig)
	if oerr == nil {
		return
	}
	h.m.otlpRejected.WithLabelValues(oerr.reason).Inc()
	h.log.Debug("OTLP request rejected", "signal", sig.name, "reason", oerr.reason, "err", oerr.msg, "remote", r.RemoteAddr)
	switch oerr.code {
	case http.StatusUnauthorized:
		w.Header().Set("WWW-Authenticate", auth.Challenge)
	case http.StatusServiceUnavailable:
		w.Header().Set("Retry-After", "5")
	}
	writeError(w, oerr.code, oerr.msg)
}

// ingestOTLP authenticates, reads and applies one request; on a refusal it
// writes nothing and returns why.
func (h *Hub) ingestOTLP(w http.ResponseWriter, r *http.Request, sig otlpSignal) *otlpError {
	id, err := h.opts.Auth.Authenticate(r)
	if err != nil {
		code := auth.StatusCode(err)
		reason := otlpAuthUnavailable
		switch code {
		case http.StatusUnauthorized:
			reason = otlpUnauthenticated
		case http.StatusForbidden:
			reason = otlpForbidden
		}
		return &otlpError{code, reason, err.Error()}
	}
	json, body, oerr := h.readOTLP(w, r)
	if oerr != nil {
		return oerr
	}
	evs, dropped, err := sig.decode(body, json)
	if err != nil {
		enc := "protobuf"
		if json {
			enc = "JSON"
		}
		return &otlpError{http.StatusBadRequest, otlpInvalidBody,
			fmt.Sprintf("invalid OTLP %s request: body is not an OTLP %s ExportRequest: %v", sig.name, enc, err)}
	}
	for i := range evs {
		if !id.Allows(evs[i].NodeID) {
			return &otlpError{http.StatusForbidden, otlpForbidden,
				fmt.Sprintf("the credential of node %q may not send events for host %q", id.Node, evs[i].NodeID)}
		}
	}
	h.applyOTLP(w, evs, dropped, json, sig)
	return nil
}

func (h *Hub) applyOTLP(w http.ResponseWriter, evs []event.Event, dropped Dropped, json bool, sig otlpSignal) {
	for reason, n := range dropped {
		h.m.dropped(sourceOTLP, reason, n)
	}
	// Pipelines batch and reorder; the graph reads best in time order.
	if !slices.IsSortedFunc(evs, byTS) {
		slices.SortStableFunc(evs, byTS)
	}
	h.apply(evs, sourceOTLP)

	msg := ""
	if n := dropped.Total(); n > 0 {
		reasons := make([]string, 0, len(dropped))
		for r, c := range dropped {
			reasons = append(reasons, fmt.Sprintf("%s=%d", r, c))
		}
		sort.Strings(reasons)
		msg = fmt.Sprintf("dropped %d of %d %s without the ark event attributes (%s)", n, n+len(evs), sig.name,
			strings.Join(reasons, " "))
	}
	out, err := sig.respond(json, int64(dropped.Total()), msg)
	if err != nil {
		h.log.Error("encoding an OTLP response", "err", err)
		writeError(w, http.StatusInternalServerError, "encoding the response: "+err.Error())
		return
	}
	ct := contentProtobuf
	if json {
		ct = contentJSON
	}
	w.Header().Set("Content-Type", ct)
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(out) // the client went away; nothing to do
}

func byTS(a, b event.Event) int {
	switch {
	case a.TS < b.TS:
		return -1
	case a.TS > b.TS:
		return 1
	}
	return 0
}

// readOTLP checks the content type and encoding and reads the body within
// MaxBodyBytes, before and after gzip.
func (h *Hub) readOTLP(w http.ResponseWriter, r *http.Request) (json bool, body []byte, oerr *otlpError) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch {
	case err == nil && mt == contentProtobuf:
	case err == nil && mt == contentJSON:
		json = true
	default:
		return false, nil, &otlpError{http.StatusUnsupportedMediaType, otlpUnsupportedType,
			fmt.Sprintf("unsupported Content-Type %q: want %s or %s", r.Header.Get("Content-Type"), contentProtobuf, contentJSON)}
	}
	limit := h.opts.MaxBodyBytes
	var rd io.Reader = http.MaxBytesReader(w, r.Body, limit)
	switch enc := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding"))); enc {
	case "", "identity":
	case "gzip":
		zr, err := gzip.NewReader(rd)
		if err != nil {
			return json, nil, readError(err, limit)
		}
		defer func() { _ = zr.Close() }() // only releases the reader; errors come from Read
		rd = io.LimitReader(zr, limit+1)
	default:
		return json, nil, &otlpError{http.StatusBadRequest, otlpBadEncoding,
			fmt.Sprintf("unsupported Content-Encoding %q: want gzip or none", enc)}
	}
	body, err = io.ReadAll(rd)
	if err != nil {
		return json, nil, readError(err, limit)
	}
	if int64(len(body)) > limit {
		return json, nil, &otlpError{http.StatusRequestEntityTooLarge, otlpTooLarge,
			fmt.Sprintf("request body larger than %d bytes after gzip", limit)}
	}
	return json, body, nil
}

func readError(err error, limit int64) *otlpError {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return &otlpError{http.StatusRequestEntityTooLarge, otlpTooLarge, fmt.Sprintf("request body larger than %d bytes", limit)}
	}
	return &otlpError{http.StatusBadRequest, otlpBadEncoding, "reading the request body: " + err.Error()}
}
