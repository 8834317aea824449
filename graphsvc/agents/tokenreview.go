package agents

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
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

	mu       sync.Mutex
	cache    map[[32]byte]review
	inFlight int
}

// ErrBusy is returned when MaxInFlight reviews are already running.
var ErrBusy = errors.New("too many token reviews in flight")

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
	user    string
	err     error
	expires time.Time
}

// ErrForbiddenUser is returned for a valid token of a user not in Users.
var ErrForbiddenUser = errors.New("token of a user that may not connect as an agent")

// maxReviewCache bounds the cache; past it, expired answers are dropped
// and, if still full, all of them.
const maxReviewCache = 100_000

// Authenticate implements Authenticator.
func (a *TokenReview) Authenticate(r *http.Request) (string, error) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	tok = strings.TrimSpace(tok)
	if !ok || tok == "" {
		return "", ErrUnauthenticated
	}
	if !jwtShaped(tok) {
		return "", fmt.Errorf("%w: not a ServiceAccount token", ErrUnauthenticated)
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
		return c.user, c.err
	}
	if a.inFlight >= limit {
		a.mu.Unlock()
		return "", ErrBusy
	}
	a.inFlight++
	a.mu.Unlock()

	user, err := a.review(r.Context(), tok)
	a.mu.Lock()
	a.inFlight--
	a.mu.Unlock()
	ttl := a.CacheTTL
	if ttl <= 0 {
		ttl = time.Minute
	}
	var transient bool
	if err != nil && !errors.Is(err, ErrUnauthenticated) && !errors.Is(err, ErrForbiddenUser) {
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
		a.cache[key] = review{user: user, err: err, expires: now.Add(ttl)}
		a.mu.Unlock()
	}
	return user, err
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

func (a *TokenReview) review(ctx context.Context, tok string) (string, error) {
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
		return "", fmt.Errorf("TokenReview: %w", err)
	}
	if !res.Status.Authenticated {
		if res.Status.Error != "" {
			return "", fmt.Errorf("%w: %s", ErrUnauthenticated, res.Status.Error)
		}
		return "", ErrUnauthenticated
	}
	user := res.Status.User.Username
	for _, u := range a.Users {
		if u == user {
			return user, nil
		}
	}
	return "", fmt.Errorf("%w: %s", ErrForbiddenUser, user)
}

// AnyOf accepts a request that any of its authenticators accepts, in
// order (e.g. the static token, then TokenReview).
type AnyOf []Authenticator

// Authenticate implements Authenticator; it returns the last error.
func (as AnyOf) Authenticate(r *http.Request) (string, error) {
	err := ErrUnauthenticated
	for _, a := range as {
		var id string
		if id, err = a.Authenticate(r); err == nil {
			return id, nil
		}
	}
	return "", err
}
