// Package xid is NVIDIA's XID error catalog (xid-catalog.csv, embedded) and
// the severity Ark derives from each code's recommended immediate action.
package xid

import (
	"bytes"
	_ "embed" // the catalog is embedded
	"encoding/csv"
	"fmt"
	"strconv"
	"strings"
	"sync"
)

//go:embed xid-catalog.csv
var catalogCSV []byte

// Severity says how bad an error is for the workload on that device.
type Severity int

// Severities from harmless to node-fatal.
const (
	SeverityInfo      Severity = iota // informational; never a cause by itself
	SeverityTransient                 // the application can restart and carry on
	SeverityDegraded                  // the device works but needs attention (firmware, NVLink)
	SeverityFatal                     // the device needs a reset or more; workloads on it are dead
)

func (s Severity) String() string {
	switch s {
	case SeverityInfo:
		return "info"
	case SeverityTransient:
		return "transient"
	case SeverityDegraded:
		return "degraded"
	case SeverityFatal:
		return "fatal"
	}
	return "unknown"
}

// Entry is one row of the catalog.
type Entry struct {
	Code                int
	Mnemonic            string
	Description         string
	ImmediateAction     string
	InvestigatoryAction string
}

// Weight is the severity of the entry in [0,1]: how strongly an error of
// this code explains a stalled workload. It is derived from the immediate
// action NVIDIA recommends, never from the code number.
func (e Entry) Weight() float64 { return ActionWeight(e.ImmediateAction) }

// Severity is the coarse class of Weight.
func (e Entry) Severity() Severity { return WeightSeverity(e.Weight()) }

// Sympathetic reports whether NVIDIA says this code, when not alone, just
// follows another error ("Not solo: IGNORE (follow other Xid)"), so it
// yields to a primary error seen alongside it. Codes whose investigatory
// note only says to ignore them *if* sympathetic (94, 95) are primary
// errors in their own right and are not included.
func (e Entry) Sympathetic() bool {
	a := strings.ToLower(e.InvestigatoryAction)
	return strings.Contains(a, "not solo") || e.ImmediateAction == "WORKFLOW_XID_45"
}

// ActionWeight maps an immediate action to a weight in [0,1].
func ActionWeight(action string) float64 {
	switch strings.ToUpper(strings.TrimSpace(action)) {
	case "RESTART_BM", "CHECK_MECHANICALS":
		return 1.0 // the node is lost until someone acts on the hardware
	case "CONTACT_SUPPORT":
		return 0.95
	case "RESTART_VM":
		return 0.9
	case "RESET_GPU", "WORKFLOW_XID_48":
		return 0.9 // the GPU is unusable until reset (XID 48: double-bit ECC)
	case "WORKFLOW_NVLINK_ERR", "WORKFLOW_NVLINK5_ERR":
		return 0.8
	case "UPDATE_SWFW":
		return 0.6
	case "RESTART_APP", "CHECK_UVM":
		return 0.45
	case "WORKFLOW_XID_45":
		return 0.35 // solo: restart the fabric manager; otherwise sympathetic
	case "XID_154":
		return 0.3 // informational about another XID; see RecoveryActionWeight
	case "IGNORE":
		return 0.1
	case "":
		return 0.5 // undocumented: treat as a real but unranked error
	}
	return 0.5
}

// WeightSeverity classifies a weight.
func WeightSeverity(w float64) Severity {
	switch {
	case w >= 0.85:
		return SeverityFatal
	case w >= 0.55:
		return SeverityDegraded
	case w >= 0.25:
		return SeverityTransient
	}
	return SeverityInfo
}

// RecoveryActionWeight reads the recovery action an XID 154 message names
// ("GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot
// Required)") and weighs it; ok is false when the message names none.
func RecoveryActionWeight(msg string) (float64, bool) {
	m := strings.ToLower(msg)
	if i := strings.LastIndex(m, " to "); i >= 0 {
		m = m[i:]
	}
	switch {
	case strings.Contains(m, "reboot"):
		return 1.0, true
	case strings.Contains(m, "reset"):
		return 0.9, true
	case strings.Contains(m, "drain"):
		return 0.8, true
	case strings.Contains(m, "none"):
		return 0.1, true
	}
	return 0, false
}

var (
	loadOnce sync.Once
	byCode   map[int]Entry
	loadErr  error
)

func load() {
	byCode, loadErr = parse(catalogCSV)
}

func parse(data []byte) (map[int]Entry, error) {
	r := csv.NewReader(bytes.NewReader(data))
	rows, err := r.ReadAll()
	if err != nil {
		return nil, fmt.Errorf("reading XID catalog: %w", err)
	}
	if len(rows) < 2 {
		return nil, fmt.Errorf("XID catalog has no rows")
	}
	col := map[string]int{}
	for i, h := range rows[0] {
		col[h] = i
	}
	for _, need := range []string{"code", "mnemonic", "description", "immediate_action", "investigatory_action"} {
		if _, ok := col[need]; !ok {
			return nil, fmt.Errorf("XID catalog lacks column %q", need)
		}
	}
	m := make(map[int]Entry, len(rows)-1)
	for n, row := range rows[1:] {
		code, err := strconv.Atoi(strings.TrimSpace(row[col["code"]]))
		if err != nil {
			return nil, fmt.Errorf("XID catalog row %d: bad code %q", n+2, row[col["code"]])
		}
		m[code] = Entry{
			Code:                code,
			Mnemonic:            row[col["mnemonic"]],
			Description:         row[col["description"]],
			ImmediateAction:     row[col["immediate_action"]],
			InvestigatoryAction: row[col["investigatory_action"]],
		}
	}
	return m, nil
}

// Lookup returns the catalog entry of code.
func Lookup(code int) (Entry, bool) {
	loadOnce.Do(load)
	if loadErr != nil {
		return Entry{}, false
	}
	e, ok := byCode[code]
	return e, ok
}

// Len returns how many codes the catalog holds.
func Len() int {
	loadOnce.Do(load)
	return len(byCode)
}

// Err returns the error from reading the embedded catalog, if any.
func Err() error {
	loadOnce.Do(load)
	return loadErr
}
