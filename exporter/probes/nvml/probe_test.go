package nvmlprobe

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probe"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// labels renders GPU i's base labels as the exposition format sorts them,
// with the extra labels spliced in at their sorted place by the caller.
func labels(i int, pod, ns, ctr string, extra ...string) string {
	kv := []string{
		`hostname="node-7"`,
		fmt.Sprintf(`container=%q`, ctr),
		fmt.Sprintf(`gpu="%d"`, i),
		`model_name="Mock NVIDIA A100-SXM4-40GB"`,
		fmt.Sprintf(`namespace=%q`, ns),
		fmt.Sprintf(`pci_bus_id="00000000:%02X:00.0"`, busOf[i]),
		fmt.Sprintf(`pod=%q`, pod),
		fmt.Sprintf(`uuid="GPU-a100-%d"`, i),
	}
	kv = append(kv, extra...)
	slices.SortFunc(kv, func(a, b string) int {
		return strings.Compare(a[:strings.IndexByte(a, '=')], b[:strings.IndexByte(b, '=')])
	})
	return "{" + strings.Join(kv, ",") + "}"
}

func TestMetricsAreNamedAndLabelledLikeDCGM(t *testing.T) {
	r := newRig(t, 2, 2)
	// GPU 1 throttles for HW thermal slowdown and SW power cap; GPU 0's
	// second NVLink is down.
	r.devs[1].GetCurrentClocksThrottleReasonsFunc = func() (uint64, nvml.Return) {
		return nvml.ClocksThrottleReasonHwThermalSlowdown | nvml.ClocksThrottleReasonSwPowerCap, nvml.SUCCESS
	}
	r.devs[0].GetNvLinkStateFunc = func(l int) (nvml.EnableState, nvml.Return) {
		switch l {
		case 0:
			return nvml.FEATURE_ENABLED, nvml.SUCCESS
		case 1:
			return nvml.FEATURE_DISABLED, nvml.SUCCESS
		}
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	p, reg := newProbe(t, r, probe.Env{Pods: pods{"GPU-a100-1": {Pod: "llama-0", Namespace: "train", Container: "worker"}}})
	if err := p.open(); err != nil {
		t.Fatal(err)
	}
	defer p.close()
	if err := p.poll(context.Background(), &recorder{}); err != nil {
		t.Fatalf("poll: %v", err)
	}

	l0 := func(extra ...string) string { return labels(0, "", "", "", extra...) }
	l1 := func(extra ...string) string { return labels(1, "llama-0", "train", "worker", extra...) }
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("# HELP ark_gpu_utilization_percent %s", "GPU utilization in percent over the driver's last sample period (DCGM_FI_DEV_GPU_UTIL).")
	w("# TYPE ark_gpu_utilization_percent gauge")
	w("ark_gpu_utilization_percent%s 0", l0())
	w("ark_gpu_utilization_percent%s 10", l1())
	w("# HELP ark_gpu_memory_used_bytes Frame buffer memory used in bytes, reserved memory included (DCGM_FI_DEV_FB_USED, which DCGM gives in MiB).")
	w("# TYPE ark_gpu_memory_used_bytes gauge")
	w("ark_gpu_memory_used_bytes%s %d", l0(), 1*gib)
	w("ark_gpu_memory_used_bytes%s %d", l1(), 2*gib)
	w("# HELP ark_gpu_memory_total_bytes Frame buffer memory in bytes (DCGM_FI_DEV_FB_TOTAL, which DCGM gives in MiB).")
	w("# TYPE ark_gpu_memory_total_bytes gauge")
	w("ark_gpu_memory_total_bytes%s %d", l0(), 40*gib)
	w("ark_gpu_memory_total_bytes%s %d", l1(), 40*gib)
	w("# HELP ark_gpu_temperature_celsius GPU core temperature in degrees Celsius (DCGM_FI_DEV_GPU_TEMP).")
	w("# TYPE ark_gpu_temperature_celsius gauge")
	w("ark_gpu_temperature_celsius%s 30", l0())
	w("ark_gpu_temperature_celsius%s 31", l1())
	w("# HELP ark_gpu_power_watts Power drawn by the GPU board in watts (DCGM_FI_DEV_POWER_USAGE).")
	w("# TYPE ark_gpu_power_watts gauge")
	w("ark_gpu_power_watts%s 100.5", l0())
	w("ark_gpu_power_watts%s 101.5", l1())
	w("# HELP ark_gpu_ecc_errors_total %s", eccHelp(t))
	w("# TYPE ark_gpu_ecc_errors_total counter")
	for i, lf := range []func(...string) string{l0, l1} {
		w("ark_gpu_ecc_errors_total%s %d", lf(`type="single"`, `scope="volatile"`), i)
		w("ark_gpu_ecc_errors_total%s 0", lf(`type="double"`, `scope="volatile"`))
		w("ark_gpu_ecc_errors_total%s %d", lf(`type="single"`, `scope="aggregate"`), 10+i)
		w("ark_gpu_ecc_errors_total%s 1", lf(`type="double"`, `scope="aggregate"`))
	}
	w("# HELP ark_gpu_remapped_rows %s", helpOf(t, remapDesc))
	w("# TYPE ark_gpu_remapped_rows gauge")
	for i, lf := range []func(...string) string{l0, l1} {
		w("ark_gpu_remapped_rows%s %d", lf(`kind="correctable"`), i)
		w("ark_gpu_remapped_rows%s 0", lf(`kind="uncorrectable"`))
		w("ark_gpu_remapped_rows%s 0", lf(`kind="pending"`))
		w("ark_gpu_remapped_rows%s 0", lf(`kind="failure"`))
	}
	w("# HELP ark_gpu_pcie_replay_total PCIe replays (link-level retransmissions) since the driver loaded (DCGM_FI_DEV_PCIE_REPLAY_COUNTER).")
	w("# TYPE ark_gpu_pcie_replay_total counter")
	w("ark_gpu_pcie_replay_total%s 0", l0())
	w("ark_gpu_pcie_replay_total%s 3", l1())
	w("# HELP ark_gpu_nvlink_up %s", helpOf(t, nvlinkDesc))
	w("# TYPE ark_gpu_nvlink_up gauge")
	w("ark_gpu_nvlink_up%s 1", l0(`link="0"`))
	w("ark_gpu_nvlink_up%s 0", l0(`link="1"`))
	w("ark_gpu_nvlink_up%s 1", l1(`link="0"`))
	w("ark_gpu_nvlink_up%s 1", l1(`link="1"`))
	w("# HELP ark_gpu_throttle_reasons %s", helpOf(t, throttleDesc))
	w("# TYPE ark_gpu_throttle_reasons gauge")
	w("ark_gpu_throttle_reasons%s 0", l0())
	w("ark_gpu_throttle_reasons%s 68", l1())
	w("# HELP ark_gpu_process_memory_used_bytes %s", helpOf(t, procMemDesc))
	w("# TYPE ark_gpu_process_memory_used_bytes gauge")
	w("ark_gpu_process_memory_used_bytes%s %d", l0(`pid="1000"`), 1*gib)
	w("ark_gpu_process_memory_used_bytes%s %d", l0(`pid="1001"`), 512*mib)

	names := []string{
		"ark_gpu_utilization_percent", "ark_gpu_memory_used_bytes", "ark_gpu_memory_total_bytes",
		"ark_gpu_temperature_celsius", "ark_gpu_power_watts", "ark_gpu_ecc_errors_total",
		"ark_gpu_remapped_rows", "ark_gpu_pcie_replay_total", "ark_gpu_nvlink_up",
		"ark_gpu_throttle_reasons", "ark_gpu_process_memory_used_bytes",
		// Not supported on an A100: must be absent.
		"ark_gpu_retired_pages", "ark_gpu_retired_pages_pending",
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(b.String()), names...); err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, pr := range problems {
		t.Errorf("lint: %s: %s", pr.Metric, pr.Text)
	}
}

func TestEveryHelpNamesItsDCGMSource(t *testing.T) {
	for _, d := range allDescs {
		if !strings.Contains(d.String(), "DCGM") {
			t.Errorf("%s: help does not name a DCGM field", d)
		}
	}
}

func helpOf(t *testing.T, d interface{ String() string }) string {
	t.Helper()
	s := d.String()
	const key = `help: "`
	i := strings.Index(s, key)
	if i < 0 {
		t.Fatalf("cannot read help of %s", s)
	}
	s = s[i+len(key):]
	j := strings.Index(s, `", `)
	if j < 0 {
		t.Fatalf("cannot read help of %s", s)
	}
	return s[:j]
}

func eccHelp(t *testing.T) string { return helpOf(t, eccDesc) }

func TestProcessSeriesLeaveWithTheProcess(t *testing.T) {
	r := newRig(t, 2, 0)
	p, reg := newProbe(t, r, probe.Env{})
	if err := p.open(); err != nil {
		t.Fatal(err)
	}
	defer p.close()
	ctx := context.Background()
	if err := p.poll(ctx, &recorder{}); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(collector{p}, "ark_gpu_process_memory_used_bytes"); n != 2 {
		t.Fatalf("process series after the first poll = %d, want 2 (pids 1000, 1001)", n)
	}
	r.setCompute(0, nvml.ProcessInfo{Pid: 1001, UsedGpuMemory: 256 * mib})
	if err := p.poll(ctx, &recorder{}); err != nil {
		t.Fatal(err)
	}
	// pid 1000 is still listed as a graphics process, with its 1 GiB.
	want := fmt.Sprintf(`# HELP ark_gpu_process_memory_used_bytes %s
# TYPE ark_gpu_process_memory_used_bytes gauge
ark_gpu_process_memory_used_bytes%s %d
ark_gpu_process_memory_used_bytes%s %d
`, helpOf(t, procMemDesc), labels(0, "", "", "", `pid="1000"`), gib, labels(0, "", "", "", `pid="1001"`), 256*mib)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "ark_gpu_process_memory_used_bytes"); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	r.graphics[0] = nil
	r.mu.Unlock()
	r.setCompute(0)
	if err := p.poll(ctx, &recorder{}); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(collector{p}, "ark_gpu_process_memory_used_bytes"); n != 0 {
		t.Fatalf("process series after every process ended = %d, want 0", n)
	}
}

func TestPollEmitsComputeEventsForEveryProcess(t *testing.T) {
	r := newRig(t, 8, 0)
	p, _ := newProbe(t, r, probe.Env{})
	if err := p.open(); err != nil {
		t.Fatal(err)
	}
	defer p.close()
	var sink recorder
	if err := p.poll(context.Background(), &sink); err != nil {
		t.Fatal(err)
	}
	ev := func(typ event.Type, gpu int, pid int64, value string) event.Event {
		return event.Event{TS: testNow, Type: typ, EntityID: fmt.Sprintf("gpu-%d", gpu), PID: pid, Value: value}
	}
	want := []event.Event{
		// pid 1000 is compute and graphics: one pair of events, not two.
		ev(event.ComputeUtil, 0, 1000, "0"),
		ev(event.ComputeMem, 0, 1000, fmt.Sprint(gib)),
		ev(event.ComputeUtil, 0, 1001, "0"),
		ev(event.ComputeMem, 0, 1001, fmt.Sprint(512*mib)),
		// pid 2000's memory is not available: utilization only.
		ev(event.ComputeUtil, 1, 2000, "10"),
	}
	got := sink.events()
	if !slices.EqualFunc(got, want, func(a, b event.Event) bool {
		return a.TS == b.TS && a.Type == b.Type && a.EntityID == b.EntityID && a.PID == b.PID &&
			a.Value == b.Value && a.NodeID == "" && len(a.Attrs) == 0
	}) {
		t.Fatalf("events:\n got %+v\nwant %+v", got, want)
	}
}

func TestUnsupportedReadingsAreAskedOnlyOnce(t *testing.T) {
	r := newRig(t, 2, 12)
	r.devs[1].GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	r.devs[1].GetTotalEccErrorsFunc = func(nvml.MemoryErrorType, nvml.EccCounterType) (uint64, nvml.Return) {
		return 0, nvml.ERROR_NOT_SUPPORTED
	}
	p, _ := newProbe(t, r, probe.Env{})
	if err := p.open(); err != nil {
		t.Fatal(err)
	}
	defer p.close()
	const polls = 3
	for range polls {
		if err := p.poll(context.Background(), &recorder{}); err != nil {
			t.Fatalf("a reading the GPU does not support failed the poll: %v", err)
		}
	}
	calls := []struct {
		name      string
		got, want int
	}{
		{"GPU 0 temperature", len(r.devs[0].GetTemperatureCalls()), polls},
		{"GPU 1 temperature", len(r.devs[1].GetTemperatureCalls()), 1},
		{"GPU 1 ECC (four totals)", len(r.devs[1].GetTotalEccErrorsCalls()), 4},
		{"GPU 0 retired pages (two causes)", len(r.devs[0].GetRetiredPagesCalls()), 2},
		{"GPU 0 retired pages pending", len(r.devs[0].GetRetiredPagesPendingStatusCalls()), 1},
		// Discovery asks all 36 links; polls ask only the 12 that answered.
		{"GPU 0 NVLink state", len(r.devs[0].GetNvLinkStateCalls()), nvml.NVLINK_MAX_LINKS + polls*12},
	}
	for _, c := range calls {
		if c.got != c.want {
			t.Errorf("%s: asked %d times, want %d", c.name, c.got, c.want)
		}
	}
	if n := testutil.CollectAndCount(collector{p}, "ark_gpu_temperature_celsius"); n != 1 {
		t.Errorf("temperature series = %d, want 1 (GPU 0 only)", n)
	}
	if n := testutil.CollectAndCount(collector{p}, "ark_gpu_ecc_errors_total"); n != 4 {
		t.Errorf("ECC series = %d, want 4 (GPU 0 only)", n)
	}
	if n := testutil.CollectAndCount(collector{p}, "ark_gpu_nvlink_up"); n != 24 {
		t.Errorf("NVLink series = %d, want 24", n)
	}
}

func TestLostGPUFailsThePollAndTheOthersAreStillRead(t *testing.T) {
	r := newRig(t, 3, 0)
	r.devs[1].GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
		return nvml.Utilization{}, nvml.ERROR_GPU_IS_LOST
	}
	p, _ := newProbe(t, r, probe.Env{})
	if err := p.open(); err != nil {
		t.Fatal(err)
	}
	defer p.close()
	err := p.poll(context.Background(), &recorder{})
	if !errors.Is(err, nvml.ERROR_GPU_IS_LOST) || !strings.Contains(err.Error(), "gpu 1: reading utilization") {
		t.Fatalf("poll error = %v, want gpu 1's ERROR_GPU_IS_LOST", err)
	}
	if n := len(r.devs[1].GetMemoryInfoCalls()); n != 0 {
		t.Errorf("a lost GPU was still asked for its memory (%d calls)", n)
	}
	if n := testutil.CollectAndCount(collector{p}, "ark_gpu_utilization_percent"); n != 2 {
		t.Errorf("utilization series = %d, want 2 (GPUs 0 and 2)", n)
	}
	// A lost GPU is not "not supported": it is asked again next poll.
	_ = p.poll(context.Background(), &recorder{})
	if n := len(r.devs[1].GetUtilizationRatesCalls()); n != 2 {
		t.Errorf("lost GPU asked %d times in two polls, want 2", n)
	}
}

func TestGPUIndexByPCIAcceptsKernelAndNVMLForms(t *testing.T) {
	r := newRig(t, 8, 0)
	p, _ := newProbe(t, r, probe.Env{})
	if _, ok := p.GPUIndexByPCI("0000:b7:00.0"); ok {
		t.Fatal("resolved a bus id before any GPU was discovered")
	}
	if err := p.open(); err != nil {
		t.Fatal(err)
	}
	defer p.close()
	var _ probe.GPUResolver = p
	for _, c := range []struct {
		bus  string
		want int
		ok   bool
	}{
		{"00000000:B7:00.0", 6, true}, // NVML
		{"0000:b7:00.0", 6, true},     // sysfs
		{"0000:B7:00", 6, true},       // NVRM: Xid (PCI:0000:b7:00)
		{"b7:00.0", 6, true},          // lspci
		{"b7:00", 6, true},
		{"0000:07:00.0", 0, true},
		{" 0000:bd:00.0 ", 7, true},
		{"0001:b7:00.0", 0, false}, // another domain
		{"0000:b8:00.0", 0, false}, // no GPU there
		{"0000:b7:01.0", 0, false}, // another device on the bus
		{"", 0, false},
		{"garbage", 0, false},
		{"0000:b7:00.9", 0, false}, // no function 9
		{"0000:zz:00.0", 0, false},
	} {
		got, ok := p.GPUIndexByPCI(c.bus)
		if got != c.want || ok != c.ok {
			t.Errorf("GPUIndexByPCI(%q) = %d, %v; want %d, %v", c.bus, got, ok, c.want, c.ok)
		}
	}
}

func TestRunWithoutDriverReturnsErrNoData(t *testing.T) {
	r := newRig(t, 8, 0)
	r.srv.InitFunc = func() nvml.Return { return nvml.ERROR_DRIVER_NOT_LOADED }
	p, reg := newProbe(t, r, probe.Env{})
	err := p.Run(context.Background(), &recorder{})
	if !errors.Is(err, probe.ErrNoData) || !errors.Is(err, nvml.ERROR_DRIVER_NOT_LOADED) {
		t.Fatalf("Run = %v, want ErrNoData wrapping ERROR_DRIVER_NOT_LOADED", err)
	}
	if n, _ := testutil.GatherAndCount(reg); n != 0 {
		t.Errorf("%d series exported without a driver", n)
	}
}

func TestRunWithoutGPUsReturnsErrNoData(t *testing.T) {
	r := newRig(t, 8, 0)
	r.srv.Devices = nil
	p, _ := newProbe(t, r, probe.Env{})
	if err := p.Run(context.Background(), &recorder{}); !errors.Is(err, probe.ErrNoData) {
		t.Fatalf("Run = %v, want ErrNoData", err)
	}
	if n := len(r.srv.ShutdownCalls()); n != 1 {
		t.Errorf("Shutdown called %d times after a successful Init, want 1", n)
	}
}

// TestRegisteredProbeOnThisHost runs the registered factory, which loads the
// real libnvidia-ml.so.1: on a host without the driver it must say ErrNoData
// and not panic; on a host with one it runs until ctx ends.
func TestRegisteredProbeOnThisHost(t *testing.T) {
	i := slices.IndexFunc(probe.Specs(), func(s probe.Spec) bool { return s.Name == Name })
	if i < 0 {
		t.Fatal("nvml probe not registered")
	}
	spec := probe.Specs()[i]
	if !spec.Default {
		t.Error("nvml probe is not enabled by default")
	}
	pr, err := spec.New(probe.Env{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err = pr.Run(ctx, &recorder{})
	switch {
	case err == nil:
		t.Skip("NVML is present on this host: ran until the context ended")
	case !errors.Is(err, probe.ErrNoData):
		t.Fatalf("Run without a driver = %v, want ErrNoData", err)
	}
	t.Logf("Run: %v", err)
}

func TestRunEmitsXIDAsHardwareErrorAndStopsCleanly(t *testing.T) {
	r := newRig(t, 8, 0)
	p, reg := newProbe(t, r, probe.Env{})
	ctx, cancel := context.WithCancel(context.Background())
	var sink recorder
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, &sink) }()

	r.xid <- nvml.EventData{Device: r.devs[6], EventType: nvml.EventTypeXidCriticalError, EventData: 79}
	var got event.Event
	waitFor(t, "the XID event", func() bool {
		for _, ev := range sink.events() {
			if ev.Type == event.ErrorHW {
				got = ev
				return true
			}
		}
		return false
	})
	want := event.Event{
		TS: testNow, Type: event.ErrorHW, EntityID: "gpu-6",
		Value: "Xid 79: GPU has fallen off the bus",
		Attrs: event.Attrs{{Key: event.AttrXID, Value: "79"}, {Key: event.AttrPCIBus, Value: "0000:b7:00.0"}},
	}
	if got.TS != want.TS || got.EntityID != want.EntityID || got.Value != want.Value || !slices.Equal(got.Attrs, want.Attrs) || got.NodeID != "" {
		t.Errorf("XID event:\n got %+v\nwant %+v", got, want)
	}
	waitFor(t, "the first poll's metrics", func() bool {
		n, _ := testutil.GatherAndCount(reg, "ark_gpu_utilization_percent")
		return n == 8
	})

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancel = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if n := r.freed.Load(); n != 1 {
		t.Errorf("event set freed %d times, want 1", n)
	}
	if n := len(r.srv.ShutdownCalls()); n != 1 {
		t.Errorf("Shutdown called %d times, want 1", n)
	}
	if n, _ := testutil.GatherAndCount(reg); n != 0 {
		t.Errorf("%d series still exported after Run returned", n)
	}
}

func TestRunWithoutXIDSupportPollsWithoutWatcher(t *testing.T) {
	r := newRig(t, 2, 0)
	for _, d := range r.devs {
		d.RegisterEventsFunc = func(uint64, nvml.EventSet) nvml.Return { return nvml.ERROR_NOT_SUPPORTED }
	}
	p, _ := newProbe(t, r, probe.Env{})
	ctx, cancel := context.WithCancel(context.Background())
	var sink recorder
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, &sink) }()
	waitFor(t, "compute events", func() bool { return len(sink.events()) > 0 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if n := r.waits.Load(); n != 0 {
		t.Errorf("waited %d times on an event set no GPU registered with", n)
	}
	if n := r.freed.Load(); n != 1 {
		t.Errorf("event set freed %d times, want 1", n)
	}
}

func TestXIDOnUnknownDeviceIsDropped(t *testing.T) {
	r := newRig(t, 2, 0)
	p, _ := newProbe(t, r, probe.Env{})
	if err := p.open(); err != nil {
		t.Fatal(err)
	}
	defer p.close()
	var sink recorder
	p.emitXID(&sink, nvml.EventData{EventType: nvml.EventTypeXidCriticalError, EventData: 48})
	if n := len(sink.events()); n != 0 {
		t.Errorf("emitted %d events for an XID without a device", n)
	}
	p.emitXID(&sink, nvml.EventData{Device: r.devs[1], EventType: nvml.EventTypeXidCriticalError, EventData: 9999})
	if evs := sink.events(); len(evs) != 1 || evs[0].Value != "Xid 9999" || evs[0].EntityID != "gpu-1" {
		t.Errorf("XID missing from the catalog: got %+v, want one event valued \"Xid 9999\" on gpu-1", evs)
	}
}
