package jobs

import (
	"fmt"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// procFixture writes a procfs of n processes like a busy GPU host's: most
// are daemons and shells with an ordinary environment, a few are ranks,
// some are kernel threads.
func procFixture(b *testing.B, n int) string {
	root := b.TempDir()
	base := env("HOME=/root", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
		"TERM=xterm", "SHELL=/bin/bash", "USER=root", "PWD=/root", "LOGNAME=root", "SHLVL=1")
	for pid := 1; pid <= n; pid++ {
		p := fakeProc{pid: pid, start: uint64(pid), environ: base, cgroup: "0::/system.slice/x.service\n"}
		switch {
		case pid%250 == 0:
			p.environ = append(append([]byte(nil), base...), env("SLURM_JOB_ID=9", fmt.Sprintf("SLURM_PROCID=%d", pid/250))...)
		case pid%4 == 0:
			p.environ = []byte{}
		}
		writeProc(b, root, p)
	}
	return root
}

// reportCPU reports the process's CPU time (user and system) per
// iteration as cpu-ns/op: the target is CPU, and ns/op on a busy machine
// is mostly waiting for a core.
func reportCPU(b *testing.B) func() {
	start := cpuTime(b)
	return func() {
		b.ReportMetric(float64((cpuTime(b)-start).Nanoseconds())/float64(b.N), "cpu-ns/op")
	}
}

func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkScan2000Cold: the first scan of 2,000 processes, each read in
// full. Target: ≤ 20 ms of CPU (cpu-ns/op).
func BenchmarkScan2000Cold(b *testing.B) {
	root := procFixture(b, 2000)
	at := time.UnixMilli(1_700_000_000_000)
	defer reportCPU(b)()
	for b.Loop() {
		ts := newTestScanner(b, root, Config{}, nil)
		if n := ts.mustScan(b, at, &sink{}); n != 8 {
			b.Fatalf("%d ranks, want 8", n)
		}
	}
}

// BenchmarkScan2000Steady: a scan of 2,000 processes already seen: only
// their stat is read.
func BenchmarkScan2000Steady(b *testing.B) {
	root := procFixture(b, 2000)
	at := time.UnixMilli(1_700_000_000_000)
	ts := newTestScanner(b, root, Config{}, nil)
	ts.mustScan(b, at, &sink{})
	defer reportCPU(b)()
	for b.Loop() {
		if n := ts.mustScan(b, at, &sink{}); n != 8 {
			b.Fatalf("%d ranks, want 8", n)
		}
	}
}

// BenchmarkReadStatFloor2000: only reading the 2,000 stat files, what any
// scan that tells a new process from a known one must do: the floor the
// steady scan is compared with.
func BenchmarkReadStatFloor2000(b *testing.B) {
	root := procFixture(b, 2000)
	buf := make([]byte, 16<<10)
	defer reportCPU(b)()
	for b.Loop() {
		for pid := 1; pid <= 2000; pid++ {
			if _, err := readInto(root+"/"+strconv.Itoa(pid)+"/stat", buf); err != nil {
				b.Fatal(err)
			}
		}
	}
}
