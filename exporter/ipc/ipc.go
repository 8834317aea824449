// Package ipc is the agent's local control socket: newline-delimited JSON
// requests and responses over a unix socket, with the caller's identity from
// SO_PEERCRED. Read-only commands are open to whoever can connect (the
// socket is 0660, so its group); mutating commands need root or the admin
// group.
package ipc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/user"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Version is the protocol version; a request with another major version is
// refused with CodeBadVersion.
const Version = 1

// MaxRequestBytes bounds one request line.
const MaxRequestBytes = 1 << 20

// Request is one line from a client.
type Request struct {
	V    int             `json:"v"`
	ID   string          `json:"id"`
	Cmd  string          `json:"cmd"`
	Args json.RawMessage `json:"args,omitempty"`
}

// Response is one line to a client. A streaming command sends several
// responses with the request's id, the last with Done set.
type Response struct {
	V      int             `json:"v"`
	ID     string          `json:"id"`
	OK     bool            `json:"ok"`
	Done   bool            `json:"done"`
	Error  *Error          `json:"error,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
}

// Error codes.
const (
	CodeBadRequest       = "bad_request"
	CodeBadVersion       = "bad_version"
	CodeUnknownCommand   = "unknown_command"
	CodePermissionDenied = "permission_denied"
	CodeNotFound         = "not_found"
	CodeTooLarge         = "request_too_large"
	CodeFailed           = "failed"
)

// Error is a structured error in a response.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf builds an *Error.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Peer is the caller, from SO_PEERCRED.
type Peer struct {
	UID, GID uint32
	PID      int32
	// Admin is true for root and members of the admin group.
	Admin bool
}

// User names the peer for the audit log: "alice(uid=1000)".
func (p Peer) User() string {
	name := strconv.FormatUint(uint64(p.UID), 10)
	if u, err := user.LookupId(name); err == nil {
		return u.Username + "(uid=" + name + ")"
	}
	return "uid=" + name
}

// Handler serves one command. send streams intermediate results for a
// streaming command; the returned value (if non-nil) is the final result.
type Handler func(ctx context.Context, peer Peer, args json.RawMessage, send func(any) error) (any, error)

// Command describes a registered command.
type Command struct {
	Handler Handler
	// Admin commands need root or the admin group.
	Admin bool
}

// Config configures a Server.
type Config struct {
	Path string
	// Mode of the socket file (default 0660).
	Mode os.FileMode
	// Group owns the socket file ("" keeps the agent's group).
	Group string
	// AdminGroup may run admin commands besides root ("" = root only).
	AdminGroup string
	Logger     *slog.Logger
}

// Server is the IPC server.
type Server struct {
	cfg      Config
	log      *slog.Logger
	cmds     map[string]Command
	adminGID int64 // -1 when none
	lis      *net.UnixListener

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// NewServer returns a server; register commands with Handle before Serve.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Mode == 0 {
		cfg.Mode = 0o660
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, cmds: map[string]Command{}, adminGID: -1, conns: map[net.Conn]struct{}{}}
	if cfg.AdminGroup != "" {
		gid, err := lookupGroup(cfg.AdminGroup)
		if err != nil {
			return nil, fmt.Errorf("admin group: %w", err)
		}
		s.adminGID = gid
	}
	return s, nil
}

func lookupGroup(name string) (int64, error) {
	if gid, err := strconv.ParseInt(name, 10, 64); err == nil {
		return gid, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(g.Gid, 10, 64)
}

// Handle registers a command.
func (s *Server) Handle(name string, c Command) { s.cmds[name] = c }

// Listen creates the socket: a stale file from a dead agent is removed, a
// live one is an error.
func (s *Server) Listen() error {
	path := s.cfg.Path
	if _, err := os.Stat(path); err == nil {
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			_ = c.Close()
			return fmt.Errorf("another agent is listening on %s", path)
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("removing stale socket %s: %w", path, err)
		}
	}
	if err := os.MkdirAll(dirOf(path), 0o755); err != nil {
		return fmt.Errorf("creating socket directory: %w", err)
	}
	// Create the socket with no access, then open it up, so there is no
	// window where it is wider than configured.
	old := syscall.Umask(0o777)
	lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	syscall.Umask(old)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", path, err)
	}
	if s.cfg.Group != "" {
		gid, err := lookupGroup(s.cfg.Group)
		if err != nil {
			_ = lis.Close()
			return fmt.Errorf("socket group: %w", err)
		}
		if err := os.Chown(path, -1, int(gid)); err != nil {
			_ = lis.Close()
			return fmt.Errorf("chown socket: %w", err)
		}
	}
	if err := os.Chmod(path, s.cfg.Mode); err != nil {
		_ = lis.Close()
		return fmt.Errorf("chmod socket: %w", err)
	}
	s.lis = lis
	return nil
}

func dirOf(path string) string {
	for i := len(path) - 1; i >= 0; i-- {
		if path[i] == '/' {
			if i == 0 {
				return "/"
			}
			return path[:i]
		}
	}
	return "."
}

// Serve accepts connections until ctx ends, then closes them all and
// removes the socket.
func (s *Server) Serve(ctx context.Context) error {
	if s.lis == nil {
		if err := s.Listen(); err != nil {
			return err
		}
	}
	go func() {
		<-ctx.Done()
		_ = s.lis.Close()
		s.mu.Lock()
		for c := range s.conns {
			_ = c.Close()
		}
		s.mu.Unlock()
	}()
	defer func() {
		s.wg.Wait()
		_ = os.Remove(s.cfg.Path)
	}()
	for {
		c, err := s.lis.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accepting: %w", err)
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveConn(ctx, c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			_ = c.Close()
		}()
	}
}

func (s *Server) peer(c *net.UnixConn) (Peer, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return Peer{}, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Peer{}, err
	}
	if cerr != nil {
		return Peer{}, cerr
	}
	p := Peer{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid}
	p.Admin = p.UID == 0 || (s.adminGID >= 0 && inGroup(cred, s.adminGID))
	return p, nil
}

// inGroup checks the peer's primary group and, through /proc, its
// supplementary groups.
func inGroup(cred *unix.Ucred, gid int64) bool {
	if int64(cred.Gid) == gid {
		return true
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(int(cred.Pid)) + "/status")
	if err != nil {
		return false
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		rest, ok := bytes.CutPrefix(line, []byte("Groups:"))
		if !ok {
			continue
		}
		for _, f := range bytes.Fields(rest) {
			if g, err := strconv.ParseInt(string(f), 10, 64); err == nil && g == gid {
				return true
			}
		}
	}
	return false
}

// connWriter serialises responses on one connection.
type connWriter struct {
	mu sync.Mutex
	w  *bufio.Writer
	c  net.Conn
}

func (cw *connWriter) write(r *Response) error {
	r.V = Version
	var b []byte
	var err error
	if r.Error == nil && len(r.Result) > 0 {
		// The result is already JSON: write the envelope around it rather
		// than have Marshal validate and compact it again.
		b = appendEnvelope(make([]byte, 0, len(r.Result)+64), r)
	} else if b, err = json.Marshal(r); err != nil {
		return err
	}
	cw.mu.Lock()
	defer cw.mu.Unlock()
	_ = cw.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := cw.w.Write(append(b, '\n')); err != nil {
		return err
	}
	return cw.w.Flush()
}

func appendEnvelope(b []byte, r *Response) []byte {
	b = append(b, `{"v":`...)
	b = strconv.AppendInt(b, int64(r.V), 10)
	b = append(b, `,"id":`...)
	id, _ := json.Marshal(r.ID)
	b = append(b, id...)
	b = append(b, `,"ok":`...)
	b = strconv.AppendBool(b, r.OK)
	b = append(b, `,"done":`...)
	b = strconv.AppendBool(b, r.Done)
	b = append(b, `,"result":`...)
	b = append(b, r.Result...)
	return append(b, '}')
}

func (s *Server) serveConn(ctx context.Context, c *net.UnixConn) {
	peer, err := s.peer(c)
	if err != nil {
		s.log.Warn("ipc: no peer credentials, closing", "err", err)
		return
	}
	cw := &connWriter{w: bufio.NewWriter(c), c: c}
	r := bufio.NewReaderSize(c, 64<<10)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for {
		line, err := readLine(r, MaxRequestBytes)
		if errors.Is(err, errTooLarge) {
			// Answer, then drop this connection: the rest of the line is
			// not worth reading.
			_ = cw.write(&Response{Error: Errorf(CodeTooLarge, "request longer than %d bytes", MaxRequestBytes), Done: true})
			return
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.log.Debug("ipc: connection ended", "err", err)
			}
			return
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if err := s.serveRequest(ctx, peer, line, cw); err != nil {
			return // the client went away
		}
	}
}

var errTooLarge = errors.New("request too large")

func readLine(r *bufio.Reader, limit int) ([]byte, error) {
	var buf []byte
	for {
		chunk, err := r.ReadSlice('\n')
		if len(buf)+len(chunk) > limit {
			return nil, errTooLarge
		}
		buf = append(buf, chunk...)
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err != nil {
			if errors.Is(err, io.EOF) && len(buf) > 0 {
				return nil, io.ErrUnexpectedEOF // a half-written request
			}
			return nil, err
		}
		return buf, nil
	}
}

func (s *Server) serveRequest(ctx context.Context, peer Peer, line []byte, cw *connWriter) error {
	var req Request
	if err := json.Unmarshal(line, &req); err != nil {
		return cw.write(&Response{Error: Errorf(CodeBadRequest, "not a JSON request: %v", err), Done: true})
	}
	resp := &Response{ID: req.ID, Done: true}
	switch {
	case req.V != Version:
		resp.Error = Errorf(CodeBadVersion, "protocol version %d not supported (want %d)", req.V, Version)
	case req.Cmd == "":
		resp.Error = Errorf(CodeBadRequest, "cmd is required")
	}
	if resp.Error != nil {
		return cw.write(resp)
	}
	cmd, ok := s.cmds[req.Cmd]
	if !ok {
		resp.Error = Errorf(CodeUnknownCommand, "unknown command %q", req.Cmd)
		return cw.write(resp)
	}
	if cmd.Admin && !peer.Admin {
		resp.Error = Errorf(CodePermissionDenied, "%s needs root or the agent's admin group (you are %s)", req.Cmd, peer.User())
		return cw.write(resp)
	}
	send := func(v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		return cw.write(&Response{ID: req.ID, OK: true, Result: b})
	}
	out, err := cmd.Handler(ctx, peer, req.Args, send)
	if err != nil {
		var ie *Error
		if !errors.As(err, &ie) {
			ie = Errorf(CodeFailed, "%v", err)
		}
		resp.Error = ie
		return cw.write(resp)
	}
	resp.OK = true
	if out != nil {
		b, err := json.Marshal(out)
		if err != nil {
			resp.OK = false
			resp.Error = Errorf(CodeFailed, "encoding result: %v", err)
		} else {
			resp.Result = b
		}
	}
	return cw.write(resp)
}
