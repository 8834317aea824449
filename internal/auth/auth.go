// Package auth authenticates the hub's callers: agents on the link, OTLP
// senders, fix and the Alertmanager webhook. It reads the bearer token of
// a request, compares secrets in constant time, and tells who a credential
// belongs to and which host it may speak for: the shared token speaks for
// every host, a per-node token (NodeTokens) or a node-bound Kubernetes
// ServiceAccount token (TokenReview) only for its own.
package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"
)

// Errors of an Authenticator; StatusCode maps them to HTTP.
var (
	// ErrUnauthenticated: no credential, or one nobody issued.
	ErrUnauthenticated = errors.New("missing or invalid bearer token")
	// ErrForbidden: a valid credential that may not do this (a user that
	// is not an agent, a token bound to no node, another node's token).
	ErrForbidden = errors.New("credential not allowed")
	// ErrBusy: too many checks in flight; the caller should retry.
	ErrBusy = errors.New("too many token reviews in flight")
)

// Challenge is the WWW-Authenticate value of a 401.
const Challenge = `Bearer realm="ark-hub"`

// StatusCode is the HTTP status that refuses a request with err: 401 for
// ErrUnauthenticated, 403 for ErrForbidden, 503 for anything else (the
// check itself could not be made, e.g. the API server is unreachable: the
// caller retries).
func StatusCode(err error) int {
	switch {
	case errors.Is(err, ErrForbidden):
		return http.StatusForbidden
	case errors.Is(err, ErrUnauthenticated):
		return http.StatusUnauthorized
	}
	return http.StatusServiceUnavailable
}

// Identity is who a credential belongs to.
type Identity struct {
	// Name says who authenticated, for logs and the agents listing:
	// "token", "node-token" or a Kubernetes user name.
	Name string
	// Node is the one host the credential may speak for; empty means any.
	Node string
}

// Allows reports whether the identity may speak for node.
func (id Identity) Allows(node string) bool { return id.Node == "" || id.Node == node }

// Authenticator checks a request's credential and names who made it.
type Authenticator interface {
	Authenticate(r *http.Request) (Identity, error)
}

// Bearer returns the token of r's "Authorization: Bearer <token>" header,
// without the surrounding spaces; false when there is none. The scheme is
// matched case-insensitively (RFC 7235 §2.1).
func Bearer(r *http.Request) (string, bool) {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

// Token is a shared secret: a request presenting it speaks for every host.
type Token string

// Matches reports whether got is the token (an empty token matches
// nothing). Comparing digests keeps the time independent of the content
// and the length of both.
func (t Token) Matches(got string) bool {
	if t == "" {
		return false
	}
	a := sha256.Sum256([]byte(got))
	b := sha256.Sum256([]byte(t))
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// Authenticate implements Authenticator.
func (t Token) Authenticate(r *http.Request) (Identity, error) {
	got, ok := Bearer(r)
	if !ok || !t.Matches(got) {
		return Identity{}, ErrUnauthenticated
	}
	return Identity{Name: "token"}, nil
}

// AnyOf accepts a request that any of its authenticators accepts, tried in
// order (e.g. the shared token, per-node tokens, then TokenReview).
type AnyOf []Authenticator

// Authenticate implements Authenticator; when all refuse it returns the
// last one's error.
func (as AnyOf) Authenticate(r *http.Request) (Identity, error) {
	err := ErrUnauthenticated
	for _, a := range as {
		var id Identity
		if id, err = a.Authenticate(r); err == nil {
			return id, nil
		}
	}
	return Identity{}, err
}
