package nvmlprobe

import (
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// field is one reading of a GPU that a GPU may not support.
type field uint8

const (
	fUtil field = iota
	fMemory
	fTemperature
	fPower
	fECCSingleVolatile
	fECCDoubleVolatile
	fECCSingleAggregate
	fECCDoubleAggregate
	fRemappedRows
	fRetiredSingle
	fRetiredDouble
	fRetiredPending
	fPCIeReplay
	fThrottle
	fComputeProcs
	fGraphicsProcs
	numFields
)

var fieldNames = [numFields]string{
	"utilization", "memory", "temperature", "power",
	"ecc single volatile", "ecc double volatile", "ecc single aggregate", "ecc double aggregate",
	"remapped rows", "retired pages single", "retired pages double", "retired pages pending",
	"pcie replay", "throttle reasons", "compute processes", "graphics processes",
}

// fieldSet is a set of fields.
type fieldSet uint32

func (s fieldSet) has(f field) bool { return s&(1<<f) != 0 }
func (s *fieldSet) add(f field)     { *s |= 1 << f }

// eccReadings are the four ECC totals. NVML's corrected errors are DCGM's
// single-bit (SBE) errors and its uncorrected errors the double-bit (DBE).
var eccReadings = [4]struct {
	f          field
	errType    nvml.MemoryErrorType
	counter    nvml.EccCounterType
	typ, scope string
}{
	{fECCSingleVolatile, nvml.MEMORY_ERROR_TYPE_CORRECTED, nvml.VOLATILE_ECC, "single", "volatile"},
	{fECCDoubleVolatile, nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.VOLATILE_ECC, "double", "volatile"},
	{fECCSingleAggregate, nvml.MEMORY_ERROR_TYPE_CORRECTED, nvml.AGGREGATE_ECC, "single", "aggregate"},
	{fECCDoubleAggregate, nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.AGGREGATE_ECC, "double", "aggregate"},
}

// The base labels of every GPU series, in order.
const (
	labelGPU = iota
	labelUUID
	labelModel
	labelHostname
	labelPCIBusID
	labelPod
	labelNamespace
	labelContainer
	numBaseLabels
)

// sample is one poll of one GPU. have says which readings it holds.
type sample struct {
	gpu    *gpu
	labels [numBaseLabels]string
	have   fieldSet

	util               uint32 // percent
	memUsed, memTotal  uint64 // bytes
	temp               uint32 // celsius
	powerMW            uint32
	ecc                [len(eccReadings)]uint64
	remapCorrectable   int
	remapUncorrectable int
	remapPending       bool
	remapFailure       bool
	retired            [2]int // single, double
	retiredPending     bool
	pcieReplay         int
	throttle           uint64
	linkUp             []bool // parallel to gpu.links; nil when none answered
	procs              []proc
}

// proc is one process using a GPU.
type proc struct {
	pid      uint32
	mem      uint64
	memKnown bool
}

// read fills s from g. A reading that returns ERROR_NOT_SUPPORTED is marked
// unsupported for g and never asked again; a GPU that is lost is not asked
// for the rest of this poll. It returns the first other failure.
func (p *Probe) read(g *gpu, s *sample) error {
	var firstErr error
	lost := false
	get := func(f field, call func() nvml.Return) {
		if lost || g.unsupported.has(f) {
			return
		}
		switch ret := call(); ret {
		case nvml.SUCCESS:
			s.have.add(f)
		case nvml.ERROR_NOT_SUPPORTED, nvml.ERROR_FUNCTION_NOT_FOUND:
			g.unsupported.add(f)
			p.logger.Debug("nvml: reading not supported, not asking again", "gpu", g.index, "reading", fieldNames[f])
		default:
			if ret == nvml.ERROR_GPU_IS_LOST {
				lost = true
			}
			if firstErr == nil {
				firstErr = fmt.Errorf("gpu %d: reading %s: %w", g.index, fieldNames[f], ret)
			}
		}
	}

	get(fUtil, func() nvml.Return {
		u, ret := g.dev.GetUtilizationRates()
		s.util = u.Gpu
		return ret
	})
	get(fMemory, func() nvml.Return {
		m, ret := g.dev.GetMemoryInfo()
		s.memUsed, s.memTotal = m.Used, m.Total
		return ret
	})
	get(fTemperature, func() nvml.Return {
		t, ret := g.dev.GetTemperature(nvml.TEMPERATURE_GPU)
		s.temp = t
		return ret
	})
	get(fPower, func() nvml.Return {
		mw, ret := g.dev.GetPowerUsage()
		s.powerMW = mw
		return ret
	})
	for i, r := range eccReadings {
		get(r.f, func() nvml.Return {
			n, ret := g.dev.GetTotalEccErrors(r.errType, r.counter)
			s.ecc[i] = n
			return ret
		})
	}
	// Ampere and later remap rows; older GPUs retire pages. Each GPU
	// supports one of the two, and the other is learned unsupported.
	get(fRemappedRows, func() nvml.Return {
		var ret nvml.Return
		s.remapCorrectable, s.remapUncorrectable, s.remapPending, s.remapFailure, ret = g.dev.GetRemappedRows()
		return ret
	})
	for i, cause := range [2]nvml.PageRetirementCause{
		nvml.PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS,
		nvml.PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR,
	} {
		get(fRetiredSingle+field(i), func() nvml.Return {
			pages, ret := g.dev.GetRetiredPages(cause)
			s.retired[i] = len(pages)
			return ret
		})
	}
	get(fRetiredPending, func() nvml.Return {
		st, ret := g.dev.GetRetiredPagesPendingStatus()
		s.retiredPending = st == nvml.FEATURE_ENABLED
		return ret
	})
	get(fPCIeReplay, func() nvml.Return {
		n, ret := g.dev.GetPcieReplayCounter()
		s.pcieReplay = n
		return ret
	})
	// The throttle-reasons call is deprecated for ClocksEventReasons, but
	// that symbol only exists from driver R535 and calling a missing symbol
	// aborts the process; the old one answers on every driver.
	get(fThrottle, func() nvml.Return {
		r, ret := g.dev.GetCurrentClocksThrottleReasons()
		s.throttle = r
		return ret
	})
	if !lost && len(g.links) > 0 {
		s.linkUp = make([]bool, len(g.links))
		for i, l := range g.links {
			st, ret := g.dev.GetNvLinkState(l)
			if ret != nvml.SUCCESS {
				// A link that stops answering reads as down.
				st = nvml.FEATURE_DISABLED
			}
			s.linkUp[i] = st == nvml.FEATURE_ENABLED
		}
	}
	get(fComputeProcs, func() nvml.Return {
		ps, ret := g.dev.GetComputeRunningProcesses()
		s.procs = addProcs(s.procs, ps)
		return ret
	})
	get(fGraphicsProcs, func() nvml.Return {
		ps, ret := g.dev.GetGraphicsRunningProcesses()
		s.procs = addProcs(s.procs, ps)
		return ret
	})
	return firstErr
}

// addProcs merges ps into procs: a process that is both compute and
// graphics ("C+G") is listed once, with the larger memory NVML reports.
func addProcs(procs []proc, ps []nvml.ProcessInfo) []proc {
next:
	for _, pi := range ps {
		// NVML_VALUE_NOT_AVAILABLE: no permission to see the process's
		// memory (a container without hostPID, Windows WDDM).
		known := pi.UsedGpuMemory != ^uint64(0)
		for i := range procs {
			if procs[i].pid == pi.Pid {
				if known && (!procs[i].memKnown || pi.UsedGpuMemory > procs[i].mem) {
					procs[i].mem, procs[i].memKnown = pi.UsedGpuMemory, true
				}
				continue next
			}
		}
		if len(procs) >= maxProcsPerGPU {
			break
		}
		p := proc{pid: pi.Pid, memKnown: known}
		if known {
			p.mem = pi.UsedGpuMemory
		}
		procs = append(procs, p)
	}
	return procs
}
