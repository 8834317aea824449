package event

import (
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// Rejection reasons, the values of ark_events_rejected_total{reason}.
const (
	ReasonNotJSON      = "not_json"
	ReasonTooLong      = "line_too_long"
	ReasonUnknownType  = "unknown_event_type"
	ReasonMissingField = "missing_field"
	ReasonInvalidField = "invalid_field"
	ReasonTooManyAttrs = "too_many_attrs" // more than MaxAttrs attrs
)

var reasons = [...]string{ReasonNotJSON, ReasonTooLong, ReasonUnknownType, ReasonMissingField, ReasonInvalidField,
	ReasonTooManyAttrs}

// Reasons lists every rejection reason, so counters can be exported at zero.
var Reasons = reasons[:]

func reasonIndex(r string) int {
	for i, x := range Reasons {
		if x == r {
			return i
		}
	}
	return 0
}

// RejectError says why one line was not accepted. The decoder returns it and
// goes on with the next line.
type RejectError struct {
	Line   int64  // 1-based line number in the stream, 0 when unknown
	Reason string // one of Reasons
	Detail string // what exactly was wrong
}

func (e *RejectError) Error() string {
	if e.Line > 0 {
		return "line " + strconv.FormatInt(e.Line, 10) + ": " + e.Reason + ": " + e.Detail
	}
	return e.Reason + ": " + e.Detail
}

// maxDepth bounds nesting inside unknown fields so hostile input cannot make
// skipping expensive.
const maxDepth = 64

// Unmarshal parses one JSON line into ev. It allocates one string for the line
// (every unescaped string field is a slice of it) and reuses ev.Attrs' storage.
// On failure it returns a *RejectError.
func Unmarshal(line []byte, ev *Event) error {
	return parseLine(string(line), ev)
}

// UnmarshalString parses one JSON line into ev without copying it: every
// unescaped string field of ev is a slice of line. It reuses ev.Attrs'
// storage and returns a *RejectError on failure.
func UnmarshalString(line string, ev *Event) error {
	return parseLine(line, ev)
}

// PeekTS returns the ts a line starts with when it is written the way
// AppendJSON writes it (`{"ts":<digits>,` first), without parsing the rest:
// ok is false for any other line, whose ts only a full parse can tell. A
// full parse may still reject the line, or find a later "ts" key that
// overrides this one.
func PeekTS(line string) (ts int64, ok bool) {
	const prefix = `{"ts":`
	if !strings.HasPrefix(line, prefix) {
		return 0, false
	}
	i := len(prefix)
	for i < len(line) && line[i] >= '0' && line[i] <= '9' {
		i++
	}
	if i == len(prefix) || i == len(line) || line[i] != ',' {
		return 0, false
	}
	return parseTS(line[len(prefix):i], kindNumber)
}

func reject(reason, detail string) error {
	return &RejectError{Reason: reason, Detail: detail}
}

// field presence bits.
const (
	hasTS = 1 << iota
	hasType
	hasEntity
	hasValue
)

func parseLine(s string, ev *Event) error {
	*ev = Event{Attrs: ev.Attrs[:0]}
	if !utf8.ValidString(s) {
		return reject(ReasonNotJSON, "invalid UTF-8")
	}
	p := parser{s: s}
	p.ws()
	if !p.eat('{') {
		return reject(ReasonNotJSON, "not a JSON object")
	}
	var (
		seen       int
		typeName   string
		badField   string
		badTypeVal bool
	)
	p.ws()
	if p.eat('}') {
		goto end
	}
	for {
		p.ws()
		key, ok := p.str()
		if !ok {
			return reject(ReasonNotJSON, p.errOr("bad object key"))
		}
		p.ws()
		if !p.eat(':') {
			return reject(ReasonNotJSON, "expected ':' after key")
		}
		p.ws()
		switch key {
		case "ts":
			v, kind, ok := p.scalar()
			if !ok {
				return reject(ReasonNotJSON, p.errOr("bad ts"))
			}
			if kind == kindNull {
				seen &^= hasTS
				break
			}
			ts, ok := parseTS(v, kind)
			if !ok {
				badField = "ts"
				break
			}
			ev.TS = ts
			seen |= hasTS
		case "event_type":
			v, kind, ok := p.scalar()
			if !ok {
				return reject(ReasonNotJSON, p.errOr("bad event_type"))
			}
			switch kind {
			case kindNull:
				seen &^= hasType
			case kindString:
				typeName = v
				seen |= hasType
				badTypeVal = false
			default:
				typeName, badTypeVal = v, true
				seen |= hasType
			}
		case "entity_id", "job_id", "node_id":
			v, kind, ok := p.scalar()
			if !ok {
				return reject(ReasonNotJSON, p.errOr("bad "+key))
			}
			if kind != kindString && kind != kindNull {
				badField = key
				break
			}
			switch key {
			case "entity_id":
				ev.EntityID = v
				if v != "" {
					seen |= hasEntity
				} else {
					seen &^= hasEntity
				}
			case "job_id":
				ev.JobID = v
			default:
				ev.NodeID = v
			}
		case "pid":
			v, kind, ok := p.scalar()
			if !ok {
				return reject(ReasonNotJSON, p.errOr("bad pid"))
			}
			if kind == kindNull {
				ev.PID = 0
				break
			}
			if kind != kindNumber && kind != kindString {
				badField = "pid"
				break
			}
			pid, err := strconv.ParseInt(v, 10, 64)
			if err != nil || pid < 0 {
				badField = "pid"
				break
			}
			ev.PID = pid
		case "value":
			v, kind, ok := p.scalar()
			if !ok {
				return reject(ReasonNotJSON, p.errOr("bad value"))
			}
			switch kind {
			case kindString, kindNumber:
				ev.Value = v
				seen |= hasValue
			case kindNull:
				seen &^= hasValue
			default:
				badField = "value"
			}
		case "attrs":
			if err := p.attrs(ev, &badField); err != nil {
				return err
			}
		default:
			if !p.skip(0) {
				return reject(ReasonNotJSON, p.errOr("bad value for "+strconv.Quote(key)))
			}
		}
		p.ws()
		if p.eat(',') {
			continue
		}
		if p.eat('}') {
			break
		}
		return reject(ReasonNotJSON, "expected ',' or '}'")
	}
end:
	p.ws()
	if p.i != len(p.s) {
		return reject(ReasonNotJSON, "trailing data after object")
	}
	if seen&hasType == 0 {
		return reject(ReasonMissingField, "event_type is required")
	}
	if badTypeVal {
		return reject(ReasonInvalidField, "event_type must be a string")
	}
	t, ok := ParseType(typeName)
	if !ok {
		return reject(ReasonUnknownType, "unknown event_type "+strconv.Quote(truncate(typeName, 64)))
	}
	ev.Type = t
	switch {
	case seen&hasTS == 0 && badField != "ts":
		return reject(ReasonMissingField, "ts is required")
	case seen&hasEntity == 0 && badField != "entity_id":
		return reject(ReasonMissingField, "entity_id is required")
	case seen&hasValue == 0 && badField != "value":
		return reject(ReasonMissingField, "value is required")
	case badField != "":
		return reject(ReasonInvalidField, "invalid "+badField)
	}
	ev.Attrs.Compact()
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// parseTS reads a timestamp given as a JSON number or a numeric string. A
// fractional value is truncated; a value that looks like seconds is scaled.
// The result is milliseconds, at least secondsCutoff.
func parseTS(v string, kind int) (int64, bool) {
	if kind != kindNumber && kind != kindString {
		return 0, false
	}
	ts, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		f, ferr := strconv.ParseFloat(v, 64)
		if ferr != nil || f != f || f <= 0 || f >= 9.2e18 {
			return 0, false
		}
		if f < secondsCutoff {
			f *= 1000
		}
		ts = int64(f)
	} else {
		ts = NormalizeTS(ts)
	}
	// Anything before 1973 in milliseconds is a bogus clock, and rejecting it
	// keeps the seconds heuristic unambiguous on a round trip.
	if ts < secondsCutoff {
		return 0, false
	}
	return ts, true
}

const (
	kindString = iota
	kindNumber
	kindBool
	kindNull
	kindOther // an object or array
)

type parser struct {
	s   string
	i   int
	err string
}

func (p *parser) errOr(def string) string {
	if p.err != "" {
		return p.err
	}
	if p.i >= len(p.s) {
		return "unexpected end of line"
	}
	return def
}

func (p *parser) ws() {
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\r', '\n':
			p.i++
		default:
			return
		}
	}
}

func (p *parser) eat(c byte) bool {
	if p.i < len(p.s) && p.s[p.i] == c {
		p.i++
		return true
	}
	return false
}

func (p *parser) lit(word string) bool {
	if len(p.s)-p.i >= len(word) && p.s[p.i:p.i+len(word)] == word {
		p.i += len(word)
		return true
	}
	return false
}

// scalar reads a string, number, true, false or null.
func (p *parser) scalar() (string, int, bool) {
	if p.i >= len(p.s) {
		return "", 0, false
	}
	switch c := p.s[p.i]; {
	case c == '"':
		v, ok := p.str()
		return v, kindString, ok
	case c == '-' || (c >= '0' && c <= '9'):
		v, ok := p.num()
		return v, kindNumber, ok
	case c == 't':
		return "true", kindBool, p.lit("true")
	case c == 'f':
		return "false", kindBool, p.lit("false")
	case c == 'n':
		return "", kindNull, p.lit("null")
	case c != '{' && c != '[':
		return "", 0, false
	}
	// An object or array where a scalar belongs: skip it so the caller can
	// report a wrongly typed field rather than broken JSON.
	if !p.skip(0) {
		return "", 0, false
	}
	return "", kindOther, true
}

// num reads a JSON number and returns its text.
func (p *parser) num() (string, bool) {
	start := p.i
	p.eat('-')
	if p.i >= len(p.s) {
		return "", false
	}
	if p.s[p.i] == '0' {
		p.i++
	} else if !p.digits() {
		return "", false
	}
	if p.eat('.') && !p.digits() {
		return "", false
	}
	if p.i < len(p.s) && (p.s[p.i] == 'e' || p.s[p.i] == 'E') {
		p.i++
		if !p.eat('+') {
			p.eat('-')
		}
		if !p.digits() {
			return "", false
		}
	}
	return p.s[start:p.i], true
}

func (p *parser) digits() bool {
	start := p.i
	for p.i < len(p.s) && p.s[p.i] >= '0' && p.s[p.i] <= '9' {
		p.i++
	}
	return p.i > start
}

// str reads a JSON string. Without escapes the result is a slice of the line.
func (p *parser) str() (string, bool) {
	if !p.eat('"') {
		return "", false
	}
	start := p.i
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch {
		case c == '"':
			v := p.s[start:p.i]
			p.i++
			return v, true
		case c == '\\':
			return p.strEscaped(start)
		case c < 0x20:
			p.err = "control character in string"
			return "", false
		}
		p.i++
	}
	return "", false
}

func (p *parser) strEscaped(start int) (string, bool) {
	buf := make([]byte, 0, p.i-start+16)
	buf = append(buf, p.s[start:p.i]...)
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch {
		case c == '"':
			p.i++
			return string(buf), true
		case c < 0x20:
			p.err = "control character in string"
			return "", false
		case c != '\\':
			buf = append(buf, c)
			p.i++
			continue
		}
		p.i++
		if p.i >= len(p.s) {
			return "", false
		}
		e := p.s[p.i]
		p.i++
		switch e {
		case '"', '\\', '/':
			buf = append(buf, e)
		case 'b':
			buf = append(buf, '\b')
		case 'f':
			buf = append(buf, '\f')
		case 'n':
			buf = append(buf, '\n')
		case 'r':
			buf = append(buf, '\r')
		case 't':
			buf = append(buf, '\t')
		case 'u':
			r, ok := p.hex4()
			if !ok {
				return "", false
			}
			if utf16.IsSurrogate(r) {
				r2 := rune(-1)
				save := p.i
				if p.lit(`\u`) {
					if x, ok := p.hex4(); ok {
						r2 = x
					}
				}
				if d := utf16.DecodeRune(r, r2); d != utf8.RuneError {
					r = d
				} else {
					p.i = save
					r = utf8.RuneError
				}
			}
			buf = utf8.AppendRune(buf, r)
		default:
			p.err = "bad escape in string"
			return "", false
		}
	}
	return "", false
}

func (p *parser) hex4() (rune, bool) {
	if len(p.s)-p.i < 4 {
		return 0, false
	}
	var r rune
	for _, c := range []byte(p.s[p.i : p.i+4]) {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			p.err = "bad \\u escape"
			return 0, false
		}
	}
	p.i += 4
	return r, true
}

// attrs reads the attrs object. Values must be strings; numbers and booleans
// are kept as their text, anything nested marks the field invalid. Keys are
// appended as they come, without looking for an earlier one (parseLine
// compacts repeated keys once, in linear time), and past MaxAttrs the line
// is rejected without reading further.
func (p *parser) attrs(ev *Event, badField *string) error {
	bad := func() error { return reject(ReasonNotJSON, p.errOr("bad attrs")) }
	if p.lit("null") {
		return nil
	}
	if !p.eat('{') {
		if !p.skip(0) {
			return bad()
		}
		*badField = "attrs"
		return nil
	}
	p.ws()
	if p.eat('}') {
		return nil
	}
	for {
		p.ws()
		k, ok := p.str()
		if !ok {
			return bad()
		}
		p.ws()
		if !p.eat(':') {
			return bad()
		}
		p.ws()
		v, kind, ok := p.scalar()
		if !ok {
			return bad()
		}
		switch kind {
		case kindString, kindNumber, kindBool:
			if len(ev.Attrs) == MaxAttrs {
				return reject(ReasonTooManyAttrs, "more than "+strconv.Itoa(MaxAttrs)+" attrs")
			}
			ev.Attrs = append(ev.Attrs, Attr{Key: k, Value: v})
		case kindOther:
			*badField = "attrs"
		}
		p.ws()
		if p.eat(',') {
			continue
		}
		if !p.eat('}') {
			return bad()
		}
		return nil
	}
}

// skip skips any JSON value.
func (p *parser) skip(depth int) bool {
	if depth > maxDepth {
		p.err = "nesting too deep"
		return false
	}
	if p.i >= len(p.s) {
		return false
	}
	switch p.s[p.i] {
	case '{':
		p.i++
		p.ws()
		if p.eat('}') {
			return true
		}
		for {
			p.ws()
			if _, ok := p.str(); !ok {
				return false
			}
			p.ws()
			if !p.eat(':') {
				return false
			}
			p.ws()
			if !p.skip(depth + 1) {
				return false
			}
			p.ws()
			if p.eat(',') {
				continue
			}
			return p.eat('}')
		}
	case '[':
		p.i++
		p.ws()
		if p.eat(']') {
			return true
		}
		for {
			p.ws()
			if !p.skip(depth + 1) {
				return false
			}
			p.ws()
			if p.eat(',') {
				continue
			}
			return p.eat(']')
		}
	}
	_, _, ok := p.scalar()
	return ok
}
