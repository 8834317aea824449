//go:build linux

package lab

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the lab needs root (namespaces, veth, bridge)")
	}
}

// Hosts reach each other over the bridge, each sees only its own processes
// and its own hostname, and Close leaves no link or process behind.
func TestHostsAreIsolatedAndConnected(t *testing.T) {
	needRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := Setup(ctx, Config{Hosts: 2, Prefix: "arklabt"})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			l.Close()
		}
	})
	h1, h2 := l.Hosts[0], l.Hosts[1]
	// A two-rank ring across the hosts makes progress.
	rank := buildRank(t)
	peers := h1.IP.String() + ":29500," + h2.IP.String() + ":29500"
	var outs [2]*syncBuffer
	for i, h := range l.Hosts {
		cmd := h.Command(ctx, rank, "-chunk", "65536", "-step-interval", "10ms")
		cmd.Env = append(os.Environ(), "RANK="+itoa(i), "WORLD_SIZE=2", "ARK_LAB_PEERS="+peers)
		outs[i] = &syncBuffer{}
		cmd.Stdout, cmd.Stderr = outs[i], outs[i]
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(outs[1].String(), "step 1") { // steps 1x… or more
		if time.Now().After(deadline) {
			t.Fatalf("the ring across hosts made no progress:\nrank 0: %s\nrank 1: %s", outs[0], outs[1])
		}
		time.Sleep(200 * time.Millisecond)
	}
	name, err := h2.Run(ctx, "hostname")
	if err != nil || strings.TrimSpace(name) != "node-2" {
		t.Fatalf("hostname in node-2 = %q, %v", name, err)
	}
	ps, err := h1.Run(ctx, "ls", "/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []string
	for _, f := range strings.Fields(ps) {
		if f[0] >= '0' && f[0] <= '9' {
			pids = append(pids, f)
		}
	}
	// init (sleep) and ls itself: nothing of the machine's.
	if len(pids) > 3 {
		t.Fatalf("node-1 sees %d processes (%v), want only its own", len(pids), pids)
	}
	l.Close()
	closed = true
	links, _ := runOut("ip", "-o", "link", "show")
	if strings.Contains(links, "arklabt-") {
		t.Fatalf("links left behind after Close:\n%s", links)
	}
	if _, err := os.Stat("/proc/" + itoa(h1.InitPID())); err == nil {
		t.Fatalf("node-1's init still runs after Close")
	}
}

func runOut(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

func itoa(i int) string { return strconv.Itoa(i) }

// syncBuffer is a bytes.Buffer safe for a child's output and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func buildRank(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "rank")
	if out, err := exec.Command("go", "build", "-o", bin, "./rank").CombinedOutput(); err != nil {
		t.Fatalf("building the rank program: %v\n%s", err, out)
	}
	return bin
}
