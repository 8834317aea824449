//go:build linux

package lab

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

var arkBin, rankBin string

func TestMain(m *testing.M) {
	code := func() int {
		if os.Geteuid() != 0 {
			return m.Run() // every lab test skips with its reason
		}
		dir, err := os.MkdirTemp("", "ark-lab-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		arkBin, rankBin = filepath.Join(dir, "ark"), filepath.Join(dir, "rank")
		for bin, pkg := range map[string]string{arkBin: "../../cmd/ark", rankBin: "./rank"} {
			if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "building %s: %v\n%s", pkg, err, out)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

// cluster is a running lab: hosts, a hub, an agent per host and jobs.
type cluster struct {
	*Lab
	hub    *Hub
	agents map[string]*Proc
}

// labProbes are the probes every lab agent runs: nothing in the lab writes
// an event by hand.
var labProbes = []string{"tcpflow", "jobs", "procfs", "kmsg"}

func startCluster(ctx context.Context, t *testing.T, hosts int) *cluster {
	t.Helper()
	needRoot(t)
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		t.Skip("the lab's flow probe needs kernel BTF (/sys/kernel/btf/vmlinux)")
	}
	l, err := Setup(ctx, Config{Hosts: hosts})
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{Lab: l, agents: map[string]*Proc{}}
	t.Cleanup(func() {
		for name, a := range c.agents {
			a.Stop()
			if t.Failed() {
				t.Logf("--- agent %s:\n%s", name, tail(a.Output(), 40))
			}
		}
		if c.hub != nil {
			c.hub.Stop()
			if t.Failed() {
				t.Logf("--- hub:\n%s", tail(c.hub.Output(), 40))
			}
		}
		l.Close()
	})
	c.hub, err = l.StartHub(ctx, arkBin, 19465)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range l.Hosts {
		a, err := l.StartAgent(ctx, arkBin, h, c.hub, AgentOptions{Probes: labProbes})
		if err != nil {
			t.Fatal(err)
		}
		c.agents[h.Name] = a
	}
	return c
}

func (c *cluster) startJob(ctx context.Context, t *testing.T, o JobOptions) *Job {
	t.Helper()
	j, err := c.StartJob(ctx, rankBin, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		j.Stop()
		if t.Failed() {
			for _, r := range j.Ranks {
				t.Logf("--- %s on %s (pid %d):\n%s", r.Name, r.Host.Name, r.PID, tail(r.Output(), 5))
			}
		}
	})
	return j
}

// psRank is a row of the hub's ps as the lab needs it.
type psRank struct {
	Node  string `json:"node"`
	PID   int64  `json:"pid"`
	JobID string `json:"job_id"`
	Rank  string `json:"rank"`
	Stale bool   `json:"stale"`
}

// waitDiscovered waits until the hub lists every rank of j under its job
// id with its rank, all found by the agents' own probes.
func (c *cluster) waitDiscovered(ctx context.Context, t *testing.T, j *Job, jobID string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last []psRank
	for time.Now().Before(deadline) {
		var ps struct {
			Processes []psRank `json:"processes"`
		}
		if err := GetJSON(ctx, c.hub.URL+"/api/v1/ps?job_id="+url.QueryEscape(jobID), &ps); err == nil {
			last = ps.Processes
			found := 0
			for _, r := range j.Ranks {
				for _, p := range ps.Processes {
					if p.Node == r.Host.Name && p.PID == int64(r.PID) && p.Rank == fmt.Sprint(r.Rank) {
						found++
						break
					}
				}
			}
			if found == len(j.Ranks) {
				return
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("the hub never listed every rank of %s: %+v", jobID, last)
}

// cause is the part of a why answer the lab checks.
type cause struct {
	NodeID        string `json:"node_id"`
	EntityID      string `json:"entity_id"`
	Kind          string `json:"kind"`
	Summary       string `json:"summary"`
	XID           int    `json:"xid"`
	AffectedRanks int    `json:"affected_ranks"`
	TotalRanks    int    `json:"total_ranks"`
}

type whyAnswer struct {
	Found  bool    `json:"found"`
	Ranks  int     `json:"ranks"`
	Causes []cause `json:"causes"`
}

func (c *cluster) why(ctx context.Context, jobID string) (whyAnswer, error) {
	var w whyAnswer
	err := GetJSON(ctx, c.hub.URL+"/api/v1/why?job_id="+url.QueryEscape(jobID), &w)
	return w, err
}

// waitCause polls why for jobID until ok accepts the first cause, and
// returns how long that took.
func (c *cluster) waitCause(ctx context.Context, t *testing.T, jobID string, within time.Duration, ok func(cause) bool) time.Duration {
	t.Helper()
	start := time.Now()
	var last whyAnswer
	for time.Since(start) < within {
		w, err := c.why(ctx, jobID)
		if err == nil {
			last = w
			if len(w.Causes) > 0 && ok(w.Causes[0]) {
				return time.Since(start)
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("why %s did not name the fault within %s; last answer: %+v", jobID, within, last)
	return 0
}

// The GPU fell off the bus: the driver logs XID 79 for rank 2's GPU and the
// rank stops (SIGSTOP: it neither reads nor writes, its host keeps ACKing,
// no packet is lost). Every other rank of the ring stalls behind it. Ark must
// name node-3's GPU first, from its own probes alone, within 15 s; a second
// job on the same hosts, on other GPUs, stays without a cause.
func TestGPUFellOffTheBus(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c := startCluster(ctx, t, 4)
	sick := c.startJob(ctx, t, JobOptions{RunID: "lab-a", GPU: 0, Port: 29500})
	healthy := c.startJob(ctx, t, JobOptions{RunID: "lab-b", GPU: 1, Port: 29600, StepInterval: 50 * time.Millisecond})
	c.waitDiscovered(ctx, t, sick, "torchrun/lab-a")
	c.waitDiscovered(ctx, t, healthy, "torchrun/lab-b")
	// Before the fault: no cause for either job.
	for _, id := range []string{"torchrun/lab-a", "torchrun/lab-b"} {
		if w, err := c.why(ctx, id); err != nil || len(w.Causes) > 0 {
			t.Fatalf("healthy %s: why = %+v, %v; want no cause", id, w, err)
		}
	}

	h := c.Hosts[2]
	if err := h.WriteKmsg(XID79(0)); err != nil {
		t.Fatal(err)
	}
	if err := sick.Ranks[2].Kill(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	took := c.waitCause(ctx, t, "torchrun/lab-a", 15*time.Second, func(cs cause) bool {
		return cs.NodeID == h.Name && cs.EntityID == "gpu-0" && cs.XID == 79
	})
	t.Logf("why named %s/gpu-0 (XID 79) %s after the fault", h.Name, took.Round(time.Millisecond))

	// The ring stalls behind the dead rank: once the others are stalled
	// (no CPU for the lab's 5 s window) the rank sending to it is led there by its
	// stalled flow (zero window), with no packet lost anywhere.
	took = c.waitCause(ctx, t, "torchrun/lab-a", 30*time.Second, func(cs cause) bool {
		return cs.NodeID == h.Name && cs.EntityID == "gpu-0" && cs.AffectedRanks >= 2
	})
	t.Logf("a rank of another host reaches %s/gpu-0 through its stalled flow %s later", h.Name, took.Round(time.Millisecond))
	// The CLI says the same.
	out, err := exec.CommandContext(ctx, arkBin, "why", "--job", "torchrun/lab-a", "--hub", c.hub.URL).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "gpu-0") || !strings.Contains(string(out), h.Name) {
		t.Fatalf("ark why --hub: %v\n%s", err, out)
	}
	// The other job, on the same hosts, has no cause.
	if hw, err := c.why(ctx, "torchrun/lab-b"); err != nil || len(hw.Causes) > 0 {
		t.Fatalf("healthy job: why = %+v, %v; want no cause", hw, err)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
