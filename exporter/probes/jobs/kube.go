package jobs

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Well-known pod labels that name a training job and a pod's place in it.
const (
	LabelKubeflowJob      = "training.kubeflow.org/job-name"
	LabelKubeflowIndex    = "training.kubeflow.org/replica-index"
	LabelKubeflowType     = "training.kubeflow.org/replica-type"
	LabelJobSet           = "jobset.sigs.k8s.io/jobset-name"
	LabelVolcanoJob       = "volcano.sh/job-name"
	AnnotationVolcanoTask = "volcano.sh/task-index"
	LabelLWS              = "leaderworkerset.sigs.k8s.io/name"
	LabelLWSGroup         = "leaderworkerset.sigs.k8s.io/group-index"
	LabelLWSWorker        = "leaderworkerset.sigs.k8s.io/worker-index"
	LabelBatchJob         = "batch.kubernetes.io/job-name"
	LabelBatchIndex       = "batch.kubernetes.io/job-completion-index"
	LabelLegacyJob        = "job-name"
)

// PodJob is the job a pod belongs to.
type PodJob struct {
	Namespace, Pod string
	// JobID is k8s/<namespace>/<job>, "" when the pod is in no job.
	JobID string
	// Rank is the pod's index in the job from its labels, -1 when none:
	// a process's own RANK, when set, wins.
	Rank int
}

// JobOfPod resolves a pod to its job through the labels of the training
// operators (Kubeflow, JobSet, Volcano, LeaderWorkerSet, the batch Job's
// completion index), then through its controller owner reference.
func JobOfPod(p *corev1.Pod) PodJob {
	l, a := p.Labels, p.Annotations
	pj := PodJob{Namespace: p.Namespace, Pod: p.Name, Rank: -1}
	job := ""
	switch {
	case l[LabelKubeflowJob] != "":
		job = l[LabelKubeflowJob]
		pj.Rank = index(l[LabelKubeflowIndex])
		// PyTorchJob: the master is rank 0 and worker i is rank i+1 (the
		// operator's RANK, when the process has it, is used instead).
		if t := l[LabelKubeflowType]; pj.Rank >= 0 && strings.EqualFold(t, "worker") {
			pj.Rank++
		}
	case l[LabelJobSet] != "":
		job = l[LabelJobSet]
		pj.Rank = index(l[LabelBatchIndex])
	case l[LabelVolcanoJob] != "":
		job = l[LabelVolcanoJob]
		pj.Rank = index(a[AnnotationVolcanoTask])
	case l[LabelLWS] != "":
		// Each group of a LeaderWorkerSet is one replica: its own job.
		job = l[LabelLWS]
		if g := l[LabelLWSGroup]; g != "" {
			job += "-" + g
		}
		pj.Rank = index(l[LabelLWSWorker])
	case l[LabelBatchJob] != "":
		job = l[LabelBatchJob]
		pj.Rank = index(l[LabelBatchIndex])
	case l[LabelLegacyJob] != "":
		job = l[LabelLegacyJob]
		pj.Rank = index(l[LabelBatchIndex])
	default:
		if o := metav1.GetControllerOf(p); o != nil {
			job = o.Name
		}
	}
	if job != "" {
		pj.JobID = "k8s/" + p.Namespace + "/" + job
	}
	return pj
}

func index(s string) int {
	if s == "" {
		return -1
	}
	i, err := strconv.Atoi(s)
	if err != nil || i < 0 {
		return -1
	}
	return i
}

// podIndexUID indexes the informer's pods by UID.
const podIndexUID = "uid"

// Pods is this node's pods, from the API server through an informer
// watching pods with spec.nodeName=<node>: one list and one watch, never a
// request per process.
type Pods struct {
	factory  informers.SharedInformerFactory
	informer cache.SharedIndexInformer
}

// NewPods builds the informer; Run starts it.
func NewPods(cs kubernetes.Interface, node string, resync time.Duration) (*Pods, error) {
	f := informers.NewSharedInformerFactoryWithOptions(cs, resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = "spec.nodeName=" + node
		}))
	inf := f.Core().V1().Pods().Informer()
	if err := inf.SetTransform(trimPod); err != nil {
		return nil, fmt.Errorf("pod informer: %w", err)
	}
	if err := inf.AddIndexers(cache.Indexers{podIndexUID: func(obj any) ([]string, error) {
		if p, ok := obj.(*corev1.Pod); ok {
			return []string{string(p.UID)}, nil
		}
		return nil, nil
	}}); err != nil {
		return nil, fmt.Errorf("pod informer: %w", err)
	}
	return &Pods{factory: f, informer: inf}, nil
}

// trimPod keeps what JobOfPod reads: the cache holds every pod of the node.
func trimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
		Name: p.Name, Namespace: p.Namespace, UID: p.UID,
		Labels: p.Labels, Annotations: p.Annotations, OwnerReferences: p.OwnerReferences,
		ResourceVersion: p.ResourceVersion,
	}}, nil
}

// Run runs the informer until ctx ends and waits for its goroutines.
func (p *Pods) Run(ctx context.Context) {
	p.factory.Start(ctx.Done())
	<-ctx.Done()
	p.factory.Shutdown()
}

// Synced says whether the first list has arrived.
func (p *Pods) Synced() bool { return p.informer.HasSynced() }

// Lookup finds the pod with uid among the node's pods.
func (p *Pods) Lookup(uid string) (PodJob, bool) {
	objs, err := p.informer.GetIndexer().ByIndex(podIndexUID, uid)
	if err != nil || len(objs) == 0 {
		return PodJob{}, false
	}
	pod, ok := objs[0].(*corev1.Pod)
	if !ok {
		return PodJob{}, false
	}
	return JobOfPod(pod), true
}
