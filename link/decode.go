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
	p := event.NewScanner(string(b)) // the one copy: every string decoded is a slice of it
	p.Space()
	if !p.Eat('{') {
		return false
	}
	var seen uint8
	p.Space()
	if p.Eat('}') {
		return p.End()
	}
	for {
		p.Space()
		key, ok := plainString(p)
		if !ok {
			return false
		}
		p.Space()
		if !p.Eat(':') {
			return false
		}
		p.Space()
		var bit uint8
		switch key {
		case "type":
			bit = 1
			v, ok := plainString(p)
			if !ok {
				return false
			}
			f.Type = frameType(v)
		case "v":
			bit = 2
			n, err := strconv.Atoi(digits(p))
			if err != nil {
				return false
			}
			f.V = n
		case "seq":
			bit = 4
			n, err := strconv.ParseUint(digits(p), 10, 64)
			if err != nil {
				return false
			}
			f.Seq = n
		case "done":
			bit = 8
			switch {
			case p.Lit("true"):
				f.Done = true
			case p.Lit("false"):
				f.Done = false
			default:
				return false
			}
		case "events":
			bit = 16
			if !events(p, f) {
				return false
			}
		default:
			return false
		}
		if seen&bit != 0 {
			return false
		}
		seen |= bit
		p.Space()
		if p.Eat(',') {
			continue
		}
		if p.Eat('}') {
			return p.End()
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

// plainString reads a string of printable ASCII without escapes.
func plainString(p *event.Scanner) (string, bool) {
	r := p.Rest()
	if len(r) == 0 || r[0] != '"' {
		return "", false
	}
	for i := 1; i < len(r); i++ {
		switch c := r[i]; {
		case c == '"':
			p.Advance(i + 1)
			return r[1:i], true
		case c == '\\' || c < 0x20 || c >= 0x80:
			return "", false
		}
	}
	return "", false
}

// digits reads the digits of an unsigned integer; strconv refuses an
// empty token (what a leading zero becomes), and a sign, fraction or
// exponent fails the grammar next.
func digits(p *event.Scanner) string {
	r := p.Rest()
	n := 0
	for n < len(r) && r[n] >= '0' && r[n] <= '9' {
		n++
	}
	p.Advance(n)
	if n > 1 && r[0] == '0' {
		return "" // JSON has no leading zeros
	}
	return r[:n]
}

// events reads an array of event objects into f.Events.
func events(p *event.Scanner, f *Frame) bool {
	if !p.Eat('[') {
		return false
	}
	p.Space()
	if p.Eat(']') {
		return true
	}
	for {
		p.Space()
		if len(f.Events) == MaxBatch+1 {
			// DecodeInto refuses the frame for its size; no need to
			// decode the rest, only to know it is too big.
			return false
		}
		f.Events = append(f.Events, event.Event{})
		if p.Event(&f.Events[len(f.Events)-1]) != nil {
			return false
		}
		p.Space()
		if p.Eat(',') {
			continue
		}
		return p.Eat(']')
	}
}

// decodeSlow is encoding/json's decoding of a frame.
func decodeSlow(b []byte, f *Frame) error {
	return json.Unmarshal(b, f)
}
