package auth_test

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/ark-gpu/ark/internal/auth"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func request(authorization string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	if authorization != "" {
		r.Header.Set("Authorization", authorization)
	}
	return r
}

// RFC 7235 §2.1: the scheme is case-insensitive.
func TestBearerReadsTheSchemeCaseInsensitively(t *testing.T) {
	for _, tt := range []struct {
		header, token string
		ok            bool
	}{
		{"Bearer abc", "abc", true},
		{"bearer abc", "abc", true},
		{"BEARER abc", "abc", true},
		{"bEaReR abc", "abc", true},
		{"Bearer  abc ", "abc", true},
		{"Bearer ", "", false},
		{"Bearer", "", false},
		{"Bearerabc", "", false},
		{"Basic abc", "", false},
		{"", "", false},
	} {
		tok, ok := auth.Bearer(request(tt.header))
		if tok != tt.token || ok != tt.ok {
			t.Errorf("Authorization %q: %q, %v; want %q, %v", tt.header, tok, ok, tt.token, tt.ok)
		}
	}
}

func TestTokenAuthenticatesOnlyItsOwnBearerToken(t *testing.T) {
	for _, tt := range []struct {
		token, header string
		ok            bool
	}{
		{"abc", "Bearer abc", true},
		{"abc", "Bearer  abc ", true},
		{"abc", "bearer abc", true},
		{"abc", "Bearer abcd", false},
		{"abc", "Bearer ab", false},
		{"abc", "Basic abc", false},
		{"", "Bearer ", false},
		{"", "Bearer x", false},
	} {
		id, err := auth.Token(tt.token).Authenticate(request(tt.header))
		if (err == nil) != tt.ok {
			t.Errorf("token %q header %q: %v", tt.token, tt.header, err)
		}
		switch {
		case err == nil && id != (auth.Identity{Name: "token"}):
			t.Errorf("token %q header %q: identity %+v, want the shared token's (every node)", tt.token, tt.header, id)
		case err != nil && !errors.Is(err, auth.ErrUnauthenticated):
			t.Errorf("token %q header %q: %v, want ErrUnauthenticated", tt.token, tt.header, err)
		}
	}
}

func TestNodeTokensBindTheIdentityToTheirNode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "node-tokens")
	if err := os.WriteFile(path, []byte("# node:token\nnode-1:tok-1\n\n node-2 : tok:2 \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	nt, err := auth.LoadNodeTokens(path)
	if err != nil {
		t.Fatal(err)
	}
	if nt.Len() != 2 {
		t.Fatalf("%d nodes, want 2", nt.Len())
	}
	for _, tt := range []struct {
		header string
		want   auth.Identity
		err    error
	}{
		{"Bearer tok-1", auth.Identity{Name: "node-token", Node: "node-1"}, nil},
		{"bearer tok:2", auth.Identity{Name: "node-token", Node: "node-2"}, nil},
		{"Bearer tok-3", auth.Identity{}, auth.ErrUnauthenticated},
		{"Bearer node-1", auth.Identity{}, auth.ErrUnauthenticated},
		{"", auth.Identity{}, auth.ErrUnauthenticated},
	} {
		id, err := nt.Authenticate(request(tt.header))
		if id != tt.want || !errors.Is(err, tt.err) {
			t.Errorf("%q: %+v, %v; want %+v, %v", tt.header, id, err, tt.want, tt.err)
		}
	}
	id, _ := nt.Authenticate(request("Bearer tok-1"))
	if !id.Allows("node-1") || id.Allows("node-2") || !(auth.Identity{Name: "token"}).Allows("node-2") {
		t.Errorf("Allows: a node token must allow its node only, the shared token every node")
	}
}

func TestNodeTokenFileErrorsNameTheLine(t *testing.T) {
	for _, tt := range []struct{ file, want string }{
		{"node-1\n", "f:1: want node:token"},
		{"node-1:\n", "f:1: want node:token"},
		{":tok\n", "f:1: want node:token"},
		{"node-1:a\nnode-1:b\n", `f:2: node "node-1" already has a token (line 1)`},
		{"node-1:a\n# c\nnode-2:a\n", `f:3: node "node-2" has the same token as node "node-1"`},
	} {
		_, err := auth.ParseNodeTokens([]byte(tt.file), "f")
		if err == nil || err.Error() != tt.want {
			t.Errorf("%q: %v, want %s", tt.file, err, tt.want)
		}
	}
	if _, err := auth.LoadNodeTokens(filepath.Join(t.TempDir(), "missing")); err == nil ||
		!strings.HasPrefix(err.Error(), "reading the node token file: ") {
		t.Errorf("missing file: %v", err)
	}
}

func TestBasicUsersMatchOnlyTheirOwnPassword(t *testing.T) {
	users, err := auth.ParseBasicUsers([]byte("# alertmanager\nam:pa:ss\n\nother:x\n"), "f")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		user, pass string
		ok         bool
	}{{"am", "pa:ss", true}, {"other", "x", true}, {"am", "x", false}, {"nobody", "x", false}, {"", "", false}} {
		if got := users.Matches(tt.user, tt.pass); got != tt.ok {
			t.Errorf("%s:%s: %v, want %v", tt.user, tt.pass, got, tt.ok)
		}
	}
	if _, err := auth.ParseBasicUsers([]byte("am:\n"), "f"); err == nil || err.Error() != "f:1: want user:password" {
		t.Errorf("a user without a password: %v", err)
	}
}

func TestAnyOfTakesTheFirstThatAcceptsAndStatusCodeMapsTheRefusal(t *testing.T) {
	nt, err := auth.ParseNodeTokens([]byte("node-1:n1\n"), "f")
	if err != nil {
		t.Fatal(err)
	}
	busy := authFunc(func(*http.Request) (auth.Identity, error) { return auth.Identity{}, auth.ErrBusy })
	chain := auth.AnyOf{auth.Token("shared"), nt, busy}
	if id, err := chain.Authenticate(request("Bearer shared")); err != nil || id.Node != "" {
		t.Errorf("shared token: %+v, %v", id, err)
	}
	if id, err := chain.Authenticate(request("Bearer n1")); err != nil || id.Node != "node-1" {
		t.Errorf("node token: %+v, %v", id, err)
	}
	_, err = chain.Authenticate(request("Bearer other"))
	if !errors.Is(err, auth.ErrBusy) || auth.StatusCode(err) != http.StatusServiceUnavailable {
		t.Errorf("the last refusal: %v (%d), want ErrBusy, 503", err, auth.StatusCode(err))
	}
	for _, tt := range []struct {
		err  error
		code int
	}{
		{auth.ErrUnauthenticated, 401},
		{fmt.Errorf("%w: detail", auth.ErrUnauthenticated), 401},
		{fmt.Errorf("%w: detail", auth.ErrForbidden), 403},
		{errors.New("TokenReview: connection refused"), 503},
	} {
		if got := auth.StatusCode(tt.err); got != tt.code {
			t.Errorf("StatusCode(%v) = %d, want %d", tt.err, got, tt.code)
		}
	}
}

type authFunc func(*http.Request) (auth.Identity, error)

func (f authFunc) Authenticate(r *http.Request) (auth.Identity, error) { return f(r) }

// Reviews in flight are bounded: past the bound an agent is told to come
// back (503) at once instead of queuing on the API server, and strings that
// are not tokens never reach it.
func TestTokenReviewsInFlightAreBounded(t *testing.T) {
	release := make(chan struct{})
	reviewing := make(chan struct{}, 4)
	var mu sync.Mutex
	calls := 0
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		calls++
		mu.Unlock()
		reviewing <- struct{}{}
		<-release
		http.Error(w, "gone", http.StatusServiceUnavailable)
	}))
	defer api.Close()
	defer close(release)
	client, err := kubernetes.NewForConfig(&rest.Config{Host: api.URL})
	if err != nil {
		t.Fatal(err)
	}
	tr := &auth.TokenReview{Client: client, Users: []string{"u"}, MaxInFlight: 1, Timeout: 10 * time.Second}
	req := func(tok string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		return r
	}
	jwt := "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
	go func() { _, _ = tr.Authenticate(req(jwt)) }()
	select {
	case <-reviewing:
	case <-time.After(30 * time.Second):
		t.Fatal("the first review never reached the API server")
	}
	if _, err := tr.Authenticate(req(strings.Replace(jwt, "x", "y", 1))); !errors.Is(err, auth.ErrBusy) {
		t.Fatalf("second review while one is in flight: %v, want ErrBusy", err)
	}
	if _, err := tr.Authenticate(req("garbage with spaces")); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Fatalf("a non-token: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if calls != 1 {
		t.Fatalf("%d reviews reached the API server, want 1", calls)
	}
}
