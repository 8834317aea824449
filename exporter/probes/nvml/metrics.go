package nvmlprobe

import (
	"slices"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// baseLabels are dcgm-exporter's GPU labels (it spells uuid "UUID"), with
// the Kubernetes container the GPU is assigned to; empty when unknown.
// dcgm-exporter spells two of these modelName and Hostname; Prometheus'
// lint (promtool check metrics) wants snake_case, so they are model_name and
// hostname here. A metric_relabel_configs rule maps them for dashboards
// built on dcgm-exporter (see deploy/ notes).
var baseLabels = [numBaseLabels]string{"gpu", "uuid", "model_name", "hostname", "pci_bus_id", "pod", "namespace", "container"}

func newDesc(name, help string, extra ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, append(slices.Clone(baseLabels[:]), extra...), nil)
}

var (
	utilDesc = newDesc("ark_gpu_utilization_percent",
		"GPU utilization in percent over the driver's last sample period (DCGM_FI_DEV_GPU_UTIL).")
	memUsedDesc = newDesc("ark_gpu_memory_used_bytes",
		"Frame buffer memory used in bytes, reserved memory included (DCGM_FI_DEV_FB_USED, which DCGM gives in MiB).")
	memTotalDesc = newDesc("ark_gpu_memory_total_bytes",
		"Frame buffer memory in bytes (DCGM_FI_DEV_FB_TOTAL, which DCGM gives in MiB).")
	tempDesc = newDesc("ark_gpu_temperature_celsius",
		"GPU core temperature in degrees Celsius (DCGM_FI_DEV_GPU_TEMP).")
	powerDesc = newDesc("ark_gpu_power_watts",
		"Power drawn by the GPU board in watts (DCGM_FI_DEV_POWER_USAGE).")
	eccDesc = newDesc("ark_gpu_ecc_errors_total",
		"ECC errors since the driver loaded (scope volatile) or over the GPU's life (scope aggregate); type single is NVML's corrected, double its uncorrected "+
			"(DCGM_FI_DEV_ECC_SBE_VOL_TOTAL, DCGM_FI_DEV_ECC_DBE_VOL_TOTAL, DCGM_FI_DEV_ECC_SBE_AGG_TOTAL, DCGM_FI_DEV_ECC_DBE_AGG_TOTAL).",
		"type", "scope")
	remapDesc = newDesc("ark_gpu_remapped_rows",
		"Memory rows remapped (kind correctable, uncorrectable) and whether a remap is pending or has failed (1/0), Ampere and later "+
			"(DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS, DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS, DCGM_FI_DEV_ROW_REMAP_PENDING, DCGM_FI_DEV_ROW_REMAP_FAILURE).",
		"kind")
	retiredDesc = newDesc("ark_gpu_retired_pages",
		"Memory pages retired for multiple single-bit (cause single) or a double-bit (cause double) ECC error, before Ampere (DCGM_FI_DEV_RETIRED_SBE, DCGM_FI_DEV_RETIRED_DBE).",
		"cause")
	retiredPendingDesc = newDesc("ark_gpu_retired_pages_pending",
		"1 when a page is waiting to be retired at the next driver reload, before Ampere (DCGM_FI_DEV_RETIRED_PENDING).")
	pcieReplayDesc = newDesc("ark_gpu_pcie_replay_total",
		"PCIe replays (link-level retransmissions) since the driver loaded (DCGM_FI_DEV_PCIE_REPLAY_COUNTER).")
	nvlinkDesc = newDesc("ark_gpu_nvlink_up",
		"1 when the NVLink is active, 0 when it is down; only the links the GPU has (no DCGM field: DCGM gives it through dcgmGetNvLinkLinkStatus).",
		"link")
	throttleDesc = newDesc("ark_gpu_throttle_reasons",
		"Bitmask of the reasons the clocks are held down: 1 idle, 2 application clocks, 4 SW power cap, 8 HW slowdown, 16 sync boost, 32 SW thermal, 64 HW thermal, 128 HW power brake, 256 display clocks (DCGM_FI_DEV_CLOCK_THROTTLE_REASONS).")
	procMemDesc = newDesc("ark_gpu_process_memory_used_bytes",
		"GPU memory used by a process running on the GPU in the latest poll, compute and graphics (no DCGM field: NVML's running-process list, as in nvidia-smi).",
		"pid")
)

var allDescs = []*prometheus.Desc{
	utilDesc, memUsedDesc, memTotalDesc, tempDesc, powerDesc, eccDesc, remapDesc,
	retiredDesc, retiredPendingDesc, pcieReplayDesc, nvlinkDesc, throttleDesc, procMemDesc,
}

// collector exports the latest poll. It creates no series of its own: what
// the last poll saw is all there is, so a process that ended leaves /metrics
// with the next poll.
type collector struct{ p *Probe }

// Describe sends every metric's description.
func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

// Collect sends the latest snapshot.
func (c collector) Collect(ch chan<- prometheus.Metric) {
	c.p.mu.Lock()
	snap := c.p.snap
	c.p.mu.Unlock()
	for i := range snap {
		collectSample(ch, &snap[i])
	}
}

func collectSample(ch chan<- prometheus.Metric, s *sample) {
	base := s.labels[:]
	with := func(extra ...string) []string {
		return append(slices.Clip(base), extra...)
	}
	gauge := func(d *prometheus.Desc, v float64, lv []string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, lv...)
	}
	counter := func(d *prometheus.Desc, v float64, lv []string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, lv...)
	}
	if s.have.has(fUtil) {
		gauge(utilDesc, float64(s.util), base)
	}
	if s.have.has(fMemory) {
		gauge(memUsedDesc, float64(s.memUsed), base)
		gauge(memTotalDesc, float64(s.memTotal), base)
	}
	if s.have.has(fTemperature) {
		gauge(tempDesc, float64(s.temp), base)
	}
	if s.have.has(fPower) {
		gauge(powerDesc, float64(s.powerMW)/1000, base)
	}
	for i, r := range eccReadings {
		if s.have.has(r.f) {
			// Counters: they only grow, the volatile ones reset with the
			// driver, which Prometheus reads as a counter reset.
			counter(eccDesc, float64(s.ecc[i]), with(r.typ, r.scope))
		}
	}
	if s.have.has(fRemappedRows) {
		gauge(remapDesc, float64(s.remapCorrectable), with("correctable"))
		gauge(remapDesc, float64(s.remapUncorrectable), with("uncorrectable"))
		gauge(remapDesc, b2f(s.remapPending), with("pending"))
		gauge(remapDesc, b2f(s.remapFailure), with("failure"))
	}
	if s.have.has(fRetiredSingle) {
		gauge(retiredDesc, float64(s.retired[0]), with("single"))
	}
	if s.have.has(fRetiredDouble) {
		gauge(retiredDesc, float64(s.retired[1]), with("double"))
	}
	if s.have.has(fRetiredPending) {
		gauge(retiredPendingDesc, b2f(s.retiredPending), base)
	}
	if s.have.has(fPCIeReplay) {
		counter(pcieReplayDesc, float64(s.pcieReplay), base)
	}
	for i, up := range s.linkUp {
		gauge(nvlinkDesc, b2f(up), with(s.gpu.linkLabels[i]))
	}
	if s.have.has(fThrottle) {
		gauge(throttleDesc, float64(s.throttle), base)
	}
	for _, pr := range s.procs {
		if pr.memKnown {
			gauge(procMemDesc, float64(pr.mem), with(strconv.FormatUint(uint64(pr.pid), 10)))
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
