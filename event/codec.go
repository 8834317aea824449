package event

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"
	"unsafe"
)

// DefaultMaxLineBytes is the longest line a Decoder accepts by default.
const DefaultMaxLineBytes = 64 << 10

// Decoder reads events from a JSONL stream. A bad line is rejected with a
// *RejectError and counted; the next call reads the next line normally.
type Decoder struct {
	r        *bufio.Reader
	max      int
	line     int64
	accepted uint64
	rejected [len(reasons)]uint64

	// In-memory mode (NewBytesDecoder): data is the whole input, pos the
	// next unread byte, last the bounds of the line last decoded.
	data      string
	pos       int
	inMemory  bool
	lastStart int
	lastEnd   int
}

// DecoderOption configures a Decoder.
type DecoderOption func(*Decoder)

// WithMaxLineBytes sets the longest accepted line (without its newline).
func WithMaxLineBytes(n int) DecoderOption {
	return func(d *Decoder) {
		if n > 0 {
			d.max = n
		}
	}
}

// NewDecoder returns a Decoder reading from r.
func NewDecoder(r io.Reader, opts ...DecoderOption) *Decoder {
	d := &Decoder{max: DefaultMaxLineBytes}
	for _, o := range opts {
		o(d)
	}
	// Room for the line, "\r\n", and a little slack so a line of exactly
	// max bytes is accepted.
	d.r = bufio.NewReaderSize(r, d.max+4)
	return d
}

// NewBytesDecoder returns a Decoder over an in-memory recording. It
// allocates nothing per line: the strings of the events it decodes are
// slices of data, which must not change while they are in use. LastLine
// tells where each event's line lies in data.
func NewBytesDecoder(data []byte, opts ...DecoderOption) *Decoder {
	d := &Decoder{max: DefaultMaxLineBytes, inMemory: true}
	for _, o := range opts {
		o(d)
	}
	if len(data) > 0 {
		d.data = unsafe.String(&data[0], len(data))
	}
	return d
}

// Decode reads the next event into ev. It returns io.EOF at the end of the
// stream, a *RejectError for a line it skipped, or the reader's error.
//
// Decode reuses ev.Attrs' storage; string fields stay valid after the next
// call. Use Event.Clone to keep attrs across calls.
func (d *Decoder) Decode(ev *Event) error {
	if d.inMemory {
		return d.decodeInMemory(ev)
	}
	for {
		line, err := d.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			d.line++
			if derr := d.discardLine(); derr != nil && !errors.Is(derr, io.EOF) {
				return derr
			}
			return d.reject(ReasonTooLong, fmt.Sprintf("line longer than %d bytes", d.max))
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if len(line) == 0 && err != nil {
			return io.EOF
		}
		d.line++
		line = bytes.TrimRight(line, "\r\n")
		if skip, derr := d.decodeLine(line, string(line), ev); !skip {
			return derr
		}
		if err != nil {
			return io.EOF
		}
	}
}

func (d *Decoder) decodeInMemory(ev *Event) error {
	line, err := d.Next()
	if err != nil {
		return err
	}
	if perr := parseLine(line, ev); perr != nil {
		var re *RejectError
		if errors.As(perr, &re) {
			re.Line = d.line
			d.rejected[reasonIndex(re.Reason)]++
		}
		return perr
	}
	d.accepted++
	return nil
}

// Next returns the next line of a Decoder made by NewBytesDecoder, without
// its newline and without parsing it, for a caller that parses it later
// (UnmarshalString). Blank lines are passed over; a line that is too long
// is rejected and counted as Decode does; io.EOF ends the data.
func (d *Decoder) Next() (string, error) {
	for d.pos < len(d.data) {
		start := d.pos
		end := len(d.data)
		if i := strings.IndexByte(d.data[start:], '\n'); i >= 0 {
			end = start + i
			d.pos = end + 1
		} else {
			d.pos = end
		}
		d.line++
		line := strings.TrimRight(d.data[start:end], "\r\n")
		d.lastStart, d.lastEnd = start, start+len(line)
		if len(line) > d.max {
			return "", d.reject(ReasonTooLong, fmt.Sprintf("line longer than %d bytes", d.max))
		}
		if strings.TrimSpace(line) != "" {
			return line, nil
		}
	}
	return "", io.EOF
}

// decodeLine checks and parses one line without its newline, given both as
// bytes and as the string the event's fields will slice. skip reports a
// blank line, to be passed over.
func (d *Decoder) decodeLine(line []byte, s string, ev *Event) (skip bool, err error) {
	if len(line) > d.max {
		return false, d.reject(ReasonTooLong, fmt.Sprintf("line longer than %d bytes", d.max))
	}
	if len(bytes.TrimSpace(line)) == 0 {
		return true, nil
	}
	if perr := parseLine(s, ev); perr != nil {
		var re *RejectError
		if errors.As(perr, &re) {
			re.Line = d.line
			d.rejected[reasonIndex(re.Reason)]++
		}
		return false, perr
	}
	d.accepted++
	return false, nil
}

// LastLine returns where the last line read lies in the data of a Decoder
// made by NewBytesDecoder, without its newline: data[start:end].
func (d *Decoder) LastLine() (start, end int) { return d.lastStart, d.lastEnd }

func (d *Decoder) discardLine() error {
	for {
		_, err := d.r.ReadSlice('\n')
		if !errors.Is(err, bufio.ErrBufferFull) {
			return err
		}
	}
}

func (d *Decoder) reject(reason, detail string) error {
	d.rejected[reasonIndex(reason)]++
	return &RejectError{Line: d.line, Reason: reason, Detail: detail}
}

// Line returns the number of the last line read.
func (d *Decoder) Line() int64 { return d.line }

// Accepted returns how many events were decoded.
func (d *Decoder) Accepted() uint64 { return d.accepted }

// Rejected returns the rejected line counts by reason, every reason present.
func (d *Decoder) Rejected() map[string]uint64 {
	m := make(map[string]uint64, len(Reasons))
	for i, r := range Reasons {
		m[r] = d.rejected[i]
	}
	return m
}

// RejectedTotal returns how many lines were rejected.
func (d *Decoder) RejectedTotal() uint64 {
	var n uint64
	for _, c := range d.rejected {
		n += c
	}
	return n
}

// Encoder writes events as JSONL.
type Encoder struct {
	w   io.Writer
	buf []byte
}

// NewEncoder returns an Encoder writing to w.
func NewEncoder(w io.Writer) *Encoder { return &Encoder{w: w} }

// Encode writes ev and a newline.
func (e *Encoder) Encode(ev *Event) error {
	e.buf = AppendJSON(e.buf[:0], ev)
	e.buf = append(e.buf, '\n')
	_, err := e.w.Write(e.buf)
	return err
}

// AppendJSON appends the wire form of ev to dst. The value is always written
// as a JSON string; optional fields are left out when empty.
func AppendJSON(dst []byte, ev *Event) []byte {
	dst = append(dst, `{"ts":`...)
	dst = strconv.AppendInt(dst, ev.TS, 10)
	dst = append(dst, `,"event_type":`...)
	dst = appendString(dst, string(ev.Type))
	dst = append(dst, `,"entity_id":`...)
	dst = appendString(dst, ev.EntityID)
	if ev.NodeID != "" {
		dst = append(dst, `,"node_id":`...)
		dst = appendString(dst, ev.NodeID)
	}
	dst = append(dst, `,"value":`...)
	dst = appendString(dst, ev.Value)
	if ev.PID != 0 {
		dst = append(dst, `,"pid":`...)
		dst = strconv.AppendInt(dst, ev.PID, 10)
	}
	if ev.JobID != "" {
		dst = append(dst, `,"job_id":`...)
		dst = appendString(dst, ev.JobID)
	}
	if len(ev.Attrs) > 0 {
		dst = append(dst, `,"attrs":{`...)
		for i, a := range ev.Attrs {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, a.Key)
			dst = append(dst, ':')
			dst = appendString(dst, a.Value)
		}
		dst = append(dst, '}')
	}
	return append(dst, '}')
}

const hexDigits = "0123456789abcdef"

func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				dst = append(dst, s[start:i]...)
				dst = append(dst, `\ufffd`...)
				i++
				start = i
				continue
			}
			i += size
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		i++
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// MarshalJSON writes the wire form of e.
func (e Event) MarshalJSON() ([]byte, error) {
	return AppendJSON(nil, &e), nil
}

// UnmarshalJSON reads the wire form, with the decoder's validation.
func (e *Event) UnmarshalJSON(b []byte) error {
	return Unmarshal(b, e)
}
