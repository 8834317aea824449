package jobs

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probe"
)

// fakeProc is one process of a fixture procfs.
type fakeProc struct {
	pid     int
	start   uint64
	environ []byte // nil: no environ file (the process vanished)
	cgroup  string
	// environDir makes environ a directory: reading it fails as a
	// permission error would, even for root.
	environDir bool
}

// env joins variables as /proc/<pid>/environ holds them.
func env(kv ...string) []byte {
	var b []byte
	for _, s := range kv {
		b = append(b, s...)
		b = append(b, 0)
	}
	return b
}

func writeProc(t testing.TB, root string, p fakeProc) {
	t.Helper()
	dir := filepath.Join(root, strconv.Itoa(p.pid))
	if err := os.MkdirAll(filepath.Join(dir, "fd"), 0o755); err != nil {
		t.Fatal(err)
	}
	stat := fmt.Sprintf("%d (python3) S 1 %d %d 0 -1 4194560 100 0 0 0 10 5 0 0 20 0 1 0 %d 1000000 100 18446744073709551615\n",
		p.pid, p.pid, p.pid, p.start)
	files := map[string][]byte{"stat": []byte(stat), "cgroup": []byte(p.cgroup)}
	if p.environ != nil {
		files["environ"] = p.environ
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if p.environDir {
		if err := os.MkdirAll(filepath.Join(dir, "environ"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// sink collects events.
type sink struct {
	mu  sync.Mutex
	evs []event.Event
}

func (s *sink) Emit(ev *event.Event) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := *ev
	c.Attrs = append(event.Attrs(nil), ev.Attrs...)
	s.evs = append(s.evs, c)
	return true
}

func (s *sink) take() []event.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.evs
	s.evs = nil
	return out
}

// byPID returns the events about pid.
func byPID(evs []event.Event, pid int) []event.Event {
	var out []event.Event
	for _, ev := range evs {
		if ev.PID == int64(pid) {
			out = append(out, ev)
		}
	}
	return out
}

// testScanner scans root with cfg's defaults and counts skips in a
// registry of its own.
type testScanner struct {
	*scanner
	m *metrics
}

func newTestScanner(t testing.TB, root string, cfg Config, pods podSource) *testScanner {
	t.Helper()
	cfg.defaults()
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	s := newScanner(probe.Paths{ProcFS: root}, cfg, pods, func(r string) { m.skipped.WithLabelValues(r).Inc() })
	return &testScanner{scanner: s, m: m}
}

func (ts *testScanner) skipped(reason string) float64 {
	return testutil.ToFloat64(ts.m.skipped.WithLabelValues(reason))
}

func (ts *testScanner) mustScan(t testing.TB, at time.Time, sk *sink) int {
	t.Helper()
	n, err := ts.scan(at, sk)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
