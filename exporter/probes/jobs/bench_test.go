package jobs

import (
	"fmt"
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

// BenchmarkScan2000Cold: the first scan of 2,000 processes, each read in
// full. Target: ≤ 20 ms of CPU (ns/op on -cpu 1).
func BenchmarkScan2000Cold(b *testing.B) {
	root := procFixture(b, 2000)
	at := time.UnixMilli(1_700_000_000_000)
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
	for b.Loop() {
		if n := ts.mustScan(b, at, &sink{}); n != 8 {
			b.Fatalf("%d ranks, want 8", n)
		}
	}
}
