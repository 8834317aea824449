//go:build linux

package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is a process the lab started, with its output kept.
type Proc struct {
	Name   string
	Cmd    *exec.Cmd
	out    *Buffer
	inHost bool
}

// Output is what the process printed so far.
func (p *Proc) Output() string { return p.out.String() }

// Signal sends sig to the process (the real process: nsenter forwards
// nothing, so the lab signals the child inside the host, see Host.Command).
func (p *Proc) Signal(sig syscall.Signal) error {
	return syscall.Kill(p.Cmd.Process.Pid, sig)
}

// Stop interrupts the process and kills it after a grace period. A process
// started inside a host is nsenter's child: the interrupt goes to that
// child, since nsenter forwards no signal.
func (p *Proc) Stop() {
	if p.Cmd.Process == nil {
		return
	}
	target := p.Cmd.Process.Pid
	if p.inHost {
		if pid, err := childOf(target); err == nil {
			target = pid
		}
	}
	_ = syscall.Kill(target, syscall.SIGCONT)
	_ = syscall.Kill(target, syscall.SIGINT)
	done := make(chan struct{})
	go func() { _ = p.Cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(target, syscall.SIGKILL)
		_ = p.Cmd.Process.Kill()
		<-done
	}
}

// childOf returns the first child of pid.
func childOf(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, fmt.Errorf("lab: process %d has no child", pid)
	}
	return strconv.Atoi(f[0])
}

// Buffer is an output buffer safe for a child process and readers.
type Buffer struct {
	mu  sync.Mutex
	b   []byte
	tee io.Writer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.b = append(b.b, p...)
	if b.tee != nil {
		_, _ = b.tee.Write(p)
	}
	return len(p), nil
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.b)
}

// start runs cmd with its output kept (and copied to tee when set).
func start(name string, cmd *exec.Cmd, tee io.Writer) (*Proc, error) {
	out := &Buffer{tee: tee}
	cmd.Stdout, cmd.Stderr = out, out
	// A grandchild holding the output open must not keep Wait waiting.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("lab: starting %s: %w", name, err)
	}
	return &Proc{Name: name, Cmd: cmd, out: out, inHost: filepath.Base(cmd.Path) == "nsenter"}, nil
}

// Hub is the control plane the lab's agents report to; it runs in the
// machine's root namespaces and listens on the bridge.
type Hub struct {
	*Proc
	URL   string
	Token string
}

// StartHub starts `ark hub` on the bridge address with a fresh token; extra
// flags are passed on (e.g. a remediation policy).
func (l *Lab) StartHub(ctx context.Context, ark string, port int, extra ...string) (*Hub, error) {
	token := fmt.Sprintf("lab-%d", time.Now().UnixNano())
	tokenFile := filepath.Join(l.cfg.Dir, "hub.token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	addr := netip.AddrPortFrom(l.BridgeIP, uint16(port)).String()
	args := append([]string{"hub", "--web.listen-address", addr, "--token-file", tokenFile, "--graph.ttl", "2m"}, extra...)
	cmd := exec.CommandContext(ctx, ark, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p, err := start("hub", cmd, nil)
	if err != nil {
		return nil, err
	}
	h := &Hub{Proc: p, URL: "http://" + addr, Token: token}
	if err := waitHTTP(ctx, h.URL+"/readyz", 30*time.Second); err != nil {
		p.Stop()
		return nil, fmt.Errorf("lab: hub not ready: %w\n%s", err, p.Output())
	}
	return h, nil
}

// TokenFile is where the hub's token is, for agents and the CLI.
func (l *Lab) TokenFile() string { return filepath.Join(l.cfg.Dir, "hub.token") }

// AgentOptions say which probes a lab agent runs.
type AgentOptions struct {
	// Probes are enabled with --probe.<name>; every other default probe
	// that needs hardware the lab lacks (nvml) is disabled.
	Probes []string
	// Config is the agent's config file (YAML); "" uses LabConfig.
	Config string
	// Extra flags.
	Extra []string
}

// LabConfig is the agent config the lab runs with: job discovery matches
// the lab's fake GPU device files, without Kubernetes; a rank counts as
// stalled after 5 s without CPU (production waits 30 s), so a fault shows
// within the 15 s the lab allows.
func (h *Host) LabConfig() string {
	return fmt.Sprintf(`probes:
  jobs:
    interval: 1s
    kubernetes: "off"
    device_prefix: %s
  procfs:
    stall_window: 5s
`, filepath.Join(h.Dir, "dev", "nvidia"))
}

// KmsgPath is host h's kernel log: a FIFO the lab writes driver lines into,
// since its GPUs are not real.
func (h *Host) KmsgPath() string { return filepath.Join(h.Dir, "kmsg") }

// SysPath is host h's sysfs as the agent reads it: NVIDIA PCI devices, one
// per fake GPU, so XID lines resolve to a GPU index.
func (h *Host) SysPath() string { return filepath.Join(h.Dir, "sys") }

// GPUBus is the PCI bus of fake GPU i, as the driver's XID lines name it.
func GPUBus(i int) string { return fmt.Sprintf("0000:%02x:00", 0x10+i) }

// prepareHost writes the host's fake sysfs (gpus NVIDIA GPUs) and kmsg FIFO.
func (h *Host) prepare(gpus int) error {
	for i := range gpus {
		dev := filepath.Join(h.SysPath(), "bus", "pci", "devices", GPUBus(i)+".0")
		if err := os.MkdirAll(dev, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dev, "vendor"), []byte("0x10de\n"), 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dev, "class"), []byte("0x030200\n"), 0o644); err != nil {
			return err
		}
	}
	if _, err := os.Stat(h.KmsgPath()); os.IsNotExist(err) {
		if err := syscall.Mkfifo(h.KmsgPath(), 0o600); err != nil {
			return fmt.Errorf("lab: kmsg FIFO: %w", err)
		}
	}
	return nil
}

// StartAgent starts `ark agent` inside host h, linked to hub.
func (l *Lab) StartAgent(ctx context.Context, ark string, h *Host, hub *Hub, o AgentOptions) (*Proc, error) {
	if err := h.prepare(8); err != nil {
		return nil, err
	}
	cfg := o.Config
	if cfg == "" {
		cfg = h.LabConfig()
	}
	cfgFile := filepath.Join(h.Dir, "agent.yaml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	args := []string{"agent",
		"--config.file", cfgFile,
		"--node-name", h.Name,
		"--web.listen-address", netip.AddrPortFrom(h.IP, 9464).String(),
		"--hub.url", hub.URL,
		"--hub.token-file", l.TokenFile(),
		"--hub.addrs", h.IP.String(),
		"--path.kmsg", h.KmsgPath(),
		"--path.sysfs", h.SysPath(),
		"--ipc.socket", filepath.Join(h.Dir, "ark.sock"),
		"--audit.file", filepath.Join(h.Dir, "audit.log"),
		"--graph.ttl", "2m",
		"--no-probe.nvml",
	}
	for _, p := range o.Probes {
		args = append(args, "--probe."+p)
	}
	args = append(args, o.Extra...)
	p, err := start("agent "+h.Name, h.Command(ctx, ark, args...), nil)
	if err != nil {
		return nil, err
	}
	return p, nil
}

// Rank is one rank of a lab job.
type Rank struct {
	*Proc
	Host *Host
	Rank int
	GPU  int
	// PID is the rank's pid inside its host (what the host's agent reports).
	PID int
}

// Job is a ring all-reduce job across the lab's hosts.
type Job struct {
	ID    string
	Ranks []*Rank
	// CheckpointDir is where SIGUSR1 makes each rank write rank-<r>.ckpt.
	CheckpointDir string
}

// JobOptions describe a job: one rank per host on GPU GPU, torchrun's
// environment with TORCHELASTIC_RUN_ID = RunID, ring ports from Port.
type JobOptions struct {
	RunID string
	GPU   int
	Port  int
	// Chunk and StepInterval are passed to the rank program.
	Chunk        int
	StepInterval time.Duration
}

// StartJob starts one rank per host, with the environment torchrun sets, so
// the agents' job discovery finds them.
func (l *Lab) StartJob(ctx context.Context, rankBin string, o JobOptions) (*Job, error) {
	if o.Chunk == 0 {
		o.Chunk = 2 << 20
	}
	if o.StepInterval == 0 {
		o.StepInterval = 100 * time.Millisecond
	}
	peers := make([]string, len(l.Hosts))
	for i, h := range l.Hosts {
		peers[i] = netip.AddrPortFrom(h.IP, uint16(o.Port)).String()
	}
	j := &Job{ID: o.RunID, CheckpointDir: filepath.Join(l.cfg.Dir, "ckpt-"+o.RunID)}
	if err := os.MkdirAll(j.CheckpointDir, 0o755); err != nil {
		return nil, err
	}
	for i, h := range l.Hosts {
		dev := filepath.Join(h.Dir, "dev", "nvidia"+strconv.Itoa(o.GPU))
		if err := os.MkdirAll(filepath.Dir(dev), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(dev, nil, 0o644); err != nil {
			return nil, err
		}
		cmd := h.Command(ctx, rankBin,
			"-chunk", strconv.Itoa(o.Chunk),
			"-step-interval", o.StepInterval.String(),
			"-checkpoint-dir", j.CheckpointDir,
			"-device", dev)
		cmd.Env = append(os.Environ(),
			"RANK="+strconv.Itoa(i),
			"LOCAL_RANK=0",
			"GROUP_RANK="+strconv.Itoa(i),
			"WORLD_SIZE="+strconv.Itoa(len(l.Hosts)),
			"LOCAL_WORLD_SIZE=1",
			"MASTER_ADDR="+l.Hosts[0].IP.String(),
			"MASTER_PORT="+strconv.Itoa(o.Port),
			"TORCHELASTIC_RUN_ID="+o.RunID,
			"CUDA_VISIBLE_DEVICES="+strconv.Itoa(o.GPU),
			"NCCL_SOCKET_IFNAME="+h.Veth,
			"ARK_LAB_PEERS="+strings.Join(peers, ","),
		)
		p, err := start(fmt.Sprintf("rank %d of %s", i, o.RunID), cmd, nil)
		if err != nil {
			j.Stop()
			return nil, err
		}
		r := &Rank{Proc: p, Host: h, Rank: i, GPU: o.GPU}
		j.Ranks = append(j.Ranks, r)
	}
	for _, r := range j.Ranks {
		pid, err := innerPID(r.Cmd.Process.Pid)
		if err != nil {
			j.Stop()
			return nil, err
		}
		r.PID = pid
	}
	return j, nil
}

// Stop ends every rank.
func (j *Job) Stop() {
	for _, r := range j.Ranks {
		_ = r.Signal(syscall.SIGCONT)
		r.Stop()
	}
}

// innerPID finds the process nsenter started (its child) and returns that
// child's pid in its own PID namespace (the last NSpid field).
func innerPID(nsenterPID int) (int, error) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", nsenterPID, nsenterPID))
		if f := strings.Fields(string(b)); len(f) > 0 {
			status, err := os.ReadFile("/proc/" + f[0] + "/status")
			if err == nil {
				for _, line := range strings.Split(string(status), "\n") {
					if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
						ids := strings.Fields(rest)
						return strconv.Atoi(ids[len(ids)-1])
					}
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return 0, fmt.Errorf("lab: no child of nsenter %d", nsenterPID)
}

// OuterPID is the rank's pid as the machine's root namespace sees it (the
// one to signal).
func (r *Rank) OuterPID() (int, error) { return childOf(r.Cmd.Process.Pid) }

// Kill sends sig to the rank program itself (not to nsenter).
func (r *Rank) Kill(sig syscall.Signal) error {
	pid, err := r.OuterPID()
	if err != nil {
		return err
	}
	return syscall.Kill(pid, sig)
}

// WriteKmsg writes a driver line into host h's kernel log FIFO, prefixed as
// dmesg prints it.
func (h *Host) WriteKmsg(line string) error {
	f, err := os.OpenFile(h.KmsgPath(), os.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("lab: opening %s's kmsg: %w", h.Name, err)
	}
	_, err = f.WriteString(line + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// XID79 is the line NVIDIA's driver writes when GPU gpu falls off the bus.
func XID79(gpu int) string {
	return fmt.Sprintf("NVRM: Xid (PCI:%s): 79, pid=0, GPU has fallen off the bus.", GPUBus(gpu))
}

// Drop makes host h's lab link go dark (on) or come back (off): an nft
// table in the host's network namespace drops every packet in and out of
// its interface, as a flapping IB/Ethernet link does. No packet is
// rejected, so TCP retransmits as it would on a real dead link.
func (h *Host) Drop(ctx context.Context, on bool) error {
	if !on {
		_, err := h.Run(ctx, "nft", "delete", "table", "inet", "arklab_flap")
		return err
	}
	rules := fmt.Sprintf(`table inet arklab_flap {
	chain in { type filter hook input priority 0; policy accept; iifname %q drop; }
	chain out { type filter hook output priority 0; policy accept; oifname %q drop; }
}
`, h.Veth, h.Veth)
	cmd := h.Command(ctx, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("lab: %s: nft: %w: %s", h.Name, err, out)
	}
	return nil
}

func waitHTTP(ctx context.Context, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s: %s", url, resp.Status)
		}
		last = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return last
}

// GetJSON decodes a GET of url into v.
func GetJSON(ctx context.Context, url string, v any) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("%s: %s: %s", url, resp.Status, b)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
