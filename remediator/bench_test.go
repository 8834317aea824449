package remediator_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/ark-gpu/ark/internal/audit"
	"github.com/ark-gpu/ark/internal/kubetest"
	"github.com/ark-gpu/ark/remediator"
)

func init() {
	// client-go's event broadcaster logs through klog when the control
	// plane stops under it between benchmark rounds; keep the output to
	// the results.
	klog.SetLogger(logr.Discard())
}

const benchPolicy = `
circuit_breaker: {max_tainted_ratio: 1, max_nodes_per_hour: 0}   # off: measure the path, not the brake
routes:
  - matchers: ['fault_class="OtherHardwareFailure"']
    class: OtherHardwareFailure
classes:
  OtherHardwareFailure:
    steps: [{type: taint}, {type: condition}, {type: event}]
`

// benchRig is a real control plane with n nodes and an in-process
// remediator behind an HTTP server.
type benchRig struct {
	url    string
	client kubernetes.Interface
	nodes  []string
	// tainted receives each node's name when the API server's watch shows
	// its taint.
	tainted chan taintSeen
}

type taintSeen struct {
	node string
	at   time.Time
}

func newBenchRig(b *testing.B, n int) *benchRig {
	b.Helper()
	cp := kubetest.Start(b, kubetest.Options{})
	cfg := *cp.Admin
	cfg.QPS, cfg.Burst = 2000, 4000
	client, err := kubernetes.NewForConfig(&cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	rig := &benchRig{client: client, tainted: make(chan taintSeen, n)}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range n {
		name := fmt.Sprintf("gpu-node-%05d", i)
		rig.nodes = append(rig.nodes, name)
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if _, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}},
				metav1.CreateOptions{}); err != nil {
				b.Error(err)
			}
		})
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
	w, err := client.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(w.Stop)
	go func() {
		seen := map[string]bool{}
		for ev := range w.ResultChan() {
			node, ok := ev.Object.(*corev1.Node)
			if !ok || ev.Type != watch.Modified || seen[node.Name] {
				continue
			}
			for _, t := range node.Spec.Taints {
				if t.Key == remediator.TaintKey {
					seen[node.Name] = true
					rig.tainted <- taintSeen{node.Name, time.Now()}
				}
			}
		}
	}()

	policy, err := remediator.Load([]byte(benchPolicy))
	if err != nil {
		b.Fatal(err)
	}
	al, err := audit.Open(audit.Config{Path: filepath.Join(b.TempDir(), "audit.log")})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = al.Close() })
	r, err := remediator.New(remediator.Options{Policy: policy, Client: client, Audit: al, Workers: 64,
		Auth: func(_, _, bearer string) bool { return bearer == "t" }})
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = r.Run(ctx); close(done) }()
	b.Cleanup(func() { cancel(); <-done })
	srv := httptest.NewServer(r)
	b.Cleanup(srv.Close)
	rig.url = srv.URL
	return rig
}

func (rig *benchRig) post(b *testing.B, node string) time.Time {
	body := fmt.Sprintf(`{"version":"4","status":"firing","receiver":"ark","groupKey":"{}","alerts":[{"status":"firing",`+
		`"labels":{"alertname":"GpuHealth","fault_class":"OtherHardwareFailure","node":%q},"fingerprint":%q}]}`, node, node)
	req, _ := http.NewRequest(http.MethodPost, rig.url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer t")
	req.Header.Set("Content-Type", "application/json")
	sent := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Error(err)
		return sent
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b.Errorf("webhook for %s: %s", node, resp.Status)
	}
	return sent
}

// BenchmarkWebhookToTaint measures one alert at a time: from the webhook
// POST to the API server's watch showing the node's taint.
func BenchmarkWebhookToTaint(b *testing.B) {
	const nodes = 500
	rig := newBenchRig(b, nodes)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		if i >= nodes {
			b.Skip("more iterations than nodes; use -benchtime ≤ 500x")
		}
		sent := rig.post(b, rig.nodes[i])
		seen := <-rig.tainted
		lat = append(lat, seen.at.Sub(sent))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}

// BenchmarkQuarantineThroughput sends alerts for many nodes at once, as
// Alertmanager does when a rack fails, and reports nodes tainted per
// second with the circuit breaker off.
func BenchmarkQuarantineThroughput(b *testing.B) {
	const nodes = 1000
	rig := newBenchRig(b, nodes)
	b.ResetTimer()
	var total time.Duration
	done := 0
	for i := range b.N {
		if (i+1)*100 > nodes {
			b.Skip("more iterations than node batches; use -benchtime ≤ 10x")
		}
		batch := rig.nodes[i*100 : (i+1)*100]
		start := time.Now()
		var wg sync.WaitGroup
		sem := make(chan struct{}, 16) // Alertmanager's concurrent notifications
		for _, n := range batch {
			sem <- struct{}{}
			wg.Go(func() { defer func() { <-sem }(); rig.post(b, n) })
		}
		var last time.Time
		for range batch {
			last = (<-rig.tainted).at
		}
		wg.Wait()
		total += last.Sub(start)
		done += len(batch)
	}
	b.StopTimer()
	b.ReportMetric(float64(done)/total.Seconds(), "nodes/s")
}
