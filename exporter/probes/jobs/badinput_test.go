package jobs

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ark-gpu/ark/event"
)

const podCgroup = "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice/"

func TestBadInputIsSkippedAndCountedNeverFatal(t *testing.T) {
	root := t.TempDir()
	slurm := env("SLURM_JOB_ID=1", "SLURM_PROCID=0")
	huge := append(env("SLURM_JOB_ID=1", "SLURM_PROCID=0", "X="+string(bytes.Repeat([]byte("x"), 1<<20))), 0)
	procs := []fakeProc{
		{pid: 100, start: 1, environ: slurm},   // a good rank
		{pid: 101, start: 1, environDir: true}, // unreadable environ
		{pid: 102, start: 1},                   // vanished before environ was read
		{pid: 103, start: 1, environ: huge},    // 1 MB environ
		{pid: 104, start: 1, environ: env("RANK=one", "MASTER_ADDR=a", "MASTER_PORT=1")}, // non-numeric RANK
		{pid: 105, start: 1, environ: slurm, cgroup: podCgroup + "kata-" + string(bytes.Repeat([]byte("a"), 64)) + ".scope"},
		{pid: 106, start: 1, environ: env("RANK=1", "TORCHELASTIC_RUN_ID=none")}, // a rank of no job
		{pid: 107, start: 1, environ: []byte{}},                                  // a kernel thread
	}
	for _, p := range procs {
		writeProc(t, root, p)
	}
	if err := os.WriteFile(filepath.Join(root, "108"), []byte("not a process"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "109"), 0o755); err != nil { // a stat cut short
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "109", "stat"), []byte("109 (x"), 0o644); err != nil {
		t.Fatal(err)
	}
	ts := newTestScanner(t, root, Config{}, nil)
	sk := &sink{}
	now := time.UnixMilli(1_700_000_000_000)
	if n := ts.mustScan(t, now, sk); n != 2 {
		t.Errorf("%d ranks, want 2 (pids 100 and 105, the latter without its pod)", n)
	}
	want := map[string]float64{
		ReasonUnreadable: 2, ReasonVanished: 1, ReasonEnvironTooLarge: 1, ReasonBadRank: 1,
		ReasonUnknownRuntime: 1, ReasonNoJobID: 1, ReasonMalformedStat: 1,
	}
	check := func() {
		t.Helper()
		for r, n := range want {
			if got := ts.skipped(r); got != n {
				t.Errorf("ark_discovery_skipped_total{reason=%q} = %v, want %v", r, got, n)
			}
		}
	}
	check()
	evs := sk.take()
	if len(evs) != 2 || evs[0].PID+evs[1].PID != 205 {
		t.Fatalf("events %+v, want intent.run of pids 100 and 105", evs)
	}
	// A process is read once: a second scan counts nothing again, and an
	// environment changed under a known pid and start time is not reread.
	writeProc(t, root, fakeProc{pid: 100, start: 1, environ: env("SLURM_JOB_ID=2", "SLURM_PROCID=0")})
	ts.mustScan(t, now.Add(time.Second), sk)
	check()
	if evs := sk.take(); len(evs) != 0 {
		t.Errorf("a rescan of unchanged processes emitted %+v", evs)
	}
	// The same pid with a new start time is a new process.
	writeProc(t, root, fakeProc{pid: 100, start: 2, environ: env("SLURM_JOB_ID=2", "SLURM_PROCID=0")})
	ts.mustScan(t, now.Add(2*time.Second), sk)
	evs = byPID(sk.take(), 100)
	if len(evs) != 2 || evs[0].Value != "exited" || evs[0].JobID != "slurm/1" || evs[1].Type != event.IntentRun || evs[1].JobID != "slurm/2" {
		t.Errorf("pid reuse: %+v, want slurm/1 exited then slurm/2's intent.run", evs)
	}
	// The heartbeat re-emits an unchanged rank.
	ts.mustScan(t, now.Add(2*time.Second+ts.cfg.Heartbeat), sk)
	if evs := byPID(sk.take(), 100); len(evs) != 1 || evs[0].Type != event.IntentRun {
		t.Errorf("heartbeat: %+v", evs)
	}
}
