package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/ark-gpu/ark/internal/kubetest"
)

// applyManifest creates the objects of a multi-document YAML file as the
// admin, as `kubectl apply` would on an empty cluster.
func applyManifest(t *testing.T, c kubernetes.Interface, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
		if strings.TrimSpace(regexp.MustCompile(`(?m)^#.*$`).ReplaceAllString(doc, "")) == "" {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		switch o := obj.(type) {
		case *corev1.Namespace:
			_, err = c.CoreV1().Namespaces().Create(ctx, o, metav1.CreateOptions{})
		case *corev1.ServiceAccount:
			_, err = c.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRole:
			_, err = c.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRoleBinding:
			_, err = c.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.Role:
			_, err = c.RbacV1().Roles(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.RoleBinding:
			_, err = c.RbacV1().RoleBindings(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		default:
			t.Fatalf("%s: no create for %T", path, obj)
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("%s: creating %T: %v", path, obj, err)
		}
	}
}

const testPolicy = `
cooldown: 5m
circuit_breaker:
  max_tainted_ratio: 0.15   # 3 of the 20 nodes
eviction:
  timeout: 90s
  initial_backoff: 200ms
  max_backoff: 1s
routes:
  - matchers: ['fault_class="OtherHardwareFailure"']
    class: OtherHardwareFailure
  - matchers: ['fault_class="RdmaLinkDown"']
    class: RdmaLinkDown
  - matchers: ['alertname="XidFatal"']
    class: PersistentXidError
  - matchers: ['alertname="RankStalledOnNetwork"']
    class: RdmaLinkDown
classes:
  PersistentXidError:
    steps:
      - type: taint
      - type: condition
      - type: event
      - type: agent_action
        action: Signal
        params: {signal: SIGUSR1}
      - type: wait
        duration: 1s
      - type: evict
  RdmaLinkDown:
    steps:
      - type: taint
      - type: event
    on_resolved: untaint
  OtherHardwareFailure:
    steps:
      - type: taint
      - type: condition
      - type: event
`

// alertPayload is an Alertmanager v4 webhook body with one alert.
func alertPayload(status, alertname string, labels map[string]string) string {
	ls := map[string]string{"alertname": alertname, "severity": "critical"}
	for k, v := range labels {
		ls[k] = v
	}
	h := fnv.New64a()
	_, _ = fmt.Fprint(h, ls) // fmt prints maps sorted
	fp := fmt.Sprintf("%016x", h.Sum64())
	a := map[string]any{"status": status, "labels": ls, "annotations": map[string]string{"summary": alertname},
		"startsAt": time.Now().Add(-time.Minute).UTC().Format(time.RFC3339), "endsAt": "0001-01-01T00:00:00Z",
		"generatorURL": "http://prometheus/graph", "fingerprint": fp}
	b, _ := json.Marshal(map[string]any{"version": "4", "groupKey": "{}:{alertname=\"" + alertname + "\"}",
		"truncatedAlerts": 0, "status": status, "receiver": "ark", "groupLabels": map[string]string{"alertname": alertname},
		"commonLabels": ls, "commonAnnotations": map[string]string{}, "externalURL": "http://alertmanager", "alerts": []any{a}})
	return string(b)
}

// postAlert sends a webhook as Alertmanager's http_config would.
func postAlert(addr, token, body string) (int, string, error) {
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/api/v1/alerts", strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// auditEntries reads a JSONL audit log.
func auditEntries(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("%s: %v: %s", path, err, sc.Text())
		}
		out = append(out, m)
	}
	return out
}

// countAudit counts entries with action on node ("*": any) and result
// (when set; any outcome, not the intent written before it, when not).
func countAudit(entries []map[string]any, action, node, result string) int {
	n := 0
	for _, e := range entries {
		target, _ := e["target_node"].(string) // left out of the line when empty
		if e["action"] == action && (node == "*" || target == node) &&
			(result == "" && e["result"] != "intent" || e["result"] == result) {
			n++
		}
	}
	return n
}

func hasArkTaint(n *corev1.Node) bool {
	for _, t := range n.Spec.Taints {
		if t.Key == "ark.dev/hardware-fault" {
			return true
		}
	}
	return false
}

func TestRemediation(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Kubernetes control plane, two hubs and four agents")
	}
	cp := kubetest.Start(t, kubetest.Options{})
	admin := cp.Client
	ctx := context.Background()
	applyManifest(t, admin, "../../deploy/hub/rbac.yaml")
	// The hub runs as its ServiceAccount: RBAC limits it to deploy/hub/rbac.yaml.
	kubeconfig := cp.Kubeconfig(t, cp.ServiceAccountConfig(t, "ark-system", "ark-hub-sa"))

	for i := 1; i <= 20; i++ {
		cp.CreateNode(t, fmt.Sprintf("node-%d", i), nil)
	}
	// node-3 runs the job's pod, an agent DaemonSet pod and one replica of
	// a service whose PDB wants one replica available.
	yes := true
	cp.CreatePod(t, "default", "train-0", "node-3", map[string]string{"app": "train"}, nil)
	cp.CreatePod(t, "default", "ark-agent-x7", "node-3", map[string]string{"app": "ark-agent"},
		&metav1.OwnerReference{APIVersion: "apps/v1", Kind: "DaemonSet", Name: "ark-agent", UID: "0b8a4c7e-1", Controller: &yes})
	cp.CreatePod(t, "default", "web-0", "node-3", map[string]string{"app": "web"}, nil)
	cp.CreatePDB(t, "default", "web", map[string]string{"app": "web"}, 1)
	cp.CreatePod(t, "default", "cache-0", "node-9", map[string]string{"app": "cache"}, nil)

	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("s3cret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	policy := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policy, []byte(testPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(arkBin, "hub", "--check-config", "--remediation.policy", policy).CombinedOutput()
	if err != nil {
		t.Fatalf("ark hub --check-config: %v\n%s", err, out)
	}

	// The incident: node-3's gpu-6 fell off the bus (XID 79); every rank
	// of the job stalls. A real process on node-3 is one more rank.
	files := splitByHost(t, "../../testdata/scenarios/xid79-4node.jsonl", dir)
	pid, got := startRank(t, dir, files["node-3"])

	hubAudit := filepath.Join(dir, "hub-audit.log")
	hubArgs := func(addr, audit string, extra ...string) []string {
		return append([]string{"hub", "--web.listen-address", addr, "--token-file", token, "--log.level", "debug",
			"--remediation.policy", policy, "--kubeconfig", kubeconfig, "--remediation.audit-file", audit,
			"--leader-elect.namespace", "ark-system", "--leader-elect.lease-duration", "3s",
			"--leader-elect.renew-deadline", "2s", "--leader-elect.retry-period", "500ms"}, extra...)
	}
	hubAddr := freePort(t)
	hub := start(t, "hub", hubArgs(hubAddr, hubAudit)...)
	startAgents(t, dir, hubAddr, token, files)
	eventually(t, 30*time.Second, "the hub names node-3/gpu-6", func() error { return faultyGPUFirst(hubAddr) })
	eventually(t, 10*time.Second, "the hub knows the test's rank", func() error {
		resp, err := http.Get(fmt.Sprintf("http://%s/api/v1/ps?node=node-3&pid=%d", hubAddr, pid))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(b), fmt.Sprintf(`"pid":%d`, pid)) {
			return fmt.Errorf("not yet: %s", b)
		}
		return nil
	})

	// send posts until the hub leads (503 before) and returns the status.
	send := func(addr, body string) (int, string) {
		t.Helper()
		var code int
		var resp string
		eventually(t, 20*time.Second, "a webhook answer from the leader", func() error {
			var err error
			code, resp, err = postAlert(addr, "s3cret-token", body)
			if err != nil {
				return err
			}
			if code == http.StatusServiceUnavailable {
				return fmt.Errorf("%d %s", code, resp)
			}
			return nil
		})
		return code, resp
	}
	node := func(name string) *corev1.Node {
		n, err := admin.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	tainted := func() []string {
		list, err := admin.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for i := range list.Items {
			if hasArkTaint(&list.Items[i]) {
				out = append(out, list.Items[i].Name)
			}
		}
		return out
	}

	// untaint clears nodes as a human would, to make room under the breaker.
	untaint := func(names ...string) {
		t.Helper()
		for _, n := range names {
			nd := node(n)
			nd.Spec.Taints = nil
			if _, err := admin.CoreV1().Nodes().Update(ctx, nd, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}

	t.Run("bad input is refused and changes nothing", func(t *testing.T) {
		for _, tc := range []struct {
			name, body, token string
			code              int
			want              string
		}{
			{"no token", alertPayload("firing", "XidFatal", map[string]string{"node": "node-3"}), "-", 401, "credentials"},
			{"not JSON", "<html>alerts</html>", "", 400, "invalid JSON"},
			{"version 3", strings.Replace(alertPayload("firing", "XidFatal", map[string]string{"node": "node-3"}), `"version":"4"`, `"version":"3"`, 1), "", 400, `unsupported webhook version "3"`},
			{"no node label", alertPayload("firing", "XidFatal", map[string]string{"gpu": "6"}), "", 422, "no node label"},
			{"unknown node", alertPayload("firing", "XidFatal", map[string]string{"node": "node-404"}), "", 422, `unknown node "node-404"`},
			{"20 MB", `{"version":"4","status":"firing","alerts":[{"labels":{"x":"` + strings.Repeat("a", 20<<20) + `"}}]}`, "", 413, "body larger than"},
		} {
			token := "s3cret-token"
			if tc.token == "-" {
				token = ""
			}
			var code int
			var body string
			eventually(t, 20*time.Second, tc.name, func() error {
				var err error
				code, body, err = postAlert(hubAddr, token, tc.body)
				if err == nil && code == http.StatusServiceUnavailable {
					return fmt.Errorf("not leading yet")
				}
				return err
			})
			if code != tc.code || !strings.Contains(strings.ReplaceAll(body, `\"`, `"`), tc.want) {
				t.Errorf("%s: %d %s; want %d with %q", tc.name, code, body, tc.code, tc.want)
			}
		}
		if got := tainted(); len(got) != 0 {
			t.Fatalf("bad input tainted %v", got)
		}
		entries := auditEntries(t, hubAudit)
		if countAudit(entries, "reject", "node-404", "failure") != 1 || countAudit(entries, "reject", "", "failure") != 1 {
			t.Fatalf("rejected alerts not audited: %v", entries)
		}
	})

	t.Run("an XID 79 alert taints, conditions, signals the ranks and evicts, respecting the PDB", func(t *testing.T) {
		code, resp := send(hubAddr, alertPayload("firing", "XidFatal", map[string]string{"node": "node-3", "xid": "79"}))
		if code != http.StatusOK || !strings.Contains(resp, `"outcome":"queued"`) {
			t.Fatalf("webhook: %d %s", code, resp)
		}
		eventually(t, 10*time.Second, "node-3 tainted with the condition", func() error {
			n := node("node-3")
			if !hasArkTaint(n) || n.Annotations["ark.dev/remediated-at"] == "" {
				return fmt.Errorf("taints %v annotations %v", n.Spec.Taints, n.Annotations)
			}
			for _, c := range n.Status.Conditions {
				if c.Type == "ArkHardwareFault" && c.Status == corev1.ConditionTrue && c.Reason == "PersistentXidError" {
					return nil
				}
			}
			return fmt.Errorf("conditions %v", n.Status.Conditions)
		})
		waitUSR1(t, got, 10*time.Second, "the rank on node-3 got SIGUSR1 through its agent")
		agentAudit, _ := os.ReadFile(filepath.Join(dir, "node-3.audit"))
		if !strings.Contains(string(agentAudit), `"action":"Signal"`) || !strings.Contains(string(agentAudit), "ark-remediator") ||
			!strings.Contains(string(agentAudit), fmt.Sprintf(`"target_pid":%d`, pid)) {
			t.Errorf("node-3 agent's audit log: %s", agentAudit)
		}
		eventually(t, 10*time.Second, "an Event on node-3", func() error {
			evs, err := admin.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=node-3"})
			if err != nil {
				return err
			}
			for _, e := range evs.Items {
				if e.Reason == "ArkHardwareFault" && e.Type == corev1.EventTypeWarning && strings.Contains(e.Message, "PersistentXidError") {
					return nil
				}
			}
			return fmt.Errorf("events %v", evs.Items)
		})
		evicted := func(name string) bool {
			p, err := admin.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
			return apierrors.IsNotFound(err) || (err == nil && p.DeletionTimestamp != nil)
		}
		eventually(t, 15*time.Second, "train-0 evicted", func() error {
			if !evicted("train-0") {
				return fmt.Errorf("train-0 still running")
			}
			return nil
		})
		// web-0 is held by its PDB (429): still there a few retries later.
		time.Sleep(2 * time.Second)
		if evicted("web-0") {
			t.Fatal("web-0 evicted although its PDB allows no disruption")
		}
		if evicted("ark-agent-x7") {
			t.Fatal("a DaemonSet pod was evicted")
		}
		// A second replica elsewhere: the budget allows one disruption.
		cp.CreatePod(t, "default", "web-1", "node-5", map[string]string{"app": "web"}, nil)
		eventually(t, 30*time.Second, "web-0 evicted once the PDB allows it", func() error {
			if !evicted("web-0") {
				return fmt.Errorf("web-0 still running")
			}
			return nil
		})
		eventually(t, 10*time.Second, "the evict step audited", func() error {
			if countAudit(auditEntries(t, hubAudit), "evict", "node-3", "success") != 1 {
				return fmt.Errorf("no evict entry yet")
			}
			return nil
		})
		entries := auditEntries(t, hubAudit)
		for _, a := range []string{"taint", "condition", "event", "agent:Signal"} {
			if countAudit(entries, a, "node-3", "success") != 1 {
				t.Errorf("audit: %d successful %s entries for node-3, want 1", countAudit(entries, a, "node-3", "success"), a)
			}
		}
		if m := metrics(t, hubAddr); !strings.Contains(m, `ark_remediation_evictions_total{result="evicted_after_retry"} 1`) ||
			!strings.Contains(m, `ark_remediation_actions_total{action="taint",class="PersistentXidError",result="success"} 1`) {
			t.Errorf("metrics:\n%s", grep(m, "ark_remediation_"))
		}
	})

	t.Run("a stalled rank elsewhere is a symptom: suppressed, and the root is in cooldown", func(t *testing.T) {
		code, resp := send(hubAddr, alertPayload("firing", "RankStalledOnNetwork", map[string]string{"instance": "node-1:9464"}))
		if code != http.StatusOK {
			t.Fatalf("webhook: %d %s", code, resp)
		}
		code, resp = send(hubAddr, alertPayload("firing", "XidFatal", map[string]string{"node": "node-3", "xid": "79"}))
		if code != http.StatusOK {
			t.Fatalf("repeat webhook: %d %s", code, resp)
		}
		eventually(t, 10*time.Second, "suppression and cooldown audited", func() error {
			entries := auditEntries(t, hubAudit)
			// Both alerts name node-3 and come at once: one finds it in
			// cooldown, the other perhaps still locked by the first.
			nothingNew := countAudit(entries, "cooldown", "node-3", "success") + countAudit(entries, "in_progress", "node-3", "success")
			if countAudit(entries, "suppress", "node-1", "success") != 1 || nothingNew != 2 {
				return fmt.Errorf("audit: %v", entries[len(entries)-3:])
			}
			return nil
		})
		if hasArkTaint(node("node-1")) {
			t.Fatal("node-1 tainted for a symptom of node-3's fault")
		}
		if n := countAudit(auditEntries(t, hubAudit), "taint", "node-3", ""); n != 1 {
			t.Fatalf("node-3 tainted %d times", n)
		}
	})

	t.Run("the circuit breaker stops at the threshold", func(t *testing.T) {
		for _, n := range []string{"node-6", "node-7", "node-8"} {
			if code, resp := send(hubAddr, alertPayload("firing", "DiskSmart", map[string]string{"node": n, "fault_class": "OtherHardwareFailure"})); code != http.StatusOK {
				t.Fatalf("webhook: %d %s", code, resp)
			}
			// One at a time, so it is node-8 that finds the breaker open.
			eventually(t, 10*time.Second, n+" handled", func() error {
				entries := auditEntries(t, hubAudit)
				if countAudit(entries, "event", n, "") == 0 && countAudit(entries, "circuit_breaker", n, "") == 0 {
					return fmt.Errorf("not yet")
				}
				return nil
			})
		}
		eventually(t, 10*time.Second, "the breaker refuses the fourth node", func() error {
			if countAudit(auditEntries(t, hubAudit), "circuit_breaker", "node-8", "failure") == 0 {
				return fmt.Errorf("no breaker entry yet; tainted %v", tainted())
			}
			return nil
		})
		if got := tainted(); len(got) != 3 {
			t.Fatalf("tainted %v, want 3 of 20 (max_tainted_ratio 0.15)", got)
		}
		var refused map[string]any
		for _, e := range auditEntries(t, hubAudit) {
			if e["action"] == "circuit_breaker" {
				refused = e
			}
		}
		if refused["result"] != "failure" || !strings.Contains(refused["details"].(string), "circuit breaker open: 3 of 20 nodes") {
			t.Fatalf("breaker entry: %v", refused)
		}
	})

	t.Run("dry-run mutates nothing", func(t *testing.T) {
		dryAddr := freePort(t)
		dryAudit := filepath.Join(dir, "dry-audit.log")
		// Its own policy lifts the breaker (node-3, 6 and 7 are tainted), so
		// every step runs as a dry run.
		dryPolicy := filepath.Join(dir, "dry-policy.yaml")
		if err := os.WriteFile(dryPolicy, []byte(strings.Replace(testPolicy, "max_tainted_ratio: 0.15", "max_tainted_ratio: 1", 1)), 0o644); err != nil {
			t.Fatal(err)
		}
		start(t, "dry-hub", append(hubArgs(dryAddr, dryAudit, "--remediation.dry-run", "--leader-elect=false"),
			"--remediation.policy", dryPolicy)...)
		before := node("node-9")
		code, resp := send(dryAddr, alertPayload("firing", "XidFatal", map[string]string{"node": "node-9"}))
		if code != http.StatusOK || !strings.Contains(resp, `"dry_run":true`) {
			t.Fatalf("webhook: %d %s", code, resp)
		}
		eventually(t, 10*time.Second, "the dry run audited to the evict step", func() error {
			entries := auditEntries(t, dryAudit)
			for _, a := range []string{"taint", "condition", "event", "evict"} {
				if countAudit(entries, a, "node-9", "dry_run") != 1 {
					return fmt.Errorf("no dry_run %s entry: %v", a, entries)
				}
			}
			return nil
		})
		eventually(t, 10*time.Second, "the dry run's Event on node-9", func() error {
			evs, err := admin.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=node-9"})
			if err != nil {
				return err
			}
			if len(evs.Items) != 1 || !strings.Contains(evs.Items[0].Message, "dry run") {
				return fmt.Errorf("events %v", evs.Items)
			}
			return nil
		})
		time.Sleep(500 * time.Millisecond)
		after := node("node-9")
		if hasArkTaint(after) || after.ResourceVersion != before.ResourceVersion {
			t.Fatalf("dry run changed node-9: %v %v", after.Spec.Taints, after.Annotations)
		}
		if _, err := admin.CoreV1().Pods("default").Get(ctx, "cache-0", metav1.GetOptions{}); err != nil {
			t.Fatalf("dry run evicted cache-0: %v", err)
		}
		for _, e := range auditEntries(t, dryAudit) {
			if e["result"] == "success" {
				t.Errorf("dry-run audit entry with result success: %v", e)
			}
		}
	})

	parent := t
	t.Run("a restarted hub honours the cooldown from the annotation", func(t *testing.T) {
		hub.kill()
		_ = hub.cmd.Wait()
		hub = start(parent, "hub-2", hubArgs(hubAddr, hubAudit)...)
		before := countAudit(auditEntries(t, hubAudit), "cooldown", "node-3", "")
		code, resp := send(hubAddr, alertPayload("firing", "XidFatal", map[string]string{"node": "node-3", "xid": "79"}))
		if code != http.StatusOK {
			t.Fatalf("webhook: %d %s", code, resp)
		}
		eventually(t, 10*time.Second, "cooldown after the restart", func() error {
			if countAudit(auditEntries(t, hubAudit), "cooldown", "node-3", "") != before+1 {
				return fmt.Errorf("no new cooldown entry")
			}
			return nil
		})
		if n := countAudit(auditEntries(t, hubAudit), "taint", "node-3", ""); n != 1 {
			t.Fatalf("node-3 tainted %d times", n)
		}
	})

	t.Run("two replicas act once", func(t *testing.T) {
		untaint("node-6", "node-7") // room under the breaker
		secondAddr := freePort(t)
		secondAudit := filepath.Join(dir, "hub-b-audit.log")
		start(parent, "hub-b", hubArgs(secondAddr, secondAudit)...)
		eventually(t, 10*time.Second, "hub-b up", func() error {
			_, err := http.Get("http://" + secondAddr + "/healthz")
			return err
		})
		body := alertPayload("firing", "DiskSmart", map[string]string{"node": "node-10", "fault_class": "OtherHardwareFailure"})
		var wg sync.WaitGroup
		codes := make([]int, 2)
		for i, addr := range []string{hubAddr, secondAddr} {
			wg.Go(func() { codes[i], _, _ = postAlert(addr, "s3cret-token", body) })
		}
		wg.Wait()
		ok := 0
		for _, c := range codes {
			if c == http.StatusOK {
				ok++
			} else if c != http.StatusServiceUnavailable {
				t.Fatalf("webhook codes %v", codes)
			}
		}
		if ok != 1 {
			t.Fatalf("webhook codes %v: want exactly one leader to accept", codes)
		}
		eventually(t, 10*time.Second, "node-10 tainted", func() error {
			if !hasArkTaint(node("node-10")) {
				return fmt.Errorf("not yet")
			}
			return nil
		})
		// Alertmanager retries the 503 against the other replica: still once.
		for _, addr := range []string{hubAddr, secondAddr} {
			_, _, _ = postAlert(addr, "s3cret-token", body)
		}
		time.Sleep(time.Second)
		taints := countAudit(auditEntries(t, hubAudit), "taint", "node-10", "") + countAudit(auditEntries(t, secondAudit), "taint", "node-10", "")
		if taints != 1 {
			t.Fatalf("node-10 tainted %d times by two replicas", taints)
		}
		leaders := 0
		for _, addr := range []string{hubAddr, secondAddr} {
			if strings.Contains(metrics(t, addr), "\nark_remediation_leader 1\n") {
				leaders++
			}
		}
		if leaders != 1 {
			t.Fatalf("%d replicas report leading", leaders)
		}
	})

	t.Run("without leader election, the claim's resourceVersion lets one of two replicas act", func(t *testing.T) {
		var addrs, audits []string
		for i := range 2 {
			addr, auditFile := freePort(t), filepath.Join(dir, fmt.Sprintf("free-%d-audit.log", i))
			start(t, fmt.Sprintf("free-hub-%d", i), hubArgs(addr, auditFile, "--leader-elect=false")...)
			addrs, audits = append(addrs, addr), append(audits, auditFile)
		}
		for _, a := range addrs {
			eventually(t, 10*time.Second, "hub up", func() error { _, err := http.Get("http://" + a + "/healthz"); return err })
		}
		body := alertPayload("firing", "DiskSmart", map[string]string{"node": "node-12", "fault_class": "OtherHardwareFailure"})
		var wg sync.WaitGroup
		for _, a := range addrs {
			wg.Go(func() {
				if code, resp, err := postAlert(a, "s3cret-token", body); err != nil || code != http.StatusOK {
					t.Errorf("webhook: %d %s %v", code, resp, err)
				}
			})
		}
		wg.Wait()
		eventually(t, 10*time.Second, "one taint and one cooldown", func() error {
			var taints, cooldowns int
			for _, f := range audits {
				e := auditEntries(t, f)
				taints += countAudit(e, "taint", "node-12", "success")
				cooldowns += countAudit(e, "cooldown", "node-12", "")
			}
			if taints != 1 || cooldowns != 1 {
				return fmt.Errorf("%d taints, %d cooldowns", taints, cooldowns)
			}
			return nil
		})
	})

	t.Run("a resolved link alert removes the taint and the cooldown", func(t *testing.T) {
		untaint("node-10", "node-12") // room under the breaker
		labels := map[string]string{"node": "node-11", "fault_class": "RdmaLinkDown"}
		if code, resp := send(hubAddr, alertPayload("firing", "IbLinkDown", labels)); code != http.StatusOK {
			t.Fatalf("webhook: %d %s", code, resp)
		}
		eventually(t, 10*time.Second, "node-11 tainted", func() error {
			if !hasArkTaint(node("node-11")) {
				return fmt.Errorf("not yet")
			}
			return nil
		})
		if code, resp := send(hubAddr, alertPayload("resolved", "IbLinkDown", labels)); code != http.StatusOK {
			t.Fatalf("webhook: %d %s", code, resp)
		}
		eventually(t, 10*time.Second, "node-11 untainted", func() error {
			n := node("node-11")
			if hasArkTaint(n) || n.Annotations["ark.dev/remediated-at"] != "" {
				return fmt.Errorf("taints %v annotations %v", n.Spec.Taints, n.Annotations)
			}
			return nil
		})
		// A resolved alert of another class leaves node-3's taint alone.
		if code, resp := send(hubAddr, alertPayload("resolved", "IbLinkDown", map[string]string{"node": "node-3", "fault_class": "RdmaLinkDown"})); code != http.StatusOK {
			t.Fatalf("webhook: %d %s", code, resp)
		}
		eventually(t, 10*time.Second, "the resolution audited", func() error {
			if countAudit(auditEntries(t, hubAudit), "resolved", "node-3", "success") != 1 {
				return fmt.Errorf("not yet")
			}
			return nil
		})
		if !hasArkTaint(node("node-3")) {
			t.Fatal("a resolved link alert removed node-3's XID taint")
		}
	})
}

func metrics(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func grep(s, substr string) string {
	var out bytes.Buffer
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out.WriteString(l + "\n")
		}
	}
	return out.String()
}
