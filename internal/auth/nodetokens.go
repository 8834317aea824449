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
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		node, tok, ok := strings.Cut(line, ":")
		node, tok = strings.TrimSpace(node), strings.TrimSpace(tok)
		if !ok || node == "" || tok == "" {
			return nil, fmt.Errorf("%s:%d: want node:token", name, i+1)
		}
		if first, dup := nodes[node]; dup {
			return nil, fmt.Errorf("%s:%d: node %q already has a token (line %d)", name, i+1, node, first)
		}
		nodes[node] = i + 1
		d := sha256.Sum256([]byte(tok))
		if other, dup := nt.byDigest[d]; dup {
			return nil, fmt.Errorf("%s:%d: node %q has the same token as node %q", name, i+1, node, other)
		}
		nt.byDigest[d] = node
	}
	return nt, nil
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
