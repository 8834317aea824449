package nvmlprobe

import (
	"fmt"
	"strconv"
	"strings"
)

// pciAddr is a PCI address: domain:bus:device.function.
type pciAddr struct {
	domain   uint32
	bus, dev uint8
	fn       uint8
}

// parsePCI reads a PCI bus id in any of the forms the kernel and NVML write:
// "0000:9b:00.0", "00000000:9B:00.0" (NVML), "0000:9b:00" (the kernel's
// NVRM lines), "9b:00.0" and "9b:00" (no domain, meaning domain 0).
func parsePCI(s string) (pciAddr, bool) {
	var a pciAddr
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '.'); i >= 0 {
		fn, err := strconv.ParseUint(s[i+1:], 16, 8)
		if err != nil || fn > 7 {
			return pciAddr{}, false
		}
		a.fn = uint8(fn)
		s = s[:i]
	}
	parts := strings.Split(s, ":")
	switch len(parts) {
	case 2:
	case 3:
		d, err := strconv.ParseUint(parts[0], 16, 32)
		if err != nil {
			return pciAddr{}, false
		}
		a.domain = uint32(d)
		parts = parts[1:]
	default:
		return pciAddr{}, false
	}
	bus, err := strconv.ParseUint(parts[0], 16, 8)
	if err != nil {
		return pciAddr{}, false
	}
	dev, err := strconv.ParseUint(parts[1], 16, 8)
	if err != nil || dev > 0x1f {
		return pciAddr{}, false
	}
	a.bus, a.dev = uint8(bus), uint8(dev)
	return a, true
}

// key identifies the device whatever its function: a GPU is function 0 and
// the kernel's XID lines leave the function out.
func (a pciAddr) key() string {
	return fmt.Sprintf("%04x:%02x:%02x", a.domain, a.bus, a.dev)
}

// String is the kernel's form, "0000:9b:00.0".
func (a pciAddr) String() string {
	return fmt.Sprintf("%04x:%02x:%02x.%x", a.domain, a.bus, a.dev, a.fn)
}

// GPUIndexByPCI returns the NVML index of the GPU at busID, in any case, with
// or without the domain and the function. It knows the GPUs found by the
// latest Run and reports false before the first.
func (p *Probe) GPUIndexByPCI(busID string) (int, bool) {
	a, ok := parsePCI(busID)
	if !ok {
		return 0, false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	i, ok := p.pci[a.key()]
	return i, ok
}

// cString converts a NUL-terminated C char array as go-nvml exposes it.
func cString(b []int8) string {
	n := 0
	for n < len(b) && b[n] != 0 {
		n++
	}
	buf := make([]byte, n)
	for i := range n {
		buf[i] = byte(b[i])
	}
	return string(buf)
}
