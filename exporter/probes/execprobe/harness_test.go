package execprobe

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"go.yaml.in/yaml/v3"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probe"
)

func TestMain(m *testing.M) {
	if cfg := os.Getenv(agentHelperEnv); cfg != "" {
		os.Exit(runAgentHelper(cfg))
	}
	goleak.VerifyTestMain(m)
}

// sink keeps clones of everything emitted.
type sink struct {
	mu  sync.Mutex
	evs []event.Event
}

func (s *sink) Emit(ev *event.Event) bool {
	c := ev.Clone()
	s.mu.Lock()
	s.evs = append(s.evs, c)
	s.mu.Unlock()
	return true
}

func (s *sink) events(entity string) []event.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []event.Event
	for _, ev := range s.evs {
		if ev.EntityID == entity {
			out = append(out, ev)
		}
	}
	return out
}

func (s *sink) count(entity string) int { return len(s.events(entity)) }

// logRecord is one captured log line.
type logRecord struct {
	msg   string
	attrs map[string]slog.Value
}

type logStore struct {
	mu   sync.Mutex
	recs []logRecord
}

// find returns the records with message msg, of program prog ("" for any).
func (s *logStore) find(msg, prog string) []logRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []logRecord
	for _, r := range s.recs {
		if r.msg == msg && (prog == "" || r.attrs["program"].String() == prog) {
			out = append(out, r)
		}
	}
	return out
}

// recordHandler is a slog.Handler that captures records into a logStore.
type recordHandler struct {
	store *logStore
	attrs []slog.Attr
}

func (h recordHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h recordHandler) Handle(_ context.Context, r slog.Record) error {
	rec := logRecord{msg: r.Message, attrs: map[string]slog.Value{}}
	for _, a := range h.attrs {
		rec.attrs[a.Key] = a.Value
	}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value
		return true
	})
	h.store.mu.Lock()
	h.store.recs = append(h.store.recs, rec)
	h.store.mu.Unlock()
	return nil
}

func (h recordHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return recordHandler{store: h.store, attrs: append(slices.Clip(h.attrs), as...)}
}

func (h recordHandler) WithGroup(string) slog.Handler { return h }

// observer records env.Observe calls.
type observer struct {
	mu    sync.Mutex
	calls []error
}

func (o *observer) observe(_ time.Duration, err error) {
	o.mu.Lock()
	o.calls = append(o.calls, err)
	o.mu.Unlock()
}

func (o *observer) failures() []error {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []error
	for _, err := range o.calls {
		if err != nil {
			out = append(out, err)
		}
	}
	return out
}

func (o *observer) total() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.calls)
}

// harness runs the exec probe with a config section until stop.
type harness struct {
	t       *testing.T
	probe   *Probe
	sink    *sink
	logs    *logStore
	obs     *observer
	cancel  context.CancelFunc
	done    chan error
	started time.Time

	stopOnce sync.Once
	runErr   error
	stopped  time.Time
}

func start(t *testing.T, config string) *harness {
	t.Helper()
	return startIn(t, config, "")
}

// startIn is start with the agent's state directory stateDir.
func startIn(t *testing.T, config, stateDir string) *harness {
	t.Helper()
	h := &harness{t: t, sink: &sink{}, logs: &logStore{}, obs: &observer{}, done: make(chan error, 1)}
	pr, err := New(probe.Env{
		Logger:     slog.New(recordHandler{store: h.logs}),
		Registerer: prometheus.NewRegistry(),
		Config:     func(v any) error { return yaml.Unmarshal([]byte(config), v) },
		Observe:    h.obs.observe,
		StateDir:   stateDir,
		NodeName:   "node-t",
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.probe = pr.(*Probe)
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	h.started = time.Now()
	go func() { h.done <- h.probe.Run(ctx, h.sink) }()
	t.Cleanup(func() { h.stop() })
	return h
}

// stop cancels the probe and waits for Run to return.
func (h *harness) stop() error {
	h.stopOnce.Do(func() {
		h.cancel()
		select {
		case h.runErr = <-h.done:
		case <-time.After(30 * time.Second):
			h.t.Fatal("Run did not return within 30s of cancel")
		}
		h.stopped = time.Now()
	})
	return h.runErr
}

func (h *harness) metrics(name string) programMetrics { return h.probe.metrics.forProgram(name) }

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// script writes an executable file with body and returns its path. All
// scripts of a test are written before any process starts, so no forked
// child holds a write descriptor to them (ETXTBSY).
func script(t *testing.T, name, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// groupGone reports whether process group pgid has no member left.
func groupGone(pgid int64) bool {
	err := syscall.Kill(-int(pgid), 0)
	return errors.Is(err, syscall.ESRCH)
}

// liveMembers lists the members of process group pgid that are not
// zombies, from /proc.
func liveMembers(t *testing.T, pgid int64) []string {
	t.Helper()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		t.Fatal(err)
	}
	var live []string
	for _, path := range stats {
		b, err := os.ReadFile(path)
		if err != nil {
			continue // exited meanwhile
		}
		// pid (comm) state ppid pgrp ...; comm may hold spaces.
		rest := string(b[bytes.LastIndexByte(b, ')')+1:])
		f := strings.Fields(rest)
		if len(f) < 3 || f[2] != strconv.FormatInt(pgid, 10) || f[0] == "Z" || f[0] == "X" {
			continue
		}
		live = append(live, path+" "+string(b[:bytes.LastIndexByte(b, ')')+1])+" "+f[0])
	}
	return live
}
