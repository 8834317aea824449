package analyze

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ark-gpu/ark/graph"
)

// scenario is one entry of testdata/scenarios/expected.json: a recording, a
// target, and the first cause it must name (or none).
type scenario struct {
	File   string   `json:"file"`
	Args   []string `json:"args"`
	Node   string   `json:"node"`
	Entity string   `json:"entity"`
	None   bool     `json:"none"`
	Why    string   `json:"why"`
	dir    string
}

func (s scenario) target(t *testing.T) graph.Target {
	var tg graph.Target
	for i := 0; i+1 < len(s.Args); i += 2 {
		switch s.Args[i] {
		case "--job":
			tg.JobID = s.Args[i+1]
		case "--node":
			tg.Node = s.Args[i+1]
		case "--pid":
			pid, err := strconv.ParseInt(s.Args[i+1], 10, 64)
			if err != nil {
				t.Fatalf("bad pid in %v", s.Args)
			}
			tg.PID = pid
		default:
			t.Fatalf("unknown arg %q", s.Args[i])
		}
	}
	return tg
}

const scenarioDir = "../../testdata/scenarios"

// corpora are the recorded incidents: our scenarios, and the red team's,
// written to break the ranking (other launchers, orders, red herrings).
var corpora = []string{scenarioDir, "../../testdata/redteam", "../../testdata/redteam2"}

func loadScenarios(t *testing.T) []scenario {
	t.Helper()
	return loadCorpus(t, scenarioDir)
}

func loadCorpus(t *testing.T, dir string) []scenario {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "expected.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ss []scenario
	if err := json.Unmarshal(b, &ss); err != nil {
		t.Fatal(err)
	}
	for i := range ss {
		ss[i].dir = dir
	}
	return ss
}

func runScenario(t *testing.T, s scenario) Report {
	t.Helper()
	f, err := os.Open(filepath.Join(s.dir, s.File))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rep, err := Run(f, Options{Target: s.target(t)})
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// TestScenariosNameTheRootCauseFirst replays every recorded incident and
// checks the first cause (or that a healthy target has none).
func TestScenariosNameTheRootCauseFirst(t *testing.T) {
	var ss []scenario
	for _, dir := range corpora {
		ss = append(ss, loadCorpus(t, dir)...)
	}
	if len(ss) < 25 {
		t.Fatalf("only %d scenarios", len(ss))
	}
	for _, s := range ss {
		t.Run(filepath.Base(s.dir)+"/"+strings.TrimSuffix(s.File, ".jsonl")+"/"+strings.Join(s.Args, "_"), func(t *testing.T) {
			rep := runScenario(t, s)
			if !rep.Found {
				t.Fatalf("target %v not found", s.Args)
			}
			for r, n := range rep.Rejected {
				// The red team's recordings carry garbage on purpose.
				if n > 0 && s.dir == scenarioDir {
					t.Errorf("recording has %d %s lines", n, r)
				}
			}
			if s.None {
				if len(rep.Causes) != 0 {
					c := rep.Causes[0]
					t.Fatalf("healthy target got %d causes, first %s/%s %q (score %.2f)\nwhy healthy: %s",
						len(rep.Causes), c.NodeID, c.EntityID, c.Summary, c.Score, s.Why)
				}
				return
			}
			if len(rep.Causes) == 0 {
				t.Fatalf("no cause found; want %s/%s\n%s", s.Node, s.Entity, s.Why)
			}
			c := rep.Causes[0]
			if c.NodeID != s.Node || c.EntityID != s.Entity {
				var b strings.Builder
				for i, c := range rep.Causes {
					if i == 5 {
						break
					}
					b.WriteString("  " + c.NodeID + "/" + c.EntityID + " " + c.Kind + " " + c.Summary +
						" score=" + strconv.FormatFloat(c.Score, 'f', 3, 64) +
						" ranks=" + strconv.Itoa(c.AffectedRanks) + "/" + strconv.Itoa(c.TotalRanks) + "\n")
				}
				t.Fatalf("first cause %s/%s, want %s/%s\n%s\ncauses:\n%s", c.NodeID, c.EntityID, s.Node, s.Entity, s.Why, b.String())
			}
			if len(c.Evidence) == 0 {
				t.Errorf("cause has no evidence")
			}
			if c.AffectedRanks == 0 {
				t.Errorf("cause reached from no rank")
			}
		})
	}
}
