package event

// Scanner reads JSON held in a string with the event parser's own
// primitives, for decoders of formats that carry events (the agent link's
// frames): they walk their envelope with it and parse each event in place.
type Scanner struct{ p parser }

// NewScanner returns a Scanner at the start of s.
func NewScanner(s string) *Scanner { return &Scanner{p: parser{s: s}} }

// Space skips whitespace.
func (sc *Scanner) Space() { sc.p.ws() }

// Eat consumes c if it is next.
func (sc *Scanner) Eat(c byte) bool { return sc.p.eat(c) }

// Lit consumes word if it is next.
func (sc *Scanner) Lit(word string) bool { return sc.p.lit(word) }

// Rest is what is left to read.
func (sc *Scanner) Rest() string { return sc.p.s[sc.p.i:] }

// Advance moves past n bytes of Rest.
func (sc *Scanner) Advance(n int) { sc.p.i += n }

// End reports whether only whitespace is left.
func (sc *Scanner) End() bool {
	sc.p.ws()
	return sc.p.i == len(sc.p.s)
}

// Event parses the JSON object at the scanner into ev with Unmarshal's
// rules (its strings are slices of the scanned string) and moves past it.
func (sc *Scanner) Event(ev *Event) error {
	start := sc.p.i
	if sc.p.i >= len(sc.p.s) || sc.p.s[sc.p.i] != '{' || !sc.p.skip(0) {
		return reject(ReasonNotJSON, "not a JSON object")
	}
	return parseLine(sc.p.s[start:sc.p.i], ev)
}
