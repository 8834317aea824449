// Package jobstest starts stand-ins for training ranks in tests: real
// processes with the environment a launcher would give them, holding
// files open as a rank holds its GPU devices.
package jobstest

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// BuildRank builds the rank program (testdata/rank) into t.TempDir() and
// returns its path. It skips the test when no go command is at hand.
func BuildRank(t testing.TB) string {
	t.Helper()
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("building the rank program needs the go command: %v", err)
	}
	_, self, _, _ := runtime.Caller(0)
	src := filepath.Join(filepath.Dir(self), "..", "testdata", "rank")
	bin := filepath.Join(t.TempDir(), "rank")
	cmd := exec.Command(goCmd, "build", "-o", bin, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", src, err, out)
	}
	return bin
}

// Rank is a running stand-in.
type Rank struct {
	Cmd   *exec.Cmd
	stdin io.WriteCloser
}

// PID is the rank's process id.
func (r *Rank) PID() int { return r.Cmd.Process.Pid }

// Stop ends the rank (its stdin closes) and waits for it.
func (r *Rank) Stop(t testing.TB) {
	t.Helper()
	_ = r.stdin.Close()
	done := make(chan error, 1)
	go func() { done <- r.Cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = r.Cmd.Process.Kill()
		<-done
		t.Errorf("rank %d did not stop when its stdin closed", r.PID())
	}
}

// Start runs argv (the rank program, possibly behind a wrapper such as
// unshare) with exactly env, and waits until it says ready. The process
// is stopped when the test ends.
func Start(t testing.TB, env []string, argv ...string) *Rank {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %v: %v", argv, err)
	}
	r := &Rank{Cmd: cmd, stdin: stdin}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			r.Stop(t)
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("rank %v did not start: %q %v; stderr: %s", argv, line, err, stderr.String())
	}
	return r
}
