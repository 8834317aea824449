package arkreceiver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/extension/xextension/storage"

	"github.com/ark-gpu/ark/event"
)

// checkpointKey is the storage key of the files' offsets.
const checkpointKey = "files"

// readChunk is how much of a file is read at a time.
const readChunk = 256 << 10

// tailer follows the included files. A file is known by its device and
// inode, so a rename (rotation) does not make it a new file: a file that
// left the include patterns is read to its end, its unfinished last line
// included, and closed; a file that shrank was truncated and is read from
// the start.
type tailer struct {
	r      *arkReceiver
	client storage.Client // nil without a storage extension

	files       map[fileID]*tailedFile
	checkpoints map[fileID]int64 // offsets loaded at start
	restored    bool             // a checkpoint was found: start_at no longer applies
	firstPoll   bool
	chunk       []byte
	batch       []event.Event
}

type fileID struct{ dev, ino uint64 }

type tailedFile struct {
	path string
	id   fileID
	f    *os.File
	// offset is the end of the last complete line read: the checkpoint.
	offset  int64
	readPos int64  // the end of what was read
	pending []byte // an unfinished line after offset
	// skipping is set inside a line longer than max_line_bytes.
	skipping bool
}

// fileCheckpoint is one file's saved offset.
type fileCheckpoint struct {
	Path   string `json:"path"`
	Dev    uint64 `json:"dev"`
	Ino    uint64 `json:"ino"`
	Offset int64  `json:"offset"`
}

func newTailer(ctx context.Context, r *arkReceiver, host component.Host) (*tailer, error) {
	t := &tailer{
		r:           r,
		files:       map[fileID]*tailedFile{},
		checkpoints: map[fileID]int64{},
		firstPoll:   true,
		chunk:       make([]byte, readChunk),
	}
	if r.cfg.StorageID == nil {
		return t, nil
	}
	ext, ok := host.GetExtensions()[*r.cfg.StorageID]
	if !ok {
		return nil, fmt.Errorf("storage extension %s not found", r.cfg.StorageID)
	}
	se, ok := ext.(storage.Extension)
	if !ok {
		return nil, fmt.Errorf("extension %s is not a storage extension", r.cfg.StorageID)
	}
	client, err := se.GetClient(ctx, component.KindReceiver, r.set.ID, "")
	if err != nil {
		return nil, fmt.Errorf("getting a storage client from %s: %w", r.cfg.StorageID, err)
	}
	t.client = client
	raw, err := client.Get(ctx, checkpointKey)
	if err != nil {
		_ = client.Close(ctx)
		return nil, fmt.Errorf("reading the file checkpoints: %w", err)
	}
	if raw != nil {
		var cps []fileCheckpoint
		if err := json.Unmarshal(raw, &cps); err != nil {
			// A checkpoint that cannot be read is reported and ignored:
			// start_at decides, as on a first run.
			r.logger.Error("ignoring unreadable file checkpoints", "err", err)
		} else {
			t.restored = true
			for _, cp := range cps {
				t.checkpoints[fileID{cp.Dev, cp.Ino}] = cp.Offset
			}
		}
	}
	return t, nil
}

func (t *tailer) run(ctx context.Context) {
	tick := time.NewTicker(t.r.cfg.PollInterval)
	defer tick.Stop()
	for {
		t.poll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// poll finds the included files, finishes those that rotated away, then
// reads what the others gained.
func (t *tailer) poll(ctx context.Context) {
	var paths []string
	for _, p := range t.r.cfg.Include {
		m, _ := filepath.Glob(p) // patterns were validated
		paths = append(paths, m...)
	}
	slices.Sort(paths)
	paths = slices.Compact(paths)

	seen := make(map[fileID]bool, len(paths))
	var current []*tailedFile
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil || !st.Mode().IsRegular() {
			continue
		}
		id := idOf(st)
		if seen[id] {
			continue // two names of one file
		}
		seen[id] = true
		tf, ok := t.files[id]
		if !ok {
			tf, err = t.open(p, id, st.Size())
			if err != nil {
				t.r.logger.Error("cannot open file", "path", p, "err", err)
				continue
			}
			t.files[id] = tf
		}
		tf.path = p
		current = append(current, tf)
	}
	t.firstPoll = false
	// Rotated or removed: read to the end, then close. Oldest first, so
	// lines keep their order across a rotation.
	for id, tf := range t.files {
		if seen[id] {
			continue
		}
		t.read(ctx, tf, true)
		_ = tf.f.Close()
		delete(t.files, id)
		t.save(ctx)
	}
	for _, tf := range current {
		if ctx.Err() != nil {
			return
		}
		if st, err := tf.f.Stat(); err == nil && st.Size() < tf.offset+int64(len(tf.pending)) {
			t.r.logger.Info("file truncated, reading it from the start", "path", tf.path)
			tf.offset, tf.readPos, tf.pending, tf.skipping = 0, 0, tf.pending[:0], false
			if _, err := tf.f.Seek(0, io.SeekStart); err != nil {
				t.r.logger.Error("cannot rewind file", "path", tf.path, "err", err)
				continue
			}
		}
		t.read(ctx, tf, false)
	}
}

// open opens a file at its checkpoint, or where start_at says for a file
// present at the first poll of a first run, or at its start.
func (t *tailer) open(path string, id fileID, size int64) (*tailedFile, error) {
	var offset int64
	if cp, ok := t.checkpoints[id]; ok && cp <= size {
		offset = cp
	} else if t.firstPoll && !t.restored && t.r.cfg.StartAt == StartAtEnd {
		offset = size
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("seeking to %d: %w", offset, err)
	}
	return &tailedFile{path: path, id: id, f: f, offset: offset, readPos: offset}, nil
}

// read reads tf to its current end, delivering a batch whenever one is
// full and saving the offset after each delivery. final also takes an
// unfinished last line: the file will not grow any more.
func (t *tailer) read(ctx context.Context, tf *tailedFile, final bool) {
	for ctx.Err() == nil || final {
		n, err := tf.f.Read(t.chunk)
		if n > 0 {
			tf.readPos += int64(n)
			t.split(tf, t.chunk[:n])
			if len(t.batch) >= t.r.cfg.MaxBatch {
				t.flush(ctx)
			}
		}
		if err != nil || n == 0 {
			if err != nil && !errors.Is(err, io.EOF) {
				t.r.logger.Error("reading file", "path", tf.path, "err", err)
			}
			break
		}
	}
	if final && tf.skipping {
		t.r.reject(context.Background(), event.ReasonTooLong, nil)
		tf.skipping, tf.offset = false, tf.readPos
	}
	if final && len(tf.pending) > 0 {
		t.line(tf, tf.pending)
		tf.offset += int64(len(tf.pending))
		tf.pending = tf.pending[:0]
	}
	t.flush(ctx)
}

// split cuts data, which follows tf.pending, into lines.
func (t *tailer) split(tf *tailedFile, data []byte) {
	maxLen := t.r.cfg.MaxLineBytes
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			if !tf.skipping {
				tf.pending = append(tf.pending, data...)
				if len(tf.pending) > maxLen+1 { // room for a '\r'
					tf.skipping = true
					tf.pending = tf.pending[:0]
				}
			}
			return
		}
		seg := data[:i]
		data = data[i+1:]
		switch {
		case tf.skipping:
			t.r.reject(context.Background(), event.ReasonTooLong, nil)
			tf.skipping = false
			tf.offset = tf.readPos - int64(len(data))
			continue
		case len(tf.pending) > 0:
			tf.pending = append(tf.pending, seg...)
			t.line(tf, tf.pending)
			tf.pending = tf.pending[:0]
		default:
			t.line(tf, seg)
		}
		tf.offset = tf.readPos - int64(len(data))
	}
}

// line decodes one line into the batch, or counts it as rejected.
func (t *tailer) line(tf *tailedFile, b []byte) {
	b = bytes.TrimRight(b, "\r")
	if len(bytes.TrimSpace(b)) == 0 {
		return
	}
	if len(b) > t.r.cfg.MaxLineBytes {
		t.r.reject(context.Background(), event.ReasonTooLong, nil)
		return
	}
	t.batch = append(t.batch, event.Event{})
	ev := &t.batch[len(t.batch)-1]
	if err := event.Unmarshal(b, ev); err != nil {
		t.batch = t.batch[:len(t.batch)-1]
		var re *event.RejectError
		reason := event.ReasonNotJSON
		if errors.As(err, &re) {
			reason = re.Reason
		}
		t.r.reject(context.Background(), reason, fmt.Errorf("%s: %w", tf.path, err))
	}
}

// flush delivers the batch, then saves the offsets it reached.
func (t *tailer) flush(ctx context.Context) {
	if len(t.batch) == 0 {
		t.save(ctx)
		return
	}
	t.r.deliver(context.WithoutCancel(ctx), t.batch)
	t.batch = make([]event.Event, 0, t.r.cfg.MaxBatch)
	t.save(ctx)
}

// save writes every open file's offset.
func (t *tailer) save(ctx context.Context) {
	if t.client == nil {
		return
	}
	cps := make([]fileCheckpoint, 0, len(t.files))
	for _, tf := range t.files {
		cps = append(cps, fileCheckpoint{Path: tf.path, Dev: tf.id.dev, Ino: tf.id.ino, Offset: tf.offset})
	}
	raw, err := json.Marshal(cps)
	if err == nil {
		err = t.client.Set(context.WithoutCancel(ctx), checkpointKey, raw)
	}
	if err != nil {
		t.r.logger.Error("saving file checkpoints", "err", err)
	}
}

// close saves the offsets a last time and closes the files and storage.
func (t *tailer) close(ctx context.Context) error {
	t.save(ctx)
	for id, tf := range t.files {
		_ = tf.f.Close()
		delete(t.files, id)
	}
	if t.client != nil {
		if err := t.client.Close(ctx); err != nil {
			return fmt.Errorf("closing checkpoint storage: %w", err)
		}
	}
	return nil
}

func idOf(st os.FileInfo) fileID {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return fileID{uint64(s.Dev), s.Ino} //nolint:unconvert // Dev is int32 or uint64 by platform
	}
	return fileID{}
}
