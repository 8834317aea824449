package graphsvc

import (
	"net/http"
	"strings"
	"testing"

	"github.com/ark-gpu/ark/diag"
)

func TestDiagNamesTheGPUTheCatalogsActionTheRanksAndTheFixThroughTheHub(t *testing.T) {
	th := newTestHub(t, Options{})
	th.ingestScenario(t)
	var rep diag.Report
	if code := th.get(t, APIPrefix+"/diag?job_id=train/example", &rep); code != http.StatusOK {
		t.Fatalf("status %d", code)
	}
	if len(rep.Causes) == 0 || rep.Causes[0].NodeID != "node-3" || rep.Causes[0].EntityID != "gpu-6" {
		t.Fatalf("causes %+v", rep.Causes)
	}
	if c := rep.Causes[0].Catalog; c == nil || c.Code != 79 || c.ImmediateAction != "RESTART_BM" || c.InvestigatoryAction != "CONTACT_SUPPORT" {
		t.Fatalf("catalog %+v", rep.Causes[0].Catalog)
	}
	b := rep.Blast
	if b == nil || len(b.Jobs) != 1 || b.Ranks != 32 || b.Hosts != 4 || b.GPUs != 32 || b.GPUHoursPerHour != 32 || b.GPUHoursLost <= 0 {
		t.Fatalf("blast radius %+v", b)
	}
	// The fix commands go through this hub, to the rank's host.
	want := "ark fix 3000 --hub " + th.srv.URL + " --node node-1 --action Signal --param signal=SIGUSR1"
	found := false
	for _, f := range rep.Fixes {
		found = found || f.Command == want
	}
	if !found {
		t.Fatalf("no fix %q in %+v", want, rep.Fixes)
	}
	if len(rep.Remediation) != 1 || !strings.Contains(rep.Remediation[0], "quarantine node-3 as PersistentXidError") {
		t.Fatalf("remediation %q", rep.Remediation)
	}
	// Asking twice finds the same rules: the hub's rules keep no cooldown
	// between questions.
	var again diag.Report
	th.get(t, APIPrefix+"/diag?job_id=train/example", &again)
	if len(again.Rules) != len(rep.Rules) || len(rep.Rules) < 2 {
		t.Fatalf("rules %d then %d", len(rep.Rules), len(again.Rules))
	}
}

func TestDiagBadQueries(t *testing.T) {
	th := newTestHub(t, Options{})
	th.ingestScenario(t)
	cases := []struct {
		query string
		code  int
		msg   string
	}{
		{"", http.StatusBadRequest, "missing target"},
		{"?pid=3000", http.StatusBadRequest, "pid needs node"},
		{"?job_id=nope", http.StatusNotFound, "job nope not found"},
		{"?node=node-3&pid=3206", http.StatusOK, ""},
		{"?node=node-3", http.StatusOK, ""},
	}
	for _, tc := range cases {
		var body struct {
			Error string `json:"error"`
		}
		code := th.get(t, APIPrefix+"/diag"+tc.query, &body)
		if code != tc.code || !strings.Contains(body.Error, tc.msg) {
			t.Errorf("%q: %d %q, want %d %q", tc.query, code, body.Error, tc.code, tc.msg)
		}
	}
}
