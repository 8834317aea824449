// Package analyze replays a recording of events into a causal graph and
// explains a target offline: the engine behind `ark analyze`.
package analyze

import (
	"errors"
	"fmt"
	"io"
	"sort"

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
func Run(r io.Reader, opts Options) (Report, error) {
	g, rep, err := Load(r, opts)
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
// ask the graph more than Why, such as `ark diag --input`.
func Load(r io.Reader, opts Options) (*graph.Graph, Report, error) {
	var dopts []event.DecoderOption
	if opts.MaxLineBytes > 0 {
		dopts = append(dopts, event.WithMaxLineBytes(opts.MaxLineBytes))
	}
	d := event.NewDecoder(r, dopts...)
	g := graph.New(opts.Graph)
	var rep Report
	// A recording is often several hosts' logs put together: replay it in
	// time order, as the events happened, not as the files were joined.
	var evs []event.Event
	for {
		var ev event.Event
		err := d.Decode(&ev)
		if errors.Is(err, io.EOF) {
			break
		}
		var re *event.RejectError
		if errors.As(err, &re) {
			if opts.OnReject != nil {
				opts.OnReject(re)
			}
			continue
		}
		if err != nil {
			return nil, rep, fmt.Errorf("reading events at line %d: %w", d.Line()+1, err)
		}
		if opts.At > 0 && ev.TS > opts.At {
			rep.Skipped++
			continue
		}
		evs = append(evs, ev)
	}
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].TS < evs[j].TS })
	const batch = 1024
	for i := 0; i < len(evs); i += batch {
		g.ApplyBatch(evs[i:min(i+batch, len(evs))])
	}
	rep.Events = uint64(len(evs))
	g.Settle()
	rep.Rejected = d.Rejected()
	return g, rep, nil
}
