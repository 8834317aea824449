// Package nvmlmock is a DGX A100 stand-in for the NVML probe, built on
// go-nvml's dgxa100 mock with every reading the probe makes stubbed to
// fixed values, so an agent can run end to end on a host without a GPU
// (the golden /metrics test, `ark agent --nvml.mock` in a nvmlmock build).
package nvmlmock

import (
	"fmt"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

const gib = 1 << 30

// busOf is where GPU i sits, as on a DGX A100.
var busOf = [8]uint8{0x07, 0x0f, 0x47, 0x4e, 0x87, 0x90, 0xb7, 0xbd}

// Process is a process the mock reports on a GPU.
type Process struct {
	GPU       int
	PID       uint32
	UsedBytes uint64
}

// New returns an NVML library with nGPUs (at most 8) A100s: GPU i is i*10 %
// busy, uses i+1 GiB of 40, is at 30+i °C, draws 100.5+i W, has i
// correctable volatile ECC errors, i correctable remapped rows, 3*i PCIe
// replays and 12 NVLinks up, and runs procs. It never reports an XID.
func New(nGPUs int, procs ...Process) nvml.Interface {
	srv := dgxa100.New()
	srv.Devices = srv.Devices[:min(nGPUs, len(srv.Devices))]
	for i, d := range srv.Devices {
		dev := d.(*server.Device)
		StubDevice(dev, i, 12)
		var mine []nvml.ProcessInfo
		for _, p := range procs {
			if p.GPU == i {
				mine = append(mine, nvml.ProcessInfo{Pid: p.PID, UsedGpuMemory: p.UsedBytes})
			}
		}
		dev.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) {
			return append([]nvml.ProcessInfo(nil), mine...), nvml.SUCCESS
		}
	}
	srv.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) {
		return &mock.EventSet{
			WaitFunc: func(ms uint32) (nvml.EventData, nvml.Return) {
				time.Sleep(time.Duration(ms) * time.Millisecond)
				return nvml.EventData{}, nvml.ERROR_TIMEOUT
			},
			FreeFunc: func() nvml.Return { return nvml.SUCCESS },
		}, nvml.SUCCESS
	}
	return srv
}

// StubDevice sets every reading the probe makes on GPU i of the mock to the
// values New documents, with links NVLinks up and no processes running.
func StubDevice(d *server.Device, i, links int) {
	d.UUID = fmt.Sprintf("GPU-a100-%d", i)
	d.MemoryInfo = nvml.Memory{Total: 40 * gib, Used: uint64(i+1) * gib, Free: uint64(39-i) * gib}
	d.GetPciInfoFunc = func() (nvml.PciInfo, nvml.Return) {
		info := nvml.PciInfo{Bus: uint32(busOf[i]), PciDeviceId: d.Config.PciDeviceId}
		for j, c := range fmt.Sprintf("00000000:%02X:00.0", busOf[i]) {
			info.BusId[j] = int8(c)
		}
		return info, nvml.SUCCESS
	}
	d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
		return nvml.Utilization{Gpu: uint32(10 * i), Memory: 5}, nvml.SUCCESS
	}
	d.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { return uint32(30 + i), nvml.SUCCESS }
	d.GetPowerUsageFunc = func() (uint32, nvml.Return) { return uint32(100_500 + 1000*i), nvml.SUCCESS }
	d.GetTotalEccErrorsFunc = func(typ nvml.MemoryErrorType, ctr nvml.EccCounterType) (uint64, nvml.Return) {
		switch {
		case typ == nvml.MEMORY_ERROR_TYPE_CORRECTED && ctr == nvml.VOLATILE_ECC:
			return uint64(i), nvml.SUCCESS
		case typ == nvml.MEMORY_ERROR_TYPE_CORRECTED:
			return uint64(10 + i), nvml.SUCCESS
		case ctr == nvml.AGGREGATE_ECC:
			return 1, nvml.SUCCESS
		}
		return 0, nvml.SUCCESS
	}
	d.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { return i, 0, false, false, nvml.SUCCESS }
	d.GetRetiredPagesFunc = func(nvml.PageRetirementCause) ([]uint64, nvml.Return) { return nil, nvml.ERROR_NOT_SUPPORTED }
	d.GetRetiredPagesPendingStatusFunc = func() (nvml.EnableState, nvml.Return) {
		return nvml.FEATURE_DISABLED, nvml.ERROR_NOT_SUPPORTED
	}
	d.GetPcieReplayCounterFunc = func() (int, nvml.Return) { return 3 * i, nvml.SUCCESS }
	d.GetNvLinkStateFunc = func(l int) (nvml.EnableState, nvml.Return) {
		if l >= links {
			return 0, nvml.ERROR_INVALID_ARGUMENT
		}
		return nvml.FEATURE_ENABLED, nvml.SUCCESS
	}
	d.GetCurrentClocksThrottleReasonsFunc = func() (uint64, nvml.Return) { return 0, nvml.SUCCESS }
	d.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) { return nil, nvml.SUCCESS }
	d.GetGraphicsRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) { return nil, nvml.SUCCESS }
	d.RegisterEventsFunc = func(uint64, nvml.EventSet) nvml.Return { return nvml.SUCCESS }
}
