// Package event is Ark's event model and wire contract: one JSON object per
// line, written by probes and read by the agent, the collector receiver and the
// hub (ARCHITECTURE.md §3).
package event

import (
	"strconv"
	"strings"
)

// Type is the dotted event type name used on the wire.
type Type string

// The event types of the wire contract.
const (
	ComputeUtil   Type = "compute.util"
	ComputeMem    Type = "compute.mem"
	TransportBW   Type = "transport.bw"
	TransportDrop Type = "transport.drop"
	StorageIOPS   Type = "storage.iops"
	StorageQDepth Type = "storage.qdepth"
	ProcessState  Type = "process.state"
	ErrorHW       Type = "error.hw"
	ErrorNet      Type = "error.net"
	TopoLinkDown  Type = "topo.link_down"
	IntentRun     Type = "intent.run"
	ActionExec    Type = "action.exec"
)

// Types lists every known event type in wire order.
var Types = []Type{
	ComputeUtil, ComputeMem, TransportBW, TransportDrop, StorageIOPS, StorageQDepth,
	ProcessState, ErrorHW, ErrorNet, TopoLinkDown, IntentRun, ActionExec,
}

// ParseType returns the interned Type for name, or false when name is not a
// known event type. It does not allocate.
func ParseType(name string) (Type, bool) {
	switch name {
	case "compute.util":
		return ComputeUtil, true
	case "compute.mem":
		return ComputeMem, true
	case "transport.bw":
		return TransportBW, true
	case "transport.drop":
		return TransportDrop, true
	case "storage.iops":
		return StorageIOPS, true
	case "storage.qdepth":
		return StorageQDepth, true
	case "process.state":
		return ProcessState, true
	case "error.hw":
		return ErrorHW, true
	case "error.net":
		return ErrorNet, true
	case "topo.link_down":
		return TopoLinkDown, true
	case "intent.run":
		return IntentRun, true
	case "action.exec":
		return ActionExec, true
	}
	return "", false
}

// Valid reports whether t is one of the known event types.
func (t Type) Valid() bool {
	_, ok := ParseType(string(t))
	return ok
}

// IsError reports whether events of type t describe a fault rather than a
// measurement.
func (t Type) IsError() bool {
	return t == ErrorHW || t == ErrorNet || t == TopoLinkDown
}

// Attr is one extra label of an event.
type Attr struct {
	Key   string
	Value string
}

// Attrs are an event's extra labels. They are a slice rather than a map so a
// decoder can reuse their storage from one event to the next; events carry a
// handful of attrs, so a linear lookup is cheaper than hashing.
type Attrs []Attr

// Get returns the value of key, or "" when it is absent.
func (a Attrs) Get(key string) string {
	v, _ := a.Lookup(key)
	return v
}

// Lookup returns the value of key and whether it is present.
func (a Attrs) Lookup(key string) (string, bool) {
	for i := range a {
		if a[i].Key == key {
			return a[i].Value, true
		}
	}
	return "", false
}

// Set sets key to value, replacing an existing entry.
func (a *Attrs) Set(key, value string) {
	for i := range *a {
		if (*a)[i].Key == key {
			(*a)[i].Value = value
			return
		}
	}
	*a = append(*a, Attr{Key: key, Value: value})
}

// Well-known attribute keys.
const (
	AttrXID      = "xid"
	AttrPCIBus   = "pci_bus"
	AttrRank     = "rank"
	AttrAddr     = "addr"
	AttrPeer     = "peer"
	AttrSeverity = "severity"
	AttrReason   = "reason"
	// On transport.bw: the direction of the bytes ("tx" or "rx"), and for a
	// flow that stopped making progress (value 0) how long it has been
	// stalled and whether the peer advertises a zero window.
	AttrDirection    = "direction"
	AttrStalledForMS = "stalled_for_ms"
	AttrZeroWindow   = "zero_window"
	// AttrGPUs, on intent.run: the GPU indices the rank uses, comma
	// separated ("0,1"); each becomes a Consumes edge to gpu-<index>.
	AttrGPUs = "gpus"
	// AttrLauncher, on intent.run: what placed the rank (torchrun, slurm,
	// mpi, deepspeed, horovod, kubernetes).
	AttrLauncher = "launcher"
)

// Event is one observation. Value keeps the text of the measurement as it was
// sent; Num parses it when a number is needed.
type Event struct {
	TS       int64  // milliseconds since the Unix epoch
	Type     Type   // event_type
	EntityID string // entity_id
	JobID    string // job_id, optional
	PID      int64  // pid, optional (0 when absent)
	Value    string // value, as text
	NodeID   string // node_id, optional
	Attrs    Attrs  // attrs, optional
}

// Num returns Value as a float64 and whether it is numeric.
func (e *Event) Num() (float64, bool) {
	f, err := strconv.ParseFloat(strings.TrimSpace(e.Value), 64)
	if err != nil {
		return 0, false
	}
	return f, true
}

// Clone returns a deep copy of e whose strings share no memory with the
// decoder's line buffer, for callers that keep events for a long time.
func (e *Event) Clone() Event {
	c := *e
	c.EntityID = strings.Clone(e.EntityID)
	c.JobID = strings.Clone(e.JobID)
	c.Value = strings.Clone(e.Value)
	c.NodeID = strings.Clone(e.NodeID)
	if e.Attrs != nil {
		c.Attrs = make(Attrs, len(e.Attrs))
		for i, a := range e.Attrs {
			c.Attrs[i] = Attr{Key: strings.Clone(a.Key), Value: strings.Clone(a.Value)}
		}
	}
	return c
}

// secondsCutoff is where a ts stops looking like seconds: 1e11 s is the year
// 5138, 1e11 ms is 1973.
const secondsCutoff = 1e11

// NormalizeTS turns a timestamp that looks like seconds into milliseconds.
func NormalizeTS(ts int64) int64 {
	if ts > 0 && ts < secondsCutoff {
		return ts * 1000
	}
	return ts
}
