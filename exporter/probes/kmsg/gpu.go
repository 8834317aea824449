package kmsg

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ark-gpu/ark/exporter/probe"
)

// nvidiaVendor is NVIDIA's PCI vendor id.
const nvidiaVendor = "0x10de"

// gpuIndexer maps a PCI bus ("0000:9b:00") to a GPU index. It asks, in
// order: the agent's resolver (NVML, when running), the PCI devices in
// sysfs, and the driver's /proc/driver/nvidia/gpus/<bus>/information.
//
// sysfs gives the index NVML and nvidia-smi use: NVIDIA display and 3D
// controllers (class 0x03xxxx, which leaves out NVSwitches) sorted by PCI
// address. The table is read when the probe starts and re-read only on a
// miss, merging new buses in, so a GPU that falls off the bus (XID 79) and
// leaves sysfs does not shift the other GPUs' indices. Re-reads are at most
// one per refreshEvery, so a flood of XIDs from an unknown bus does not
// walk sysfs for every line.
type gpuIndexer struct {
	resolver probe.GPUResolver
	paths    probe.Paths

	mu          sync.Mutex
	table       map[string]int
	lastRefresh time.Time
}

// refreshEvery bounds how often a miss re-reads sysfs.
const refreshEvery = 10 * time.Second

func newGPUIndexer(resolver probe.GPUResolver, paths probe.Paths) *gpuIndexer {
	g := &gpuIndexer{resolver: resolver, paths: paths, table: map[string]int{}}
	g.refresh()
	return g
}

// index returns the GPU index of bus, a normalized "domain:bus:device".
func (g *gpuIndexer) index(bus string) (int, bool) {
	if g.resolver != nil {
		if i, ok := g.resolver.GPUIndexByPCI(bus); ok {
			return i, true
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if i, ok := g.table[bus]; ok {
		return i, true
	}
	if time.Since(g.lastRefresh) < refreshEvery {
		return 0, false
	}
	g.refreshLocked()
	i, ok := g.table[bus]
	return i, ok
}

func (g *gpuIndexer) refresh() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.refreshLocked()
}

func (g *gpuIndexer) refreshLocked() {
	g.lastRefresh = time.Now()
	found := sysfsGPUs(g.paths)
	if len(found) == 0 {
		found = procfsGPUs(g.paths)
	}
	for bus, i := range found {
		if _, known := g.table[bus]; !known {
			g.table[bus] = i
		}
	}
}

// sysfsGPUs lists NVIDIA GPUs under <sysfs>/bus/pci/devices by PCI order.
func sysfsGPUs(paths probe.Paths) map[string]int {
	dir := paths.Sys("bus", "pci", "devices")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var buses []string
	for _, e := range entries {
		dev := filepath.Join(dir, e.Name())
		if readTrim(filepath.Join(dev, "vendor")) != nvidiaVendor {
			continue
		}
		if !strings.HasPrefix(readTrim(filepath.Join(dev, "class")), "0x03") {
			continue
		}
		bus, ok := normalizeBus(nil, []byte(e.Name()))
		if !ok {
			continue
		}
		buses = append(buses, string(bus))
	}
	sort.Strings(buses)
	m := make(map[string]int, len(buses))
	for _, b := range buses {
		if _, dup := m[b]; !dup {
			m[b] = len(m)
		}
	}
	return m
}

// procfsGPUs reads "Device Minor" from the NVIDIA driver's
// <procfs>/driver/nvidia/gpus/<bus>/information files. The minor number is
// /dev/nvidia<N>; it follows PCI order on ordinary hosts, which is why sysfs
// is asked first.
func procfsGPUs(paths probe.Paths) map[string]int {
	dir := paths.Proc("driver", "nvidia", "gpus")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	m := map[string]int{}
	for _, e := range entries {
		bus, ok := normalizeBus(nil, []byte(e.Name()))
		if !ok {
			continue
		}
		if minor, ok := deviceMinor(filepath.Join(dir, e.Name(), "information")); ok {
			m[string(bus)] = minor
		}
	}
	return m
}

func deviceMinor(path string) (int, bool) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false
	}
	defer func() { _ = f.Close() }() // read-only: nothing to lose
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(k) != "Device Minor" {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(v))
		return n, err == nil && n >= 0
	}
	return 0, false
}

func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return string(bytes.ToLower(bytes.TrimSpace(b)))
}
