package rules

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
)

// WatcherOptions configure a Watcher. Zero fields take the defaults.
type WatcherOptions struct {
	// Dir holds the rule files (*.yaml, *.yml). Empty: only the defaults.
	Dir string
	// Defaults loads the embedded default rules first; a rule of Dir with
	// the same name replaces the default one.
	Defaults bool
	// Debounce is how long the directory must be quiet before a change is
	// reloaded (default 250ms): editors write a file in several steps.
	Debounce time.Duration
	// Logger receives load errors (default: discard).
	Logger *slog.Logger
	// Registerer receives ark_rules_loaded and ark_rules_load_errors_total
	// (nil: not registered).
	Registerer prometheus.Registerer
	// Now is the cooldown clock (default time.Now).
	Now func() time.Time
}

// Watcher keeps the current rule set of a directory: it reloads on change
// (Run) or on demand (Reload, e.g. on SIGHUP) and swaps the new set in
// atomically, so Evaluate never sees a half-loaded set.
type Watcher struct {
	opts   WatcherOptions
	logger *slog.Logger
	cur    atomic.Pointer[RuleSet]
	state  *state

	watching  chan struct{} // closed once Run watches Dir (for tests)
	watchOnce sync.Once

	mu    sync.Mutex         // serialises reloads
	files map[string][]*Rule // the rules in effect, per file

	loaded     prometheus.Gauge
	loadErrors prometheus.Counter
	evalErrors prometheus.CounterFunc
}

// NewWatcher loads the rules once and returns the Watcher. Bad rules are
// logged and counted, not fatal; an unreadable Dir is an error.
func NewWatcher(opts WatcherOptions) (*Watcher, error) {
	if opts.Debounce <= 0 {
		opts.Debounce = 250 * time.Millisecond
	}
	w := &Watcher{
		opts:     opts,
		logger:   opts.Logger,
		state:    newState(),
		files:    make(map[string][]*Rule),
		watching: make(chan struct{}),
		loaded: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ark_rules_loaded",
			Help: "Rules currently loaded.",
		}),
		loadErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ark_rules_load_errors_total",
			Help: "Rules or rule files that failed to load, over all (re)loads.",
		}),
	}
	w.evalErrors = prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "ark_rules_eval_errors_total",
		Help: "Rule condition evaluations that failed at run time (counted as no match).",
	}, func() float64 { return float64(w.state.evalErrors.Load()) })
	if w.logger == nil {
		w.logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now != nil {
		w.state.now = opts.Now
	}
	if opts.Dir != "" {
		if _, err := ruleFiles(opts.Dir); err != nil {
			return nil, err
		}
	}
	if opts.Registerer != nil {
		for _, c := range []prometheus.Collector{w.loaded, w.loadErrors, w.evalErrors} {
			if err := opts.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("registering rules metrics: %w", err)
			}
		}
	}
	w.Reload()
	return w, nil
}

// RuleSet returns the current rule set.
func (w *Watcher) RuleSet() *RuleSet { return w.cur.Load() }

// Evaluate evaluates in against the current rule set.
func (w *Watcher) Evaluate(in Input) []Match { return w.cur.Load().Evaluate(in) }

// Reload rereads Dir and swaps the new rule set in. A file that fails to
// load keeps the rules it had before; its errors are logged, counted and
// returned. A file removed from Dir takes its rules with it.
func (w *Watcher) Reload() []error {
	w.mu.Lock()
	defer w.mu.Unlock()
	var errs []error
	var rules []*Rule
	if w.opts.Defaults {
		defaultsOnce.Do(loadDefaults)
		rules = append(rules, defaultRules...)
		errs = append(errs, defaultsError...)
	}
	if w.opts.Dir != "" {
		files, err := ruleFiles(w.opts.Dir)
		if err != nil {
			// Keep everything as it is: a directory that vanished for a
			// moment (a ConfigMap update) must not drop every rule.
			errs = append(errs, err)
			w.report(errs)
			return errs
		}
		next := make(map[string][]*Rule, len(files))
		for _, f := range files {
			rs, fe := readFile(f)
			if len(fe) > 0 {
				errs = append(errs, fe...)
				if prev, ok := w.files[f]; ok {
					w.logger.Warn("rule file has errors, keeping its previous rules", "file", f, "rules", len(prev))
					rs = prev
				}
			}
			next[f] = rs
			if w.opts.Defaults {
				rules = overlay(rules, rs)
			} else {
				rules = append(rules, rs...)
			}
		}
		w.files = next
	}
	set, more := build(rules, w.state)
	errs = append(errs, more...)
	w.cur.Store(set)
	w.loaded.Set(float64(set.Len()))
	w.report(errs)
	return errs
}

// overlay appends add to rules; a rule of add replaces a default of the
// same name in place, so a site can tune a default rule.
func overlay(rules, add []*Rule) []*Rule {
	for _, r := range add {
		replaced := false
		for i, old := range rules {
			if old.Name == r.Name && old.File != r.File && isDefault(old) {
				rules[i] = r
				replaced = true
				break
			}
		}
		if !replaced {
			rules = append(rules, r)
		}
	}
	return rules
}

func isDefault(r *Rule) bool {
	for _, d := range defaultRules {
		if d == r {
			return true
		}
	}
	return false
}

func (w *Watcher) report(errs []error) {
	for _, err := range errs {
		w.logger.Error("loading rules", "err", err)
	}
	w.loadErrors.Add(float64(len(errs)))
}

// Run watches Dir and reloads after a change, debounced, until ctx ends.
func (w *Watcher) Run(ctx context.Context) error {
	if w.opts.Dir == "" {
		<-ctx.Done()
		return nil
	}
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching rules directory: %w", err)
	}
	defer func() {
		if err := fw.Close(); err != nil {
			w.logger.Warn("closing rules directory watch", "err", err)
		}
	}()
	if err := fw.Add(w.opts.Dir); err != nil {
		return fmt.Errorf("watching rules directory %s: %w", w.opts.Dir, err)
	}
	w.watchOnce.Do(func() { close(w.watching) })
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-fw.Events:
			if !ok {
				return nil
			}
			if ev.Op == fsnotify.Chmod {
				continue
			}
			timer.Reset(w.opts.Debounce)
		case err, ok := <-fw.Errors:
			if !ok {
				return nil
			}
			w.logger.Warn("watching rules directory", "err", err)
		case <-timer.C:
			errs := w.Reload()
			w.logger.Info("rules reloaded", "rules", w.RuleSet().Len(), "errors", len(errs))
		}
	}
}
