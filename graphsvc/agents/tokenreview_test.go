package agents_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/ark-gpu/ark/graphsvc/agents"
	"github.com/ark-gpu/ark/internal/auth"
	"github.com/ark-gpu/ark/internal/kubetest"
	"github.com/ark-gpu/ark/link"
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

// request is a link request presenting tok ("": none).
func request(tok string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, link.Path, nil)
	if tok != "" {
		r.Header.Set("Authorization", "Bearer "+tok)
	}
	return r
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

// TestTokenReview runs against one real kube-apiserver: starting one is
// the slow part.
func TestTokenReview(t *testing.T) {
	cp := kubetest.Start(t, kubetest.Options{})
	if _, err := cp.Client.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ark-system"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Run("AcceptsOnlyTheAgentServiceAccount", func(t *testing.T) { acceptsOnlyTheAgentServiceAccount(t, cp) })
	t.Run("BindsTheLinkToThePodsNode", func(t *testing.T) { bindsTheLinkToThePodsNode(t, cp) })
}

func acceptsOnlyTheAgentServiceAccount(t *testing.T, cp *kubetest.ControlPlane) {
	var reviews atomic.Int64
	cfg := rest.CopyConfig(cp.Admin)
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { return countingTransport{rt, &reviews} }
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Tokens bound to no pod, so to no node: allowed here.
	tr := &auth.TokenReview{Client: client, Audiences: []string{"ark-hub"},
		Users: []string{"system:serviceaccount:ark-system:ark-agent"}, AllowUnbound: true}

	agent := saToken(t, cp.Client, "ark-system", "ark-agent", "ark-hub")
	wrongAudience := saToken(t, cp.Client, "ark-system", "ark-agent", "some-other-service")
	otherSA := saToken(t, cp.Client, "ark-system", "default", "ark-hub")

	id, err := tr.Authenticate(request(agent))
	if err != nil || id != (auth.Identity{Name: "system:serviceaccount:ark-system:ark-agent"}) {
		t.Fatalf("agent token: %+v, %v", id, err)
	}
	before := reviews.Load()
	if _, err := tr.Authenticate(request(agent)); err != nil || reviews.Load() != before {
		t.Fatalf("a second connect with the same token reviewed again (%d → %d): %v", before, reviews.Load(), err)
	}
	for _, tc := range []struct {
		name, tok string
		want      error
	}{
		{"token for another audience", wrongAudience, auth.ErrUnauthenticated},
		{"another service account", otherSA, auth.ErrForbidden},
		{"garbage", "not-a-jwt", auth.ErrUnauthenticated},
		{"no token", "", auth.ErrUnauthenticated},
	} {
		if _, err := tr.Authenticate(request(tc.tok)); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}

	// Through the link server: the static token still works beside it, and
	// each refusal has its status.
	srv, err := agents.NewServer(agents.Options{Auth: auth.AnyOf{auth.Token("static"), tr}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	for _, tc := range []struct {
		tok  string
		code int
	}{{otherSA, http.StatusForbidden}, {wrongAudience, http.StatusUnauthorized}} {
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, request(tc.tok))
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
	down := &auth.TokenReview{Client: deadClient, Users: tr.Users}
	srv2, err := agents.NewServer(agents.Options{Auth: down})
	if err != nil {
		t.Fatal(err)
	}
	defer srv2.Close()
	w := httptest.NewRecorder()
	srv2.ServeHTTP(w, request(agent))
	if w.Code != http.StatusServiceUnavailable {
		t.Fatalf("TokenReview unreachable: %d %s, want 503", w.Code, w.Body)
	}
}

// podToken creates a pod of ServiceAccount sa on node and returns a token
// bound to it, as the kubelet projects one into the pod.
func podToken(t *testing.T, c kubernetes.Interface, ns, sa, pod, node string, audiences ...string) string {
	t.Helper()
	ctx := context.Background()
	p, err := c.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: pod, Namespace: ns},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: sa,
			Containers: []corev1.Container{{Name: "agent", Image: "registry.k8s.io/pause:3.10"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod %s on %s: %v", pod, node, err)
	}
	tr, err := c.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences:      audiences,
		BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("a token bound to pod %s: %v", pod, err)
	}
	return tr.Status.Token
}

// dialWith connects with a bearer token and says hello as node; it returns
// the link and the hub's first answer (welcome, or the close).
func dialWith(t *testing.T, url, token, node string) (*websocket.Conn, *link.Frame, error) {
	t.Helper()
	ws, resp, err := websocket.Dial(context.Background(), url,
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + token}}})
	if err != nil {
		if resp != nil {
			return nil, nil, fmt.Errorf("%w (HTTP %d)", err, resp.StatusCode)
		}
		return nil, nil, err
	}
	t.Cleanup(func() { ws.CloseNow() })
	sendRaw(t, ws, &link.Frame{Type: link.TypeHello, V: link.Version, Node: node})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, b, err := ws.Read(ctx)
	if err != nil {
		return ws, nil, err
	}
	f, err := link.Decode(b)
	return ws, &f, err
}

// With TokenReview, an agent's link is bound to the node of the pod its
// token was issued for: hello as another node is refused and the real
// node's link stays; a token bound to no node is refused outright.
func bindsTheLinkToThePodsNode(t *testing.T, cp *kubetest.ControlPlane) {
	const ns, sa = "ark-system", "ark-agent"
	_ = saToken(t, cp.Client, ns, sa, "ark-hub") // creates the ServiceAccount
	tok1 := podToken(t, cp.Client, ns, sa, "ark-agent-node-1", "node-1", "ark-hub")
	unbound := saToken(t, cp.Client, ns, sa, "ark-hub")

	tr := &auth.TokenReview{Client: cp.Client, Audiences: []string{"ark-hub"}, Users: []string{"system:serviceaccount:" + ns + ":" + sa}}
	if id, err := tr.Authenticate(request(tok1)); err != nil || id.Node != "node-1" {
		t.Fatalf("pod-bound token: %+v, %v; want bound to node-1", id, err)
	}
	h := startHub(t, "", agents.Options{Auth: auth.AnyOf{auth.Token("shared"), tr}})

	// node-3's real agent, on the shared token.
	if _, f, err := dialWith(t, h.url(), "shared", "node-3"); err != nil || f.Type != link.TypeWelcome {
		t.Fatalf("node-3 with the shared token: %v %v", f, err)
	}
	// node-1's token says hello as node-3: closed with the reason.
	_, _, err := dialWith(t, h.url(), tok1, "node-3")
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.StatusPolicyViolation || !strings.Contains(ce.Reason, `may not connect as node "node-3"`) {
		t.Fatalf("node-1's token as node-3: %v, want a policy-violation close naming node-3", err)
	}
	if got := h.rejected("node_mismatch"); got != 1 {
		t.Errorf(`ark_hub_frames_rejected_total{reason="node_mismatch"} = %v, want 1`, got)
	}
	var n3 agents.AgentInfo
	for _, a := range h.srv.Agents() {
		if a.Node == "node-3" {
			n3 = a
		}
	}
	if !n3.Connected || n3.Identity != "token" {
		t.Errorf("node-3's own link after the forged hello: %+v, want still connected on the shared token", n3)
	}
	// As its own node, it gets in.
	if _, f, err := dialWith(t, h.url(), tok1, "node-1"); err != nil || f.Type != link.TypeWelcome {
		t.Fatalf("node-1's token as node-1: %v %v", f, err)
	}
	// A token bound to no node cannot be tied to one: 403 before any hello.
	if _, _, err := dialWith(t, h.url(), unbound, "node-1"); err == nil || !strings.Contains(err.Error(), "HTTP 403") {
		t.Errorf("a token bound to no node: %v, want 403", err)
	}
}
