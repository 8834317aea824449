package auth

import (
	"crypto/sha256"
	"fmt"
	"net/http"
	"os"
	"strings"
)

// NodeTokens are per-node tokens: a request presenting one speaks only for
// its node. With one shared token, any holder can connect as any node;
// with a token per node, a leaked token exposes one node.
type NodeTokens struct {
	// byDigest maps a token's SHA-256 to its node: looking a digest up
	// tells nothing about how close a guess came to a token.
	byDigest map[[sha256.Size]byte]string
}

// ParseNodeTokens reads "node:token" lines (blank lines and lines starting
// with # are skipped); name is the file's name in errors. A node listed
// twice or a token given to two nodes is an error.
func ParseNodeTokens(b []byte, name string) (*NodeTokens, error) {
	nt := &NodeTokens{byDigest: map[[sha256.Size]byte]string{}}
	nodes := map[string]int{}
	err := colonLines(b, name, "node:token", func(line int, node, tok string) error {
		node, tok = strings.TrimSpace(node), strings.TrimSpace(tok)
		if node == "" || tok == "" {
			return fmt.Errorf("%s:%d: want node:token", name, line)
		}
		if first, dup := nodes[node]; dup {
			return fmt.Errorf("%s:%d: node %q already has a token (line %d)", name, line, node, first)
		}
		nodes[node] = line
		d := sha256.Sum256([]byte(tok))
		if other, dup := nt.byDigest[d]; dup {
			return fmt.Errorf("%s:%d: node %q has the same token as node %q", name, line, node, other)
		}
		nt.byDigest[d] = node
		return nil
	})
	if err != nil {
		return nil, err
	}
	return nt, nil
}

// colonLines calls f with the 1-based number and the two halves of each
// "key:value" line of b, skipping blank lines and # comments; a line
// without a key or a value is an error saying what is wanted.
func colonLines(b []byte, name, want string, f func(line int, k, v string) error) error {
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok || k == "" || v == "" {
			return fmt.Errorf("%s:%d: want %s", name, i+1, want)
		}
		if err := f(i+1, k, v); err != nil {
			return err
		}
	}
	return nil
}

// BasicUsers are the user:password pairs HTTP basic auth accepts (e.g.
// from Alertmanager's basic_auth).
type BasicUsers map[string]string

// ParseBasicUsers reads "user:password" lines (blank lines and # comments
// skipped); name is the file's name in errors.
func ParseBasicUsers(b []byte, name string) (BasicUsers, error) {
	users := BasicUsers{}
	err := colonLines(b, name, "user:password", func(_ int, u, p string) error {
		users[u] = p
		return nil
	})
	if err != nil {
		return nil, err
	}
	return users, nil
}

// Matches reports whether pass is user's password, in time independent of
// both.
func (u BasicUsers) Matches(user, pass string) bool {
	want, ok := u[user]
	return ok && Token(want).Matches(pass)
}

// LoadNodeTokens reads a node token file (ParseNodeTokens).
func LoadNodeTokens(path string) (*NodeTokens, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the node token file: %w", err)
	}
	return ParseNodeTokens(b, path)
}

// Len is the number of nodes with a token.
func (nt *NodeTokens) Len() int { return len(nt.byDigest) }

// Authenticate implements Authenticator: the identity is bound to the
// token's node.
func (nt *NodeTokens) Authenticate(r *http.Request) (Identity, error) {
	got, ok := Bearer(r)
	if !ok {
		return Identity{}, ErrUnauthenticated
	}
	node, ok := nt.byDigest[sha256.Sum256([]byte(got))]
	if !ok {
		return Identity{}, ErrUnauthenticated
	}
	return Identity{Name: "node-token", Node: node}, nil
}
