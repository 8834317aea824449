package llm

import (
	"net"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Kind is a class of private name.
type Kind string

// Kinds of names an Anonymizer replaces; the placeholder is KIND_n.
const (
	Host Kind = "HOST"
	Pod  Kind = "POD"
	Job  Kind = "JOB"
	IP   Kind = "IP"
	Path Kind = "PATH"
	User Kind = "USER"
)

// minSubstring is the shortest name replaced inside a longer text; a
// shorter one is replaced only where it is the whole text.
const minSubstring = 3

// Anonymizer maps private names to stable placeholders (HOST_1, JOB_2...)
// and back. Names are added first (Add, Scan), then texts replaced; the
// same name always gets the same placeholder.
type Anonymizer struct {
	toPH   map[string]string
	fromPH map[string]string
	next   map[Kind]int
	sorted []string // names, longest first; nil when stale
}

// NewAnonymizer returns an empty Anonymizer.
func NewAnonymizer() *Anonymizer {
	return &Anonymizer{toPH: map[string]string{}, fromPH: map[string]string{}, next: map[Kind]int{}}
}

// Add registers a name of kind k and returns its placeholder.
func (a *Anonymizer) Add(k Kind, name string) string {
	if name == "" {
		return ""
	}
	if ph, ok := a.toPH[name]; ok {
		return ph
	}
	a.next[k]++
	ph := string(k) + "_" + strconv.Itoa(a.next[k])
	a.toPH[name] = ph
	a.fromPH[ph] = name
	a.sorted = nil
	return ph
}

// Len is how many names are registered.
func (a *Anonymizer) Len() int { return len(a.toPH) }

var (
	ipv4Re = regexp.MustCompile(`\b(?:\d{1,3}\.){3}\d{1,3}\b`)
	ipv6Re = regexp.MustCompile(`\[?[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}\]?`)
	// A path starts a text or follows a space, quote, '=', '(' or ':'.
	pathRe = regexp.MustCompile(`(?:^|[\s"'=(:,])(/[A-Za-z0-9._~@%+-]+(?:/[A-Za-z0-9._~@%+-]*)*)`)
)

// Scan registers the IP addresses and absolute paths found in free text.
func (a *Anonymizer) Scan(text string) {
	for _, m := range ipv4Re.FindAllString(text, -1) {
		if net.ParseIP(m) != nil {
			a.Add(IP, m)
		}
	}
	for _, m := range ipv6Re.FindAllString(text, -1) {
		m = strings.Trim(m, "[]")
		if strings.Count(m, ":") >= 2 && net.ParseIP(m) != nil {
			a.Add(IP, m)
		}
	}
	for _, m := range pathRe.FindAllStringSubmatch(text, -1) {
		if p := strings.TrimRight(m[1], "/.,"); len(p) > 1 {
			a.Add(Path, p)
		}
	}
}

// AddAddr registers the host part of an ip:port or host:port address.
func (a *Anonymizer) AddAddr(addr string) {
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	if host == "" {
		return
	}
	if net.ParseIP(host) != nil {
		a.Add(IP, host)
	} else {
		a.Add(Host, host)
	}
}

// Replace returns text with every registered name replaced by its
// placeholder. A name matches only where it is not part of a longer word
// (node-1 is not replaced inside node-10), longest names first.
func (a *Anonymizer) Replace(text string) string {
	if len(a.toPH) == 0 || text == "" {
		return text
	}
	if ph, ok := a.toPH[text]; ok {
		return ph
	}
	if a.sorted == nil {
		for n := range a.toPH {
			if len(n) >= minSubstring {
				a.sorted = append(a.sorted, n)
			}
		}
		sort.Slice(a.sorted, func(i, j int) bool {
			if len(a.sorted[i]) != len(a.sorted[j]) {
				return len(a.sorted[i]) > len(a.sorted[j])
			}
			return a.sorted[i] < a.sorted[j]
		})
	}
	var b strings.Builder
	last := 0
	for i := 0; i < len(text); {
		if i > 0 && wordByte(text[i-1]) && wordByte(text[i]) {
			i++
			continue
		}
		matched := ""
		for _, n := range a.sorted {
			if strings.HasPrefix(text[i:], n) && (i+len(n) == len(text) || !wordByte(text[i+len(n)]) || !wordByte(n[len(n)-1])) {
				matched = n
				break
			}
		}
		if matched == "" {
			i++
			continue
		}
		b.WriteString(text[last:i])
		b.WriteString(a.toPH[matched])
		i += len(matched)
		last = i
	}
	if last == 0 {
		return text
	}
	b.WriteString(text[last:])
	return b.String()
}

// wordByte reports whether c continues a name: a letter or a digit.
func wordByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

var placeholderRe = regexp.MustCompile(`\b(HOST|POD|JOB|IP|PATH|USER)_(\d+)\b`)

// Unknown marks a placeholder the answer uses that stands for no name of
// the input: the model invented it, and it is not mapped back.
const Unknown = "[unknown: not in the evidence]"

// Restore maps the placeholders of an answer back to the names. A
// placeholder that stands for no name (the model invented it) is kept and
// marked Unknown; those are returned too.
func (a *Anonymizer) Restore(text string) (string, []string) {
	var unknown []string
	out := placeholderRe.ReplaceAllStringFunc(text, func(ph string) string {
		if name, ok := a.fromPH[ph]; ok {
			return name
		}
		unknown = append(unknown, ph)
		return ph + " " + Unknown
	})
	return out, unknown
}

// Restorer restores a streamed answer piece by piece: it holds back a
// trailing piece that may be the start of a placeholder split between two
// deltas.
type Restorer struct {
	a       *Anonymizer
	pending string
	// Unknown lists the invented placeholders seen so far.
	Unknown []string
}

// NewRestorer returns a Restorer for a's placeholders.
func (a *Anonymizer) NewRestorer() *Restorer { return &Restorer{a: a} }

// Write takes the next delta and returns what can be shown now.
func (r *Restorer) Write(delta string) string {
	s := r.pending + delta
	cut := len(s)
	for cut > 0 && (wordByte(s[cut-1]) || s[cut-1] == '_') {
		cut--
	}
	r.pending = s[cut:]
	return r.restore(s[:cut])
}

// Flush returns what is held back.
func (r *Restorer) Flush() string {
	s := r.pending
	r.pending = ""
	return r.restore(s)
}

func (r *Restorer) restore(s string) string {
	out, unknown := r.a.Restore(s)
	r.Unknown = append(r.Unknown, unknown...)
	return out
}
