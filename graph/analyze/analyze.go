// Package analyze replays a recording of events into a causal graph and
// explains a target offline: the engine behind `ark analyze`.
package analyze

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"unsafe"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/graph"
)

// Options configure a replay.
type Options struct {
	Target graph.Target
	// At evaluates the graph at this time (ms); events after it are not
	// applied. 0 means the timestamp of the latest event.
	At int64
	// MaxLineBytes bounds a line; 0 means the decoder's default.
	MaxLineBytes int
	Graph        graph.Options
	// OnReject, if set, is called for each rejected line.
	OnReject func(*event.RejectError)
}

// Report is the outcome of a replay: the graph's answer plus what the
// decoder rejected.
type Report struct {
	graph.Result
	Events   uint64            `json:"events"`
	Skipped  uint64            `json:"skipped_after_at"`
	Rejected map[string]uint64 `json:"rejected"`
}

// Run replays r and explains opts.Target.
//
// A recording is often several hosts' logs joined one after another, so it
// is replayed in time order, as the events happened, not in file order (ties
// keep file order). Run holds the recording in memory once (a regular file
// is mapped, not copied) and notes where each line lies and when it
// happened: the ts is read off the front of a line as the encoder writes
// it, and only a line in another form is parsed to find it. It orders those
// small notes rather than the events, then parses each line once as it is
// applied: no event is kept or moved around. Rejected lines are reported in
// file order, as a streaming read would.
func Run(r io.Reader, opts Options) (Report, error) {
	data, release, err := load(r)
	if err != nil {
		return Report{}, err
	}
	// The graph may point into data: it is asked before data is released.
	defer release()
	g, rep, err := replayOrdered(data, opts)
	if err != nil {
		return rep, err
	}
	res, err := g.Why(opts.Target, opts.At)
	if err != nil {
		return rep, err
	}
	rep.Result = res
	return rep, nil
}

// Load replays r into a new graph and returns it settled, with what was
// read and rejected (the report's Result is left empty): for callers that
// ask the graph more than Why, such as `ark diag --input`. The recording is
// read into memory (never mapped), since the graph outlives this call.
func Load(r io.Reader, opts Options) (*graph.Graph, Report, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, Report{}, fmt.Errorf("reading events: %w", err)
	}
	return replayOrdered(data, opts)
}

// replayOrdered replays data in time order, reading each line's ts off its
// front, or, when a line's ts is not the first one it names (a repeated
// key), parsing every line to order it.
func replayOrdered(data []byte, opts Options) (*graph.Graph, Report, error) {
	g, rep, err := replay(data, opts, false)
	if errors.Is(err, errPeekedWrong) {
		return replay(data, opts, true)
	}
	return g, rep, err
}

var errPeekedWrong = errors.New("a line's ts differs from the one read off its front")

// replay orders the lines of data by ts, then applies them. With parseAll,
// every line is parsed to find its ts; else only those PeekTS cannot read.
func replay(data []byte, opts Options, parseAll bool) (*graph.Graph, Report, error) {
	var rep Report
	var dopts []event.DecoderOption
	if opts.MaxLineBytes > 0 {
		dopts = append(dopts, event.WithMaxLineBytes(opts.MaxLineBytes))
	}
	d := event.NewBytesDecoder(data, dopts...)
	var (
		ev      event.Event
		order   = make([]replayAt, 0, estimateLines(data))
		runs    []int // where each run of lines in time order starts
		rejects []*event.RejectError
	)
	for {
		line, err := d.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		var re *event.RejectError
		if errors.As(err, &re) {
			rejects = append(rejects, re)
			continue
		}
		if err != nil {
			return nil, rep, fmt.Errorf("reading events at line %d: %w", d.Line()+1, err)
		}
		ts, ok := int64(0), false
		if !parseAll {
			ts, ok = event.PeekTS(line)
		}
		if !ok {
			if err := event.UnmarshalString(line, &ev); err != nil {
				if errors.As(err, &re) {
					re.Line = d.Line()
					rejects = append(rejects, re)
					continue
				}
				return nil, rep, fmt.Errorf("reading events at line %d: %w", d.Line(), err)
			}
			ts = ev.TS
		}
		start, end := d.LastLine()
		if n := len(order); n == 0 || ts < order[n-1].ts {
			runs = append(runs, n)
		}
		order = append(order, replayAt{ts: ts, start: int64(start), len: int32(end - start)})
	}
	next := inOrder(order, runs)
	g := graph.New(opts.Graph)
	text := unsafe.String(unsafe.SliceData(data), len(data))
	const batch = 1024
	evs := make([]event.Event, batch)
	n := 0
	var late []lateReject
	flush := func() {
		g.ApplyBatch(evs[:n])
		n = 0
	}
	for {
		at, ok := next()
		if !ok {
			break
		}
		ev := &evs[n]
		if err := event.UnmarshalString(text[at.start:at.start+int64(at.len)], ev); err != nil {
			var re *event.RejectError
			if !errors.As(err, &re) {
				return nil, rep, fmt.Errorf("reading the event at byte %d: %w", at.start, err)
			}
			late = append(late, lateReject{at.start, re})
			continue
		}
		if ev.TS != at.ts {
			return nil, rep, errPeekedWrong
		}
		if opts.At > 0 && ev.TS > opts.At {
			rep.Skipped++
			continue
		}
		rep.Events++
		if n++; n == batch {
			flush()
		}
	}
	flush()
	g.Settle()
	rep.Rejected = d.Rejected()
	rejects = append(rejects, numberLines(data, late)...)
	slices.SortStableFunc(rejects, func(a, b *event.RejectError) int { return cmp.Compare(a.Line, b.Line) })
	for _, re := range rejects {
		if re.Reason != event.ReasonTooLong { // the decoder counted those
			rep.Rejected[re.Reason]++
		}
		if opts.OnReject != nil {
			opts.OnReject(re)
		}
	}
	return g, rep, nil
}

// maxMergeRuns bounds the runs merged one event at a time; more runs than
// that (a shuffled recording) are sorted instead.
const maxMergeRuns = 4096

// inOrder returns an iterator over order by (ts, offset), given where its
// runs in time order start. Each host's log is usually one run, so the runs
// are merged through a small heap; a recording in many pieces is sorted.
// Offsets grow with file order, so (ts, offset) is the stable order by ts.
func inOrder(order []replayAt, runs []int) func() (replayAt, bool) {
	less := func(a, b replayAt) bool { return a.ts < b.ts || a.ts == b.ts && a.start < b.start }
	if len(runs) > maxMergeRuns {
		slices.SortFunc(order, func(a, b replayAt) int {
			if c := cmp.Compare(a.ts, b.ts); c != 0 {
				return c
			}
			return cmp.Compare(a.start, b.start)
		})
		runs = runs[:1]
	}
	// h is a min-heap of the runs' unread remainders, by their first note.
	h := make([][]replayAt, len(runs))
	for i, start := range runs {
		end := len(order)
		if i+1 < len(runs) {
			end = runs[i+1]
		}
		h[i] = order[start:end]
	}
	down := func(i int) {
		for {
			m, l, r := i, 2*i+1, 2*i+2
			if l < len(h) && less(h[l][0], h[m][0]) {
				m = l
			}
			if r < len(h) && less(h[r][0], h[m][0]) {
				m = r
			}
			if m == i {
				return
			}
			h[i], h[m] = h[m], h[i]
			i = m
		}
	}
	for i := len(h)/2 - 1; i >= 0; i-- {
		down(i)
	}
	return func() (replayAt, bool) {
		if len(h) == 0 {
			return replayAt{}, false
		}
		at := h[0][0]
		if h[0] = h[0][1:]; len(h[0]) == 0 {
			h[0] = h[len(h)-1]
			h = h[:len(h)-1]
		}
		if len(h) > 0 {
			down(0)
		}
		return at, true
	}
}

// estimateLines guesses how many lines data holds from the first
// megabyte, a little high, so the notes are allocated once without
// counting every newline first.
func estimateLines(data []byte) int {
	head := data[:min(len(data), 1<<20)]
	n := bytes.Count(head, []byte{'\n'}) + 1
	return int(float64(n) * float64(len(data)) / float64(len(head)+1) * 1.05)
}

// replayAt says where an event's line lies and when it happened.
type replayAt struct {
	ts    int64
	start int64
	len   int32
}

// lateReject is a line found bad only when it was replayed.
type lateReject struct {
	start int64
	err   *event.RejectError
}

// numberLines sets the line number of each late reject, counting newlines
// once over the data in offset order.
func numberLines(data []byte, late []lateReject) []*event.RejectError {
	slices.SortFunc(late, func(a, b lateReject) int { return cmp.Compare(a.start, b.start) })
	out := make([]*event.RejectError, len(late))
	var at, line int64 = 0, 1
	for i, l := range late {
		line += int64(bytes.Count(data[at:l.start], []byte{'\n'}))
		at = l.start
		l.err.Line = line
		out[i] = l.err
	}
	return out
}

// load returns the whole recording and what releases it once replayed. A
// regular file is mapped; anything else is read into memory.
func load(r io.Reader) ([]byte, func(), error) {
	size := 0
	if f, ok := r.(*os.File); ok {
		data, unmap, ok, err := mapFile(f)
		if err != nil {
			return nil, nil, err
		}
		if ok {
			return data, unmap, nil
		}
		if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
			size = int(st.Size())
		}
	}
	buf := bytes.NewBuffer(make([]byte, 0, size+bytes.MinRead))
	if _, err := buf.ReadFrom(r); err != nil {
		return nil, nil, fmt.Errorf("reading recording: %w", err)
	}
	return buf.Bytes(), func() {}, nil
}
