package main

import (
	"fmt"
	"math/rand/v2"
	"strconv"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/xid"
)

// GPUs (and ranks) per host.
const gpusPerHost = 8

// keepAliveMS is the forwarder's default keep-alive (forwarder.FoldOptions):
// a key that did not change is forwarded again after it.
const keepAliveMS = 2 * 60 * 1000

// kind is what a folded key measures.
type kind uint8

const (
	kIntent kind = iota
	kState
	kUtil
	kMem
	kBW
	kDrop
	kIOPS
	kQDepth
)

// keysPerRank are the folded keys of one rank: intent.run, process.state,
// compute.util, compute.mem, transport.bw and transport.drop toward its two
// ring peers (the same GPU index on the previous and next host of the
// job: a rail-aligned ring).
const keysPerRank = 7

// key is one folder key of a host: what the forwarder remembers per
// (pid, type, entity, job, peer), with the value it last forwarded.
type key struct {
	kind    kind
	g       int    // the rank's GPU on the host
	peer    string // transport.drop
	lastFwd int64  // ms
	num     float64
	str     string
	gone    bool // no longer seen by the agent: not kept alive
}

// op is a change due later on a host's key (the end of a blip or a burst,
// the clearing of a fault).
type op struct {
	due  int64
	key  int
	num  float64
	str  string
	gone bool // the key ends after this event
	// guard: apply only while the key still holds what the change that
	// scheduled this op set (a fault in between wins over a blip's end).
	guard bool
	gnum  float64
	gstr  string
}

// job is a training job spread over whole hosts.
type job struct {
	id    string
	hosts []*host
}

// host is one simulated node: its ranks' folded keys and what is pending
// for its agent.
type host struct {
	idx       int
	name, ip  string
	job       *job
	inJob     int // the host's position in its job
	keys      []key
	ops       []op
	nextBlip  int64 // ms, the next spontaneous change
	blipEvery float64
	rng       *rand.Rand
	agent     *agent
}

// cluster is the simulated fleet.
type cluster struct {
	hosts []*host
	jobs  []*job
}

func hostIP(i int) string {
	return fmt.Sprintf("10.%d.%d.%d", 1+(i>>16), (i>>8)&255, i&255)
}

func (h *host) pid(g int) int64   { return int64(4000 + g) }
func (h *host) addr(g int) string { return h.ip + ":" + strconv.Itoa(29500+g) }
func (h *host) rank(g int) int    { return h.inJob*gpusPerHost + g }
func (h *host) gpu(g int) string  { return "gpu-" + strconv.Itoa(g) }
func (h *host) nic(g int) string  { return "network-ib" + strconv.Itoa(g) }

func (h *host) addrs() []string {
	out := make([]string, gpusPerHost)
	for g := range out {
		out[g] = h.addr(g)
	}
	return out
}

// newCluster lays out n hosts in jobs of jobHosts hosts (the last one may
// be smaller), with every key's keep-alive phase spread over the period as
// in an agent that has run for a while.
func newCluster(n, jobHosts int, rate float64, seed uint64, now int64) *cluster {
	c := &cluster{}
	for i := range n {
		h := &host{idx: i, name: fmt.Sprintf("node-%05d", i), ip: hostIP(i),
			rng: rand.New(rand.NewPCG(seed, uint64(i)))}
		c.hosts = append(c.hosts, h)
	}
	for start := 0; start < n; start += jobHosts {
		j := &job{id: "train/job-" + strconv.Itoa(len(c.jobs))}
		for k := start; k < min(start+jobHosts, n); k++ {
			h := c.hosts[k]
			h.job, h.inJob = j, len(j.hosts)
			j.hosts = append(j.hosts, h)
		}
		c.jobs = append(c.jobs, j)
	}
	for _, h := range c.hosts {
		j := h.job
		prev := j.hosts[(h.inJob+len(j.hosts)-1)%len(j.hosts)]
		next := j.hosts[(h.inJob+1)%len(j.hosts)]
		for g := range gpusPerHost {
			h.keys = append(h.keys,
				key{kind: kIntent, g: g, str: "running"},
				key{kind: kState, g: g, str: "R"},
				key{kind: kUtil, g: g, num: 90},
				key{kind: kMem, g: g, num: 60e9},
				key{kind: kBW, g: g, num: 12e9},
				key{kind: kDrop, g: g, peer: prev.addr(g)},
				key{kind: kDrop, g: g, peer: next.addr(g)})
		}
		h.keys = append(h.keys, key{kind: kIOPS, num: 3000}, key{kind: kQDepth, num: 4})
		for i := range h.keys {
			h.keys[i].lastFwd = now - h.rng.Int64N(keepAliveMS)
		}
		// What the keep-alives do not make of the rate comes from
		// changes; a change costs 1.6 events on average (see blip).
		if extra := rate - float64(len(h.keys))*1000/keepAliveMS; extra > 0 {
			h.blipEvery = 1.6 / extra * 1000
			h.nextBlip = now + int64(h.rng.ExpFloat64()*h.blipEvery)
		}
	}
	return c
}

// event is the wire form of key i's current value.
func (h *host) event(i int, ts int64) event.Event {
	k := &h.keys[i]
	ev := event.Event{TS: ts, PID: h.pid(k.g), JobID: h.job.id}
	switch k.kind {
	case kIntent:
		ev.Type, ev.EntityID, ev.Value = event.IntentRun, "pid-"+strconv.FormatInt(ev.PID, 10), k.str
		ev.Attrs = event.Attrs{{Key: event.AttrRank, Value: strconv.Itoa(h.rank(k.g))}, {Key: event.AttrAddr, Value: h.addr(k.g)}}
	case kState:
		ev.Type, ev.EntityID, ev.Value = event.ProcessState, "pid-"+strconv.FormatInt(ev.PID, 10), k.str
	case kUtil:
		ev.Type, ev.EntityID = event.ComputeUtil, h.gpu(k.g)
	case kMem:
		ev.Type, ev.EntityID = event.ComputeMem, h.gpu(k.g)
	case kBW:
		ev.Type, ev.EntityID = event.TransportBW, h.nic(k.g)
	case kDrop:
		ev.Type, ev.EntityID = event.TransportDrop, h.nic(k.g)
		ev.Attrs = event.Attrs{{Key: event.AttrPeer, Value: k.peer}}
	case kIOPS:
		ev.Type, ev.EntityID, ev.JobID = event.StorageIOPS, "storage-nvme0n1", ""
	case kQDepth:
		ev.Type, ev.EntityID, ev.JobID = event.StorageQDepth, "storage-nvme0n1", ""
	}
	if ev.Value == "" {
		ev.Value = strconv.FormatFloat(k.num, 'f', -1, 64)
	}
	return ev
}

// snapshot is every live key, as the agent's graph would give it.
func (h *host) snapshot(ts int64) []event.Event {
	out := make([]event.Event, 0, len(h.keys))
	for i := range h.keys {
		if !h.keys[i].gone {
			out = append(out, h.event(i, ts))
		}
	}
	return out
}

// emit forwards key i now.
func (h *host) emit(i int, now int64, out []event.Event) []event.Event {
	h.keys[i].lastFwd = now
	return append(out, h.event(i, now))
}

// tick returns what the host's folder forwards by now: keep-alives,
// spontaneous changes and the ops that came due.
func (h *host) tick(now int64, out []event.Event) []event.Event {
	kept := h.ops[:0]
	for _, o := range h.ops {
		if o.due > now {
			kept = append(kept, o)
			continue
		}
		k := &h.keys[o.key]
		if k.gone || o.guard && (k.num != o.gnum || k.str != o.gstr) {
			continue
		}
		k.num, k.str = o.num, o.str
		out = h.emit(o.key, now, out)
		k.gone = o.gone
	}
	h.ops = kept
	for h.blipEvery > 0 && h.nextBlip <= now {
		out = h.blip(now, out)
		h.nextBlip += int64(h.rng.ExpFloat64()*h.blipEvery) + 1
	}
	for i := range h.keys {
		if k := &h.keys[i]; !k.gone && now-k.lastFwd >= keepAliveMS {
			out = h.emit(i, now, out)
		}
	}
	return out
}

// blip is one spontaneous change that the folder forwards: a usage jump
// (one event), a rank blocking briefly in D (two) or a short burst of
// drops on a link (two).
func (h *host) blip(now int64, out []event.Event) []event.Event {
	g := h.rng.IntN(gpusPerHost)
	base := g * keysPerRank
	switch r := h.rng.Float64(); {
	case r < 0.4:
		i := base + int(kUtil)
		if h.keys[i].num > 60 {
			h.keys[i].num = 35 + h.rng.Float64()*10
		} else {
			h.keys[i].num = 85 + h.rng.Float64()*10
		}
		return h.emit(i, now, out)
	case r < 0.7:
		i := base + int(kState)
		if h.keys[i].str != "R" {
			return out // already blocked by a fault
		}
		h.keys[i].str = "D"
		h.ops = append(h.ops, op{due: now + 1000 + h.rng.Int64N(2000), key: i, str: "R", guard: true, gstr: "D"})
		return h.emit(i, now, out)
	default:
		i := base + int(kDrop) + h.rng.IntN(2) // one of the two ring links
		if h.keys[i].num > 0 {
			return out
		}
		h.keys[i].num = float64(1 + h.rng.IntN(50))
		h.ops = append(h.ops, op{due: now + 2000 + h.rng.Int64N(3000), key: i, num: 0, guard: true, gnum: h.keys[i].num})
		return h.emit(i, now, out)
	}
}

// xids are the faults the simulation injects, with their catalog text.
var xids = []int{79, 48, 13}

func xidText(code int) string {
	if e, ok := xid.Lookup(code); ok && e.Description != "" {
		return "Xid " + strconv.Itoa(code) + ": " + e.Description
	}
	return "Xid " + strconv.Itoa(code)
}

// fault is an XID on one GPU of a job: the host reports it, the rank on
// that GPU stalls, and every other rank of the job starts dropping toward
// it and stalls too. Unless hold is 0, the job recovers after hold ms (it
// was restarted): the drops end and the ranks run again. emit gets the
// events each host forwards now.
func fault(h *host, g, code int, now, hold int64, emit func(*host, []event.Event)) {
	j := h.job
	faulty := h.addr(g)
	hw := event.Event{TS: now, Type: event.ErrorHW, EntityID: h.gpu(g), PID: h.pid(g), Value: xidText(code),
		Attrs: event.Attrs{{Key: event.AttrXID, Value: strconv.Itoa(code)}, {Key: event.AttrPCIBus, Value: fmt.Sprintf("0000:%02x:00", 0x18+g*0x10)}}}
	emit(h, []event.Event{hw})
	for _, o := range j.hosts {
		var out []event.Event
		for r := range gpusPerHost {
			out = o.setNow(r*keysPerRank+int(kState), 0, "D", now, hold, out)
			if o == h && r == g {
				continue
			}
			i := o.dropKey(r, faulty)
			out = o.setNow(i, float64(10+o.rng.IntN(40)), "", now, hold, out)
		}
		emit(o, out)
	}
}

// setNow changes key i and forwards it; with hold > 0 the key returns to
// its running value after hold ms.
func (h *host) setNow(i int, num float64, str string, now, hold int64, out []event.Event) []event.Event {
	k := &h.keys[i]
	k.num, k.str = num, str
	if hold > 0 {
		back := op{due: now + hold, key: i}
		switch {
		case k.kind == kState:
			back.str = "R"
		case i >= gpusPerHost*keysPerRank+2:
			back.gone = true // a drop key the fault added: it ends with the job
		}
		h.ops = append(h.ops, back)
	}
	return h.emit(i, now, out)
}

// dropKey is the transport.drop key of rank g toward peer, added when the
// rank had none.
func (h *host) dropKey(g int, peer string) int {
	for i := range h.keys {
		if k := &h.keys[i]; k.kind == kDrop && k.g == g && k.peer == peer && !k.gone {
			return i
		}
	}
	h.keys = append(h.keys, key{kind: kDrop, g: g, peer: peer})
	return len(h.keys) - 1
}
