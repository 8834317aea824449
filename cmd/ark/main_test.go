package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func runArk(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

const example = "../../testdata/scenarios/xid79-4node.jsonl"

func TestAnalyzeJSONNamesTheFaultyGPU(t *testing.T) {
	code, out, errs := runArk(t, "", "analyze", "--input", example, "--job", "train/example", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	// Decode into the documented shape.
	var rep struct {
		Target struct {
			JobID string `json:"job_id"`
		} `json:"target"`
		At     int64 `json:"at"`
		Causes []struct {
			NodeID        string  `json:"node_id"`
			EntityID      string  `json:"entity_id"`
			EventType     string  `json:"event_type"`
			Summary       string  `json:"summary"`
			Score         float64 `json:"score"`
			FirstSeen     int64   `json:"first_seen"`
			AffectedRanks int     `json:"affected_ranks"`
			Chain         []struct {
				From, To, Type string
			} `json:"chain"`
			Evidence []struct {
				TS        int64  `json:"ts"`
				EventType string `json:"event_type"`
				EntityID  string `json:"entity_id"`
				NodeID    string `json:"node_id"`
				Value     string `json:"value"`
			} `json:"evidence"`
		} `json:"causes"`
		Rejected map[string]int `json:"rejected"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("output is not the documented JSON: %v\n%s", err, out)
	}
	if rep.Target.JobID != "train/example" || rep.At != 1764300029000 {
		t.Fatalf("target/at: %+v %d", rep.Target, rep.At)
	}
	if len(rep.Causes) == 0 {
		t.Fatal("no causes")
	}
	c := rep.Causes[0]
	if c.NodeID != "node-3" || c.EntityID != "gpu-6" || c.EventType != "error.hw" || c.FirstSeen != 1764300000000 {
		t.Fatalf("first cause %+v", c)
	}
	if !strings.Contains(c.Summary, "Xid 79") || c.Score <= 0 || c.Score > 1 || c.AffectedRanks < 16 {
		t.Fatalf("first cause %+v", c)
	}
	if len(c.Chain) == 0 || c.Chain[len(c.Chain)-1].Type != "BlockedBy" {
		t.Fatalf("chain %+v", c.Chain)
	}
	if len(c.Evidence) != 1 || c.Evidence[0].Value != "Xid 79: GPU has fallen off the bus." || c.Evidence[0].NodeID != "node-3" {
		t.Fatalf("evidence %+v", c.Evidence)
	}
	if _, ok := rep.Rejected["not_json"]; !ok {
		t.Fatalf("rejected must list every reason: %v", rep.Rejected)
	}
}

func TestAnalyzeBadInputIsCountedNotFatal(t *testing.T) {
	code, out, errs := runArk(t, "garbage\n{\"ts\":1}\n", "analyze", "--input", "-", "--job", "x", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var rep struct {
		Causes   []any          `json:"causes"`
		Rejected map[string]int `json:"rejected"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Causes == nil || len(rep.Causes) != 0 {
		t.Fatalf("causes must be [] , got %s", out)
	}
	if rep.Rejected["not_json"] != 1 || rep.Rejected["missing_field"] != 1 {
		t.Fatalf("rejected %v", rep.Rejected)
	}
	if !strings.Contains(errs, "rejected 2 line(s)") || !strings.Contains(errs, "line 1: not_json") {
		t.Fatalf("stderr must report the rejections by reason: %q", errs)
	}
}

func TestAnalyzeTableLeadsWithTheCause(t *testing.T) {
	code, out, errs := runArk(t, "", "analyze", "--input", example, "--job", "train/example")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	lines := strings.Split(out, "\n")
	if len(lines) < 5 || !strings.HasPrefix(lines[1], "ROOT CAUSE: fatal gpu-6 on node-3") {
		t.Fatalf("table:\n%s", out)
	}
	if !strings.Contains(out, "chain: ") || !strings.Contains(out, "evidence: 1 event(s)") {
		t.Fatalf("table lacks chain/evidence:\n%s", out)
	}
}

func TestAnalyzeAtEvaluatesThePast(t *testing.T) {
	// Before the XID the job was healthy.
	code, out, _ := runArk(t, "", "analyze", "--input", example, "--job", "train/example", "--at", "1764299990000", "-o", "json")
	if code != 0 || !strings.Contains(out, `"causes": []`) || !strings.Contains(out, `"at": 1764299990000`) {
		t.Fatalf("exit %d:\n%s", code, out)
	}
}

func TestExitCodes(t *testing.T) {
	cases := []struct {
		args []string
		code int
	}{
		{[]string{"analyze", "--job", "x"}, exitUsage},                                  // no input
		{[]string{"analyze", "--input", example}, exitUsage},                            // no target
		{[]string{"analyze", "--input", example, "--pid", "3"}, exitUsage},              // pid without node
		{[]string{"analyze", "--input", example, "--job", "x", "-o", "xml"}, exitUsage}, // bad format
		{[]string{"analyze", "--bogus"}, exitUsage},                                     // unknown flag
		{[]string{"analyze", "--input", "/nonexistent.jsonl", "--job", "x"}, exitFailure},
		{[]string{"frobnicate"}, exitUsage},
		{[]string{"version"}, exitOK},
	}
	for _, tc := range cases {
		if code, _, errs := runArk(t, "", tc.args...); code != tc.code {
			t.Errorf("%v: exit %d, want %d (%s)", tc.args, code, tc.code, errs)
		}
	}
}
