package analyze

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// xform perturbs a recording the way real incidents differ from ours: other
// host names, lost samples, small reorderings, skewed host clocks, and a
// question asked minutes after the recording ends.
type xform struct {
	name    string
	rename  bool
	drop    float64
	seed    int64
	later   int64 // ms after last event
	skew    int64 // ms added to ts of the first host (alphabetically by appearance)
	shuffle bool
}

func hname(s string) string {
	h := fnv.New32a()
	_, _ = h.Write([]byte(s))
	return fmt.Sprintf("zz%08x", h.Sum32())
}

func transform(t *testing.T, file string, x xform) ([]byte, int64) {
	t.Helper()
	f, err := os.Open(filepath.Join(scenarioDir, file))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rng := rand.New(rand.NewSource(x.seed))
	var out bytes.Buffer
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var last int64
	firstHost := ""
	var lines []map[string]any
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatal(err)
		}
		typ, _ := m["event_type"].(string)
		if x.drop > 0 && !strings.HasPrefix(typ, "error") && !strings.HasPrefix(typ, "topo") && typ != "intent.run" && rng.Float64() < x.drop {
			continue
		}
		n, _ := m["node_id"].(string)
		if firstHost == "" {
			firstHost = n
		}
		ts := int64(m["ts"].(float64))
		if x.skew != 0 && n == firstHost {
			ts += x.skew
			m["ts"] = ts
		}
		if ts > last {
			last = ts
		}
		if x.rename && n != "" {
			m["node_id"] = hname(n)
		}
		lines = append(lines, m)
	}
	if x.shuffle {
		// swap adjacent events with prob 0.3 (small reordering)
		for i := 0; i+1 < len(lines); i++ {
			if rng.Float64() < 0.3 {
				lines[i], lines[i+1] = lines[i+1], lines[i]
			}
		}
	}
	for _, m := range lines {
		b, _ := json.Marshal(m)
		out.Write(b)
		out.WriteByte('\n')
	}
	return out.Bytes(), last
}

// TestScenariosSurvivePerturbation replays every scenario under each
// perturbation and expects the same first cause.
func TestScenariosSurvivePerturbation(t *testing.T) {
	ss := loadScenarios(t)
	xs := []xform{
		{name: "rename", rename: true},
		{name: "drop10", drop: 0.1, seed: 1},
		{name: "drop10b", drop: 0.1, seed: 2},
		{name: "drop25", drop: 0.25, seed: 3},
		{name: "shuffle", shuffle: true, seed: 4},
		{name: "later2m", later: 2 * 60_000},
		// Asked 4 minutes after the last event. Past the TTL (5m) of
		// silence from every agent the graph has rightly forgotten all but
		// sticky faults, so later questions are not expected to agree.
		{name: "later4m", later: 4 * 60_000},
		{name: "skew+3s", skew: 3000},
		{name: "skew-3s", skew: -3000},
	}
	for _, s := range ss {
		for _, x := range xs {
			data, last := transform(t, s.File, x)
			tg := s.target(t)
			wantNode := s.Node
			if x.rename {
				if tg.Node != "" {
					tg.Node = hname(tg.Node)
				}
				if wantNode != "" {
					wantNode = hname(wantNode)
				}
			}
			opts := Options{Target: tg}
			if x.later > 0 {
				opts.At = last + x.later
			}
			rep, err := Run(bytes.NewReader(data), opts)
			if err != nil {
				t.Fatal(err)
			}
			name := s.File + "/" + strings.Join(s.Args, "_") + "/" + x.name
			if s.None {
				if len(rep.Causes) != 0 {
					c := rep.Causes[0]
					t.Errorf("%s: healthy got %s/%s %q score %.3f", name, c.NodeID, c.EntityID, c.Summary, c.Score)
				}
				continue
			}
			if len(rep.Causes) == 0 {
				t.Errorf("%s: no cause (found=%v ranks=%d)", name, rep.Found, rep.Ranks)
				continue
			}
			c := rep.Causes[0]
			if c.NodeID != wantNode || c.EntityID != s.Entity {
				var b strings.Builder
				for i, c := range rep.Causes {
					if i == 4 {
						break
					}
					fmt.Fprintf(&b, "   %s/%s %s %q score=%.3f w=%.2f ranks=%d/%d\n", c.NodeID, c.EntityID, c.Kind, c.Summary, c.Score, c.Weight, c.AffectedRanks, c.TotalRanks)
				}
				t.Errorf("%s: first %s/%s want %s/%s\n%s", name, c.NodeID, c.EntityID, wantNode, s.Entity, b.String())
			}
		}
	}
}
