// Package e2e runs Ark's processes together over loopback: a hub and
// several agents, each agent replaying its host's share of an incident.
package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ark-gpu/ark/exporter/procstat"
)

var arkBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ark-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	arkBin = filepath.Join(dir, "ark")
	if out, err := exec.Command("go", "build", "-o", arkBin, "../../cmd/ark").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building ark: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// proc is a child process with its output kept for failures.
type proc struct {
	cmd *exec.Cmd
	out *bytes.Buffer
}

func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	return startCmd(t, name, exec.Command(arkBin, args...))
}

// startCmd starts cmd, which has no output set, and stops it when the
// test ends.
func startCmd(t *testing.T, name string, cmd *exec.Cmd) *proc {
	t.Helper()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, out: &out}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("--- %s log:\n%s", name, out.String())
		}
	})
	return p
}

func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
}

// splitByHost writes each host's events of the recording to its own file,
// timestamps shifted so the recording ends now (agents expire by the wall
// clock), and returns the files and the shift.
func splitByHost(t *testing.T, recording, dir string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(recording)
	if err != nil {
		t.Fatal(err)
	}
	type line struct {
		node string
		m    map[string]any
	}
	var lines []line
	var last float64
	for _, l := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		var m map[string]any
		if err := json.Unmarshal(l, &m); err != nil {
			t.Fatal(err)
		}
		ts := m["ts"].(float64)
		last = max(last, ts)
		lines = append(lines, line{m["node_id"].(string), m})
	}
	shift := float64(time.Now().UnixMilli()) - last
	files := map[string]*bytes.Buffer{}
	for _, l := range lines {
		l.m["ts"] = int64(l.m["ts"].(float64) + shift)
		out, _ := json.Marshal(l.m)
		if files[l.node] == nil {
			files[l.node] = &bytes.Buffer{}
		}
		files[l.node].Write(append(out, '\n'))
	}
	paths := map[string]string{}
	for node, buf := range files {
		p := filepath.Join(dir, node+".jsonl")
		if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		paths[node] = p
	}
	return paths
}

type whyResp struct {
	Causes []struct {
		NodeID        string `json:"node_id"`
		EntityID      string `json:"entity_id"`
		AffectedRanks int    `json:"affected_ranks"`
	} `json:"causes"`
	StaleHosts []string `json:"stale_hosts"`
}

func getWhy(hub string) (whyResp, error) {
	return ask(hub, "job_id=train/example")
}

// ask asks the hub why, with query naming the target.
func ask(hub, query string) (whyResp, error) {
	var w whyResp
	resp, err := http.Get("http://" + hub + "/api/v1/why?" + query)
	if err != nil {
		return w, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return w, fmt.Errorf("%s: %s", resp.Status, b)
	}
	return w, json.NewDecoder(resp.Body).Decode(&w)
}

// waitUSR1 waits until the rank started by startRank, which writes the
// signals it gets to got, has had SIGUSR1.
func waitUSR1(t *testing.T, got string, d time.Duration, what string) {
	t.Helper()
	eventually(t, d, what, func() error {
		b, _ := os.ReadFile(got)
		if !strings.Contains(string(b), "USR1") {
			return fmt.Errorf("no signal yet")
		}
		return nil
	})
}

func eventually(t *testing.T, d time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func faultyGPUFirst(hub string) error {
	w, err := getWhy(hub)
	if err != nil {
		return err
	}
	if len(w.Causes) == 0 || w.Causes[0].NodeID != "node-3" || w.Causes[0].EntityID != "gpu-6" {
		return fmt.Errorf("causes %+v", w.Causes)
	}
	return nil
}

// questions are what the test asks the hub about the incident: the job, a
// node (the remediator's blast-radius question) and a rank, each on hosts
// whose ranks only wait on node-3 across the network.
var questions = []string{"job_id=train/example", "node=node-1", "node=node-2", "node=node-4",
	"node=node-1&pid=3000", "node=node-2&pid=3100"}

// firstCauses returns the first cause of each question, all of which must
// be node-3's gpu-6.
func firstCauses(hub string) (map[string]string, error) {
	out := map[string]string{}
	for _, q := range questions {
		w, err := ask(hub, q)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", q, err)
		}
		if len(w.Causes) == 0 || w.Causes[0].NodeID != "node-3" || w.Causes[0].EntityID != "gpu-6" {
			return nil, fmt.Errorf("%s: causes %+v", q, w.Causes)
		}
		c := w.Causes[0]
		out[q] = fmt.Sprintf("%s/%s (%d ranks)", c.NodeID, c.EntityID, c.AffectedRanks)
	}
	return out, nil
}

// TestHubAndFourAgents: four agents replay an incident split by host into
// one hub, which names the faulty GPU; the hub restarts and rebuilds from
// the agents' snapshots; a dead agent's host turns stale; a fix goes
// through the hub to the right agent.
func TestHubAndFourAgents(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a hub and four agents")
	}
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("s3cret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	files := splitByHost(t, "../../testdata/scenarios/xid79-4node.jsonl", dir)

	// A real process on node-2 that records the signal it gets, announced
	// as one more rank of the job.
	pid, got := startRank(t, dir, files["node-2"])

	hubAddr := freePort(t)
	hub := start(t, "hub", "hub", "--web.listen-address", hubAddr, "--token-file", token, "--log.level", "debug")
	agents := startAgents(t, dir, hubAddr, token, files, "--log.level", "debug")
	eventually(t, 30*time.Second, "the hub names node-3/gpu-6", func() error { return faultyGPUFirst(hubAddr) })

	// The CLI against the hub.
	out, err := exec.Command(arkBin, "why", "--job", "train/example", "--hub", "http://"+hubAddr).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ROOT CAUSE: fatal gpu-6 on node-3") {
		t.Fatalf("ark why --hub: %v\n%s", err, out)
	}
	eventually(t, 10*time.Second, "ark ps --hub lists the test's rank", func() error {
		out, err := exec.Command(arkBin, "ps", "--job", "train/example", "--node", "node-2", "--hub", "http://"+hubAddr).CombinedOutput()
		if err != nil || !strings.Contains(string(out), strconv.Itoa(pid)) {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	})

	var before map[string]string
	eventually(t, 30*time.Second, "every question names node-3/gpu-6", func() (err error) {
		before, err = firstCauses(hubAddr)
		return err
	})

	// Restart the hub: agents reconnect and resend their snapshots.
	hub.kill()
	_ = hub.cmd.Wait()
	start(t, "hub-2", "hub", "--web.listen-address", hubAddr, "--token-file", token, "--log.level", "debug")
	began := time.Now()
	eventually(t, 10*time.Second, "after a hub restart, the same answer from snapshots", func() error { return faultyGPUFirst(hubAddr) })
	t.Logf("hub rebuilt its view in %s", time.Since(began).Round(time.Millisecond))
	// Per node and per rank too, with as many ranks behind the cause: the
	// waits on other hosts' ranks come back with the snapshots.
	eventually(t, 30*time.Second, "after a hub restart, the same first cause for every question", func() error {
		after, err := firstCauses(hubAddr)
		if err != nil {
			return err
		}
		for _, q := range questions {
			if after[q] != before[q] {
				return fmt.Errorf("%s: %s after the restart, %s before", q, after[q], before[q])
			}
		}
		return nil
	})

	// Every agent is back on the new hub.
	eventually(t, 30*time.Second, "four agents connected", func() error {
		resp, err := http.Get("http://" + hubAddr + "/api/v1/agents")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if n := strings.Count(string(b), `"connected":true`); n != 4 {
			return fmt.Errorf("%d connected: %s", n, b)
		}
		return nil
	})

	// Kill an agent: its host turns stale, the answer stands.
	agents["node-4"].kill()
	eventually(t, 20*time.Second, "node-4 stale", func() error {
		w, err := getWhy(hubAddr)
		if err != nil {
			return err
		}
		if len(w.StaleHosts) != 1 || w.StaleHosts[0] != "node-4" {
			resp, err := http.Get("http://" + hubAddr + "/api/v1/agents")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return fmt.Errorf("stale hosts %v; agents: %s", w.StaleHosts, b)
		}
		return faultyGPUFirst(hubAddr)
	})

	// fix through the hub: without the token 401, with it the signal.
	body := fmt.Sprintf(`{"node":"node-2","pid":%d,"action":"Signal","params":{"signal":"SIGUSR1"},"user":"e2e"}`, pid)
	resp, err := http.Post("http://"+hubAddr+"/api/v1/fix", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("fix without a token: %s", resp.Status)
	}
	var fix map[string]any
	eventually(t, 10*time.Second, "fix through the hub", func() error {
		req, _ := http.NewRequest(http.MethodPost, "http://"+hubAddr+"/api/v1/fix", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer s3cret-token")
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", resp.Status, b)
		}
		fix = map[string]any{}
		return json.Unmarshal(b, &fix)
	})
	if !strings.Contains(fmt.Sprint(fix), "success") {
		t.Fatalf("fix result: %v", fix)
	}
	// And once more from the CLI, as a dry run.
	out, err = exec.Command(arkBin, "fix", strconv.Itoa(pid), "--node", "node-2", "--hub", "http://"+hubAddr, "--token-file", token,
		"--action", "Signal", "--param", "signal=SIGUSR1", "--dry-run").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "dry_run") {
		t.Fatalf("ark fix --hub --dry-run: %v\n%s", err, out)
	}
	out, _ = exec.Command(arkBin, "fix", strconv.Itoa(pid), "--node", "node-2", "--hub", "http://"+hubAddr,
		"--action", "Signal", "--param", "signal=SIGUSR1", "--yes").CombinedOutput()
	if !strings.Contains(string(out), "401") {
		t.Fatalf("ark fix --hub without a token must be refused: %s", out)
	}
	waitUSR1(t, got, 5*time.Second, "the rank got SIGUSR1")
	audit, err := os.ReadFile(filepath.Join(dir, "node-2.audit"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(audit), `"action":"Signal"`) || !strings.Contains(string(audit), `"user":"hub:e2e"`) ||
		!strings.Contains(string(audit), `"target_pid":`+strconv.Itoa(pid)) || !strings.Contains(string(audit), `"result":"success"`) {
		t.Fatalf("node-2's audit log: %s", audit)
	}
}

// startRank starts a real process that records the SIGUSR1 it gets in the
// file it returns, and appends its intent.run and state, as one more rank
// of train/example, to a host's replay file.
func startRank(t *testing.T, dir, replay string) (pid int, got string) {
	t.Helper()
	got = filepath.Join(dir, "got")
	rank := exec.Command("/bin/sh", "-c", `trap 'echo USR1 >> "$GOT"' USR1; while :; do sleep 0.05; done`)
	rank.Env = append(os.Environ(), "GOT="+got)
	if err := rank.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rank.Process.Kill(); _ = rank.Wait() })
	pid = rank.Process.Pid
	now := time.Now().UnixMilli()
	extra := fmt.Sprintf(`{"ts":%d,"event_type":"intent.run","entity_id":"pid-%d","value":"running","pid":%d,"job_id":"train/example","attrs":{"rank":"99"}}
{"ts":%d,"event_type":"process.state","entity_id":"pid-%d","value":"S","pid":%d,"job_id":"train/example","attrs":{"start_time":"%s"}}
`, now, pid, pid, now, pid, pid, startTime(t, pid))
	appendFile(t, replay, extra)
	return pid, got
}

// startAgents starts one agent per host of files, each replaying its file
// through an exec probe and linked to the hub; node-N's audit log is
// dir/node-N.audit.
func startAgents(t *testing.T, dir, hubAddr, token string, files map[string]string, extra ...string) map[string]*proc {
	t.Helper()
	agents := map[string]*proc{}
	for node, file := range files {
		cfg := filepath.Join(dir, node+".yaml")
		if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`probes:
  exec:
    programs:
      - name: replay
        command: /bin/sh
        args: ["-c", "cat %s; exec sleep 3600"]
        restart: never
`, file)), 0o644); err != nil {
			t.Fatal(err)
		}
		args := append([]string{"agent", "--node-name", node, "--web.listen-address", freePort(t),
			"--config.file", cfg, "--ipc.socket", filepath.Join(dir, node+".sock"), "--audit.file", filepath.Join(dir, node+".audit"),
			"--state.dir", filepath.Join(dir, "state"),
			"--hub.url", "http://" + hubAddr, "--hub.token-file", token,
			"--no-probe.kmsg", "--no-probe.nvml", "--no-probe.procfs", "--path.pod-resources", filepath.Join(dir, "none.sock")}, extra...)
		agents[node] = start(t, node, args...)
	}
	return agents
}

func startTime(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	st, err := procstat.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return strconv.FormatUint(st.StartTime, 10)
}
