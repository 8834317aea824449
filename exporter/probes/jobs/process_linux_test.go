package jobs

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probes/jobs/jobstest"
)

// scanUntil scans the real /proc until cond holds for the events gathered
// so far, or fails after a generous deadline (a loaded 2-core machine).
func scanUntil(t *testing.T, ts *testScanner, sk *sink, what string, cond func([]event.Event) bool) []event.Event {
	t.Helper()
	var all []event.Event
	deadline := time.Now().Add(30 * time.Second)
	for {
		ts.mustScan(t, time.Now(), sk)
		all = append(all, sk.take()...)
		if cond(all) {
			return all
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; events: %+v", what, all)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func intentOf(evs []event.Event, pid int) (event.Event, bool) {
	for _, ev := range byPID(evs, pid) {
		if ev.Type == event.IntentRun {
			return ev, true
		}
	}
	return event.Event{}, false
}

func TestRealRanksOfEachLauncherAreFound(t *testing.T) {
	bin := jobstest.BuildRank(t)
	devDir := t.TempDir()
	gpu := filepath.Join(devDir, "nvidia3")
	for _, name := range []string{"nvidia3", "nvidiactl", "nvidia-uvm"} {
		if err := os.WriteFile(filepath.Join(devDir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name     string
		env      []string
		files    []string
		job      string
		rank     string
		launcher string
		gpus     string
		port     bool
	}{
		{name: "torchrun", env: []string{"RANK=0", "LOCAL_RANK=0", "WORLD_SIZE=16", "GROUP_RANK=0", "MASTER_ADDR=10.0.0.1", "MASTER_PORT=29500",
			"TORCHELASTIC_RUN_ID=llama-70b", "TORCHELASTIC_RESTART_COUNT=0", "CUDA_VISIBLE_DEVICES=0,1"},
			// The device it holds open wins over CUDA_VISIBLE_DEVICES.
			files: []string{gpu, filepath.Join(devDir, "nvidiactl"), filepath.Join(devDir, "nvidia-uvm")},
			job:   "torchrun/llama-70b", rank: "0", launcher: "torchrun", gpus: "3", port: true},
		{name: "torchrun-default-run-id", env: []string{"RANK=5", "LOCAL_RANK=1", "WORLD_SIZE=8", "MASTER_ADDR=node-1", "MASTER_PORT=29400",
			"TORCHELASTIC_RUN_ID=none", "CUDA_VISIBLE_DEVICES=1"},
			job: "torchrun/node-1:29400", rank: "5", launcher: "torchrun", gpus: "1"},
		{name: "srun", env: []string{"SLURM_JOB_ID=4242", "SLURM_PROCID=7", "SLURM_LOCALID=3", "SLURM_STEP_ID=0", "SLURM_NTASKS=16",
			"CUDA_VISIBLE_DEVICES=3"},
			job: "slurm/4242", rank: "7", launcher: "slurm", gpus: "3"},
		{name: "torchrun-under-srun", env: []string{"SLURM_JOB_ID=4243", "SLURM_PROCID=1", "RANK=9", "MASTER_ADDR=n1", "MASTER_PORT=1",
			"TORCHELASTIC_RUN_ID=4243"},
			job: "slurm/4243", rank: "9", launcher: "torchrun"},
		{name: "mpirun", env: []string{"OMPI_COMM_WORLD_RANK=2", "OMPI_COMM_WORLD_SIZE=4", "OMPI_COMM_WORLD_LOCAL_RANK=0",
			"PMIX_RANK=2", "PMIX_NAMESPACE=prterun-head-12345@1", "NVIDIA_VISIBLE_DEVICES=2,3", "CUDA_VISIBLE_DEVICES=0,1"},
			job: "mpi/prterun-head-12345@1", rank: "2", launcher: "mpi", gpus: "2,3"},
		{name: "deepspeed", env: []string{"RANK=3", "LOCAL_RANK=3", "WORLD_SIZE=8", "CROSS_RANK=0", "CROSS_SIZE=1", "LOCAL_SIZE=8",
			"MASTER_ADDR=10.0.0.9", "MASTER_PORT=29500"},
			job: "deepspeed/10.0.0.9:29500", rank: "3", launcher: "deepspeed"},
		{name: "horovod", env: []string{"HOROVOD_RANK=1", "HOROVOD_SIZE=2", "HOROVOD_LOCAL_RANK=1", "HOROVOD_HOSTNAME=n2",
			"HOROVOD_GLOO_RENDEZVOUS_ADDR=10.0.0.4", "HOROVOD_GLOO_RENDEZVOUS_PORT=40000"},
			job: "horovod/10.0.0.4:40000", rank: "1", launcher: "horovod"},
	}
	ranks := map[int]int{} // pid → case
	procs := map[string]*jobstest.Rank{}
	for i, c := range cases {
		r := jobstest.Start(t, c.env, append([]string{bin}, c.files...)...)
		ranks[r.PID()] = i
		procs[c.name] = r
	}
	plain := jobstest.Start(t, []string{"HOME=/root", "PATH=/usr/bin"}, bin, gpu)

	// What the probe should say for a rank in the host's namespace; ""
	// on a host with no address but loopback.
	hostIP := ""
	if ip := nsAddr("/proc/self/net", ""); ip.IsValid() {
		hostIP = ip.String()
	}
	ts := newTestScanner(t, "/proc", Config{DevicePrefix: filepath.Join(devDir, "nvidia")}, nil)
	sk := &sink{}
	evs := scanUntil(t, ts, sk, "every rank's intent.run", func(evs []event.Event) bool {
		for pid := range ranks {
			if _, ok := intentOf(evs, pid); !ok {
				return false
			}
		}
		return true
	})
	for pid, i := range ranks {
		c := cases[i]
		t.Run(c.name, func(t *testing.T) {
			ev, _ := intentOf(evs, pid)
			if ev.JobID != c.job || ev.EntityID != "pid-"+strconv.Itoa(pid) || ev.Value != "running" {
				t.Errorf("intent.run job %q entity %q value %q, want %q pid-%d running", ev.JobID, ev.EntityID, ev.Value, c.job, pid)
			}
			for k, want := range map[string]string{event.AttrRank: c.rank, event.AttrLauncher: c.launcher, event.AttrGPUs: c.gpus} {
				if got := ev.Attrs.Get(k); got != want {
					t.Errorf("attrs.%s = %q, want %q", k, got, want)
				}
			}
			// The host's own address (no veth here), with the rendezvous
			// port on rank 0.
			addr := ev.Attrs.Get(event.AttrAddr)
			switch {
			case hostIP == "":
			case c.port && addr != hostIP+":29500":
				t.Errorf("rank 0's addr %q, want %s:29500", addr, hostIP)
			case !c.port && addr != hostIP:
				t.Errorf("addr %q, want the host's %s", addr, hostIP)
			}
			if ev.Attrs.Get("start_time") == "" {
				t.Error("no start_time attr")
			}
		})
	}
	if got := byPID(evs, plain.PID()); len(got) != 0 {
		t.Errorf("a process without launcher variables was reported: %+v", got)
	}

	// One more scan with nothing changed emits nothing.
	ts.mustScan(t, time.Now(), sk)
	if again := sk.take(); len(again) != 0 {
		t.Errorf("an unchanged scan emitted %+v", again)
	}

	// A rank's exit is said once.
	srun := procs["srun"]
	pid := srun.PID()
	srun.Stop(t)
	evs = scanUntil(t, ts, sk, "the exit", func(evs []event.Event) bool { return len(byPID(evs, pid)) > 0 })
	got := byPID(evs, pid)
	if len(got) != 1 || got[0].Type != event.ProcessState || got[0].Value != "exited" || got[0].JobID != "slurm/4242" {
		t.Errorf("exit events %+v, want one process.state exited of slurm/4242", got)
	}
}
