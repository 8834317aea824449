package bpf

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// Flow is one socket's counters and TCP state, as flow.c keeps them.
type Flow = flowFlow

// FlowEvent is a ring-buffer record: the final state of a flow that
// closed, keyed by its socket.
type FlowEvent = flowFlowEvent

// FlowOptions configure LoadFlows.
type FlowOptions struct {
	// PIDNamespace is a pid namespace file (/proc/self/ns/pid for the
	// agent's own): only tasks in that namespace are accounted, under the
	// pids that namespace gives them.
	PIDNamespace string
	// MaxFlows sizes the LRU hash of flows (0: the object's 65536).
	MaxFlows uint32
}

// Flows is flow.c loaded and attached.
type Flows struct {
	objs   flowObjects
	links  []link.Link
	events *ringbuf.Reader
	keys   []uint64
	vals   []Flow
}

// LoadFlows removes the memlock limit, loads flow.c for opts, attaches
// its tracepoints and opens the ring buffer. Errors from the kernel
// (no BTF, no permission) are returned wrapped; the caller decides
// whether they mean "no data here".
func LoadFlows(opts FlowOptions) (_ *Flows, err error) {
	var st unix.Stat_t
	if err := unix.Stat(opts.PIDNamespace, &st); err != nil {
		return nil, fmt.Errorf("reading pid namespace %s: %w", opts.PIDNamespace, err)
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("removing the memlock limit: %w", err)
	}
	spec, err := loadFlow()
	if err != nil {
		return nil, err
	}
	if err := spec.Variables[flowVarPidnsDev].Set(uint64(st.Dev)); err != nil {
		return nil, fmt.Errorf("setting pidns_dev: %w", err)
	}
	if err := spec.Variables[flowVarPidnsIno].Set(st.Ino); err != nil {
		return nil, fmt.Errorf("setting pidns_ino: %w", err)
	}
	if opts.MaxFlows > 0 {
		spec.Maps[flowMapFlows].MaxEntries = opts.MaxFlows
	}
	f := &Flows{}
	if err := spec.LoadAndAssign(&f.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("loading flow.c: %+v", ve)
		}
		return nil, fmt.Errorf("loading flow.c: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	for _, p := range []*ebpf.Program{
		f.objs.SendLength, f.objs.RecvLength, f.objs.TcpProbe,
		f.objs.Retransmit, f.objs.SetState,
	} {
		l, err := link.AttachTracing(link.TracingOptions{Program: p, AttachType: ebpf.AttachTraceRawTp})
		if err != nil {
			return nil, fmt.Errorf("attaching %s: %w", p, err)
		}
		f.links = append(f.links, l)
	}
	f.events, err = ringbuf.NewReader(f.objs.Events)
	if err != nil {
		return nil, fmt.Errorf("opening the ring buffer: %w", err)
	}
	return f, nil
}

// batch is how many flows one BatchLookup call reads.
const batch = 1024

// Snapshot calls fn for every flow in the kernel's table. The *Flow is
// reused between calls.
func (f *Flows) Snapshot(fn func(sk uint64, fl *Flow)) error {
	if f.keys == nil {
		f.keys = make([]uint64, batch)
		f.vals = make([]Flow, batch)
	}
	var cursor ebpf.MapBatchCursor
	for {
		n, err := f.objs.Flows.BatchLookup(&cursor, f.keys, f.vals, nil)
		for i := range n {
			fn(f.keys[i], &f.vals[i])
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading flows: %w", err)
		}
	}
}

// ReadEvents reads closed flows from the ring buffer and calls fn for
// each until Close; it then returns nil. A record of the wrong size is
// counted in bad and skipped.
func (f *Flows) ReadEvents(fn func(ev *FlowEvent), bad func()) error {
	var (
		rec ringbuf.Record
		ev  FlowEvent
	)
	size := int(unsafe.Sizeof(ev))
	dst := unsafe.Slice((*byte)(unsafe.Pointer(&ev)), size)
	for {
		if err := f.events.ReadInto(&rec); err != nil {
			if errors.Is(err, ringbuf.ErrClosed) {
				return nil
			}
			return fmt.Errorf("reading the ring buffer: %w", err)
		}
		if len(rec.RawSample) < size {
			if bad != nil {
				bad()
			}
			continue
		}
		copy(dst, rec.RawSample)
		fn(&ev)
	}
}

// Lost returns how many closed flows did not fit in the ring buffer.
func (f *Flows) Lost() (uint64, error) {
	var per []uint64
	if err := f.objs.Lost.Lookup(uint32(0), &per); err != nil {
		return 0, fmt.Errorf("reading the lost counter: %w", err)
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n, nil
}

// Close detaches the programs, ends ReadEvents and frees the maps.
func (f *Flows) Close() error {
	var errs []error
	if f.events != nil {
		errs = append(errs, f.events.Close())
	}
	for _, l := range f.links {
		errs = append(errs, l.Close())
	}
	f.links = nil
	errs = append(errs, f.objs.Close())
	return errors.Join(errs...)
}
