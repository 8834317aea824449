package auth

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// TokenReview authenticates agents by a Kubernetes ServiceAccount token
// (a projected token, audience-bound) checked through the API server's
// TokenReview API: the in-cluster option, with nothing shared to rotate.
// Answers are cached for CacheTTL so a reconnect storm after a hub restart
// costs one review per agent, not one per attempt.
//
// The identity is bound to the node the token was issued for: a token the
// kubelet projects into a pod carries the pod's node, and the API server
// reports it in the review's extra claim ExtraNodeName. A token without
// one (not bound to a pod, or a cluster before Kubernetes 1.30) is
// refused unless AllowUnbound is set.
type TokenReview struct {
	Client kubernetes.Interface
	// Audiences the token must be bound to (e.g. "ark-hub"); empty
	// accepts the API server's default audience.
	Audiences []string
	// Users that may connect as agents, e.g.
	// "system:serviceaccount:ark-system:ark-agent".
	Users []string
	// CacheTTL bounds how long a review's answer is reused (default 1m;
	// a rejection is kept 10s).
	CacheTTL time.Duration
	// Timeout bounds one review (default 5s).
	Timeout time.Duration

	// MaxInFlight bounds concurrent reviews (default 32): past it an agent
	// is answered 503 at once, so a flood of bogus tokens cannot queue the
	// real agents behind it on the API server.
	MaxInFlight int
	// AllowUnbound accepts a token bound to no node as speaking for every
	// node, as the shared token does.
	AllowUnbound bool

	mu       sync.Mutex
	cache    map[[32]byte]review
	inFlight int
}

// ExtraNodeName is the TokenReview extra claim naming the node of the pod
// a ServiceAccount token is bound to.
const ExtraNodeName = "authentication.kubernetes.io/node-name"

// jwtShaped reports whether tok looks like a JWT (three base64url parts):
// anything else is refused without asking the API server.
func jwtShaped(tok string) bool {
	if len(tok) > 16<<10 || strings.Count(tok, ".") != 2 {
		return false
	}
	for _, c := range tok {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.', c == '=':
		default:
			return false
		}
	}
	return true
}

type review struct {
	id      Identity
	err     error
	expires time.Time
}

// maxReviewCache bounds the cache; past it, expired answers are dropped
// and, if still full, all of them.
const maxReviewCache = 100_000

// Authenticate implements Authenticator.
func (a *TokenReview) Authenticate(r *http.Request) (Identity, error) {
	tok, ok := Bearer(r)
	if !ok {
		return Identity{}, ErrUnauthenticated
	}
	if !jwtShaped(tok) {
		return Identity{}, fmt.Errorf("%w: not a ServiceAccount token", ErrUnauthenticated)
	}
	key := sha256.Sum256([]byte(tok))
	now := time.Now()
	limit := a.MaxInFlight
	if limit <= 0 {
		limit = 32
	}
	a.mu.Lock()
	if c, ok := a.cache[key]; ok && now.Before(c.expires) {
		a.mu.Unlock()
		return c.id, c.err
	}
	if a.inFlight >= limit {
		a.mu.Unlock()
		return Identity{}, ErrBusy
	}
	a.inFlight++
	a.mu.Unlock()

	id, err := a.review(r.Context(), tok)
	a.mu.Lock()
	a.inFlight--
	a.mu.Unlock()
	ttl := a.CacheTTL
	if ttl <= 0 {
		ttl = time.Minute
	}
	var transient bool
	if err != nil && !errors.Is(err, ErrUnauthenticated) && !errors.Is(err, ErrForbidden) {
		transient = true // the API server could not be asked: ask again next time
	}
	if err != nil {
		ttl = min(ttl, 10*time.Second)
	}
	if !transient {
		a.mu.Lock()
		if a.cache == nil || len(a.cache) >= maxReviewCache {
			a.pruneLocked(now)
		}
		a.cache[key] = review{id: id, err: err, expires: now.Add(ttl)}
		a.mu.Unlock()
	}
	return id, err
}

func (a *TokenReview) pruneLocked(now time.Time) {
	if a.cache == nil {
		a.cache = map[[32]byte]review{}
		return
	}
	for k, c := range a.cache {
		if !now.Before(c.expires) {
			delete(a.cache, k)
		}
	}
	if len(a.cache) >= maxReviewCache {
		clear(a.cache)
	}
}

func (a *TokenReview) review(ctx context.Context, tok string) (Identity, error) {
	timeout := a.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := a.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: tok, Audiences: a.Audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return Identity{}, fmt.Errorf("TokenReview: %w", err)
	}
	if !res.Status.Authenticated {
		if res.Status.Error != "" {
			return Identity{}, fmt.Errorf("%w: %s", ErrUnauthenticated, res.Status.Error)
		}
		return Identity{}, ErrUnauthenticated
	}
	user := res.Status.User.Username
	if !slices.Contains(a.Users, user) {
		return Identity{}, fmt.Errorf("%w: token of %s, a user that may not connect as an agent", ErrForbidden, user)
	}
	id := Identity{Name: user}
	switch nodes := res.Status.User.Extra[ExtraNodeName]; {
	case len(nodes) == 1 && nodes[0] != "":
		id.Node = nodes[0]
	case len(nodes) > 1:
		return Identity{}, fmt.Errorf("%w: token of %s names %d nodes", ErrForbidden, user, len(nodes))
	case !a.AllowUnbound:
		return Identity{}, fmt.Errorf("%w: token of %s is bound to no node (want a token the kubelet projects into the agent's pod)",
			ErrForbidden, user)
	}
	return id, nil
}
