package kmsg

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probe"
)

// noiseTemplates are kernel log lines of a busy GPU node; %d verbs get
// random numbers.
var noiseTemplates = []string{
	"nvme nvme0: I/O %d QID %d timeout, completion polled",
	"IPv6: ADDRCONF(NETDEV_CHANGE): eth%d: link becomes ready",
	`audit: type=1400 audit(1700000000.%d:%d): apparmor="DENIED" operation="open" profile="snap.docker" name="/proc/%d/mounts"`,
	"mlx5_core 0000:0c:00.%d: mlx5_fw_tracer_handle_traces:%d:(pid %d): FWTracer: Events were lost",
	"EXT4-fs (nvme0n1p%d): mounted filesystem with ordered data mode. Quota mode: none. inode %d",
	"python[%d]: segfault at %d ip 00007f3a2b1c4d5e sp 00007ffd1234abcd error 4 in libc.so.6",
	"TCP: request_sock_TCP: Possible SYN flooding on port %d. Sending cookies.  Check SNMP counters. %d",
	"pcieport 0000:00:01.%d: AER: Corrected error received: 0000:01:00.%d",
	"INFO: task python:%d blocked for more than %d seconds.",
	"cgroup: fork rejected by pids controller in /kubepods/burstable/pod%d/%d",
	"nvidia-modeset: Loading NVIDIA Kernel Mode Setting Driver for UNIX platforms  550.54.%d  %d",
	"NVRM: loading NVIDIA UNIX x86_64 Kernel Module  550.54.%d  Tue Mar  5 22:23:56 UTC 20%d",
	"mlx5_core 0000:%d:00.0 ib%d: Link up",
	"Out of memory: Killed process %d (python) total-vm:%dkB, anon-rss:0kB, file-rss:0kB",
	"veth%d: entered promiscuous mode; br-%d: port 2(veth) entered forwarding state",
	"nvidia-peermem nv_get_p2p_free_callback:%d ERROR detected invalid context, skipping further processing %d",
}

// lookAlikeTemplates look like XID lines but are not, or are malformed.
var lookAlikeTemplates = []string{
	"NVRM: SXid (PCI:0000:%02x:00.0): 12028, Non-fatal, Link %d egress non-posted PRIV error (First)",
	"nvidia-nvswitch%d: SXid (PCI:0000:%02x:00.0): 20034, Fatal, Link 34 LTSSM Fault Up",
	"NVRM: GPU at PCI:0000:%02x:00: GPU-6a1f2b3c-4d5e-6f70-8192-a3b4c5d6e7%02x",
	"NVRM: Xid (PCI:0000:%02x:00): x%d, GPU has fallen off the bus.",
}

// xidTemplates are XID lines; the first verb is the bus, the second the pid.
var xidTemplates = []string{
	"NVRM: Xid (PCI:0000:%02x:00): 79, pid=%d, name=python, GPU has fallen off the bus.",
	"NVRM: Xid (PCI:0000:%02x:00): 31, pid=%d, name=python3, Ch 00000010, intr 10000000. MMU Fault: ENGINE GRAPHICS GPCCLIENT_T1_0 faulted @ 0x7f7e_6e800000. Fault is of type FAULT_PDE ACCESS_TYPE_VIRT_READ",
	"NVRM: Xid (PCI:0000:%02x:00): 94, pid=%d, name=<unknown>, Contained: SM (0x1). RST: No, D-RST: No",
	"NVRM: Xid (PCI:0008:%02x:00): 145, pid=%d, name=<unknown>, NVLINK: RLW Error",
}

var (
	kernelLogOnce  sync.Once
	kernelLog      []byte
	kernelLogLines int
	kernelLogXIDs  int
)

// benchKernelLog returns a 1,000,000-line kernel log with prefixes of
// /dev/kmsg, dmesg and syslog, about 1% XID lines and 1% look-alikes, and
// how many XID lines it holds.
func benchKernelLog() ([]byte, int, int) {
	kernelLogOnce.Do(func() {
		const lines = 1_000_000
		rng := rand.New(rand.NewPCG(1, 2))
		buf := make([]byte, 0, lines*110)
		for i := range lines {
			switch rng.IntN(4) {
			case 0:
				buf = fmt.Appendf(buf, "6,%d,%d,-;", i, 8_000_000_000+i*1000)
			case 1:
				buf = fmt.Appendf(buf, "[%6d.%06d] ", 8000+i/1000, i%1_000_000)
			case 2:
				buf = fmt.Appendf(buf, "Nov 28 03:%02d:%02d gpu-node-17 kernel: ", i/60%60, i%60)
			}
			switch rng.IntN(100) {
			case 0:
				buf = fmt.Appendf(buf, xidTemplates[rng.IntN(len(xidTemplates))], 0x17+rng.IntN(8)*0x10, 1000+rng.IntN(1_000_000))
				kernelLogXIDs++
			case 1:
				buf = fill(buf, lookAlikeTemplates[rng.IntN(len(lookAlikeTemplates))], rng, 256)
			default:
				buf = fill(buf, noiseTemplates[rng.IntN(len(noiseTemplates))], rng, 100_000)
			}
			buf = append(buf, '\n')
		}
		kernelLog, kernelLogLines = buf, lines
	})
	return kernelLog, kernelLogLines, kernelLogXIDs
}

// fill formats tmpl with a random number below limit for each verb.
func fill(buf []byte, tmpl string, rng *rand.Rand, limit int) []byte {
	args := make([]any, strings.Count(tmpl, "%"))
	for i := range args {
		args[i] = rng.IntN(limit)
	}
	return fmt.Appendf(buf, tmpl, args...)
}

// BenchmarkScanKernelLog parses a 1M-line kernel log line by line; one op
// is the whole log. Every XID line has its code, bus and pid read.
func BenchmarkScanKernelLog(b *testing.B) {
	log, lines, want := benchKernelLog()
	b.SetBytes(int64(len(log)))
	b.ReportAllocs()
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	b.ResetTimer()
	var got, pids int
	for b.Loop() {
		got, pids = 0, 0
		rest := log
		for len(rest) > 0 {
			i := bytes.IndexByte(rest, '\n')
			x, ok := ParseXID(rest[:i])
			if ok {
				got++
				if x.Code > 0 && x.PCIBus != "" && x.PIDKnown {
					pids++
				}
			}
			rest = rest[i+1:]
		}
	}
	b.StopTimer()
	runtime.ReadMemStats(&ms1)
	if got != want || pids != want {
		b.Fatalf("parsed %d XID lines (%d with a pid), want %d", got, pids, want)
	}
	b.ReportMetric(float64(lines)*float64(b.N)/b.Elapsed().Seconds(), "lines/s")
	b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/float64(b.N)/float64(want), "allocs/xid")
}

// BenchmarkProbeLines is the probe's whole per-line path over the same log:
// parse, metrics, GPU index, event, de-duplication, emit.
func BenchmarkProbeLines(b *testing.B) {
	log, lines, want := benchKernelLog()
	p := &Probe{
		log: discardLogger(), m: mustMetrics(b), now: time.Now,
		cfg: DefaultConfig(),
	}
	var emitted int
	r := &runner{
		p:     p,
		sink:  probe.SinkFunc(func(*event.Event) bool { emitted++; return true }),
		gpus:  newGPUIndexer(nil, probe.Paths{SysFS: b.TempDir(), ProcFS: b.TempDir()}),
		dedup: newDeduper(p.cfg.DedupWindow),
	}
	b.SetBytes(int64(len(log)))
	b.ReportAllocs()
	for b.Loop() {
		rest := log
		for len(rest) > 0 {
			i := bytes.IndexByte(rest, '\n')
			r.line(rest[:i])
			rest = rest[i+1:]
		}
		r.read(lines)
	}
	if emitted == 0 || emitted > want {
		b.Fatalf("emitted %d events for %d XID lines per pass", emitted, want)
	}
	b.ReportMetric(float64(lines)*float64(b.N)/b.Elapsed().Seconds(), "lines/s")
}
