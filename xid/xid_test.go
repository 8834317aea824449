package xid

import "testing"

func TestCatalogLoads(t *testing.T) {
	if err := Err(); err != nil {
		t.Fatal(err)
	}
	if Len() < 150 {
		t.Fatalf("catalog has %d codes, want the full NVIDIA list", Len())
	}
}

func TestSeverityComesFromTheImmediateAction(t *testing.T) {
	cases := []struct {
		code int
		want Severity
	}{
		{79, SeverityFatal},     // RESTART_BM: fallen off the bus
		{48, SeverityFatal},     // WORKFLOW_XID_48: double-bit ECC
		{95, SeverityFatal},     // RESET_GPU: uncontained memory error
		{119, SeverityFatal},    // RESET_GPU: GSP RPC timeout
		{74, SeverityDegraded},  // NVLink error workflow
		{145, SeverityDegraded}, // NVLink5
		{13, SeverityTransient}, // RESTART_APP: graphics exception
		{31, SeverityTransient}, // RESTART_APP: page fault
		{45, SeverityTransient}, // preemptive cleanup, solo
		{63, SeverityInfo},      // IGNORE: row remapping event
		{92, SeverityInfo},      // IGNORE: high SBE rate
		{43, SeverityInfo},      // IGNORE: GPU stopped processing
	}
	for _, tc := range cases {
		e, ok := Lookup(tc.code)
		if !ok {
			t.Fatalf("XID %d missing from the catalog", tc.code)
		}
		if got := e.Severity(); got != tc.want {
			t.Errorf("XID %d (%s, %s): severity %v, want %v", tc.code, e.Mnemonic, e.ImmediateAction, got, tc.want)
		}
	}
}

func TestSympatheticCodes(t *testing.T) {
	for code, want := range map[int]bool{45: true, 94: false, 95: false, 79: false, 48: false, 13: false} {
		e, _ := Lookup(code)
		if got := e.Sympathetic(); got != want {
			t.Errorf("XID %d sympathetic = %v, want %v (%q)", code, got, want, e.InvestigatoryAction)
		}
	}
}

func TestRecoveryActionWeight(t *testing.T) {
	cases := map[string]float64{
		"GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)": 1.0,
		"GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)":   0.9,
		"GPU recovery action changed from 0x2 (Node Reboot Required) to 0x0 (None)": 0.1,
	}
	for msg, want := range cases {
		if got, ok := RecoveryActionWeight(msg); !ok || got != want {
			t.Errorf("%q: %v %v, want %v", msg, got, ok, want)
		}
	}
	if _, ok := RecoveryActionWeight("something else"); ok {
		t.Error("a message without an action must not be weighed")
	}
}
