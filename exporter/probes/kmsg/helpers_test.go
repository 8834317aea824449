package kmsg

import (
	"bufio"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probe"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// unpackTree writes testdata/<name> (sections "-- path --" for files and
// "-- path -> target --" for symlinks) under a temp dir and returns it.
func unpackTree(t *testing.T, name string) string {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	root := t.TempDir()
	var cur *strings.Builder
	var curPath string
	flush := func() {
		if cur == nil {
			return
		}
		p := filepath.Join(root, curPath)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(cur.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		cur = nil
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "-- ") && strings.HasSuffix(line, " --") {
			flush()
			hdr := strings.TrimSuffix(strings.TrimPrefix(line, "-- "), " --")
			if path, target, ok := strings.Cut(hdr, " -> "); ok {
				p := filepath.Join(root, path)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(target, p); err != nil {
					t.Fatal(err)
				}
				continue
			}
			curPath, cur = hdr, &strings.Builder{}
			continue
		}
		if cur != nil {
			cur.WriteString(line + "\n")
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	flush()
	return root
}

// sink collects events and signals each arrival.
type sink struct {
	mu     sync.Mutex
	events []event.Event
	got    chan struct{}
}

func newSink() *sink { return &sink{got: make(chan struct{}, 1)} }

func (s *sink) Emit(ev *event.Event) bool {
	s.mu.Lock()
	cp := *ev
	cp.Attrs = append(event.Attrs(nil), ev.Attrs...)
	s.events = append(s.events, cp)
	s.mu.Unlock()
	select {
	case s.got <- struct{}{}:
	default:
	}
	return true
}

func (s *sink) snapshot() []event.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]event.Event(nil), s.events...)
}

// waitEvents waits until the sink holds at least n events.
func (s *sink) waitEvents(t *testing.T, n int) []event.Event {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		if evs := s.snapshot(); len(evs) >= n {
			return evs
		}
		select {
		case <-s.got:
		case <-deadline:
			t.Fatalf("got %d events, want %d: %+v", len(s.snapshot()), n, s.snapshot())
		}
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// testEnv is an Env reading path, with the fake host tree's sysfs and
// procfs, a fresh registry and cfg as the probe's config section.
func testEnv(t *testing.T, path string, cfg *Config) (probe.Env, *prometheus.Registry) {
	t.Helper()
	root := unpackTree(t, "hosttree.txtar")
	reg := prometheus.NewRegistry()
	env := probe.Env{
		Paths: probe.Paths{
			ProcFS:  filepath.Join(root, "proc"),
			SysFS:   filepath.Join(root, "sys"),
			DevKmsg: path,
		},
		Registerer: reg,
		Config: func(v any) error {
			if cfg != nil {
				*v.(*Config) = *cfg
			}
			return nil
		},
	}
	return env, reg
}

// startProbe runs p in a goroutine; stop cancels it and returns Run's
// result, failing the test when Run does not return promptly.
func startProbe(t *testing.T, p probe.Probe, s probe.Sink) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, s) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("Run did not return within 5s of cancel")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func mustMetrics(tb testing.TB) *metrics {
	tb.Helper()
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		tb.Fatal(err)
	}
	return m
}
