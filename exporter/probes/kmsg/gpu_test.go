package kmsg

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/ark-gpu/ark/exporter/probe"
)

// nvmlResolver stands in for the NVML probe's resolver: no GPU here.
type nvmlResolver map[string]int

func (r nvmlResolver) GPUIndexByPCI(bus string) (int, bool) {
	i, ok := r[bus]
	return i, ok
}

func TestGPUIndexFromSysfsCountsOnlyNVIDIAGPUsInPCIOrder(t *testing.T) {
	root := unpackTree(t, "hosttree.txtar")
	g := newGPUIndexer(nil, probe.Paths{SysFS: filepath.Join(root, "sys"), ProcFS: filepath.Join(root, "proc")})
	want := map[string]int{"0000:17:00": 0, "0000:3b:00": 1, "0000:9b:00": 2}
	for bus, wi := range want {
		if i, ok := g.index(bus); !ok || i != wi {
			t.Errorf("index(%s) = %d, %v; want %d", bus, i, ok, wi)
		}
	}
	// The NVSwitch, the NIC and the GPU's audio function are not GPUs; the
	// procfs-only GPUs are not asked for while sysfs answers.
	for _, bus := range []string{"0000:86:00", "0000:0c:00", "0000:00:01", "0000:4e:00"} {
		if i, ok := g.index(bus); ok {
			t.Errorf("index(%s) = %d, want unknown", bus, i)
		}
	}
}

func TestGPUIndexKeepsIndicesWhenAGPULeavesSysfs(t *testing.T) {
	root := unpackTree(t, "hosttree.txtar")
	g := newGPUIndexer(nil, probe.Paths{SysFS: filepath.Join(root, "sys")})
	// GPU 0 falls off the bus and its device goes away.
	if err := os.Remove(filepath.Join(root, "sys/bus/pci/devices/0000:17:00.0")); err != nil {
		t.Fatal(err)
	}
	g.lastRefresh = g.lastRefresh.Add(-refreshEvery) // let a miss re-read
	if _, ok := g.index("0000:aa:00"); ok {
		t.Fatal("unknown bus resolved")
	}
	if i, ok := g.index("0000:9b:00"); !ok || i != 2 {
		t.Errorf("index(0000:9b:00) = %d, %v after GPU 0 left; want 2", i, ok)
	}
}

func TestGPUIndexFromProcfsDeviceMinorWithoutSysfs(t *testing.T) {
	root := unpackTree(t, "hosttree.txtar")
	g := newGPUIndexer(nil, probe.Paths{SysFS: filepath.Join(root, "no-sys"), ProcFS: filepath.Join(root, "proc")})
	for bus, want := range map[string]int{"0000:07:00": 3, "0000:4e:00": 5} {
		if i, ok := g.index(bus); !ok || i != want {
			t.Errorf("index(%s) = %d, %v; want %d", bus, i, ok, want)
		}
	}
}

func TestGPUIndexAsksTheAgentResolverFirst(t *testing.T) {
	root := unpackTree(t, "hosttree.txtar")
	g := newGPUIndexer(nvmlResolver{"0000:9b:00": 7}, probe.Paths{SysFS: filepath.Join(root, "sys")})
	if i, ok := g.index("0000:9b:00"); !ok || i != 7 {
		t.Errorf("index = %d, %v; want the resolver's 7", i, ok)
	}
	if i, ok := g.index("0000:17:00"); !ok || i != 0 {
		t.Errorf("index = %d, %v; want sysfs's 0 when the resolver does not know", i, ok)
	}
}
