package remediator

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/alertmanager/notify/webhook"
	"github.com/prometheus/alertmanager/template"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"

	"github.com/ark-gpu/ark/internal/audit"
	corev1 "k8s.io/api/core/v1"
)

// WebhookVersion is the Alertmanager webhook payload version accepted.
const WebhookVersion = "4"

// AlertResult is what the webhook did with one alert.
type AlertResult struct {
	Fingerprint string `json:"fingerprint,omitempty"`
	Alertname   string `json:"alertname,omitempty"`
	Status      string `json:"status"`
	// Outcome: queued (it will be acted on), ignored (no route matches)
	// or rejected (Error says why).
	Outcome string `json:"outcome"`
	Class   Class  `json:"class,omitempty"`
	Node    string `json:"node,omitempty"`
	Error   string `json:"error,omitempty"`
}

// WebhookResponse is the body of POST /api/v1/alerts.
type WebhookResponse struct {
	DryRun  bool          `json:"dry_run"`
	Results []AlertResult `json:"results"`
	Error   string        `json:"error,omitempty"`
}

// ServeHTTP is the Alertmanager webhook receiver (POST /api/v1/alerts).
//
// The request is checked whole before anything is queued: a body that is
// not a v4 payload is refused with 400 and nothing is done. Each alert is
// then routed; an alert the policy routes but which names no node, or a
// node the API server does not know, is refused (422: Alertmanager does
// not retry a 4xx) while the payload's other alerts are still queued. The
// remediation itself runs after the response, so Alertmanager's timeout
// never cuts a step short.
func (r *Remediator) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	code, resp := r.serve(w, req)
	r.m.requests.WithLabelValues(strconv.Itoa(code)).Inc()
	resp.DryRun = r.o.DryRun
	if resp.Results == nil {
		resp.Results = []AlertResult{}
	}
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="ark-hub", Basic realm="ark-hub"`)
	}
	if code == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "5")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(resp)
}

func (r *Remediator) reject(req *http.Request, code int, msg string) (int, WebhookResponse) {
	r.log.Warn("webhook rejected", "code", code, "err", msg, "remote", req.RemoteAddr)
	return code, WebhookResponse{Error: msg}
}

func (r *Remediator) serve(w http.ResponseWriter, req *http.Request) (int, WebhookResponse) {
	if req.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return r.reject(req, http.StatusMethodNotAllowed, "method "+req.Method+" not allowed: POST an Alertmanager webhook payload")
	}
	if !r.authorized(req) {
		return r.reject(req, http.StatusUnauthorized, "missing or invalid credentials (bearer token or basic auth)")
	}
	if r.closed.Load() {
		return r.reject(req, http.StatusServiceUnavailable, "the hub is shutting down")
	}
	if r.o.IsLeader != nil && !r.o.IsLeader() {
		return r.reject(req, http.StatusServiceUnavailable, "this hub replica is not the remediation leader; retry")
	}
	msg, err := decodeMessage(w, req, r.o.MaxBody)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return r.reject(req, http.StatusRequestEntityTooLarge, fmt.Sprintf("body larger than %d bytes", r.o.MaxBody))
		}
		return r.reject(req, http.StatusBadRequest, err.Error())
	}
	resp := WebhookResponse{Results: make([]AlertResult, 0, len(msg.Alerts))}
	code := http.StatusOK
	now := r.o.Now()
	for i, a := range msg.Alerts {
		res := r.accept(req.Context(), i, a, now)
		switch res.Outcome {
		case "rejected":
			r.log.Warn("alert rejected", "index", i, "alertname", res.Alertname, "fingerprint", res.Fingerprint, "err", res.Error)
			r.m.alerts.WithLabelValues(res.Status, "rejected").Inc()
			if code == http.StatusOK {
				code = http.StatusUnprocessableEntity
			}
			r.auditRejected(req.Context(), a, res)
		case "busy":
			code = http.StatusServiceUnavailable
		case "ignored":
			r.m.alerts.WithLabelValues(res.Status, "ignored").Inc()
		}
		resp.Results = append(resp.Results, res)
	}
	if code == http.StatusUnprocessableEntity {
		resp.Error = "some alerts were rejected: see results"
	}
	if code == http.StatusServiceUnavailable {
		resp.Error = "some alerts could not be accepted now (see results); retry"
	}
	return code, resp
}

// auditRejected records an alert that was refused, so the audit log shows
// every request to act, not only those acted on.
func (r *Remediator) auditRejected(ctx context.Context, a template.Alert, res AlertResult) {
	e := audit.Entry{User: r.o.User, Action: "reject", Target: audit.Target{Node: res.Node}, Result: audit.Failure, Details: res.Error,
		Params: map[string]string{"alertname": res.Alertname, "fingerprint": a.Fingerprint, "class": string(res.Class)}}
	if err := r.o.Audit.Write(ctx, e); err != nil {
		r.log.Error("writing the audit log", "err", err, "action", "reject")
	}
}

// accept routes and checks one alert and queues it.
func (r *Remediator) accept(ctx context.Context, i int, a template.Alert, now time.Time) AlertResult {
	res := AlertResult{Fingerprint: a.Fingerprint, Alertname: a.Labels["alertname"], Status: a.Status}
	rejected := func(format string, args ...any) AlertResult {
		res.Outcome, res.Error = "rejected", fmt.Sprintf("alerts[%d]: ", i)+fmt.Sprintf(format, args...)
		return res
	}
	if a.Status != "firing" && a.Status != "resolved" {
		return rejected("invalid status %q: want firing or resolved", a.Status)
	}
	if len(a.Labels) == 0 {
		return rejected("no labels")
	}
	class, ok := r.o.Policy.Route(a.Labels)
	if !ok {
		res.Outcome = "ignored"
		return res
	}
	res.Class = class
	node, _ := r.o.Policy.NodeOf(a.Labels)
	if node == "" {
		return rejected("no node label: none of %s is set", strings.Join(r.o.Policy.NodeLabels, ", "))
	}
	res.Node = node
	exists, err := r.kube.NodeExists(ctx, node)
	switch {
	case err != nil:
		// The API server could not say: Alertmanager must retry (5xx),
		// not drop the alert (4xx).
		res.Outcome, res.Error = "busy", fmt.Sprintf("alerts[%d]: checking node %q: %v", i, node, err)
		return res
	case !exists && a.Status == "resolved":
		res.Outcome = "ignored" // nothing left to clear
		return res
	case !exists:
		return rejected("unknown node %q: no such Kubernetes node", node)
	}
	fp := a.Fingerprint
	if fp == "" {
		fp = fingerprint(a.Labels)
		res.Fingerprint = fp
	}
	if ok, closed := r.enqueue(job{status: a.Status, alertname: res.Alertname, fingerprint: fp, class: class, node: node,
		labels: a.Labels, received: now}); !ok {
		res.Outcome, res.Error = "busy", "remediation queue full"
		if closed {
			res.Error = "the hub is shutting down"
		}
		return res
	}
	res.Outcome = "queued"
	return res
}

// decodeMessage reads an Alertmanager webhook payload strictly enough to
// act on: JSON, version 4, a status, alerts with labels.
func decodeMessage(w http.ResponseWriter, req *http.Request, limit int64) (*webhook.Message, error) {
	if ct := req.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return nil, fmt.Errorf("content type %q: want application/json", ct)
	}
	var msg webhook.Message
	dec := json.NewDecoder(http.MaxBytesReader(w, req.Body, limit))
	if err := dec.Decode(&msg); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, err
		}
		return nil, fmt.Errorf("invalid JSON: %w", err)
	}
	if dec.More() {
		return nil, errors.New("invalid JSON: more than one value in the body")
	}
	switch {
	case msg.Data == nil:
		return nil, errors.New("not an Alertmanager webhook payload: no alerts")
	case msg.Version == "":
		return nil, fmt.Errorf("missing version: want %q", WebhookVersion)
	case msg.Version != WebhookVersion:
		return nil, fmt.Errorf("unsupported webhook version %q: want %q", msg.Version, WebhookVersion)
	case msg.Status != "firing" && msg.Status != "resolved":
		return nil, fmt.Errorf("invalid status %q: want firing or resolved", msg.Status)
	case len(msg.Alerts) == 0:
		return nil, errors.New("no alerts in the payload")
	}
	return &msg, nil
}

func (r *Remediator) authorized(req *http.Request) bool {
	if r.o.Auth == nil {
		return false
	}
	if user, pass, ok := req.BasicAuth(); ok {
		return r.o.Auth(user, pass, "")
	}
	h := req.Header.Get("Authorization")
	if tok, ok := strings.CutPrefix(h, "Bearer "); ok && strings.TrimSpace(tok) != "" {
		return r.o.Auth("", "", strings.TrimSpace(tok))
	}
	return false
}

// fingerprint stands in for Alertmanager's when a sender leaves it out.
func fingerprint(ls map[string]string) string {
	return template.KV(ls).SortedPairs().String()
}

// commandID returns a random id for one agent command.
func commandID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return "rem-" + hex.EncodeToString(b[:])
}

// newRecorder records Events through the core/v1 API, as controllers do.
func newRecorder(c kubernetes.Interface) (record.EventRecorder, func()) {
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: c.CoreV1().Events("")})
	return b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "ark-remediator"}), b.Shutdown
}
