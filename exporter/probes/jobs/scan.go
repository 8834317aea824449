package jobs

import (
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probe"
	"github.com/ark-gpu/ark/exporter/procstat"
	"github.com/ark-gpu/ark/graph"
)

// Attribute keys of the intent.run events this probe writes, beyond
// event's rank, addr, gpus and launcher.
const (
	AttrPod       = "pod"
	AttrNamespace = "namespace"
)

// podSource finds a pod by UID (Pods implements it).
type podSource interface {
	Lookup(uid string) (PodJob, bool)
}

// scanner walks /proc. A process is read once, when first seen (pid and
// start time are its key); only ranks are looked at again, for the GPUs
// they open and the address they get after they start.
type scanner struct {
	paths      probe.Paths
	cfg        Config
	pods       podSource // nil without Kubernetes
	gpuResolve func(pci string) (int, bool)
	uuids      map[string]string // loaded on first need
	skip       func(reason string)

	gen   uint64
	procs map[int]*entry
	bad   map[int]uint64 // pids whose stat is unusable, and the scan that last saw them
	buf   []byte         // environ, max+1
	small []byte         // stat, cgroup
	attrs event.Attrs
}

type entry struct {
	start uint64
	gen   uint64
	rank  *rank // nil: not a rank
}

type rank struct {
	launch    Launch
	container Container
	inPod     bool
	podWait   time.Time // when to stop waiting for the pod
	resolved  bool
	pod       PodJob
	jobID     string
	rank      int
	launcher  string
	fdGPUs    []string
	addr      string
	last      event.Attrs // as last emitted
	emittedAt time.Time
	emitted   bool
}

func newScanner(paths probe.Paths, cfg Config, pods podSource, skip func(string)) *scanner {
	return &scanner{
		paths: paths, cfg: cfg, pods: pods, skip: skip,
		procs: map[int]*entry{},
		bad:   map[int]uint64{},
		buf:   make([]byte, cfg.MaxEnviron+1),
		small: make([]byte, 16<<10),
	}
}

// scan reads /proc once and emits what changed; it returns the number of
// ranks alive.
func (s *scanner) scan(now time.Time, sink probe.Sink) (int, error) {
	d, err := os.Open(s.paths.ProcFS)
	if err != nil {
		return 0, err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return 0, err
	}
	s.gen++
	ranks := 0
	for _, name := range names {
		if name == "" || name[0] < '1' || name[0] > '9' {
			continue
		}
		pid, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		b, err := readInto(s.paths.Proc(name, "stat"), s.small)
		if err != nil {
			s.badStat(pid, err)
			continue
		}
		st, err := procstat.Parse(b)
		if err != nil {
			s.badStat(pid, errMalformedStat)
			continue
		}
		e := s.procs[pid]
		if st.State == 'Z' || st.State == 'X' {
			// Ended, not yet reaped: its environ reads empty.
			if e != nil && e.start == st.StartTime {
				s.exit(now, sink, pid, e)
				e.rank, e.gen = nil, s.gen
			}
			continue
		}
		if e != nil && e.start != st.StartTime {
			// The pid was reused: the process we knew has ended.
			s.exit(now, sink, pid, e)
			e = nil
		}
		if e == nil {
			e = &entry{start: st.StartTime, rank: s.inspect(now, name)}
			s.procs[pid] = e
		}
		e.gen = s.gen
		if e.rank != nil && s.update(now, sink, pid, e) {
			ranks++
		}
	}
	for pid, gen := range s.bad {
		if gen != s.gen {
			delete(s.bad, pid)
		}
	}
	for pid, e := range s.procs {
		if e.gen != s.gen {
			s.exit(now, sink, pid, e)
			delete(s.procs, pid)
		}
	}
	return ranks, nil
}

// inspect reads a new process: its environment, and for a rank or a
// process in a pod, its cgroup and open GPUs. nil: not a rank.
func (s *scanner) inspect(now time.Time, pid string) *rank {
	b, err := readInto(s.paths.Proc(pid, "environ"), s.buf)
	if err != nil {
		s.skipErr(err)
		return nil
	}
	if len(b) > s.cfg.MaxEnviron {
		s.skip(ReasonEnvironTooLarge)
		return nil
	}
	if len(b) == 0 {
		return nil // a kernel thread or a zombie
	}
	l, launched, err := ParseEnviron(b)
	if err != nil {
		s.skip(ReasonBadRank)
		return nil
	}
	r := &rank{launch: l}
	if launched || s.pods != nil {
		cb, err := readInto(s.paths.Proc(pid, "cgroup"), s.small)
		if err == nil {
			c, ok, err := ParseCgroup(cb)
			switch {
			case err != nil:
				s.skip(ReasonUnknownRuntime)
			case ok:
				r.container, r.inPod = c, true
				r.podWait = now.Add(s.cfg.PodGrace)
			}
		}
	}
	if !launched {
		// Without launcher variables, only a GPU process of a pod in a
		// job is a rank (its index from the pod's labels).
		if !r.inPod || s.pods == nil {
			return nil
		}
		if r.fdGPUs = openGPUs(s.paths.Proc(pid, "fd"), s.cfg.DevicePrefix); len(r.fdGPUs) == 0 {
			return nil
		}
	}
	return r
}

// update resolves a rank's job, GPUs and address, and emits intent.run
// when any changed or the heartbeat is due. It returns false while the
// rank is not reported.
func (s *scanner) update(now time.Time, sink probe.Sink, pid int, e *entry) bool {
	r := e.rank
	if !r.resolved {
		if r.inPod && s.pods != nil {
			pj, ok := s.pods.Lookup(r.container.PodUID)
			switch {
			case ok:
				r.pod = pj
			case now.Before(r.podWait):
				return false // the informer may not have it yet
			default:
				s.skip(ReasonPodNotFound)
			}
		}
		r.resolved = true
		r.jobID, r.rank, r.launcher = r.launch.JobID, r.launch.Rank, r.launch.Launcher
		if r.pod.JobID != "" {
			r.jobID = r.pod.JobID
			if r.rank < 0 {
				r.rank = r.pod.Rank
			}
			if r.launcher == "" {
				r.launcher = LauncherK8s
			}
		}
		if r.jobID == "" {
			s.skip(ReasonNoJobID)
			e.rank = nil
			return false
		}
	}
	p := strconv.Itoa(pid)
	if len(r.fdGPUs) == 0 {
		// CUDA opens the devices after the process starts.
		r.fdGPUs = openGPUs(s.paths.Proc(p, "fd"), s.cfg.DevicePrefix)
	}
	if r.addr == "" {
		if ip := nsAddr(s.paths.Proc(p, "net"), r.launch.IfName); ip.IsValid() {
			r.addr = ip.String()
			if r.launch.Port != "" {
				r.addr = net.JoinHostPort(r.addr, r.launch.Port)
			}
		}
	}
	s.attrs = s.attrs[:0]
	if r.rank >= 0 {
		s.attrs = append(s.attrs, event.Attr{Key: event.AttrRank, Value: strconv.Itoa(r.rank)})
	}
	if r.addr != "" {
		s.attrs = append(s.attrs, event.Attr{Key: event.AttrAddr, Value: r.addr})
	}
	s.attrs = append(s.attrs, event.Attr{Key: event.AttrLauncher, Value: r.launcher})
	if g := s.gpus(r); g != "" {
		s.attrs = append(s.attrs, event.Attr{Key: event.AttrGPUs, Value: g})
	}
	if r.pod.Pod != "" {
		s.attrs = append(s.attrs,
			event.Attr{Key: AttrPod, Value: r.pod.Pod},
			event.Attr{Key: AttrNamespace, Value: r.pod.Namespace})
	}
	s.attrs = append(s.attrs, event.Attr{Key: graph.AttrStartTime, Value: strconv.FormatUint(e.start, 10)})
	if r.emitted && now.Sub(r.emittedAt) < s.cfg.Heartbeat && sameAttrs(r.last, s.attrs) {
		return true
	}
	r.last = append(r.last[:0], s.attrs...)
	r.emitted, r.emittedAt = true, now
	sink.Emit(&event.Event{
		TS:       now.UnixMilli(),
		Type:     event.IntentRun,
		EntityID: "pid-" + p,
		PID:      int64(pid),
		JobID:    r.jobID,
		Value:    "running",
		Attrs:    s.attrs,
	})
	return true
}

// gpus: the device nodes the process holds open are the host's own
// indices; NVIDIA_VISIBLE_DEVICES (set by the container toolkit) names
// host GPUs too; CUDA_VISIBLE_DEVICES last, since in a container or a
// Slurm cgroup it counts from the GPUs the process can see.
func (s *scanner) gpus(r *rank) string {
	if len(r.fdGPUs) > 0 {
		return strings.Join(r.fdGPUs, ",")
	}
	for _, v := range []string{r.launch.NVIDIAVisible, r.launch.CUDAVisible} {
		if v == "" {
			continue
		}
		if s.uuids == nil {
			s.uuids = gpuUUIDs(s.paths.Proc("driver", "nvidia", "gpus"), s.gpuResolve)
			if s.uuids == nil {
				s.uuids = map[string]string{}
			}
		}
		if g := visibleGPUs(v, s.uuids); len(g) > 0 {
			return strings.Join(g, ",")
		}
	}
	return ""
}

func (s *scanner) exit(now time.Time, sink probe.Sink, pid int, e *entry) {
	if e.rank == nil || !e.rank.emitted {
		return
	}
	sink.Emit(&event.Event{
		TS:       now.UnixMilli(),
		Type:     event.ProcessState,
		EntityID: "pid-" + strconv.Itoa(pid),
		PID:      int64(pid),
		JobID:    e.rank.jobID,
		Value:    "exited",
	})
}

// errMalformedStat: /proc/<pid>/stat did not parse.
var errMalformedStat = errors.New("malformed stat")

// badStat counts a pid whose stat cannot be used once while it stays.
func (s *scanner) badStat(pid int, err error) {
	if _, seen := s.bad[pid]; !seen {
		if errors.Is(err, errMalformedStat) {
			s.skip(ReasonMalformedStat)
		} else {
			s.skipErr(err)
		}
	}
	if !errors.Is(err, fs.ErrNotExist) {
		s.bad[pid] = s.gen
	}
}

func (s *scanner) skipErr(err error) {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
		s.skip(ReasonVanished)
		return
	}
	s.skip(ReasonUnreadable)
}

// readInto reads a whole file into buf, at most len(buf) bytes: a caller
// that gets len(buf) bytes knows the file was larger than it wanted.
func readInto(path string, buf []byte) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return buf[:n], nil
}

func sameAttrs(a, b event.Attrs) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
