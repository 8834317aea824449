// Package analyze replays a recording of events into a causal graph and
// explains a target offline: the engine behind `ark analyze`.
package analyze

import (
	"errors"
	"fmt"
	"io"

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
	var dopts []event.DecoderOption
	if opts.MaxLineBytes > 0 {
		dopts = append(dopts, event.WithMaxLineBytes(opts.MaxLineBytes))
	}
	d := event.NewDecoder(r, dopts...)
	g := graph.New(opts.Graph)
	var rep Report
	const batch = 1024
	buf := make([]event.Event, batch)
	n := 0
	for {
		err := d.Decode(&buf[n])
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
			return rep, fmt.Errorf("reading events at line %d: %w", d.Line()+1, err)
		}
		if opts.At > 0 && buf[n].TS > opts.At {
			rep.Skipped++
			continue
		}
		rep.Events++
		// The graph copies what it keeps, so the batch (and the attrs
		// storage the decoder reuses) can be refilled once applied.
		if n++; n == batch {
			g.ApplyBatch(buf)
			n = 0
		}
	}
	g.ApplyBatch(buf[:n])
	res, err := g.Why(opts.Target, opts.At)
	if err != nil {
		return rep, err
	}
	rep.Result = res
	rep.Rejected = d.Rejected()
	return rep, nil
}
