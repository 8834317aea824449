//go:build linux

// Package lab runs a small GPU "cluster" on one Linux machine for Ark's
// live tests: each host is a PID + network + mount + UTS namespace joined to
// the others by a veth pair on one bridge, with its own IP. Ark's agents,
// the ranks of a job and the faults all run inside those hosts, so every
// event the hub sees comes from Ark's own probes.
//
// It needs root. Everything it creates is named with the lab's prefix and
// torn down by Close, or by the next Setup when a run died without one.
package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Config sizes the lab.
type Config struct {
	// Hosts is how many hosts to start (default 4).
	Hosts int
	// Prefix names the bridge, veths and state directory (default "arklab").
	Prefix string
	// Subnet is the hosts' /24; the bridge takes .1, host i takes .10+i
	// (default 10.211.0.0/24: only the lab's own namespaces hold it).
	Subnet netip.Prefix
	// Dir holds per-host state (FIFOs, logs); default /run/<prefix>.
	Dir string
}

func (c *Config) defaults() {
	if c.Hosts == 0 {
		c.Hosts = 4
	}
	if c.Prefix == "" {
		c.Prefix = "arklab"
	}
	if !c.Subnet.IsValid() {
		c.Subnet = netip.MustParsePrefix("10.211.0.0/24")
	}
	if c.Dir == "" {
		c.Dir = filepath.Join("/run", c.Prefix)
	}
}

// Host is one simulated machine.
type Host struct {
	// Name is the host's hostname and Ark node name ("node-1").
	Name string
	// IP is its address on the lab bridge.
	IP netip.Addr
	// Veth is the host side's interface name inside the host (eth0) and
	// HostVeth the bridge port outside.
	Veth, HostVeth string
	// Dir is its state directory (kmsg FIFO, logs).
	Dir string

	init *exec.Cmd
}

// InitPID is the host's init process as the machine's root namespace sees
// it: the handle nsenter enters the host through.
func (h *Host) InitPID() int { return h.init.Process.Pid }

// Lab is a running set of hosts.
type Lab struct {
	cfg    Config
	Bridge string
	// BridgeIP is the address of the machine's root namespace on the lab
	// network (where the hub and Prometheus listen).
	BridgeIP netip.Addr
	Hosts    []*Host
}

// Setup creates the bridge and the hosts. On error everything created so far
// is removed.
func Setup(ctx context.Context, cfg Config) (*Lab, error) {
	cfg.defaults()
	if os.Geteuid() != 0 {
		return nil, errors.New("lab: needs root (namespaces, veth, bridge)")
	}
	l := &Lab{cfg: cfg, Bridge: cfg.Prefix + "-br", BridgeIP: cfg.Subnet.Addr().Next()}
	Cleanup(cfg.Prefix)
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	bits := cfg.Subnet.Bits()
	if err := runAll(ctx,
		[]string{"ip", "link", "add", l.Bridge, "type", "bridge"},
		[]string{"ip", "addr", "add", fmt.Sprintf("%s/%d", l.BridgeIP, bits), "dev", l.Bridge},
		[]string{"ip", "link", "set", l.Bridge, "up"},
	); err != nil {
		l.Close()
		return nil, err
	}
	for i := 1; i <= cfg.Hosts; i++ {
		h, err := l.startHost(ctx, i)
		if err != nil {
			l.Close()
			return nil, err
		}
		l.Hosts = append(l.Hosts, h)
	}
	return l, nil
}

func (l *Lab) startHost(ctx context.Context, i int) (*Host, error) {
	ip := l.cfg.Subnet.Addr()
	for range 10 + i {
		ip = ip.Next()
	}
	h := &Host{
		Name:     fmt.Sprintf("node-%d", i),
		IP:       ip,
		Veth:     "eth0",
		HostVeth: fmt.Sprintf("%s-v%d", l.cfg.Prefix, i),
		Dir:      filepath.Join(l.cfg.Dir, fmt.Sprintf("node-%d", i)),
	}
	if err := os.MkdirAll(h.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	// The host's init: pid 1 of a new PID namespace with its own /proc, in
	// fresh network, mount and UTS namespaces. Mounts are made private first
	// so its /proc never propagates back to the machine.
	script := fmt.Sprintf("mount --make-rprivate / && mount -t proc proc /proc && hostname %s && ip link set lo up && echo ready && exec sleep infinity", h.Name)
	cmd := exec.Command("sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNET | syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS,
		Pdeathsig:  syscall.SIGKILL,
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("lab: starting %s: %w", h.Name, err)
	}
	h.init = cmd
	if err := os.WriteFile(filepath.Join(h.Dir, "init.pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	ready := make([]byte, 6)
	if _, err := out.Read(ready); err != nil || string(ready) != "ready\n" {
		return nil, fmt.Errorf("lab: %s did not start (%q): %w: %s", h.Name, ready, err, stderr.String())
	}
	pid := strconv.Itoa(cmd.Process.Pid)
	peer := h.HostVeth + "p"
	bits := l.cfg.Subnet.Bits()
	if err := runAll(ctx,
		[]string{"ip", "link", "add", h.HostVeth, "type", "veth", "peer", "name", peer},
		[]string{"ip", "link", "set", h.HostVeth, "master", l.Bridge},
		[]string{"ip", "link", "set", h.HostVeth, "up"},
		[]string{"ip", "link", "set", peer, "netns", pid},
		[]string{"nsenter", "-t", pid, "-n", "ip", "link", "set", peer, "name", h.Veth},
		[]string{"nsenter", "-t", pid, "-n", "ip", "addr", "add", fmt.Sprintf("%s/%d", h.IP, bits), "dev", h.Veth},
		[]string{"nsenter", "-t", pid, "-n", "ip", "link", "set", h.Veth, "up"},
		[]string{"nsenter", "-t", pid, "-n", "ip", "route", "add", "default", "via", l.BridgeIP.String()},
	); err != nil {
		return nil, err
	}
	return h, nil
}

// Command returns a command that runs inside host h: in its PID, mount,
// network and UTS namespaces, so its /proc, addresses and hostname are the
// host's.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	a := append([]string{"-t", strconv.Itoa(h.InitPID()), "-p", "-m", "-n", "-u", "--", name}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", a...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// Run runs a command inside h and returns its combined output.
func (h *Host) Run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := h.Command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("lab: %s: %s %s: %w: %s", h.Name, name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Close kills every host (the kernel ends every process in a PID namespace
// with its init, and frees the namespace's veth) and removes the bridge.
func (l *Lab) Close() {
	for _, h := range l.Hosts {
		if h.init != nil && h.init.Process != nil {
			_ = h.init.Process.Kill()
			_ = h.init.Wait()
		}
	}
	Cleanup(l.cfg.Prefix)
}

// Cleanup removes what a lab with this prefix left behind: host inits
// recorded under /run/<prefix>, veths and the bridge. It is safe to call when
// nothing is left.
func Cleanup(prefix string) {
	dir := filepath.Join("/run", prefix)
	pids, _ := filepath.Glob(filepath.Join(dir, "*", "init.pid"))
	for _, f := range pids {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && isLabInit(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		_ = os.Remove(f)
	}
	links, _ := exec.Command("ip", "-o", "link", "show").Output()
	for _, line := range strings.Split(string(links), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		if strings.HasPrefix(name, prefix+"-") {
			_ = exec.Command("ip", "link", "del", name).Run()
		}
	}
	_ = os.RemoveAll(dir)
}

// isLabInit reports whether pid is still a lab host's init (sleep in its own
// PID namespace), so a recycled pid is never killed.
func isLabInit(pid int) bool {
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil || strings.TrimSpace(string(comm)) != "sleep" {
		return false
	}
	self, err1 := os.Readlink("/proc/self/ns/pid")
	other, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
	return err1 == nil && err2 == nil && self != other
}

func runAll(ctx context.Context, cmds ...[]string) error {
	for _, c := range cmds {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		out, err := exec.CommandContext(ctx, c[0], c[1:]...).CombinedOutput()
		cancel()
		if err != nil {
			return fmt.Errorf("lab: %s: %w: %s", strings.Join(c, " "), err, bytes.TrimSpace(out))
		}
	}
	return nil
}
