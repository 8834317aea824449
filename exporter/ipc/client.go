package ipc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultSocket is where the agent listens by default.
const DefaultSocket = "/var/run/ark/ark.sock"

// ErrNoAgent means nothing listens on the socket.
var ErrNoAgent = errors.New("no agent")

// Client talks to an agent over its socket. It is not safe for concurrent
// use; open one per goroutine.
type Client struct {
	path string
	conn net.Conn
	r    *bufio.Reader
	seq  atomic.Uint64
}

// Dial connects to the agent socket at path.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
			return nil, fmt.Errorf("%w at %s: is `ark agent` running?", ErrNoAgent, path)
		}
		return nil, fmt.Errorf("connecting to the agent at %s: %w", path, err)
	}
	return &Client{path: path, conn: c, r: bufio.NewReaderSize(c, 64<<10)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Call sends one request and decodes the final result into out (which may
// be nil). A structured error from the agent is returned as *Error.
func (c *Client) Call(ctx context.Context, cmd string, args, out any) error {
	return c.Stream(ctx, cmd, args, nil, out)
}

// Stream sends one request; each intermediate result is passed to each
// (decode it with json.Unmarshal), the final one decoded into out.
func (c *Client) Stream(ctx context.Context, cmd string, args any, each func(json.RawMessage) error, out any) error {
	id := strconv.FormatUint(c.seq.Add(1), 10)
	req := Request{V: Version, ID: id, Cmd: cmd}
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return err
		}
		req.Args = b
	}
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.conn.SetDeadline(dl)
	} else {
		_ = c.conn.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { _ = c.conn.SetDeadline(time.Now()) })
	defer stop()
	if _, err := c.conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("sending %s: %w", cmd, err)
	}
	for {
		line, err := c.r.ReadBytes('\n')
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("reading the agent's answer to %s: %w", cmd, err)
		}
		var resp Response
		if err := unmarshalResponse(line, &resp); err != nil {
			return fmt.Errorf("bad answer from the agent: %w", err)
		}
		if resp.ID != id && resp.ID != "" {
			continue
		}
		if resp.Error != nil {
			return resp.Error
		}
		if !resp.Done {
			if each != nil {
				if err := each(resp.Result); err != nil {
					return err
				}
			}
			continue
		}
		if out != nil && len(resp.Result) > 0 {
			return json.Unmarshal(resp.Result, out)
		}
		return nil
	}
}

// unmarshalResponse decodes a response line. A result written by the
// server's envelope (the common case) is split off by position and decoded
// once, by the caller, instead of being validated twice.
func unmarshalResponse(line []byte, r *Response) error {
	line = bytes.TrimRight(line, "\r\n")
	if i := bytes.Index(line, []byte(`,"result":`)); i > 0 && bytes.HasPrefix(line, []byte(`{"v":`)) && bytes.HasSuffix(line, []byte("}")) &&
		!bytes.Contains(line[:i], []byte(`"error"`)) {
		if err := json.Unmarshal(append(line[:i:i], '}'), r); err != nil {
			return err
		}
		r.Result = line[i+len(`,"result":`) : len(line)-1]
		return nil
	}
	return json.Unmarshal(line, r)
}
