// Package link is the agent↔hub wire protocol: JSON frames over one
// WebSocket, both ways. It is the one package both sides import, so they
// meet only on the wire (docs/README.md).
//
// A session:
//
//	agent → hub   HTTP GET Path, Authorization: Bearer <token>, upgraded to a WebSocket
//	agent → hub   hello    {node, addrs, version}
//	hub   → agent welcome  (or the socket closes with StatusPolicyViolation and a reason)
//	agent → hub   snapshot {events, done}   one or more frames: the agent's current graph as events
//	agent → hub   events   {seq, events}    folded events, in batches
//	hub   → agent ack      {seq}            the hub applied every batch up to seq (flow control)
//	hub   → agent command  {command}        e.g. a fix, with a request id
//	agent → hub   result   {result}         the command's outcome, same id
package link

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/ark-gpu/ark/event"
)

// Version is the protocol version in hello and welcome.
const Version = 1

// Path is where the hub accepts agent connections.
const Path = "/api/v1/agents/connect"

// MaxFrameBytes bounds one frame; the hub closes a link that sends more.
const MaxFrameBytes = 4 << 20

// MaxBatch bounds the events in one events or snapshot frame.
const MaxBatch = 4096

// Frame types.
const (
	TypeHello    = "hello"
	TypeWelcome  = "welcome"
	TypeSnapshot = "snapshot"
	TypeEvents   = "events"
	TypeAck      = "ack"
	TypeCommand  = "command"
	TypeResult   = "result"
)

// Frame is every message on the link; Type says which fields are set.
type Frame struct {
	Type string `json:"type"`
	V    int    `json:"v,omitempty"`

	// hello
	Node    string   `json:"node,omitempty"`
	Addrs   []string `json:"addrs,omitempty"`
	Version string   `json:"version,omitempty"`

	// snapshot, events, ack
	Seq    uint64        `json:"seq,omitempty"`
	Events []event.Event `json:"events,omitempty"`
	Done   bool          `json:"done,omitempty"` // last snapshot frame

	// command, result
	Command *Command `json:"command,omitempty"`
	Result  *Result  `json:"result,omitempty"`

	// welcome may carry a reason to slow down or a message
	Message string `json:"message,omitempty"`
}

// Command is an action the hub asks an agent to take.
type Command struct {
	ID     string            `json:"id"`
	Intent string            `json:"intent"` // "fix"
	PID    int64             `json:"pid"`
	JobID  string            `json:"job_id,omitempty"`
	Action string            `json:"action,omitempty"` // empty: what the agent's rules suggest
	Params map[string]string `json:"params,omitempty"`
	DryRun bool              `json:"dry_run,omitempty"`
	// User is who asked the hub, for the agent's audit log.
	User string `json:"user"`
}

// Result is an agent's answer to a command.
type Result struct {
	ID      string `json:"id"`
	Node    string `json:"node"`
	PID     int64  `json:"pid"`
	JobID   string `json:"job_id,omitempty"`
	Action  string `json:"action"`
	Result  string `json:"result"` // success, partial_failure, failure, dry_run
	Details string `json:"details,omitempty"`
	Error   string `json:"error,omitempty"`
}

// Errors a decoder reports.
var (
	ErrUnknownType = errors.New("unknown frame type")
	ErrBadFrame    = errors.New("malformed frame")
)

// Decode parses and checks one frame.
func Decode(b []byte) (Frame, error) {
	var f Frame
	if err := DecodeInto(b, &f); err != nil {
		return Frame{}, err
	}
	return f, nil
}

// DecodeInto is Decode into f, reusing the capacity of f.Events: a hub
// decoding thousands of frames a second then does not grow a new slice
// for each. The events f held are zeroed first, so nothing decoded before
// shares memory with what is decoded now.
func DecodeInto(b []byte, f *Frame) error {
	f.Reset()
	if !decodeFast(b, f) {
		f.Reset()
		if err := decodeSlow(b, f); err != nil {
			return fmt.Errorf("%w: %w", ErrBadFrame, err)
		}
	}
	switch f.Type {
	case TypeHello:
		if f.Node == "" {
			return fmt.Errorf("%w: hello without a node name", ErrBadFrame)
		}
		if f.V != Version {
			return fmt.Errorf("%w: protocol version %d, want %d", ErrBadFrame, f.V, Version)
		}
	case TypeWelcome, TypeAck:
	case TypeSnapshot, TypeEvents:
		if len(f.Events) > MaxBatch {
			return fmt.Errorf("%w: %d events in one frame (max %d)", ErrBadFrame, len(f.Events), MaxBatch)
		}
	case TypeCommand:
		if f.Command == nil || f.Command.ID == "" {
			return fmt.Errorf("%w: command without an id", ErrBadFrame)
		}
	case TypeResult:
		if f.Result == nil || f.Result.ID == "" {
			return fmt.Errorf("%w: result without an id", ErrBadFrame)
		}
	default:
		return fmt.Errorf("%w %q", ErrUnknownType, f.Type)
	}
	return nil
}

// Reset empties f but keeps the capacity of f.Events, zeroed, so nothing
// decoded before shares memory with what is decoded next.
func (f *Frame) Reset() {
	clear(f.Events[:cap(f.Events)])
	*f = Frame{Events: f.Events[:0]}
}

// AppendAck appends the ack frame for seq to dst: the frame a hub writes
// for every batch, encoded without reflection.
func AppendAck(dst []byte, seq uint64) []byte {
	dst = append(dst, `{"type":"ack","seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	return append(dst, '}')
}

// Encode writes a frame.
func Encode(f *Frame) ([]byte, error) { return json.Marshal(f) }
