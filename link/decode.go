package link

import (
	"encoding/json"
	"strconv"

	"github.com/ark-gpu/ark/event"
)

// decodeFast decodes the frames the hub reads thousands of times a second
// (events, snapshot, ack: type, v, seq, done, events) in one pass over
// one copy of b, each event parsed by the event package's own decoder.
// It reports false for anything else, malformed or merely unusual (other
// fields, escaped or differently-cased keys, null, repeated keys), and
// the caller then decodes b with encoding/json, which owns the semantics
// and the error messages; so the fast path decides nothing but speed.
func decodeFast(b []byte, f *Frame) bool {
	s := string(b) // the one copy: every string decoded is a slice of it
	p := scanner{s: s}
	p.ws()
	if !p.eat('{') {
		return false
	}
	var seen uint8
	p.ws()
	if p.eat('}') {
		return p.end()
	}
	for {
		p.ws()
		key, ok := p.plainString()
		if !ok {
			return false
		}
		p.ws()
		if !p.eat(':') {
			return false
		}
		p.ws()
		var bit uint8
		switch key {
		case "type":
			bit = 1
			v, ok := p.plainString()
			if !ok {
				return false
			}
			f.Type = frameType(v)
		case "v":
			bit = 2
			n, err := strconv.Atoi(p.number())
			if err != nil {
				return false
			}
			f.V = n
		case "seq":
			bit = 4
			n, err := strconv.ParseUint(p.number(), 10, 64)
			if err != nil {
				return false
			}
			f.Seq = n
		case "done":
			bit = 8
			switch {
			case p.literal("true"):
				f.Done = true
			case p.literal("false"):
				f.Done = false
			default:
				return false
			}
		case "events":
			bit = 16
			if !p.events(f) {
				return false
			}
		default:
			return false
		}
		if seen&bit != 0 {
			return false
		}
		seen |= bit
		p.ws()
		if p.eat(',') {
			continue
		}
		if p.eat('}') {
			return p.end()
		}
		return false
	}
}

// frameType returns the constant for a known type, so decoding one does
// not keep the frame's copy alive.
func frameType(v string) string {
	for _, t := range [...]string{TypeEvents, TypeAck, TypeSnapshot, TypeHello, TypeWelcome, TypeCommand, TypeResult} {
		if v == t {
			return t
		}
	}
	return v
}

type scanner struct {
	s string
	i int
}

func (p *scanner) ws() {
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *scanner) eat(c byte) bool {
	if p.i < len(p.s) && p.s[p.i] == c {
		p.i++
		return true
	}
	return false
}

// end reports whether only whitespace follows.
func (p *scanner) end() bool {
	p.ws()
	return p.i == len(p.s)
}

func (p *scanner) literal(l string) bool {
	if len(p.s)-p.i >= len(l) && p.s[p.i:p.i+len(l)] == l {
		p.i += len(l)
		return true
	}
	return false
}

// plainString reads a string of printable ASCII without escapes.
func (p *scanner) plainString() (string, bool) {
	if !p.eat('"') {
		return "", false
	}
	start := p.i
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch {
		case c == '"':
			p.i++
			return p.s[start : p.i-1], true
		case c == '\\' || c < 0x20 || c >= 0x80:
			return "", false
		}
		p.i++
	}
	return "", false
}

// number returns the digits of an unsigned integer; strconv rejects
// anything else (an empty token, a fraction is not consumed and fails the
// frame's grammar next).
func (p *scanner) number() string {
	start := p.i
	for p.i < len(p.s) && p.s[p.i] >= '0' && p.s[p.i] <= '9' {
		p.i++
	}
	return p.s[start:p.i]
}

// events reads an array of event objects into f.Events.
func (p *scanner) events(f *Frame) bool {
	if !p.eat('[') {
		return false
	}
	p.ws()
	if p.eat(']') {
		return true
	}
	for {
		p.ws()
		start := p.i
		if !p.object() {
			return false
		}
		if len(f.Events) == MaxBatch+1 {
			// DecodeInto refuses the frame for its size; no need to
			// decode the rest, only to know it is too big.
			return false
		}
		f.Events = append(f.Events, event.Event{})
		ev := &f.Events[len(f.Events)-1]
		if event.UnmarshalString(p.s[start:p.i], ev) != nil {
			return false
		}
		p.ws()
		if p.eat(',') {
			continue
		}
		return p.eat(']')
	}
}

// object skips one JSON object, strings and nesting included; what it
// holds is checked by whoever parses it.
func (p *scanner) object() bool {
	if p.i >= len(p.s) || p.s[p.i] != '{' {
		return false
	}
	depth := 0
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case '{', '[':
			depth++
			if depth > maxNesting {
				return false
			}
		case '}', ']':
			depth--
			if depth == 0 {
				p.i++
				return true
			}
		case '"':
			p.i++
			for p.i < len(p.s) && p.s[p.i] != '"' {
				if p.s[p.i] == '\\' {
					p.i++
				}
				p.i++
			}
		}
		p.i++
	}
	return false
}

// maxNesting bounds how deep an event's unknown fields may nest.
const maxNesting = 64

// decodeSlow is encoding/json's decoding of a frame.
func decodeSlow(b []byte, f *Frame) error {
	return json.Unmarshal(b, f)
}
