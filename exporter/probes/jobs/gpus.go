package jobs

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// visibleGPUs turns a CUDA_VISIBLE_DEVICES or NVIDIA_VISIBLE_DEVICES value
// into GPU ids: indices stay as they are, UUIDs are mapped to indices
// through uuids when known and kept as UUIDs otherwise. "all", "none",
// "void" and "" name no particular GPU.
func visibleGPUs(v string, uuids map[string]string) []string {
	v = strings.TrimSpace(v)
	switch strings.ToLower(v) {
	case "", "all", "none", "void", "nodevfiles":
		return nil
	}
	var out []string
	for _, s := range strings.Split(v, ",") {
		s = strings.TrimSpace(s)
		switch {
		case s == "":
			continue
		case strings.HasPrefix(s, "-"):
			// CUDA stops at the first invalid index.
			return out
		case strings.HasPrefix(strings.ToUpper(s), "GPU-"), strings.HasPrefix(strings.ToUpper(s), "MIG-"):
			if i, ok := uuids[strings.ToLower(s)]; ok {
				s = i
			}
		}
		out = append(out, s)
	}
	return out
}

// gpuUUIDs maps GPU UUIDs (lower case) to indices from the driver's
// /proc/driver/nvidia/gpus/<pci>/information: the index from resolve (NVML's
// by PCI bus) when it knows the bus, else the device minor number. It is
// empty without the driver.
func gpuUUIDs(dir string, resolve func(pci string) (int, bool)) map[string]string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	out := map[string]string{}
	for _, e := range ents {
		uuid, minor := readGPUInformation(filepath.Join(dir, e.Name(), "information"))
		if uuid == "" {
			continue
		}
		idx := minor
		if resolve != nil {
			if i, ok := resolve(e.Name()); ok {
				idx = strconv.Itoa(i)
			}
		}
		if idx != "" {
			out[strings.ToLower(uuid)] = idx
		}
	}
	return out
}

func readGPUInformation(path string) (uuid, minor string) {
	f, err := os.Open(path)
	if err != nil {
		return "", ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "GPU UUID":
			uuid = strings.TrimSpace(v)
		case "Device Minor":
			minor = strings.TrimSpace(v)
		}
	}
	return uuid, minor
}

// deviceGPU returns the GPU index of an open file's target when it is one
// of the GPU device nodes (prefix followed by digits only: /dev/nvidia3,
// not /dev/nvidiactl or /dev/nvidia-uvm).
func deviceGPU(target, prefix string) (string, bool) {
	rest, ok := strings.CutPrefix(target, prefix)
	if !ok || rest == "" {
		return "", false
	}
	for i := 0; i < len(rest); i++ {
		if rest[i] < '0' || rest[i] > '9' {
			return "", false
		}
	}
	return rest, true
}

// openGPUs lists the GPU device nodes a process holds open, from the links
// in its fd directory, sorted by index and without repeats. A process that
// vanished or whose fds cannot be read holds none.
func openGPUs(fdDir, prefix string) []string {
	d, err := os.Open(fdDir)
	if err != nil {
		return nil
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	var out []int
	for _, n := range names {
		t, err := os.Readlink(filepath.Join(fdDir, n))
		if err != nil {
			continue
		}
		if g, ok := deviceGPU(t, prefix); ok {
			i, _ := strconv.Atoi(g)
			out = insertSorted(out, i)
		}
	}
	s := make([]string, len(out))
	for i, g := range out {
		s[i] = strconv.Itoa(g)
	}
	return s
}

func insertSorted(s []int, v int) []int {
	for i, x := range s {
		if x == v {
			return s
		}
		if x > v {
			return append(s[:i], append([]int{v}, s[i:]...)...)
		}
	}
	return append(s, v)
}
