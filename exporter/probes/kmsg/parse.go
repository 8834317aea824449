package kmsg

import (
	"bytes"
	"strings"
)

// XID is one NVIDIA driver XID report parsed from a kernel log line.
type XID struct {
	Code int
	// PCIBus is the GPU's PCI address as the driver prints it,
	// domain:bus:device, lower case, without the function: "0000:9b:00".
	PCIBus string
	// PID is the process the driver named; 0 when it named none,
	// "<unknown>" or 0.
	PID int64
	// PIDKnown reports that the line carried a numeric pid above 0.
	PIDKnown bool
	// Name is the process name the driver printed, "" when absent or
	// "<unknown>".
	Name string
	// Message is the rest of the line after the code, pid and name.
	Message string
}

// parseStatus says what parse made of a line.
type parseStatus uint8

const (
	notXID  parseStatus = iota // no "NVRM: Xid (" in the line
	isXID                      // a well-formed XID line
	badPCI                     // "NVRM: Xid (" with an unreadable PCI address
	badCode                    // "NVRM: Xid (...)" with a missing or malformed code
)

// reason is the ark_kmsg_lines_ignored_total label of a malformed line.
func (s parseStatus) reason() string {
	switch s {
	case badPCI:
		return "malformed_pci"
	case badCode:
		return "malformed_code"
	}
	return ""
}

// The driver writes "NVRM: Xid (PCI:dddd:bb:dd): code, ...". The scan looks
// for "Xid (", whose 'X' is rare in kernel logs so bytes.Index skips ahead
// fast, then checks the "NVRM: " before it, which also turns away the
// NVSwitch "SXid (" lines.
var (
	xidMarker  = []byte("Xid (")
	nvrmPrefix = []byte("NVRM: ")
)

// ParseXID parses an NVIDIA driver XID line, with or without a /dev/kmsg,
// dmesg or syslog prefix. It reports false for any other line, NVSwitch
// SXid lines and malformed XID lines included. It does not allocate for a
// line that is not an XID line.
func ParseXID(line []byte) (XID, bool) {
	x, st := parse(line)
	return x, st == isXID
}

func parse(line []byte) (XID, parseStatus) {
	rest, ok := findXID(line)
	if !ok {
		return XID{}, notXID
	}
	// A /dev/kmsg record may carry " KEY=value" dictionary lines after the
	// message.
	if i := bytes.IndexByte(rest, '\n'); i >= 0 {
		rest = rest[:i]
	}

	// (PCI:0000:9b:00)
	rest = bytes.TrimPrefix(rest, []byte("PCI:"))
	end := bytes.IndexByte(rest, ')')
	if end < 0 {
		return XID{}, badPCI
	}
	var busBuf [32]byte
	bus, ok := normalizeBus(busBuf[:0], rest[:end])
	if !ok {
		return XID{}, badPCI
	}
	rest = rest[end+1:]

	// ": 79," or ": 48, An uncorrectable..." or ": 154, GPU recovery..."
	if len(rest) == 0 || rest[0] != ':' {
		return XID{}, badCode
	}
	rest = trimSpaceLeft(rest[1:])
	n := 0
	for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
		n++
	}
	if n == 0 || n > 4 || (n < len(rest) && rest[n] != ',' && rest[n] != ' ') {
		return XID{}, badCode
	}
	code := int(atoi(rest[:n]))
	rest = trimSpaceLeft(bytes.TrimPrefix(rest[n:], []byte(",")))

	x := XID{Code: code, PCIBus: string(bus)}
	if v, ok := cutField(&rest, "pid="); ok {
		if p := atoi(v); p > 0 {
			x.PID, x.PIDKnown = p, true
		}
	}
	if v, ok := cutField(&rest, "name="); ok && !isUnknown(v) {
		x.Name = string(v)
	}
	x.Message = string(bytes.TrimRight(rest, " \t\r\x00"))
	return x, isXID
}

// findXID returns what follows "NVRM: Xid (" in line.
func findXID(line []byte) ([]byte, bool) {
	off := 0
	for {
		i := bytes.Index(line[off:], xidMarker)
		if i < 0 {
			return nil, false
		}
		i += off
		if i >= len(nvrmPrefix) && bytes.Equal(line[i-len(nvrmPrefix):i], nvrmPrefix) {
			return line[i+len(xidMarker):], true
		}
		off = i + len(xidMarker)
	}
}

// cutField reads "key=value," at the start of *rest: the value up to the
// first comma, then advances *rest past the comma and spaces. A value
// without a comma runs to the end of the line.
func cutField(rest *[]byte, key string) ([]byte, bool) {
	r := *rest
	if len(r) < len(key) || string(r[:len(key)]) != key {
		return nil, false
	}
	r = r[len(key):]
	var v []byte
	if i := bytes.IndexByte(r, ','); i >= 0 {
		v, r = r[:i], r[i+1:]
	} else {
		v, r = r, r[len(r):]
	}
	*rest = trimSpaceLeft(r)
	return bytes.TrimSpace(v), true
}

// isUnknown reports the driver's placeholders <unknown> and '<unknown>'.
func isUnknown(v []byte) bool {
	v = bytes.Trim(v, "'\"")
	return len(v) == 0 || string(v) == "<unknown>"
}

// atoi parses a decimal number of at most 18 digits; it returns -1 for
// anything else.
func atoi(b []byte) int64 {
	if len(b) == 0 || len(b) > 18 {
		return -1
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int64(c-'0')
	}
	return n
}

func trimSpaceLeft(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	return b
}

// normalizeBus appends to dst the lower-case "domain:bus:device" form of a
// PCI address "[domain:]bus:device[.function]", any case; a missing domain
// is 0000. It reports false when src is not such an address.
func normalizeBus(dst, src []byte) ([]byte, bool) {
	if i := bytes.IndexByte(src, '.'); i >= 0 {
		if !isHex(src[i+1:], 1, 1) {
			return nil, false
		}
		src = src[:i]
	}
	parts := [3][]byte{}
	np := 0
	for {
		i := bytes.IndexByte(src, ':')
		if np == len(parts) {
			return nil, false
		}
		if i < 0 {
			parts[np] = src
			np++
			break
		}
		parts[np] = src[:i]
		np++
		src = src[i+1:]
	}
	var domain, bus, dev []byte
	switch np {
	case 2:
		domain, bus, dev = []byte("0000"), parts[0], parts[1]
	case 3:
		domain, bus, dev = parts[0], parts[1], parts[2]
	default:
		return nil, false
	}
	if !isHex(domain, 4, 8) || !isHex(bus, 2, 2) || !isHex(dev, 2, 2) {
		return nil, false
	}
	dst = appendLower(dst, domain)
	dst = append(dst, ':')
	dst = appendLower(dst, bus)
	dst = append(dst, ':')
	dst = appendLower(dst, dev)
	return dst, true
}

func isHex(b []byte, minLen, maxLen int) bool {
	if len(b) < minLen || len(b) > maxLen {
		return false
	}
	for _, c := range b {
		switch {
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f', 'A' <= c && c <= 'F':
		default:
			return false
		}
	}
	return true
}

func appendLower(dst, src []byte) []byte {
	for _, c := range src {
		if 'A' <= c && c <= 'F' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	return dst
}

// recoveryAction reads an XID 154 message, "GPU recovery action changed
// from 0x0 (None) to 0x2 (Node Reboot Required)", and returns the new
// action's code and name ("0x2", "Node Reboot Required").
func recoveryAction(msg string) (code, name string, ok bool) {
	i := strings.LastIndex(msg, " to ")
	if i < 0 {
		return "", "", false
	}
	s := msg[i+len(" to "):]
	open := strings.IndexByte(s, '(')
	closing := strings.LastIndexByte(s, ')')
	if open < 0 || closing < open {
		return "", "", false
	}
	return strings.TrimSpace(s[:open]), strings.TrimSpace(s[open+1 : closing]), true
}
