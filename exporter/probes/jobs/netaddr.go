package jobs

import (
	"bufio"
	"bytes"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// route is one line of /proc/<pid>/net/route.
type route struct {
	iface   string
	dst     netip.Prefix
	deflt   bool
	gateway bool
}

// parseRoutes reads /proc/<pid>/net/route: the IPv4 routes of the
// process's own network namespace, in the kernel's order.
func parseRoutes(b []byte) []route {
	var out []route
	sc := bufio.NewScanner(bytes.NewReader(b))
	first := true
	for sc.Scan() {
		if first { // header
			first = false
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) < 8 {
			continue
		}
		dst, err1 := strconv.ParseUint(f[1], 16, 32)
		flags, err2 := strconv.ParseUint(f[3], 16, 32)
		mask, err3 := strconv.ParseUint(f[7], 16, 32)
		if err1 != nil || err2 != nil || err3 != nil {
			continue
		}
		bits := 0
		for m := uint32(mask); m != 0; m &= m - 1 {
			bits++
		}
		p, err := hexAddr(uint32(dst)).Prefix(bits)
		if err != nil {
			continue
		}
		const rtfGateway = 0x2
		out = append(out, route{iface: f[0], dst: p, deflt: bits == 0, gateway: flags&rtfGateway != 0})
	}
	return out
}

// hexAddr: the kernel prints the address as a host-order (little-endian)
// word.
func hexAddr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)})
}

// parseLocalAddrs reads /proc/<pid>/net/fib_trie and returns the
// namespace's own IPv4 addresses (the "/32 host LOCAL" leaves), loopback
// left out.
func parseLocalAddrs(b []byte) []netip.Addr {
	var out []netip.Addr
	var last netip.Addr
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "|-- "):
			last, _ = netip.ParseAddr(strings.TrimPrefix(line, "|-- "))
		case strings.HasPrefix(line, "/32 host LOCAL"):
			if last.IsValid() && !last.IsLoopback() && !contains(out, last) {
				out = append(out, last)
			}
		}
	}
	return out
}

func contains(s []netip.Addr, a netip.Addr) bool {
	for _, x := range s {
		if x == a {
			return true
		}
	}
	return false
}

// ifMatcher implements NCCL_SOCKET_IFNAME: a comma-separated list of
// name prefixes, exact names when it starts with '=', and names to avoid
// when it starts with '^'. Empty: any interface but loopback.
type ifMatcher struct {
	exclude, exact bool
	names          []string
}

func newIfMatcher(spec string) ifMatcher {
	var m ifMatcher
	spec = strings.TrimSpace(spec)
	if s, ok := strings.CutPrefix(spec, "^"); ok {
		m.exclude, spec = true, s
	}
	if s, ok := strings.CutPrefix(spec, "="); ok {
		m.exact, spec = true, s
	}
	for _, n := range strings.Split(spec, ",") {
		if n = strings.TrimSpace(n); n != "" {
			m.names = append(m.names, n)
		}
	}
	return m
}

func (m ifMatcher) match(iface string) bool {
	if iface == "lo" {
		return false
	}
	if len(m.names) == 0 {
		return true
	}
	hit := false
	for _, n := range m.names {
		if iface == n || !m.exact && strings.HasPrefix(iface, n) {
			hit = true
			break
		}
	}
	return hit != m.exclude
}

// pickAddr chooses the address a rank talks on in its namespace: the
// local address on the interface NCCL_SOCKET_IFNAME names (else the
// default route's interface, else any), found as the local address inside
// one of that interface's directly connected routes.
func pickAddr(routes []route, locals []netip.Addr, ifSpec string) netip.Addr {
	m := newIfMatcher(ifSpec)
	var iface string
	if ifSpec == "" {
		for _, r := range routes {
			if r.deflt {
				iface = r.iface
				break
			}
		}
	}
	if iface == "" {
		for _, r := range routes {
			if m.match(r.iface) {
				iface = r.iface
				break
			}
		}
	}
	for _, r := range routes {
		if r.iface != iface || r.deflt || r.gateway {
			continue
		}
		for _, a := range locals {
			if r.dst.Contains(a) {
				return a
			}
		}
	}
	if ifSpec == "" && len(locals) > 0 {
		return locals[0]
	}
	return netip.Addr{}
}

// nsAddr reads the address a process talks on from its namespace's view
// of /proc/<pid>/net.
func nsAddr(netDir, ifSpec string) netip.Addr {
	rb, err := os.ReadFile(netDir + "/route")
	if err != nil {
		return netip.Addr{}
	}
	fb, err := os.ReadFile(netDir + "/fib_trie")
	if err != nil {
		return netip.Addr{}
	}
	return pickAddr(parseRoutes(rb), parseLocalAddrs(fb), ifSpec)
}
