package rules

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/internal/fakeclock"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func writeRule(t *testing.T, path, body string) {
	t.Helper()
	// Write then rename, as editors and ConfigMap updates do, so the
	// watcher never reads a half-written file.
	tmp := filepath.Join(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

const depthRule = "name: Deep\ncooldown: 0s\ntriggers:\n  - event_type: storage.qdepth\n    condition: 'event.num > %s'\n"

func qdepth(v string) Input {
	return Input{Event: &event.Event{Type: event.StorageQDepth, EntityID: "nvme0n1", NodeID: "n", PID: 1, Value: v}}
}

func TestWatcherPicksUpAnEditedRule(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "depth.yaml")
	writeRule(t, f, fmt.Sprintf(depthRule, "100.0"))
	reg := prometheus.NewPedanticRegistry()
	w, err := NewWatcher(WatcherOptions{Dir: dir, Debounce: 10 * time.Millisecond, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	if got := w.Evaluate(qdepth("50")); len(got) != 0 {
		t.Fatalf("depth 50 matched before the edit")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	<-w.watching
	writeRule(t, f, fmt.Sprintf(depthRule, "10.0"))
	eventually(t, "the edited rule", func() bool { return len(w.Evaluate(qdepth("50"))) == 1 })

	// A broken edit keeps the rule that worked, and is counted.
	before := testutil.ToFloat64(w.loadErrors)
	writeRule(t, f, "name: Deep\ntriggers:\n  - event_type: storage.qdepth\n    condition: 'event.num >'\n")
	eventually(t, "the load error", func() bool { return testutil.ToFloat64(w.loadErrors) > before })
	if got := w.Evaluate(qdepth("50")); len(got) != 1 {
		t.Errorf("the previous good rule was dropped")
	}

	// A new file adds its rules.
	writeRule(t, filepath.Join(dir, "more.yaml"), "name: More\ntriggers: [{event_type: storage.qdepth}]\n")
	eventually(t, "the new file", func() bool { return w.RuleSet().Len() == 2 })
	if got := testutil.ToFloat64(w.loaded); got != 2 {
		t.Errorf("ark_rules_loaded = %v, want 2", got)
	}
	if n, err := testutil.GatherAndCount(reg, "ark_rules_loaded", "ark_rules_load_errors_total", "ark_rules_eval_errors_total"); err != nil || n != 3 {
		t.Errorf("gathered %d metrics, err %v", n, err)
	}
}

func TestReloadKeepsGoodRulesOfAFailingFileAndDropsRemovedFiles(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml")
	writeRule(t, a, "name: A\ntriggers: [{event_type: error.hw}]\n")
	writeRule(t, b, "name: B\ntriggers: [{event_type: error.net}]\n")
	w, err := NewWatcher(WatcherOptions{Dir: dir, Defaults: true})
	if err != nil {
		t.Fatal(err)
	}
	equalStrings(t, "first load", ruleNames(w.RuleSet()),
		[]string{"RankStalledOnNetwork", "StorageQueueSaturated", "XidFatal", "A", "B"})

	writeRule(t, a, "name: A2\ntriggers: [{event_type: nope}]\n")
	if err := os.Remove(b); err != nil {
		t.Fatal(err)
	}
	// A site file may replace a default rule by name.
	writeRule(t, filepath.Join(dir, "c.yaml"), "name: XidFatal\ntriggers: [{event_type: error.hw}]\n")
	errs := w.Reload()
	equalStrings(t, "reload errors", errStrings(errs), []string{a + `:2: rule "A2": unknown event type "nope"`})
	equalStrings(t, "after reload", ruleNames(w.RuleSet()),
		[]string{"RankStalledOnNetwork", "StorageQueueSaturated", "XidFatal", "A"})
	if r := w.RuleSet().Rules()[2]; r.File != filepath.Join(dir, "c.yaml") {
		t.Errorf("XidFatal from %s, want the site file", r.File)
	}
}

func TestReloadKeepsCooldowns(t *testing.T) {
	dir := t.TempDir()
	writeRule(t, filepath.Join(dir, "d.yaml"), "name: D\ncooldown: 1h\ntriggers: [{event_type: storage.qdepth}]\n")
	w, err := NewWatcher(WatcherOptions{Dir: dir, Now: fakeclock.New(time.Time{}).Now})
	if err != nil {
		t.Fatal(err)
	}
	if len(w.Evaluate(qdepth("1"))) != 1 {
		t.Fatal("did not fire")
	}
	w.Reload()
	if len(w.Evaluate(qdepth("1"))) != 0 {
		t.Fatal("a reload reset the cooldown")
	}
}

func TestNewWatcherFailsOnAMissingDirectory(t *testing.T) {
	if _, err := NewWatcher(WatcherOptions{Dir: filepath.Join(t.TempDir(), "nope")}); err == nil {
		t.Fatal("no error")
	}
}
