package graphsvc

import (
	"fmt"
	"net/http"

	"github.com/ark-gpu/ark/diag"
	"github.com/ark-gpu/ark/graph"
	"github.com/ark-gpu/ark/rules"
)

// Diagnose explains t at time at (ms; 0 means the graph's clock) as `ark
// diag` shows it: the causes with the XID catalog's actions, the default
// rules matched on the evidence, the `ark fix` commands through hubURL and
// the blast radius over every host. It only reads.
func (h *Hub) Diagnose(t graph.Target, at int64, hubURL string) (diag.Report, error) {
	rep, err := diag.Diagnose(h.g, t, diag.Options{At: at, Rules: rules.Defaults(), Scope: "hub", Hub: hubURL})
	if err != nil {
		return diag.Report{}, fmt.Errorf("diagnosing %s: %w", t, err)
	}
	res := graph.Result{Causes: make([]graph.Cause, len(rep.Causes))}
	for i, c := range rep.Causes {
		res.Causes[i] = c.Cause
	}
	rep.StaleHosts = h.staleIn(t, res)
	return rep, nil
}

func (h *Hub) handleDiag(w http.ResponseWriter, r *http.Request) {
	t, at, err := parseTarget(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	scheme := "http://"
	if r.TLS != nil {
		scheme = "https://"
	}
	rep, err := h.Diagnose(t, at, scheme+r.Host)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if !rep.Found {
		writeError(w, http.StatusNotFound, t.String()+" not found")
		return
	}
	writeJSON(w, http.StatusOK, rep)
}
