package procfs

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probe"
)

type fakeTracker struct {
	mu sync.Mutex
	ts []probe.Tracked
}

func (f *fakeTracker) Tracked() []probe.Tracked {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]probe.Tracked(nil), f.ts...)
}

type sinkRec struct {
	mu  sync.Mutex
	evs []event.Event
}

func (s *sinkRec) Emit(ev *event.Event) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.evs = append(s.evs, ev.Clone())
	return true
}

func (s *sinkRec) states(pid int64) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, ev := range s.evs {
		if ev.PID == pid {
			out = append(out, ev.Value)
		}
	}
	return out
}

func writeStat(t *testing.T, root string, pid int64, state byte, utime, stime, start uint64) {
	t.Helper()
	dir := filepath.Join(root, strconv.FormatInt(pid, 10))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// A command name with spaces and parentheses, as python can have.
	line := fmt.Sprintf("%d (pt_main (rank) 3) %c 1 1 1 0 -1 4194560 100 0 0 0 %d %d 0 0 20 0 12 0 %d 1000 100 18446744073709551615\n",
		pid, state, utime, stime, start)
	if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestParseStatCountsFieldsFromTheLastParen(t *testing.T) {
	st, err := ParseStat([]byte("4123 (python (x) y) D 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 12 0 98765 1000 100\n"))
	if err != nil {
		t.Fatal(err)
	}
	if st.State != 'D' || st.UTime != 250 || st.STime != 50 || st.StartTime != 98765 {
		t.Fatalf("%+v", st)
	}
	for _, bad := range []string{"", "12 (x", "12 (x) R 1 2", "12 (x) R 1 2 3 4 5 6 7 8 9 10 a b 0 0 20 0 12 0 1 1 1"} {
		if _, err := ParseStat([]byte(bad)); err == nil {
			t.Errorf("%q must not parse", bad)
		}
	}
}

func newFixtureProbe(t *testing.T, root string, tr probe.Tracker, clock *time.Time) *Probe {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(root, "self"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "self", "stat"), []byte("1 (init) S 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := New(probe.Env{Paths: probe.Paths{ProcFS: root}, Tracker: tr,
		Config: func(v any) error { v.(*Config).StallWindow = 10 * time.Second; return nil }})
	if err != nil {
		t.Fatal(err)
	}
	pp := p.(*Probe)
	pp.now = func() time.Time { return *clock }
	return pp
}

func TestStalledWhenCPUAndGPUStayFlat(t *testing.T) {
	root := t.TempDir()
	clock := time.UnixMilli(1764300000000)
	tr := &fakeTracker{}
	p := newFixtureProbe(t, root, tr, &clock)
	var sink sinkRec
	// pid 10: busy (CPU grows). pid 11: flat CPU, flat GPU. pid 12: flat
	// CPU but its GPU works.
	for i := range 15 {
		for pid, cpu := range map[int64]uint64{10: uint64(100 * i), 11: 500, 12: 700} {
			writeStat(t, root, pid, 'S', cpu, 0, 4242)
		}
		gpu12 := 90.0
		if i%2 == 0 {
			gpu12 = 40
		}
		tr.ts = []probe.Tracked{
			{PID: 10, JobID: "j", GPUUtil: 95, GPUUtilTS: clock.UnixMilli()},
			{PID: 11, JobID: "j", GPUUtil: 100, GPUUtilTS: clock.UnixMilli()},
			{PID: 12, JobID: "j", GPUUtil: gpu12, GPUUtilTS: clock.UnixMilli()},
		}
		if err := p.poll(&sink); err != nil {
			t.Fatal(err)
		}
		clock = clock.Add(time.Second)
	}
	last := func(pid int64) string { s := sink.states(pid); return s[len(s)-1] }
	if got := last(10); got != "S" {
		t.Errorf("busy process: %s", got)
	}
	if got := last(11); got != "stalled" {
		t.Errorf("flat CPU and GPU for > window: %s (%v)", got, sink.states(11))
	}
	if got := last(12); got != "S" {
		t.Errorf("GPU still moving: %s", got)
	}
	// Not stalled before the window has passed.
	if s := sink.states(11); s[0] != "S" {
		t.Errorf("first verdict %v", s)
	}
}

func TestPidReuseAndVanishedProcessAreExited(t *testing.T) {
	root := t.TempDir()
	clock := time.UnixMilli(1764300000000)
	tr := &fakeTracker{ts: []probe.Tracked{{PID: 20, JobID: "j"}, {PID: 21, JobID: "j"}}}
	p := newFixtureProbe(t, root, tr, &clock)
	var sink sinkRec
	writeStat(t, root, 20, 'R', 1, 1, 1000)
	writeStat(t, root, 21, 'R', 1, 1, 2000)
	if err := p.poll(&sink); err != nil {
		t.Fatal(err)
	}
	writeStat(t, root, 20, 'R', 1, 1, 9999) // another process got pid 20
	if err := os.RemoveAll(filepath.Join(root, "21")); err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(time.Second)
	if err := p.poll(&sink); err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(time.Second)
	if err := p.poll(&sink); err != nil {
		t.Fatal(err)
	}
	for _, pid := range []int64{20, 21} {
		s := sink.states(pid)
		if len(s) != 2 || s[0] != "R" || s[1] != "exited" {
			t.Errorf("pid %d: %v, want [R exited] (exited said once)", pid, s)
		}
	}
}

func TestRealProcessStateAndExit(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := int64(cmd.Process.Pid)
	tr := &fakeTracker{ts: []probe.Tracked{{PID: pid, JobID: "j"}}}
	p, err := New(probe.Env{Paths: probe.DefaultPaths(), Tracker: tr,
		Config: func(v any) error { v.(*Config).Interval = 20 * time.Millisecond; return nil }})
	if err != nil {
		t.Fatal(err)
	}
	var sink sinkRec
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- p.Run(ctx, &sink) }()
	waitFor(t, func() bool { return len(sink.states(pid)) > 0 })
	if s := sink.states(pid)[0]; s != "S" && s != "R" {
		t.Errorf("sleeping process state %q", s)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	waitFor(t, func() bool { s := sink.states(pid); return s[len(s)-1] == "exited" })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestNoTrackerMeansNoData(t *testing.T) {
	if _, err := New(probe.Env{Paths: probe.DefaultPaths()}); err == nil {
		t.Fatal("want ErrNoData")
	}
	if _, err := New(probe.Env{Paths: probe.Paths{ProcFS: t.TempDir()}, Tracker: &fakeTracker{}}); err == nil {
		t.Fatal("an empty procfs is no data")
	}
}

func TestConfigValidation(t *testing.T) {
	c := Config{Interval: time.Minute, StallWindow: time.Second, StallCPUFraction: 2}
	c.defaults()
	want := "procfs: stall_window (1s) must be at least the interval (1m0s)\nprocfs: stall_cpu_fraction must be within [0,1], got 2"
	if err := c.Validate(); err == nil || err.Error() != want {
		t.Fatalf("got %v\nwant %s", err, want)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
