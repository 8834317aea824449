package kmsg

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.yaml.in/yaml/v3"
	"golang.org/x/sys/unix"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probe"
	"github.com/ark-gpu/ark/internal/fakeclock"
)

func newTestProbe(t *testing.T, env probe.Env) *Probe {
	t.Helper()
	p, err := New(env)
	if err != nil {
		t.Fatal(err)
	}
	return p.(*Probe)
}

func TestProbeIsRegisteredAndOnByDefault(t *testing.T) {
	for _, s := range probe.Specs() {
		if s.Name == "kmsg" {
			if !s.Default {
				t.Error("kmsg is off by default")
			}
			return
		}
	}
	t.Fatal("kmsg is not registered")
}

func TestProbeEmitsXIDEventsFromALogFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kern.log")
	lines := []string{
		"[    0.000000] Linux version 6.8.0-49-generic (buildd@lcy02-amd64-103)",
		"4,1234,5678901234,-;NVRM: Xid (PCI:0000:9b:00): 79, pid=1582259, name=python, GPU has fallen off the bus.",
		"NVRM: SXid (PCI:0000:86:00.0): 12028, Non-fatal, Link 44 egress non-posted PRIV error (First)",
		"NVRM: GPU at PCI:0000:9b:00: GPU-6a1f2b3c-4d5e-6f70-8192-a3b4c5d6e7f8",
		"Nov 28 03:20:00 host kernel: NVRM: Xid (PCI:0000:3b:00): 48, An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at partition 6, subpartition 0.",
		"NVRM: Xid (PCI:0000:9b:00): abc, garbage",
		"NVRM: Xid (PCI:0000:9b:00): 79x, garbage",
		"NVRM: Xid (PCI:nope): 79, garbage",
		strings.Repeat("x", 70<<10),
		"[12345.678901] NVRM: Xid (PCI:0000:17:00): 154, GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)",
		"NVRM: Xid (PCI:0008:01:00): 145, pid=<unknown>, name=<unknown>, NVLINK: RLW Error",
	}
	// The last line is cut mid-way, as a writer caught between writes.
	content := strings.Join(lines, "\n") + "\nNVRM: Xid (PCI:0000:3b:00): 13, pid=77, na"
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	env, reg := testEnv(t, path, nil)
	var observed []error
	var obsMu sync.Mutex
	env.Observe = func(_ time.Duration, err error) {
		obsMu.Lock()
		observed = append(observed, err)
		obsMu.Unlock()
	}
	p := newTestProbe(t, env)
	s := newSink()
	stop := startProbe(t, p, s)

	evs := s.waitEvents(t, 4)
	want := []struct {
		entity, value string
		pid           int64
		attrs         map[string]string
	}{
		{"gpu-2", "Xid 79: GPU has fallen off the bus.", 1582259, map[string]string{"xid": "79", "pci_bus": "0000:9b:00", "action": "RESTART_BM", "process": "python"}},
		{"gpu-1", "Xid 48: An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at partition 6, subpartition 0.", 0, map[string]string{"xid": "48", "pci_bus": "0000:3b:00", "action": "WORKFLOW_XID_48"}},
		{"gpu-0", "Xid 154: GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)", 0, map[string]string{"xid": "154", "pci_bus": "0000:17:00", "action": "XID_154", "recovery_action": "Node Reboot Required", "recovery_action_code": "0x2"}},
		{"gpu-pci-0008:01:00", "Xid 145: NVLINK: RLW Error", 0, map[string]string{"xid": "145", "pci_bus": "0008:01:00", "action": "WORKFLOW_NVLINK5_ERR"}},
	}
	for i, w := range want {
		checkEvent(t, evs[i], w.entity, w.value, w.pid, w.attrs)
	}

	// The writer finishes the cut line: only now is it read.
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("me=train, Graphics Exception: ESR 0x504648=0x2000d\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	evs = s.waitEvents(t, 5)
	checkEvent(t, evs[4], "gpu-1", "Xid 13: Graphics Exception: ESR 0x504648=0x2000d", 77,
		map[string]string{"xid": "13", "pci_bus": "0000:3b:00", "action": "RESTART_APP", "process": "train"})

	if err := stop(); err != nil {
		t.Fatalf("Run returned %v after cancel, want nil", err)
	}
	if len(s.snapshot()) != 5 {
		t.Errorf("got %d events, want 5", len(s.snapshot()))
	}
	expected := `
# HELP ark_kmsg_lines_ignored_total Kernel log lines skipped: malformed NVRM Xid lines (malformed_pci, malformed_code), lines over 64 KiB (too_long), and /dev/kmsg overruns where the kernel overwrote unread records (overrun).
# TYPE ark_kmsg_lines_ignored_total counter
ark_kmsg_lines_ignored_total{reason="malformed_code"} 2
ark_kmsg_lines_ignored_total{reason="malformed_pci"} 1
ark_kmsg_lines_ignored_total{reason="overrun"} 0
ark_kmsg_lines_ignored_total{reason="too_long"} 1
# HELP ark_kmsg_lines_total Kernel log lines (or /dev/kmsg records) read.
# TYPE ark_kmsg_lines_total counter
ark_kmsg_lines_total 12
# HELP ark_xid_errors_total NVIDIA XID errors seen in the kernel log, repeats folded by de-duplication included.
# TYPE ark_xid_errors_total counter
ark_xid_errors_total{action="RESTART_APP",gpu="1",xid="13"} 1
ark_xid_errors_total{action="RESTART_BM",gpu="2",xid="79"} 1
ark_xid_errors_total{action="WORKFLOW_NVLINK5_ERR",gpu="pci-0008:01:00",xid="145"} 1
ark_xid_errors_total{action="WORKFLOW_XID_48",gpu="1",xid="48"} 1
ark_xid_errors_total{action="XID_154",gpu="0",xid="154"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(expected)); err != nil {
		t.Error(err)
	}
	obsMu.Lock()
	defer obsMu.Unlock()
	if len(observed) != 1 || observed[0] != nil {
		t.Errorf("Observe calls = %v, want one successful open", observed)
	}
}

func checkEvent(t *testing.T, ev event.Event, entity, value string, pid int64, attrs map[string]string) {
	t.Helper()
	if ev.Type != event.ErrorHW || ev.EntityID != entity || ev.Value != value || ev.PID != pid || ev.NodeID != "" {
		t.Errorf("event = %+v\nwant type=error.hw entity=%s value=%q pid=%d", ev, entity, value, pid)
	}
	if len(ev.Attrs) != len(attrs) {
		t.Errorf("%s: attrs = %v, want %v", entity, ev.Attrs, attrs)
	}
	for k, v := range attrs {
		if got := ev.Attrs.Get(k); got != v {
			t.Errorf("%s: attr %s = %q, want %q", entity, k, got, v)
		}
	}
	if age := time.Since(time.UnixMilli(ev.TS)); age < 0 || age > time.Minute {
		t.Errorf("%s: ts %d is not now", entity, ev.TS)
	}
}

func TestProbeReadsAFIFOAcrossWriters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kmsg.fifo")
	if err := unix.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	env, _ := testEnv(t, path, nil)
	p := newTestProbe(t, env)
	s := newSink()
	stop := startProbe(t, p, s)

	write := func(line string) {
		t.Helper()
		// The probe holds the FIFO open, so a writer's open does not block
		// once Run has opened it; wait for that with O_NONBLOCK (ENXIO
		// until a reader is there).
		var w *os.File
		waitFor(t, "the probe to open the FIFO", func() bool {
			fd, err := unix.Open(path, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
			if err != nil {
				return false
			}
			w = os.NewFile(uintptr(fd), path)
			return true
		})
		defer w.Close()
		if _, err := w.WriteString(line); err != nil {
			t.Fatal(err)
		}
	}
	write("[  1.0] usb 1-1: new high-speed USB device\n[ 2.0] NVRM: Xid (PCI:0000:9b:00): 79, pid=42, name=python, GPU has fallen off the bus.\n")
	evs := s.waitEvents(t, 1)
	checkEvent(t, evs[0], "gpu-2", "Xid 79: GPU has fallen off the bus.", 42,
		map[string]string{"xid": "79", "pci_bus": "0000:9b:00", "action": "RESTART_BM", "process": "python"})

	// The first writer left; a second one is still heard.
	write("NVRM: Xid (PCI:0000:17:00): 154, GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)\n")
	evs = s.waitEvents(t, 2)
	if evs[1].EntityID != "gpu-0" || evs[1].Attrs.Get(AttrRecoveryAction) != "GPU Reset Required" {
		t.Errorf("second event = %+v", evs[1])
	}
	if err := stop(); err != nil {
		t.Fatalf("Run returned %v after cancel, want nil", err)
	}
}

func TestProbeFoldsTenThousandIdenticalXIDsIntoOneEventAndASummary(t *testing.T) {
	const n = 10_000
	line := "[ 812.000001] NVRM: Xid (PCI:0000:9b:00): 79, pid=1582259, name=python, GPU has fallen off the bus.\n"
	path := filepath.Join(t.TempDir(), "kern.log")
	if err := os.WriteFile(path, []byte(strings.Repeat(line, n)), 0o644); err != nil {
		t.Fatal(err)
	}
	env, _ := testEnv(t, path, nil) // default window: 10s
	p := newTestProbe(t, env)
	clk := fakeclock.New(time.Unix(1_700_000_000, 0))
	p.now = clk.Now
	s := newSink()
	stop := startProbe(t, p, s)

	waitFor(t, "all lines read", func() bool { return testutil.ToFloat64(p.m.lines) == n })
	if got := testutil.ToFloat64(p.m.xids.WithLabelValues("2", "79", "RESTART_BM")); got != n {
		t.Errorf("ark_xid_errors_total = %v, want %d: every line counts", got, n)
	}
	if evs := s.snapshot(); len(evs) != 1 {
		t.Fatalf("got %d events inside the window, want 1", len(evs))
	}

	clk.Advance(10 * time.Second)
	evs := s.waitEvents(t, 2)
	sum := evs[1]
	if sum.EntityID != "gpu-2" || sum.Attrs.Get(attrCount) != "10000" || sum.Attrs.Get(attrWindow) != "10s" ||
		sum.Attrs.Get(event.AttrXID) != "79" || sum.TS != clk.Now().UnixMilli() {
		t.Errorf("summary = %+v", sum)
	}
	if evs[0].Attrs.Get(attrCount) != "" {
		t.Errorf("first event carries a count: %v", evs[0].Attrs)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if evs := s.snapshot(); len(evs) != 2 {
		t.Errorf("got %d events, want exactly 2", len(evs))
	}
}

func TestProbeFlushesOpenSummariesWhenStopped(t *testing.T) {
	line := "NVRM: Xid (PCI:0000:3b:00): 94, pid=<unknown>, name=<unknown>, Contained: SM (0x1). RST: No, D-RST: No\n"
	path := filepath.Join(t.TempDir(), "kern.log")
	if err := os.WriteFile(path, []byte(line+line+line), 0o644); err != nil {
		t.Fatal(err)
	}
	env, _ := testEnv(t, path, &Config{DedupWindow: time.Hour})
	p := newTestProbe(t, env)
	s := newSink()
	stop := startProbe(t, p, s)
	waitFor(t, "all lines read", func() bool { return testutil.ToFloat64(p.m.lines) == 3 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	evs := s.snapshot()
	if len(evs) != 2 || evs[1].Attrs.Get(attrCount) != "3" {
		t.Errorf("events = %+v, want the XID and a summary with count=3", evs)
	}
}

func TestRunReturnsErrNoDataWhenTheLogIsMissing(t *testing.T) {
	env, _ := testEnv(t, filepath.Join(t.TempDir(), "no-such-kmsg"), nil)
	p := newTestProbe(t, env)
	var observed error
	p.observeF = func(_ time.Duration, err error) { observed = err }
	err := p.Run(context.Background(), newSink())
	if !errors.Is(err, probe.ErrNoData) {
		t.Fatalf("Run = %v, want ErrNoData", err)
	}
	if observed == nil {
		t.Error("the failed open was not observed")
	}
}

func TestRunReturnsErrNoDataWhenTheLogIsForbidden(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kmsg")
	if err := os.WriteFile(path, nil, 0o000); err != nil {
		t.Fatal(err)
	}
	if f, err := os.Open(path); err == nil {
		// Root (CAP_DAC_OVERRIDE) opens a mode-000 file: check the error
		// a denied open of /dev/kmsg gives (EPERM under dmesg_restrict,
		// EACCES by mode) maps the same way.
		f.Close()
		for _, errno := range []syscall.Errno{syscall.EPERM, syscall.EACCES} {
			err := openErr(path, &os.PathError{Op: "open", Path: path, Err: errno})
			if !errors.Is(err, probe.ErrNoData) {
				t.Errorf("open failing with %v gives %v, want ErrNoData", errno, err)
			}
		}
		return
	}
	env, _ := testEnv(t, path, nil)
	err := newTestProbe(t, env).Run(context.Background(), newSink())
	if !errors.Is(err, probe.ErrNoData) {
		t.Fatalf("Run = %v, want ErrNoData", err)
	}
}

func TestRunRejectsADirectory(t *testing.T) {
	env, _ := testEnv(t, t.TempDir(), nil)
	err := newTestProbe(t, env).Run(context.Background(), newSink())
	if err == nil || errors.Is(err, probe.ErrNoData) {
		t.Fatalf("Run = %v, want a plain error", err)
	}
}

// TestProbeFollowsTheRealKmsgFromItsEnd runs against this machine's
// /dev/kmsg: it starts at the end (no replay of the boot log), reads a
// record written after it started, and stops at once on cancel although
// its read is blocked.
func TestProbeFollowsTheRealKmsgFromItsEnd(t *testing.T) {
	const dev = "/dev/kmsg"
	old, err := countKmsgRecords(dev)
	if err != nil {
		t.Skipf("cannot read %s here: %v", dev, err)
	}
	env, _ := testEnv(t, dev, nil)
	opened := make(chan error, 1)
	env.Observe = func(_ time.Duration, err error) {
		select {
		case opened <- err:
		default:
		}
	}
	p := newTestProbe(t, env)
	stop := startProbe(t, p, newSink())
	if err := <-opened; err != nil {
		t.Fatalf("opening %s: %v", dev, err)
	}

	if w, err := os.OpenFile(dev, os.O_WRONLY, 0); err == nil {
		// A harmless info-level line, so the test sees one record arrive.
		_, werr := w.WriteString("<6>ark kmsg probe test: reading /dev/kmsg\n")
		w.Close()
		if werr != nil {
			t.Fatalf("writing %s: %v", dev, werr)
		}
		waitFor(t, "the written record", func() bool { return testutil.ToFloat64(p.m.lines) >= 1 })
	} else {
		t.Logf("cannot write %s (%v): only checking start and stop", dev, err)
	}
	// Give a replay, were there one, the chance to happen before counting.
	time.Sleep(50 * time.Millisecond)
	if got := testutil.ToFloat64(p.m.lines); old > 20 && got >= float64(old) {
		t.Errorf("read %v records with %d already in the ring buffer: the boot log was replayed", got, old)
	}
	start := time.Now()
	if err := stop(); err != nil {
		t.Fatalf("Run returned %v after cancel, want nil", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Run took %v to stop", d)
	}
}

// countKmsgRecords counts the records now in the kernel's ring buffer.
func countKmsgRecords(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	buf := make([]byte, recordBufSize)
	n := 0
	for {
		_, err := unix.Read(fd, buf)
		switch {
		case err == nil:
			n++
		case errors.Is(err, syscall.EPIPE):
		case errors.Is(err, syscall.EAGAIN):
			return n, nil
		default:
			return n, err
		}
	}
}

func TestConfigDecodesDedupWindow(t *testing.T) {
	cfg := DefaultConfig()
	if cfg.DedupWindow != 10*time.Second {
		t.Errorf("default dedup_window = %v, want 10s", cfg.DedupWindow)
	}
	if err := yaml.Unmarshal([]byte("dedup_window: 2s\n"), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.DedupWindow != 2*time.Second {
		t.Errorf("dedup_window = %v, want 2s", cfg.DedupWindow)
	}
}

func TestNewRejectsANegativeDedupWindow(t *testing.T) {
	env, _ := testEnv(t, "/dev/null", nil)
	env.Config = func(v any) error { return yaml.Unmarshal([]byte("dedup_window: -1s\n"), v) }
	_, err := New(env)
	const want = "probe kmsg config: dedup_window must not be negative, got -1s"
	if err == nil || err.Error() != want {
		t.Fatalf("New = %v, want %q", err, want)
	}
}

func TestNewRegistersMetricsTwiceOnOneRegistry(t *testing.T) {
	env, _ := testEnv(t, "/dev/null", nil)
	a := newTestProbe(t, env)
	b := newTestProbe(t, env)
	if a.m.lines != b.m.lines {
		t.Error("a second New made new counters instead of reusing the registered ones")
	}
}
