package remediator_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/ark-gpu/ark/remediator"
)

// RFC 7235: the Bearer scheme is case-insensitive. Authentication comes
// before anything else, so a body that is not a payload tells an accepted
// credential (400) from a refused one (401) without reaching the API
// server, which here does not exist.
func TestTheWebhookReadsTheBearerSchemeCaseInsensitively(t *testing.T) {
	p, err := remediator.Load([]byte(`
routes: [{matchers: ['fault_class="OtherHardwareFailure"'], class: OtherHardwareFailure}]
classes: {OtherHardwareFailure: {steps: [{type: taint}]}}
`))
	if err != nil {
		t.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(&rest.Config{Host: "http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := remediator.New(remediator.Options{Policy: p, Client: client, Audit: &memAudit{},
		Auth: func(_, _, bearer string) bool { return bearer == "t" }})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		authorization string
		code          int
	}{
		{"Bearer t", http.StatusBadRequest},
		{"bearer t", http.StatusBadRequest},
		{"BEARER  t ", http.StatusBadRequest},
		{"Bearer u", http.StatusUnauthorized},
		{"Bearert", http.StatusUnauthorized},
		{"", http.StatusUnauthorized},
	} {
		req := httptest.NewRequest(http.MethodPost, "/api/v1/alerts", strings.NewReader("not json"))
		req.Header.Set("Content-Type", "application/json")
		if tt.authorization != "" {
			req.Header.Set("Authorization", tt.authorization)
		}
		w := httptest.NewRecorder()
		r.ServeHTTP(w, req)
		if w.Code != tt.code {
			t.Errorf("Authorization %q: %d %s, want %d", tt.authorization, w.Code, w.Body, tt.code)
		}
	}
}
