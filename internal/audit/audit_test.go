package audit

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// helperEnv names the file a re-executed test binary writes one entry to
// before killing itself.
const helperEnv = "ARK_AUDIT_CRASH_HELPER"

// lumberjackMill is lumberjack's compress/prune goroutine, which its Close
// never stops.
const lumberjackMill = "gopkg.in/natefinch/lumberjack%2ev2.(*Logger).millRun"

func TestMain(m *testing.M) {
	if path := os.Getenv(helperEnv); path != "" {
		crashHelper(path)
		return
	}
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction(lumberjackMill))
}

// crashHelper writes one entry and dies by SIGKILL: no deferred Close, no
// flush, nothing after the Write returns.
func crashHelper(path string) {
	l, err := Open(Config{Path: path})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	if err := l.Write(context.Background(), Entry{User: "root", Action: "Signal", Target: Target{PID: 42}, Result: Success, Details: "crash-marker"}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(4)
	}
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // not reached
}

func testEntry(i int, pad int) Entry {
	return Entry{
		User: "alice", Action: "Signal", Target: Target{PID: int64(1000 + i), JobID: "job-a", Node: "node-1"},
		Result: Success, Details: fmt.Sprintf("n=%d %s", i, strings.Repeat("x", pad)),
	}
}

// readAll returns every line of every file in dir (gzipped backups included).
func readAll(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		var r io.Reader = f
		if strings.HasSuffix(name, ".gz") {
			gz, err := gzip.NewReader(f)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			r = gz
		}
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			lines = append(lines, sc.Text())
		}
		if err := sc.Err(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		f.Close()
	}
	return lines
}

// entryNumbers decodes every line and returns the n= numbers, sorted.
func entryNumbers(t *testing.T, lines []string) []int {
	t.Helper()
	var ns []int
	for _, line := range lines {
		var e Entry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("line is not one whole JSON object (%v): %.80q", err, line)
		}
		var n int
		if _, err := fmt.Sscanf(e.Details, "n=%d", &n); err != nil {
			t.Fatalf("details %.40q: %v", e.Details, err)
		}
		ns = append(ns, n)
	}
	sort.Ints(ns)
	return ns
}

func requireAllNumbers(t *testing.T, ns []int, want int) {
	t.Helper()
	if len(ns) != want {
		t.Fatalf("found %d entries across files, wrote %d", len(ns), want)
	}
	for i, n := range ns {
		if n != i {
			t.Fatalf("entry %d missing or duplicated (found %d at position %d)", i, n, i)
		}
	}
}

func TestEntryHasExactlyTheContractFields(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	var mirrored []Entry
	l, err := Open(Config{Path: path, Mirror: func(e Entry) { mirrored = append(mirrored, e) }})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ts := time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.FixedZone("CET", 3600))
	in := Entry{Timestamp: ts, User: "alice", Action: "Signal", Target: Target{PID: 4242, JobID: "train/x", Node: "node-7"}, Result: PartialFailure, Details: "escalated"}
	if err := l.Write(context.Background(), in); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(string(raw), "\n") != 1 || !strings.HasSuffix(string(raw), "\n") {
		t.Fatalf("want exactly one line, got %q", raw)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	want := "action,details,result,target_job_id,target_node,target_pid,timestamp,user"
	if got := strings.Join(keys, ","); got != want {
		t.Fatalf("fields = %s, want %s", got, want)
	}
	if m["timestamp"] != "2026-03-01T11:00:00.123456789Z" {
		t.Errorf("timestamp = %v, want RFC3339Nano in UTC", m["timestamp"])
	}
	if m["target_pid"] != float64(4242) || m["result"] != "partial_failure" {
		t.Errorf("target_pid/result = %v/%v", m["target_pid"], m["result"])
	}
	if len(mirrored) != 1 || mirrored[0].Target.PID != 4242 || !mirrored[0].Timestamp.Equal(ts) {
		t.Errorf("mirror got %+v", mirrored)
	}
}

func TestZeroTimestampIsFilledAndParamsKept(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	before := time.Now()
	if err := l.Write(context.Background(), Entry{Action: "Signal", Result: DryRun, Params: map[string]string{"signal": "SIGUSR1"}}); err != nil {
		t.Fatal(err)
	}
	var e Entry
	raw, _ := os.ReadFile(path)
	if err := json.Unmarshal(raw, &e); err != nil {
		t.Fatal(err)
	}
	if e.Timestamp.Before(before.Add(-time.Second)) || e.Params["signal"] != "SIGUSR1" {
		t.Fatalf("got %+v", e)
	}
}

func TestInvalidResultIsRejectedAndNothingWritten(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	mirrored := 0
	l, err := Open(Config{Path: path, Mirror: func(Entry) { mirrored++ }})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, r := range []Result{"", "ok", "SUCCESS", "succeeded"} {
		err := l.Write(context.Background(), Entry{Action: "Signal", Result: r})
		if !errors.Is(err, ErrInvalidEntry) {
			t.Errorf("result %q: err = %v, want ErrInvalidEntry", r, err)
		}
	}
	if err := l.Write(context.Background(), Entry{Result: Success}); !errors.Is(err, ErrInvalidEntry) {
		t.Errorf("empty action: err = %v, want ErrInvalidEntry", err)
	}
	if raw, err := os.ReadFile(path); err == nil && len(raw) > 0 {
		t.Fatalf("rejected entries reached the file: %q", raw)
	}
	if mirrored != 0 {
		t.Fatalf("mirror called %d times for rejected entries", mirrored)
	}
}

func TestRotationKeepsEveryEntry(t *testing.T) {
	for _, compress := range []bool{false, true} {
		t.Run(fmt.Sprintf("compress=%v", compress), func(t *testing.T) {
			dir := t.TempDir()
			// lumberjack's unit is a megabyte: ~50 KiB entries rotate the
			// 1 MB file every ~20 entries, so 100 entries make 5 rotations.
			l, err := Open(Config{Path: filepath.Join(dir, "audit.log"), MaxSizeMB: 1, Compress: compress})
			if err != nil {
				t.Fatal(err)
			}
			const n = 100
			for i := range n {
				if err := l.Write(context.Background(), testEntry(i, 50<<10)); err != nil {
					t.Fatal(err)
				}
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			files, _ := filepath.Glob(filepath.Join(dir, "*"))
			if len(files) < 5 {
				t.Fatalf("expected at least 5 files after rotation, got %v", files)
			}
			if compress {
				waitCompressed(t, dir)
			}
			requireAllNumbers(t, entryNumbers(t, readAll(t, dir)), n)
		})
	}
}

// waitCompressed waits until lumberjack's background goroutine has replaced
// every rotated file by its .gz.
func waitCompressed(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		plain, _ := filepath.Glob(filepath.Join(dir, "audit-*.log"))
		if len(plain) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("backups still uncompressed: %v", plain)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestConcurrentWritersProduceWholeLines(t *testing.T) {
	dir := t.TempDir()
	l, err := Open(Config{Path: filepath.Join(dir, "audit.log"), MaxSizeMB: 1})
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 40
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range each {
				i := w*each + j
				// Sizes from tiny to 40 KiB so writes straddle rotations.
				if err := l.Write(context.Background(), testEntry(i, (i*997)%(40<<10))); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	requireAllNumbers(t, entryNumbers(t, readAll(t, dir)), writers*each)
}

func TestEntrySurvivesACrashRightAfterTheWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+path)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("helper did not die: err=%v output=%s", err, out)
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("helper exited with %v (output %s), want killed by SIGKILL", ee, out)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var e Entry
	if err := json.Unmarshal(raw, &e); err != nil || e.Details != "crash-marker" || e.Target.PID != 42 {
		t.Fatalf("entry not on disk after crash: %q (%v)", raw, err)
	}
}

func TestWriteAfterCloseFails(t *testing.T) {
	l, err := Open(Config{Path: filepath.Join(t.TempDir(), "audit.log")})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Write(context.Background(), testEntry(0, 0)); !errors.Is(err, ErrClosed) {
		t.Fatalf("err = %v, want ErrClosed", err)
	}
}

func TestConfigErrorsAreReportedTogether(t *testing.T) {
	_, err := Open(Config{MaxSizeMB: -1, MaxBackups: -2})
	want := "audit: path is required\naudit: max_size_mb must not be negative, got -1\naudit: max_backups must not be negative, got -2"
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant %s", err, want)
	}
}

// BenchmarkAuditWrite measures fsynced entries per second on the test's
// temporary directory.
func BenchmarkAuditWrite(b *testing.B) {
	l, err := Open(Config{Path: filepath.Join(b.TempDir(), "audit.log")})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	e := Entry{User: "root", Action: "Signal", Target: Target{PID: 4242, JobID: "train/llama", Node: "node-7"}, Result: Success, Details: "signal SIGUSR1 delivered", Params: map[string]string{"signal": "SIGUSR1"}}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := l.Write(ctx, e); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "entries/s")
}

func TestEmptyTargetFieldsAreLeftOut(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// A remediator step names only the node; an agent signal only pid and job.
	if err := l.Write(context.Background(), Entry{User: "hub", Action: "taint", Target: Target{Node: "node-3"}, Result: Success}); err != nil {
		t.Fatal(err)
	}
	if err := l.Write(context.Background(), Entry{User: "root", Action: "Signal", Target: Target{PID: 7, JobID: "j"}, Result: Success}); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(raw), "\n"), "\n")
	want := []string{"target_node", "target_job_id,target_pid"}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines, want %d: %q", len(lines), len(want), raw)
	}
	for i, line := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %d: %v", i, err)
		}
		var targets []string
		for k := range m {
			if strings.HasPrefix(k, "target_") {
				targets = append(targets, k)
			}
		}
		sort.Strings(targets)
		if got := strings.Join(targets, ","); got != want[i] {
			t.Errorf("line %d targets = %s, want %s", i, got, want[i])
		}
	}
}
