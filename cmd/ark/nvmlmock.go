//go:build nvmlmock

package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/ark-gpu/ark/exporter/probe"
	nvmlprobe "github.com/ark-gpu/ark/exporter/probes/nvml"
	"github.com/ark-gpu/ark/exporter/probes/nvml/nvmlmock"
)

// A test build: the NVML probe reads a mock DGX A100 instead of the driver.
// ARK_NVML_MOCK_PROCS lists the processes it reports, as
// "gpu:pid:bytes,gpu:pid:bytes".
func init() {
	probeOverrides["nvml"] = func(env probe.Env) (probe.Probe, error) {
		procs, err := mockProcs(os.Getenv("ARK_NVML_MOCK_PROCS"))
		if err != nil {
			return nil, err
		}
		return nvmlprobe.New(env, nvmlmock.New(8, procs...))
	}
}

func mockProcs(s string) ([]nvmlmock.Process, error) {
	var out []nvmlmock.Process
	for _, f := range strings.Split(s, ",") {
		if f == "" {
			continue
		}
		parts := strings.Split(f, ":")
		if len(parts) != 3 {
			return nil, fmt.Errorf("ARK_NVML_MOCK_PROCS: bad entry %q", f)
		}
		gpu, err1 := strconv.Atoi(parts[0])
		pid, err2 := strconv.ParseUint(parts[1], 10, 32)
		used, err3 := strconv.ParseUint(parts[2], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil {
			return nil, fmt.Errorf("ARK_NVML_MOCK_PROCS: bad entry %q", f)
		}
		out = append(out, nvmlmock.Process{GPU: gpu, PID: uint32(pid), UsedBytes: used})
	}
	return out, nil
}
