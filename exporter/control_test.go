package exporter

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ark-gpu/ark/event"
)

// The seed's rule shape, as an operator would write it, matches on the
// agent: edge ids are this host's entity ids.
func TestSeedRuleMatchesOnTheAgent(t *testing.T) {
	dir := t.TempDir()
	rule := `name: WorkloadStalled
description: a rank waits on a network resource that has errors
triggers:
  - event_type: transport.drop
    condition: 'edge.type == "WaitsOn" && edge.to.startsWith("network")'
actions:
  - type: GracefulShutdown
    params: {signal: SIGUSR1, wait_seconds: 10}
`
	if err := os.WriteFile(filepath.Join(dir, "seed.yaml"), []byte(rule), 0o644); err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{NodeName: "h", Control: ControlConfig{RulesDir: dir}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	quiet := event.Event{TS: t0, Type: event.TransportDrop, EntityID: "network-ib0", PID: 7, Value: "0"}
	drop := event.Event{TS: t0 + 1, Type: event.TransportDrop, EntityID: "network-ib0", PID: 8, Value: "12"}
	a.Publish(&quiet)
	a.Publish(&drop)
	waitFor(t, "the seed rule to match", func() bool {
		for _, m := range a.ctl.matches.get(8) {
			if m.Match.Rule == "WorkloadStalled" {
				return true
			}
		}
		return false
	})
	time.Sleep(100 * time.Millisecond)
	for _, m := range a.ctl.matches.get(7) {
		if m.Match.Rule == "WorkloadStalled" {
			t.Fatal("no drops is no wait: the rule must stay quiet")
		}
	}
}
