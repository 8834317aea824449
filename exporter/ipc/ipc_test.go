package ipc

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv("ARK_IPC_TEST_CLIENT") != "" {
		os.Exit(clientMain())
	}
	goleak.VerifyTestMain(m)
}

// clientMain runs in a child process under another uid and prints the
// agent's answer to an admin command.
func clientMain() int {
	c, err := Dial(context.Background(), os.Getenv("ARK_IPC_TEST_CLIENT"))
	if err != nil {
		fmt.Println("dial:", err)
		return 1
	}
	defer c.Close()
	var ps []string
	if err := c.Call(context.Background(), "ps", nil, &ps); err != nil {
		fmt.Println("ps:", err)
		return 1
	}
	err = c.Call(context.Background(), "fix", map[string]int{"pid": 1}, nil)
	fmt.Println("fix:", err)
	return 0
}

func startServer(t *testing.T, dir string, mode os.FileMode) (string, func()) {
	t.Helper()
	path := filepath.Join(dir, "ark.sock")
	s, err := NewServer(Config{Path: path, Mode: mode})
	if err != nil {
		t.Fatal(err)
	}
	s.Handle("ps", Command{Handler: func(_ context.Context, _ Peer, _ json.RawMessage, _ func(any) error) (any, error) {
		return []string{"4123"}, nil
	}})
	s.Handle("fix", Command{Admin: true, Handler: func(_ context.Context, p Peer, _ json.RawMessage, _ func(any) error) (any, error) {
		return map[string]string{"user": p.User()}, nil
	}})
	s.Handle("echo", Command{Handler: func(_ context.Context, _ Peer, args json.RawMessage, _ func(any) error) (any, error) {
		return args, nil
	}})
	s.Handle("fail", Command{Handler: func(context.Context, Peer, json.RawMessage, func(any) error) (any, error) {
		return nil, Errorf(CodeNotFound, "pid 9 is not tracked")
	}})
	s.Handle("stream", Command{Handler: func(ctx context.Context, _ Peer, _ json.RawMessage, send func(any) error) (any, error) {
		for i := 0; ; i++ {
			if err := send(i); err != nil {
				return nil, err
			}
			if i == 3 && ctx.Err() == nil {
				// keep going until the client leaves
				time.Sleep(time.Millisecond)
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
		}
	}})
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Serve(ctx) }()
	return path, func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}

func dial(t *testing.T, path string) *Client {
	t.Helper()
	c, err := Dial(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestCallsAndStructuredErrors(t *testing.T) {
	path, stop := startServer(t, t.TempDir(), 0o660)
	defer stop()
	c := dial(t, path)
	var ps []string
	if err := c.Call(context.Background(), "ps", nil, &ps); err != nil || len(ps) != 1 {
		t.Fatalf("ps: %v %v", ps, err)
	}
	var ie *Error
	if err := c.Call(context.Background(), "nope", nil, nil); !errors.As(err, &ie) || ie.Code != CodeUnknownCommand {
		t.Fatalf("unknown command: %v", err)
	}
	if err := c.Call(context.Background(), "fail", nil, nil); !errors.As(err, &ie) || ie.Code != CodeNotFound {
		t.Fatalf("handler error: %v", err)
	}
	// Root is admin.
	var who map[string]string
	if err := c.Call(context.Background(), "fix", nil, &who); err != nil || !strings.Contains(who["user"], "uid=0") {
		t.Fatalf("fix as root: %v %v", who, err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o660 || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket mode %v %v", st.Mode(), err)
	}
}

func rawConn(t *testing.T, path string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, bufio.NewReader(c)
}

func readResp(t *testing.T, r *bufio.Reader) Response {
	t.Helper()
	line, err := r.ReadBytes('\n')
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	var resp Response
	if err := json.Unmarshal(line, &resp); err != nil {
		t.Fatalf("answer is not JSON: %q", line)
	}
	return resp
}

func TestBadInputGetsAnAnswerAndOthersKeepBeingServed(t *testing.T) {
	path, stop := startServer(t, t.TempDir(), 0o660)
	defer stop()
	good := dial(t, path)

	// Garbage: a structured error, and the same connection still works.
	c, r := rawConn(t, path)
	fmt.Fprintf(c, "garbage\n")
	if resp := readResp(t, r); resp.Error == nil || resp.Error.Code != CodeBadRequest {
		t.Fatalf("garbage: %+v", resp)
	}
	fmt.Fprintf(c, `{"v":2,"id":"a","cmd":"ps"}`+"\n")
	if resp := readResp(t, r); resp.Error == nil || resp.Error.Code != CodeBadVersion || resp.ID != "a" {
		t.Fatalf("bad version: %+v", resp)
	}
	fmt.Fprintf(c, `{"v":1,"id":"b","cmd":"ps"}`+"\n")
	if resp := readResp(t, r); !resp.OK || resp.ID != "b" {
		t.Fatalf("after bad input the connection must still serve: %+v", resp)
	}

	// A 10 MB line: answered, then that connection is closed.
	big, bigR := rawConn(t, path)
	go func() {
		_, _ = big.Write([]byte(`{"v":1,"id":"x","cmd":"echo","args":"` + strings.Repeat("x", 10<<20) + "\"}\n"))
	}()
	if resp := readResp(t, bigR); resp.Error == nil || resp.Error.Code != CodeTooLarge {
		t.Fatalf("10 MB line: %+v", resp)
	}

	// A half-written request, then the client leaves.
	half, _ := rawConn(t, path)
	_, _ = half.Write([]byte(`{"v":1,"id":"h","cmd":"p`))
	_ = half.Close()

	// A client that disconnects in the middle of a streamed reply.
	st, stR := rawConn(t, path)
	fmt.Fprintf(st, `{"v":1,"id":"s","cmd":"stream"}`+"\n")
	readResp(t, stR)
	_ = st.Close()

	var ps []string
	if err := good.Call(context.Background(), "ps", nil, &ps); err != nil {
		t.Fatalf("the good client was disturbed: %v", err)
	}
}

func TestHundredConcurrentClients(t *testing.T) {
	path, stop := startServer(t, t.TempDir(), 0o660)
	defer stop()
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := Dial(context.Background(), path)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			var got string
			if err := c.Call(context.Background(), "echo", fmt.Sprint(i), &got); err != nil || got != fmt.Sprint(i) {
				errs <- fmt.Errorf("client %d: %q %w", i, got, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestStaleSocketIsReplacedLiveOneRefused(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ark.sock")
	// A socket file nobody listens on, as a killed agent leaves it.
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	_ = l.Close()
	_, stop := startServer(t, dir, 0o660)
	defer stop()
	s2, _ := NewServer(Config{Path: path})
	if err := s2.Listen(); err == nil || !strings.Contains(err.Error(), "another agent is listening") {
		t.Fatalf("second agent: %v", err)
	}
}

func TestMissingAgentIsOneClearError(t *testing.T) {
	_, err := Dial(context.Background(), filepath.Join(t.TempDir(), "ark.sock"))
	if !errors.Is(err, ErrNoAgent) || !strings.Contains(err.Error(), "is `ark agent` running?") {
		t.Fatalf("%v", err)
	}
}

// A peer that is neither root nor in the admin group can read but not fix.
func TestNonAdminPeerIsDeniedFix(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client under another uid (CI runs as root)")
	}
	dir, err := os.MkdirTemp("/tmp", "ark-ipc-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path, stop := startServer(t, dir, 0o666)
	defer stop()
	// The test binary's own directory is private: copy it where nobody can
	// run it.
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "client.test")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), "ARK_IPC_TEST_CLIENT="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client as nobody: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "fix: permission_denied") || !strings.Contains(string(out), "uid=65534") {
		t.Fatalf("want permission denied for uid 65534, got:\n%s", out)
	}
}
