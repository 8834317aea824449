// Package jobs is the job and rank discovery probe ("jobs"): it finds, on
// its own, which processes of the host are ranks of which job, the GPUs
// each uses and the address it talks on, and emits intent.run for each, so
// that nobody has to.
//
// A process is a rank when its environment carries a launcher's variables:
// torchrun/torch elastic (RANK, TORCHELASTIC_RUN_ID, MASTER_ADDR,
// MASTER_PORT), Slurm (SLURM_JOB_ID, SLURM_PROCID), Open MPI and PMIx
// (OMPI_COMM_WORLD_RANK, PMIX_RANK, PMIX_NAMESPACE), DeepSpeed's launcher
// (RANK with CROSS_RANK) and Horovod (HOROVOD_RANK); or, under Kubernetes,
// when it holds a GPU device open in a pod that belongs to a job. The rank
// comes from the innermost launcher (torchrun's RANK under srun), the job
// id from the outermost scheduler, so every host names the job alike:
//
//	k8s/<namespace>/<job>     the pod's job (Kubeflow, JobSet, Volcano,
//	                          LeaderWorkerSet group, batch Job, owner)
//	slurm/<SLURM_JOB_ID>
//	mpi/<PMIX_NAMESPACE>
//	torchrun/<TORCHELASTIC_RUN_ID>  (unless "none", torchrun's default)
//	horovod/<gloo rendezvous addr:port>
//	<launcher>/<MASTER_ADDR>:<MASTER_PORT>
//
// GPUs: the indices of the device nodes (/dev/nvidia<N>) the process holds
// open, else NVIDIA_VISIBLE_DEVICES, else CUDA_VISIBLE_DEVICES; UUIDs are
// mapped to indices through /proc/driver/nvidia/gpus/*/information.
//
// Address: the IPv4 address of the interface NCCL_SOCKET_IFNAME names, or
// of the default route's, in the process's own network namespace, read
// from /proc/<pid>/net/route and /proc/<pid>/net/fib_trie (which show the
// namespace of that pid, a pod's own). Rank 0 of a torch job adds
// MASTER_PORT, where it serves the rendezvous store.
//
// Kubernetes: /proc/<pid>/cgroup gives the pod UID (cgroupfs and systemd
// drivers, cgroup v1 and v2, containerd, CRI-O and Docker layouts); the
// node's pods come from one informer on the API server with the field
// selector spec.nodeName=<node>. It needs pods get, list and watch.
//
// Events:
//
//	intent.run     entity_id pid-<pid>, job_id, value "running", attrs rank,
//	               addr, launcher, gpus, start_time, and pod and namespace
//	               in a pod; when a rank appears, changes, and every
//	               heartbeat
//	process.state  value "exited" when a rank ends
//
// A process is read once, keyed by pid and start time; a rank's open GPUs
// and address are read again until found. What cannot be read is skipped
// and counted once in ark_discovery_skipped_total{reason}.
package jobs
