package remediator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
)

// Names Ark writes on nodes.
const (
	TaintKey      = "ark.dev/hardware-fault"
	ConditionType = corev1.NodeConditionType("ArkHardwareFault")
	// AnnotationRemediatedAt holds when Ark last acted on the node
	// (RFC3339): the cooldown, shared by replicas and kept over restarts.
	AnnotationRemediatedAt = "ark.dev/remediated-at"
	// AnnotationClass and AnnotationAlert say for what.
	AnnotationClass = "ark.dev/remediation-class"
	AnnotationAlert = "ark.dev/remediation-alert"
)

// ErrCooldown is returned by Claim when the node was acted on inside the
// cooldown.
var ErrCooldown = errors.New("node in cooldown")

// Kube is the remediator's view of the cluster: the few calls it makes,
// each with the RBAC the hub's ClusterRole grants.
type Kube struct {
	c kubernetes.Interface
}

// NewKube wraps a clientset.
func NewKube(c kubernetes.Interface) *Kube { return &Kube{c: c} }

// Claim records on the node that Ark acts on it now, unless it did inside
// cooldown (ErrCooldown, with the time of the last action). When taint is
// set the taint is added in the same write. The write carries the node's
// resourceVersion, so of two replicas racing for one node only one claims
// it; a conflict is retried against the fresh node, which then shows the
// winner's annotation.
func (k *Kube) Claim(ctx context.Context, node string, class Class, alert string, cooldown time.Duration,
	now time.Time, taint bool) (last time.Time, err error) {
	err = retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		n, err := k.c.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if t, ok := remediatedAt(n); ok && now.Sub(t) < cooldown {
			last = t
			return ErrCooldown
		}
		at, cl := now.UTC().Format(time.RFC3339Nano), string(class)
		ann := map[string]*string{AnnotationRemediatedAt: &at, AnnotationClass: &cl, AnnotationAlert: &alert}
		if taint {
			setTaint(n, class)
		}
		return k.patchNode(ctx, n, ann, taint)
	})
	return last, err
}

// patchNode writes a JSON merge patch of n carrying the resourceVersion
// read, so a write racing another fails with a conflict instead of
// overwriting it: the annotations given (nil values delete) and, when
// taints is set, n's taints. Taints have no merge key: the list is written
// whole, which the precondition makes safe.
func (k *Kube) patchNode(ctx context.Context, n *corev1.Node, annotations map[string]*string, taints bool) error {
	type meta struct {
		ResourceVersion string             `json:"resourceVersion"`
		Annotations     map[string]*string `json:"annotations,omitempty"`
	}
	type spec struct {
		Taints []corev1.Taint `json:"taints"`
	}
	body := struct {
		Metadata meta  `json:"metadata"`
		Spec     *spec `json:"spec,omitempty"`
	}{Metadata: meta{ResourceVersion: n.ResourceVersion, Annotations: annotations}}
	if taints {
		body.Spec = &spec{Taints: n.Spec.Taints}
		if body.Spec.Taints == nil {
			body.Spec.Taints = []corev1.Taint{}
		}
	}
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	_, err = k.c.CoreV1().Nodes().Patch(ctx, n.Name, types.MergePatchType, b, metav1.PatchOptions{})
	return err
}

// remediatedAt reads the cooldown annotation.
func remediatedAt(n *corev1.Node) (time.Time, bool) {
	s, ok := n.Annotations[AnnotationRemediatedAt]
	if !ok {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	return t, err == nil
}

// taintValue returns the value of Ark's taint on n.
func taintValue(n *corev1.Node) (string, bool) {
	for _, t := range n.Spec.Taints {
		if t.Key == TaintKey {
			return t.Value, true
		}
	}
	return "", false
}

// hasTaint reports whether n carries Ark's taint.
func hasTaint(n *corev1.Node) bool {
	_, ok := taintValue(n)
	return ok
}

// transient reports whether an API error is worth retrying at once.
func transient(err error) bool {
	return apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) || apierrors.IsTooManyRequests(err) ||
		apierrors.IsServiceUnavailable(err) || apierrors.IsInternalError(err) || apierrors.IsUnexpectedServerError(err)
}

// setTaint adds or updates Ark's taint, leaving every other taint alone.
// It reports whether the node changed.
func setTaint(n *corev1.Node, class Class) bool {
	want := corev1.Taint{Key: TaintKey, Value: string(class), Effect: corev1.TaintEffectNoSchedule}
	for i, t := range n.Spec.Taints {
		if t.Key == TaintKey && t.Effect == corev1.TaintEffectNoSchedule {
			if t.Value == want.Value {
				return false
			}
			n.Spec.Taints[i].Value = want.Value
			return true
		}
	}
	now := metav1.Now()
	want.TimeAdded = &now
	n.Spec.Taints = append(n.Spec.Taints, want)
	return true
}

// Taint adds ark.dev/hardware-fault=<class>:NoSchedule, merged with the
// node's other taints, retrying on conflicts.
func (k *Kube) Taint(ctx context.Context, node string, class Class) error {
	return k.updateTaints(ctx, node, nil, func(n *corev1.Node) bool { return setTaint(n, class) })
}

// Untaint removes Ark's taint and its cooldown annotations.
func (k *Kube) Untaint(ctx context.Context, node string) error {
	gone := map[string]*string{AnnotationRemediatedAt: nil, AnnotationClass: nil, AnnotationAlert: nil}
	return k.updateTaints(ctx, node, gone, func(n *corev1.Node) bool {
		n.Spec.Taints = slices.DeleteFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == TaintKey })
		return true // the annotations go even when the taint is already gone
	})
}

// hasCondition reports whether n carries Ark's condition.
func hasCondition(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == ConditionType {
			return true
		}
	}
	return false
}

// updateTaints reads the node, lets mutate change its taints and, when it
// reports a change, writes them with annotations, retrying on conflicts.
func (k *Kube) updateTaints(ctx context.Context, node string, annotations map[string]*string, mutate func(*corev1.Node) bool) error {
	return retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		n, err := k.c.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !mutate(n) {
			return nil
		}
		return k.patchNode(ctx, n, annotations, true)
	})
}

// SetCondition sets the ArkHardwareFault condition through nodes/status
// with a strategic merge patch: conditions merge by type, so the kubelet's
// conditions are left alone and no read is needed.
func (k *Kube) SetCondition(ctx context.Context, node string, status corev1.ConditionStatus, reason, msg string) error {
	now := metav1.Now()
	patch := map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{{
		Type: ConditionType, Status: status, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now,
	}}}}
	b, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	_, err = k.c.CoreV1().Nodes().Patch(ctx, node, types.StrategicMergePatchType, b, metav1.PatchOptions{}, "status")
	return err
}

// PodsToEvict lists the node's pods that eviction applies to: not
// DaemonSet pods (the controller would put them straight back and they
// tolerate the taint), not mirror pods (static, owned by the kubelet), not
// finished ones.
func (k *Kube) PodsToEvict(ctx context.Context, node string) ([]corev1.Pod, error) {
	list, err := k.c.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String(),
	})
	if err != nil {
		return nil, fmt.Errorf("listing the pods of %s: %w", node, err)
	}
	var out []corev1.Pod
	for _, p := range list.Items {
		if skipEviction(&p) != "" {
			continue
		}
		out = append(out, p)
	}
	return out, nil
}

// skipEviction says why a pod is left alone, or "".
func skipEviction(p *corev1.Pod) string {
	if _, ok := p.Annotations[corev1.MirrorPodAnnotationKey]; ok {
		return "mirror pod"
	}
	for _, o := range p.OwnerReferences {
		if o.Kind == "DaemonSet" && o.Controller != nil && *o.Controller {
			return "DaemonSet pod"
		}
	}
	if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return "finished"
	}
	if p.DeletionTimestamp != nil {
		return "terminating"
	}
	return ""
}

// EvictResult is the outcome of evicting one pod.
type EvictResult struct {
	Namespace, Name string
	// Attempts is how many Eviction calls were made; Blocked how many a
	// PodDisruptionBudget refused (429).
	Attempts, Blocked int
	Err               error
}

// Evict evicts pods through the policy/v1 Eviction API, never deleting a
// pod directly. A 429 (a PDB allows no disruption now) is retried with
// backoff until deadline; a pod already gone counts as evicted.
func (k *Kube) Evict(ctx context.Context, pods []corev1.Pod, ev Eviction) []EvictResult {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(ev.Timeout))
	defer cancel()
	out := make([]EvictResult, len(pods))
	var wg sync.WaitGroup
	for i := range pods {
		wg.Go(func() { out[i] = k.evictOne(ctx, &pods[i], ev) })
	}
	wg.Wait()
	return out
}

func (k *Kube) evictOne(ctx context.Context, p *corev1.Pod, ev Eviction) EvictResult {
	r := EvictResult{Namespace: p.Namespace, Name: p.Name}
	delay := time.Duration(ev.InitialBackoff)
	for {
		r.Attempts++
		err := k.c.PolicyV1().Evictions(p.Namespace).Evict(ctx, &policyv1.Eviction{
			ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace},
		})
		switch {
		case err == nil, apierrors.IsNotFound(err):
			r.Err = nil
			return r
		case apierrors.IsTooManyRequests(err) && strings.Contains(err.Error(), "disruption budget"):
			r.Blocked++
			r.Err = fmt.Errorf("blocked by a PodDisruptionBudget after %d attempts: %w", r.Attempts, err)
		case apierrors.IsTooManyRequests(err):
			// The API server's own throttling: retried the same way, but
			// not a PDB's doing.
			r.Err = fmt.Errorf("throttled by the API server after %d attempts: %w", r.Attempts, err)
		default:
			r.Err = err
			return r
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return r
		case <-t.C:
		}
		delay = min(delay*2, time.Duration(ev.MaxBackoff))
	}
}

// Count is a node count for the circuit breaker.
type Count struct {
	Nodes, Tainted int
	// Recent is how many nodes Ark acted on in the last hour.
	Recent int
	// Self is the node asked about, as the fresh list shows it.
	Self *corev1.Node
}

// CountNodes counts the cluster's nodes, those carrying Ark's taint and
// those Ark acted on since `since`, and returns node self among them.
func (k *Kube) CountNodes(ctx context.Context, self string, since time.Time) (Count, error) {
	var c Count
	// A quorum read: the cache behind ResourceVersion "0" may not show the
	// taint written a moment ago, and the breaker would let one too many by.
	list, err := k.c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return c, fmt.Errorf("listing nodes: %w", err)
	}
	for i := range list.Items {
		countNode(&c, &list.Items[i], since)
		if list.Items[i].Name == self {
			c.Self = &list.Items[i]
		}
	}
	return c, nil
}

func countNode(c *Count, n *corev1.Node, since time.Time) {
	c.Nodes++
	if hasTaint(n) {
		c.Tainted++
	}
	if t, ok := remediatedAt(n); ok && !t.Before(since) {
		c.Recent++
	}
}

// NodeExists reports whether the node is known to the API server.
func (k *Kube) NodeExists(ctx context.Context, node string) (bool, error) {
	_, err := k.c.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	switch {
	case err == nil:
		return true, nil
	case apierrors.IsNotFound(err):
		return false, nil
	}
	return false, err
}
