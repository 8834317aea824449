package analyze

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/graph"
)

// reference replays r the plain way: decode every event, sort them stably
// by ts, apply them. Run must answer the same.
func reference(t *testing.T, r io.Reader, opts Options) (Report, []int64) {
	t.Helper()
	d := event.NewDecoder(r)
	var evs []event.Event
	var rep Report
	var lines []int64
	for {
		var ev event.Event
		err := d.Decode(&ev)
		if errors.Is(err, io.EOF) {
			break
		}
		var re *event.RejectError
		if errors.As(err, &re) {
			lines = append(lines, re.Line)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if opts.At > 0 && ev.TS > opts.At {
			rep.Skipped++
			continue
		}
		evs = append(evs, ev.Clone())
	}
	slices.SortStableFunc(evs, func(a, b event.Event) int { return int(a.TS - b.TS) })
	g := graph.New(opts.Graph)
	g.ApplyBatch(evs)
	g.Settle()
	res, err := g.Why(opts.Target, opts.At)
	if err != nil {
		t.Fatal(err)
	}
	rep.Result, rep.Events, rep.Rejected = res, uint64(len(evs)), d.Rejected()
	return rep, lines
}

// hostsJoinedBackwards rewrites a recording as its hosts' logs joined last
// host first, with lines the peek cannot read and lines only a full parse
// rejects spread through it.
func hostsJoinedBackwards(t *testing.T, file string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(scenarioDir, file))
	if err != nil {
		t.Fatal(err)
	}
	byHost := map[string][]string{}
	var hosts []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var ev event.Event
		if err := event.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatal(err)
		}
		if _, ok := byHost[ev.NodeID]; !ok {
			hosts = append(hosts, ev.NodeID)
		}
		byHost[ev.NodeID] = append(byHost[ev.NodeID], line)
	}
	var out bytes.Buffer
	for i := len(hosts) - 1; i >= 0; i-- {
		for j, line := range byHost[hosts[i]] {
			switch j {
			case 1: // the ts is not first: only a full parse finds it
				line = `{"pad":0,` + line[1:]
			case 2: // a canonical start the full parse rejects
				out.WriteString(`{"ts":1764299880000,"event_type":"no.such"}` + "\n")
			case 3:
				out.WriteString("not json\n\n")
			}
			out.WriteString(line + "\n")
		}
	}
	return out.Bytes()
}

func TestRunReplaysJoinedHostLogsInTimeOrder(t *testing.T) {
	data := hostsJoinedBackwards(t, "xid79-4node.jsonl")
	// A repeated ts key overrides the one the peek reads: Run must notice
	// and order by the parsed one.
	repeated := append(bytes.Clone(data), `{"ts":1764299880000,"event_type":"compute.util","entity_id":"gpu-0","node_id":"node-9","value":"5","pid":9,"ts":1764299881000}`+"\n"...)
	for name, rec := range map[string][]byte{"joined": data, "repeated ts key": repeated} {
		for _, at := range []int64{0, 1764299900000} {
			opts := Options{Target: graph.Target{JobID: "train/example"}, At: at}
			want, wantLines := reference(t, bytes.NewReader(rec), opts)
			var gotLines []int64
			opts.OnReject = func(re *event.RejectError) { gotLines = append(gotLines, re.Line) }
			// Through a file (mapped) and through a pipe-like reader.
			path := filepath.Join(t.TempDir(), "rec.jsonl")
			if err := os.WriteFile(path, rec, 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			for how, r := range map[string]io.Reader{"file": f, "reader": bytes.NewReader(rec)} {
				gotLines = nil
				got, err := Run(r, opts)
				if err != nil {
					t.Fatalf("%s at %d via %s: %v", name, at, how, err)
				}
				gj, _ := json.Marshal(got)
				wj, _ := json.Marshal(want)
				if !bytes.Equal(gj, wj) {
					t.Errorf("%s at %d via %s:\n got %s\nwant %s", name, at, how, gj, wj)
				}
				if !slices.Equal(gotLines, wantLines) {
					t.Errorf("%s at %d via %s: rejected lines reported %v, want %v (file order)", name, at, how, gotLines, wantLines)
				}
			}
			_ = f.Close()
			if !want.Found || at == 0 && len(want.Causes) == 0 || want.Rejected[event.ReasonUnknownType] == 0 || want.Rejected[event.ReasonNotJSON] == 0 {
				t.Fatalf("%s: the recording does not exercise what it should: %+v", name, want.Rejected)
			}
		}
	}
}

func TestInOrderIsTheStableOrderByTS(t *testing.T) {
	for _, tc := range []struct {
		name       string
		runs, size int
	}{
		{"one run", 1, 500},
		{"hosts joined", 64, 300},
		{"more runs than are merged", maxMergeRuns + 10, 2},
	} {
		var order []replayAt
		var runs []int
		var off int64
		for r := range tc.runs {
			runs = append(runs, len(order))
			ts := int64(1000 + (r*7919)%97) // each run ascending, runs overlapping
			for range tc.size {
				order = append(order, replayAt{ts: ts, start: off})
				off += 10
				ts += int64(off % 3) // ties within and across runs
			}
		}
		want := slices.Clone(order)
		slices.SortStableFunc(want, func(a, b replayAt) int { return int(a.ts - b.ts) })
		next := inOrder(order, runs)
		var got []replayAt
		for at, ok := next(); ok; at, ok = next() {
			got = append(got, at)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: the notes come out in another order than the stable sort by ts", tc.name)
		}
	}
}
