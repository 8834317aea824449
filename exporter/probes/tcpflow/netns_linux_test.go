package tcpflow

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probe"
)

// helperEnv makes the test binary a traffic helper instead of a test run
// (see TestMain), with two arguments: "server ADDR _" reads everything
// sent to it, "client ADDR BYTES" sends BYTES (0: forever) and exits.
const helperEnv = "ARK_TCPFLOW_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode, os.Args[len(os.Args)-2:]))
	}
	os.Exit(m.Run())
}

func runHelper(mode string, args []string) int {
	addr := args[0]
	switch mode {
	case "server":
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println("ready")
		for {
			c, err := ln.Accept()
			if err != nil {
				return 1
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(io.Discard, c)
			}()
		}
	case "client":
		n, _ := strconv.ParseInt(args[1], 10, 64)
		var c net.Conn
		var err error
		for range 50 { // the server may still be starting
			if c, err = net.Dial("tcp", addr); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println("ready")
		buf := make([]byte, 64<<10)
		for sent := int64(0); n == 0 || sent < n; sent += int64(len(buf)) {
			if _, err := c.Write(buf); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
		// Let the server read it all before the close.
		_ = c.(*net.TCPConn).CloseWrite()
		_, _ = io.Copy(io.Discard, c)
		return 0
	}
	return 2
}

// requireRoot skips unless the test can create namespaces and load eBPF.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces and eBPF programs")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (hack/bpf-deps.sh installs it): %v", tool, err)
		}
	}
}

// lab is two network namespaces joined by a veth pair: a (10.77.0.1,
// fd77::1) and b (10.77.0.2, fd77::2), removed when the test ends.
type lab struct {
	t    *testing.T
	a, b string
}

func newLab(t *testing.T) *lab {
	t.Helper()
	base := fmt.Sprintf("arkflow%d-%d", os.Getpid()%100000, time.Now().UnixNano()%100000)
	l := &lab{t: t, a: base + "a", b: base + "b"}
	t.Cleanup(func() {
		for _, ns := range []string{l.a, l.b} {
			_ = exec.Command("ip", "netns", "del", ns).Run()
		}
	})
	l.sh("ip", "netns", "add", l.a)
	l.sh("ip", "netns", "add", l.b)
	l.sh("ip", "link", "add", "veth-arka", "netns", l.a, "type", "veth", "peer", "name", "veth-arkb", "netns", l.b)
	for _, side := range []struct{ ns, dev, v4, v6 string }{
		{l.a, "veth-arka", "10.77.0.1/24", "fd77::1/64"},
		{l.b, "veth-arkb", "10.77.0.2/24", "fd77::2/64"},
	} {
		l.in(side.ns, "ip", "addr", "add", side.v4, "dev", side.dev)
		l.in(side.ns, "ip", "-6", "addr", "add", side.v6, "dev", side.dev, "nodad")
		l.in(side.ns, "ip", "link", "set", side.dev, "up")
		l.in(side.ns, "ip", "link", "set", "lo", "up")
	}
	return l
}

func (l *lab) sh(args ...string) {
	l.t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	require.NoError(l.t, err, "%s: %s", strings.Join(args, " "), out)
}

func (l *lab) in(ns string, args ...string) {
	l.t.Helper()
	l.sh(append([]string{"ip", "netns", "exec", ns}, args...)...)
}

// loss drops pct% of the packets entering namespace ns.
func (l *lab) loss(ns string, pct int) {
	l.t.Helper()
	l.in(ns, "nft", "add", "table", "inet", "arkloss")
	l.in(ns, "nft", "add", "chain", "inet", "arkloss", "in", "{ type filter hook input priority 0 ; }")
	l.in(ns, "nft", "add", "rule", "inet", "arkloss", "in", "meta", "l4proto", "tcp", "numgen", "random", "mod", "100", "<", strconv.Itoa(pct), "drop")
}

// retransSegs reads TcpRetransSegs of namespace ns.
func (l *lab) retransSegs(ns string) int64 {
	l.t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "cat", "/proc/net/snmp").Output()
	require.NoError(l.t, err)
	var names []string
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Tcp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, n := range names {
			if n == "RetransSegs" {
				v, err := strconv.ParseInt(f[i], 10, 64)
				require.NoError(l.t, err)
				return v
			}
		}
	}
	l.t.Fatal("no Tcp RetransSegs in /proc/net/snmp")
	return 0
}

// helper starts the test binary as a traffic helper in namespace ns and
// waits for its "ready"; newPIDNS puts it in a pid namespace of its own.
func (l *lab) helper(ns string, newPIDNS bool, mode string, args ...string) *exec.Cmd {
	l.t.Helper()
	self, err := os.Executable()
	require.NoError(l.t, err)
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, self, "-test.run=^$"}, args...)...)
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	cmd.Stderr = os.Stderr
	if newPIDNS {
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	}
	out, err := cmd.StdoutPipe()
	require.NoError(l.t, err)
	require.NoError(l.t, cmd.Start())
	l.t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		ok := sc.Scan() && sc.Text() == "ready"
		ready <- ok
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case ok := <-ready:
		require.True(l.t, ok, "helper %s %v did not start", mode, args)
	case <-time.After(30 * time.Second):
		l.t.Fatalf("helper %s %v not ready after 30s", mode, args)
	}
	return cmd
}

// recorder is a probe sink that keeps every event.
type recorder struct {
	mu  sync.Mutex
	evs []event.Event
}

func (r *recorder) Emit(ev *event.Event) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evs = append(r.evs, ev.Clone())
	return true
}

// match returns copies of the events that pass keep.
func (r *recorder) match(keep func(*event.Event) bool) []event.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []event.Event
	for i := range r.evs {
		if keep(&r.evs[i]) {
			out = append(out, r.evs[i])
		}
	}
	return out
}

// isStall reports whether ev is the probe's stall signal.
func isStall(ev *event.Event) bool {
	_, ok := ev.Attrs.Lookup(event.AttrStalledForMS)
	return ev.Type == event.TransportBW && ok
}

// startProbe runs the real probe (eBPF loaded) with a fast interval until
// the test ends, skipping when the kernel refuses the programs.
func startProbe(t *testing.T, cfg Config) *recorder {
	t.Helper()
	if cfg.Interval == 0 {
		cfg.Interval = 250 * time.Millisecond
	}
	cfg.defaults(probe.DefaultPaths())
	require.NoError(t, cfg.Validate())
	p, err := newProbe(probe.Env{}, cfg, openBPF)
	require.NoError(t, err)
	rec := &recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, rec) }()
	// Run returns at once when the kernel refuses the programs.
	select {
	case err := <-done:
		cancel()
		if errors.Is(err, probe.ErrNoData) {
			t.Skipf("eBPF flow probe unavailable here: %v", err)
		}
		t.Fatalf("the probe ended at once: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return rec
}
