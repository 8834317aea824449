package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ark-gpu/ark/exporter"
	"github.com/ark-gpu/ark/exporter/probes/jobs/jobstest"
)

// TestPsShowsDiscoveredRanksWithoutAnExecProbe: the real agent, with no
// probe but jobs, finds a torchrun rank holding a GPU open and `ark ps`
// shows its job, rank and GPU.
func TestPsShowsDiscoveredRanksWithoutAnExecProbe(t *testing.T) {
	bin := jobstest.BuildRank(t)
	dev := t.TempDir()
	if err := os.WriteFile(filepath.Join(dev, "nvidia2"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	fc, err := exporter.LoadConfig([]byte("probes:\n  jobs:\n    interval: 100ms\n    kubernetes: \"off\"\n    device_prefix: " +
		filepath.Join(dev, "nvidia") + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	ta := startTestAgent(t, func(c *exporter.Config) { c.File = fc })
	r := jobstest.Start(t, []string{"RANK=3", "LOCAL_RANK=1", "WORLD_SIZE=8", "MASTER_ADDR=10.0.0.1", "MASTER_PORT=29500",
		"TORCHELASTIC_RUN_ID=e2e-job"}, bin, filepath.Join(dev, "nvidia2"))
	pid := strconv.Itoa(r.PID())
	var row string
	waitUntil(t, "ark ps to list the rank", func() bool {
		code, out, _ := runArk(t, "", "ps", "--socket", ta.socket)
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); code == 0 && len(f) > 1 && f[1] == pid {
				row = l
				return true
			}
		}
		return false
	})
	f := strings.Fields(row)
	// NODE PID JOB RANK STATE GPUS TOP-RESOURCE LAST-SEEN
	if len(f) < 6 || f[2] != "torchrun/e2e-job" || f[3] != "3" || f[5] != "gpu-2" {
		t.Fatalf("ps row %q, want job torchrun/e2e-job, rank 3, GPUs gpu-2", row)
	}
}
