package jobs

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
)

// Launchers, as they appear in the launcher attribute of intent.run.
const (
	LauncherTorchrun  = "torchrun"
	LauncherTorch     = "torch" // torch.distributed env:// without torchrun
	LauncherSlurm     = "slurm"
	LauncherMPI       = "mpi"
	LauncherDeepSpeed = "deepspeed"
	LauncherHorovod   = "horovod"
	LauncherK8s       = "kubernetes"
)

// Launch is what a process's environment says about its place in a job.
type Launch struct {
	// Launcher assigned the rank (the innermost one: torchrun under srun is
	// torchrun).
	Launcher string
	// JobID is stable across the job's hosts; "" when the environment
	// names a rank but nothing to tell its job by.
	JobID string
	// Rank is the global rank, -1 when none was found.
	Rank int
	// Port is the port the rank listens on when the launcher says so (the
	// rendezvous store of rank 0), else "".
	Port string
	// IfName is NCCL_SOCKET_IFNAME.
	IfName string
	// CUDAVisible and NVIDIAVisible are CUDA_VISIBLE_DEVICES and
	// NVIDIA_VISIBLE_DEVICES.
	CUDAVisible, NVIDIAVisible string
}

// errBadRank: a launcher variable that must be a rank is not a number.
var errBadRank = errors.New("non-numeric rank")

// the variables read; everything else in the environment is skipped
// without a copy.
type environ struct {
	rank, localRank, torchRunID, masterAddr, masterPort string
	slurmJob, slurmProcID                               string
	ompiRank, pmixRank, pmixNamespace                   string
	crossRank                                           string
	hvdRank, hvdRdzvAddr, hvdRdzvPort                   string
	ncclIf, cudaVisible, nvidiaVisible                  string
}

// ParseEnviron reads /proc/<pid>/environ's contents (NUL-separated
// KEY=VALUE). ok is false when no launcher variable is set: the process is
// not a rank. err is errBadRank when a rank variable is not a number.
func ParseEnviron(b []byte) (l Launch, ok bool, err error) {
	var e environ
	for len(b) > 0 {
		var kv []byte
		if i := bytes.IndexByte(b, 0); i >= 0 {
			kv, b = b[:i], b[i+1:]
		} else {
			kv, b = b, nil
		}
		eq := bytes.IndexByte(kv, '=')
		if eq <= 0 {
			continue
		}
		if p := e.field(kv[:eq]); p != nil {
			*p = string(kv[eq+1:])
		}
	}
	return e.launch()
}

// field returns where the variable named k goes, nil for the rest. The
// switch on a []byte conversion does not allocate.
func (e *environ) field(k []byte) *string {
	switch string(k) {
	case "RANK":
		return &e.rank
	case "LOCAL_RANK":
		return &e.localRank
	case "TORCHELASTIC_RUN_ID":
		return &e.torchRunID
	case "MASTER_ADDR":
		return &e.masterAddr
	case "MASTER_PORT":
		return &e.masterPort
	case "SLURM_JOB_ID":
		return &e.slurmJob
	case "SLURM_PROCID":
		return &e.slurmProcID
	case "OMPI_COMM_WORLD_RANK":
		return &e.ompiRank
	case "PMIX_RANK":
		return &e.pmixRank
	case "PMIX_NAMESPACE":
		return &e.pmixNamespace
	case "CROSS_RANK":
		return &e.crossRank
	case "HOROVOD_RANK":
		return &e.hvdRank
	case "HOROVOD_GLOO_RENDEZVOUS_ADDR":
		return &e.hvdRdzvAddr
	case "HOROVOD_GLOO_RENDEZVOUS_PORT":
		return &e.hvdRdzvPort
	case "NCCL_SOCKET_IFNAME":
		return &e.ncclIf
	case "CUDA_VISIBLE_DEVICES":
		return &e.cudaVisible
	case "NVIDIA_VISIBLE_DEVICES":
		return &e.nvidiaVisible
	}
	return nil
}

func (e *environ) launch() (Launch, bool, error) {
	l := Launch{Rank: -1, IfName: e.ncclIf, CUDAVisible: e.cudaVisible, NVIDIAVisible: e.nvidiaVisible}
	// The rank from the innermost launcher: the framework's own variable
	// first, the scheduler's last (srun starts one torchrun per node, and
	// SLURM_PROCID is then the node's index, not the rank).
	var rank string
	switch {
	case e.hvdRank != "":
		l.Launcher, rank = LauncherHorovod, e.hvdRank
	case e.rank != "" && e.torchRunID != "":
		l.Launcher, rank = LauncherTorchrun, e.rank
	case e.rank != "" && e.crossRank != "":
		l.Launcher, rank = LauncherDeepSpeed, e.rank
	case e.ompiRank != "":
		l.Launcher, rank = LauncherMPI, e.ompiRank
	case e.pmixRank != "" && e.pmixNamespace != "":
		l.Launcher, rank = LauncherMPI, e.pmixRank
	case e.rank != "" && e.masterAddr != "":
		l.Launcher, rank = LauncherTorch, e.rank
	case e.slurmJob != "" && e.slurmProcID != "":
		l.Launcher, rank = LauncherSlurm, e.slurmProcID
	default:
		return l, false, nil
	}
	r, err := strconv.Atoi(strings.TrimSpace(rank))
	if err != nil || r < 0 {
		return l, true, errBadRank
	}
	l.Rank = r
	// The job from the outermost scheduler, whose id every host shares.
	master := ""
	if e.masterAddr != "" && e.masterPort != "" {
		master = e.masterAddr + ":" + e.masterPort
	}
	switch {
	case e.slurmJob != "":
		l.JobID = "slurm/" + e.slurmJob
	case e.pmixNamespace != "":
		l.JobID = "mpi/" + e.pmixNamespace
	case l.Launcher == LauncherTorchrun && e.torchRunID != "none":
		// torchrun's --rdzv-id defaults to "none", shared by every job.
		l.JobID = "torchrun/" + e.torchRunID
	case l.Launcher == LauncherHorovod && e.hvdRdzvAddr != "":
		l.JobID = "horovod/" + e.hvdRdzvAddr + ":" + e.hvdRdzvPort
	case master != "":
		l.JobID = l.Launcher + "/" + master
	}
	// Rank 0 of a torch job serves the rendezvous store on MASTER_PORT.
	if l.Rank == 0 && e.masterPort != "" && (l.Launcher == LauncherTorchrun || l.Launcher == LauncherTorch || l.Launcher == LauncherDeepSpeed) {
		l.Port = e.masterPort
	}
	return l, true, nil
}
