// Package fold folds repeats: the first occurrence of a key inside a time
// window goes out at once, the repeats are only counted, and when the
// window ends its count is handed back for one summary. The kmsg probe
// folds XID floods with it, the agent its rule-match log lines.
package fold

import "time"

// Window is one key's open window: when it opened, how many occurrences it
// saw (the first included), and the value the first one carried.
type Window[V any] struct {
	Start time.Time
	Count int
	First V
}

// Folder folds repeats of keys K inside a window. It is not safe for
// concurrent use.
type Folder[K comparable, V any] struct {
	window time.Duration
	max    int
	open   map[K]*Window[V]
}

// New returns a Folder with the given window that keeps at most max windows
// open; past that an occurrence goes out unfolded rather than growing
// memory. A window of 0 or less folds nothing.
func New[K comparable, V any](window time.Duration, max int) *Folder[K, V] {
	return &Folder[K, V]{window: window, max: max, open: map[K]*Window[V]{}}
}

// Observe records one occurrence of k at now and reports whether it is to
// go out (it opens a window, or nothing is folded) or was folded into an
// open window. Windows that ended by now are closed first and passed to
// closed, so a summary always comes before the occurrence that opens the
// next window. v is kept as the window's First.
func (f *Folder[K, V]) Observe(k K, v V, now time.Time, closed func(K, *Window[V])) bool {
	if f.window <= 0 {
		return true
	}
	f.Expire(now, closed)
	if w, ok := f.open[k]; ok {
		w.Count++
		return false
	}
	if len(f.open) >= f.max {
		return true
	}
	f.open[k] = &Window[V]{Start: now, Count: 1, First: v}
	return true
}

// Expire closes the windows that ended by now, passing each to closed.
func (f *Folder[K, V]) Expire(now time.Time, closed func(K, *Window[V])) {
	for k, w := range f.open {
		if now.Sub(w.Start) < f.window {
			continue
		}
		delete(f.open, k)
		closed(k, w)
	}
}

// Flush closes every window, passing each to closed.
func (f *Folder[K, V]) Flush(closed func(K, *Window[V])) {
	for k, w := range f.open {
		delete(f.open, k)
		closed(k, w)
	}
}

// Window returns the folding window.
func (f *Folder[K, V]) Window() time.Duration { return f.window }
