// Package audit writes the audit log that the node agent and the hub's
// remediator share: one JSON object per line for every action either was
// asked to take, fsynced per entry and rotated by size with lumberjack.
package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"gopkg.in/natefinch/lumberjack.v2"
)

// Result is the outcome recorded in an entry.
type Result string

// The only results an entry may carry.
const (
	Success        Result = "success"
	PartialFailure Result = "partial_failure"
	Failure        Result = "failure"
	DryRun         Result = "dry_run"
)

// Valid reports whether r is one of the defined results.
func (r Result) Valid() bool {
	switch r {
	case Success, PartialFailure, Failure, DryRun:
		return true
	}
	return false
}

// Defaults applied by Open to zero Config fields.
const (
	DefaultMaxSizeMB  = 100
	DefaultMaxBackups = 10
)

var (
	// ErrInvalidEntry is returned by Write for an entry it refuses to record.
	ErrInvalidEntry = errors.New("invalid audit entry")
	// ErrClosed is returned by Write after Close.
	ErrClosed = errors.New("audit log closed")
)

// Target is what an action was aimed at: a process on the agent, a node in
// the remediator, a job's ranks in either. Each field is left out of the
// line when empty, so an entry names only what it acted on.
type Target struct {
	PID   int64  `json:"target_pid,omitempty"`
	JobID string `json:"target_job_id,omitempty"`
	Node  string `json:"target_node,omitempty"`
}

// Entry is one line of the audit log.
//
// Details is always a string (a human-readable reason or outcome) so that
// readers of the log need not handle two shapes; structured request
// parameters go in Params, which is left out when empty.
type Entry struct {
	// Timestamp is written as RFC3339 with nanoseconds in UTC; Write sets it
	// to the current time when zero.
	Timestamp time.Time `json:"timestamp"`
	User      string    `json:"user"`
	Action    string    `json:"action"`
	Target
	Result  Result            `json:"result"`
	Details string            `json:"details"`
	Params  map[string]string `json:"params,omitempty"`
}

// Config configures the audit log.
type Config struct {
	// Path is the current log file; rotated files sit next to it.
	Path string `yaml:"path" json:"path"`
	// MaxSizeMB is the size in megabytes at which the file is rotated
	// (default 100).
	MaxSizeMB int `yaml:"max_size_mb" json:"max_size_mb"`
	// MaxBackups is how many rotated files are kept (default 10).
	MaxBackups int `yaml:"max_backups" json:"max_backups"`
	// Compress gzips rotated files.
	Compress bool `yaml:"compress" json:"compress"`
	// Mirror, when set, is called with every entry after it is on disk; the
	// agent turns it into an action.exec event on the bus.
	Mirror func(Entry) `yaml:"-" json:"-"`
}

// Validate reports every problem with c at once.
func (c Config) Validate() error {
	var errs []error
	if c.Path == "" {
		errs = append(errs, errors.New("audit: path is required"))
	}
	if c.MaxSizeMB < 0 {
		errs = append(errs, fmt.Errorf("audit: max_size_mb must not be negative, got %d", c.MaxSizeMB))
	}
	if c.MaxBackups < 0 {
		errs = append(errs, fmt.Errorf("audit: max_backups must not be negative, got %d", c.MaxBackups))
	}
	return errors.Join(errs...)
}

// minRotateGap keeps two rotations at least this far apart: lumberjack names
// a rotated file by the time in milliseconds, so a second rotation in the same
// millisecond would rename over the first backup and lose its entries.
const minRotateGap = 2 * time.Millisecond

// Log is an open audit log; it is safe for concurrent use.
type Log struct {
	mirror func(Entry)

	mu         sync.Mutex
	lj         *lumberjack.Logger
	path       string
	max        int64 // rotation size in bytes, as lumberjack computes it
	size       int64 // bytes in the current file, to foresee a rotation
	lastRotate time.Time
	opened     bool     // lumberjack has opened its file
	syncFile   *os.File // read-only handle on the current file, for fsync
	closed     bool
}

// Open opens (or creates) the log at cfg.Path, applying defaults first.
func Open(cfg Config) (*Log, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.MaxSizeMB == 0 {
		cfg.MaxSizeMB = DefaultMaxSizeMB
	}
	if cfg.MaxBackups == 0 {
		cfg.MaxBackups = DefaultMaxBackups
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o750); err != nil {
		return nil, fmt.Errorf("creating audit log directory: %w", err)
	}
	l := &Log{
		mirror: cfg.Mirror,
		lj: &lumberjack.Logger{
			Filename:   cfg.Path,
			MaxSize:    cfg.MaxSizeMB,
			MaxBackups: cfg.MaxBackups,
			Compress:   cfg.Compress,
		},
		path: cfg.Path,
		max:  int64(cfg.MaxSizeMB) * 1024 * 1024,
	}
	if fi, err := os.Stat(cfg.Path); err == nil {
		l.size = fi.Size()
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("opening audit log: %w", err)
	}
	return l, nil
}

// Write records e as one line and fsyncs it before returning; then it calls
// the Mirror. The context is not used to abandon the write: an action that
// was taken must be recorded even when its request was cancelled.
func (l *Log) Write(_ context.Context, e Entry) error {
	if !e.Result.Valid() {
		return fmt.Errorf("%w: result %q is not one of success, partial_failure, failure, dry_run", ErrInvalidEntry, e.Result)
	}
	if e.Action == "" {
		return fmt.Errorf("%w: action is empty", ErrInvalidEntry)
	}
	if e.Timestamp.IsZero() {
		e.Timestamp = time.Now()
	}
	e.Timestamp = e.Timestamp.UTC()
	line, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encoding audit entry: %w", err)
	}
	line = append(line, '\n')

	if err := l.writeLine(line); err != nil {
		return err
	}
	// Outside the lock: a slow mirror must not hold up other writers.
	if l.mirror != nil {
		l.mirror(e)
	}
	return nil
}

func (l *Log) writeLine(line []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	n := int64(len(line))
	// Foresee lumberjack's own decision (it compares with >= when it first
	// opens an existing file, with > afterwards).
	rotates := l.size+n > l.max || (!l.opened && l.size > 0 && l.size+n >= l.max)
	if rotates {
		// Keep lumberjack's backup names distinct (see minRotateGap).
		if d := minRotateGap - time.Since(l.lastRotate); d > 0 {
			time.Sleep(d)
		}
	}
	// One Write call: lumberjack rotates before writing, never in the middle
	// of a line, and os.File.Write writes all of it or fails.
	if _, err := l.lj.Write(line); err != nil {
		return fmt.Errorf("writing audit log: %w", err)
	}
	l.opened = true
	if rotates {
		l.lastRotate = time.Now()
		l.size = 0
	}
	l.size += n
	return l.sync()
}

// sync makes the current file durable. lumberjack keeps its *os.File to
// itself, so we hold our own read-only descriptor on the same file: on Linux
// fsync(2) flushes the inode's dirty data whichever descriptor wrote it. The
// descriptor is reopened when the path names a new file (after a rotation),
// and the directory is fsynced then so the new name is durable too.
func (l *Log) sync() error {
	fi, err := os.Stat(l.path)
	if err != nil {
		return fmt.Errorf("syncing audit log: %w", err)
	}
	if l.syncFile != nil {
		cur, err := l.syncFile.Stat()
		if err != nil || !os.SameFile(cur, fi) {
			_ = l.syncFile.Close()
			l.syncFile = nil
		}
	}
	if l.syncFile == nil {
		f, err := os.Open(l.path)
		if err != nil {
			return fmt.Errorf("syncing audit log: %w", err)
		}
		l.syncFile = f
		if err := syncDir(filepath.Dir(l.path)); err != nil {
			return err
		}
	}
	if err := l.syncFile.Sync(); err != nil {
		return fmt.Errorf("syncing audit log: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing audit log directory: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("syncing audit log directory: %w", err)
	}
	return nil
}

// Close closes the log; later writes fail with ErrClosed. lumberjack's
// background goroutine that compresses and prunes backups is not stopped by
// its Close (a known limitation of lumberjack v2), so it outlives the Log.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	var errs []error
	if l.syncFile != nil {
		errs = append(errs, l.syncFile.Close())
	}
	if err := l.lj.Close(); err != nil {
		errs = append(errs, fmt.Errorf("closing audit log: %w", err))
	}
	return errors.Join(errs...)
}
