package agents_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/ark-gpu/ark/graphsvc/agents"
	"github.com/ark-gpu/ark/internal/kubetest"
)

// countingTransport counts TokenReview requests to the API server.
type countingTransport struct {
	rt      http.RoundTripper
	reviews *atomic.Int64
}

func (c countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodPost && r.URL.Path == "/apis/authentication.k8s.io/v1/tokenreviews" {
		c.reviews.Add(1)
	}
	return c.rt.RoundTrip(r)
}

func saToken(t *testing.T, c kubernetes.Interface, ns, name string, audiences ...string) string {
	t.Helper()
	ctx := context.Background()
	_, _ = c.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}},
		metav1.CreateOptions{})
	tr, err := c.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: audiences}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

func TestTokenReviewAcceptsOnlyTheAgentServiceAccount(t *testing.T) {
	cp := kubetest.Start(t, kubetest.Options{})
	if _, err := cp.Client.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ark-system"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var reviews atomic.Int64
	cfg := rest.CopyConfig(cp.Admin)
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { return countingTransport{rt, &reviews} }
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	auth := &agents.TokenReview{Client: client, Audiences: []string{"ark-hub"},
		Users: []string{"system:serviceaccount:ark-system:ark-agent"}}

	agent := saToken(t, cp.Client, "ark-system", "ark-agent", "ark-hub")
	wrongAudience := saToken(t, cp.Client, "ark-system", "ark-agent", "some-other-service")
	otherSA := saToken(t, cp.Client, "ark-system", "default", "ark-hub")

	req := func(tok string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/api/v1/link", nil)
		if tok != "" {
			r.Header.Set("Authorization", "Bearer "+tok)
		}
		return r
	}
	id, err := auth.Authenticate(req(agent))
	if err != nil || id != "system:serviceaccount:ark-system:ark-agent" {
		t.Fatalf("agent token: %q, %v", id, err)
	}
	before := reviews.Load()
	if _, err := auth.Authenticate(req(agent)); err != nil || reviews.Load() != before {
		t.Fatalf("a second connect with the same token reviewed again (%d → %d): %v", before, reviews.Load(), err)
	}
	for _, tc := range []struct {
		name, tok string
		want      error
	}{
		{"token for another audience", wrongAudience, agents.ErrUnauthenticated},
		{"another service account", otherSA, agents.ErrForbiddenUser},
		{"garbage", "not-a-jwt", agents.ErrUnauthenticated},
		{"no token", "", agents.ErrUnauthenticated},
	} {
		if _, err := auth.Authenticate(req(tc.tok)); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}

	// Through the link server: the static token still works beside it, and
	// each refusal has its status.
	srv, err := agents.NewServer(agents.Options{Auth: agents.AnyOf{agents.BearerToken("static"), auth}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	for _, tc := range []struct {
		tok  string
		code int
	}{{otherSA, http.StatusForbidden}, {wrongAudience, http.StatusUnauthorized}} {
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, req(tc.tok))
		if w.Code != tc.code {
			t.Errorf("link server: %d %s, want %d", w.Code, w.Body, tc.code)
		}
	}

	// The API server gone: not an authentication failure but 503, and the
	// answer is not cached.
	dead := rest.CopyConfig(cp.Admin)
	dead.Host = "https://127.0.0.1:1"
	deadClient, err := kubernetes.NewForConfig(dead)
	if err != nil {
		t.Fatal(err)
	}
	down := &agents.TokenReview{Client: deadClient, Users: auth.Users}
	srv2, err := agents.NewServer(agents.Options{Auth: down})
	if err != nil {
		t.Fatal(err)
	}
	defer srv2.Close()
	w := httptest.NewRecorder()
	srv2.ServeHTTP(w, req(agent))
	if w.Code != http.StatusServiceUnavailable {
		t.Fatalf("TokenReview unreachable: %d %s, want 503", w.Code, w.Body)
	}
}
