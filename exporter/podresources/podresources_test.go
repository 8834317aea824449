package podresources

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/ark-gpu/ark/exporter/probe"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	gpuA = "GPU-3c1f2a4b-0000-1111-2222-333344445555"
	gpuB = "GPU-7d8e9f00-aaaa-bbbb-cccc-ddddeeeeffff"
	gpuC = "GPU-0a0b0c0d-1234-5678-9abc-def012345678"
	migA = "MIG-5c3a1e2f-9b7d-5a4e-8f6c-1d2e3f4a5b6c"
)

// lister is a kubelet PodResources server whose List answer tests change.
type lister struct {
	podresourcesapi.UnimplementedPodResourcesListerServer

	mu    sync.Mutex
	resp  *podresourcesapi.ListPodResourcesResponse
	calls atomic.Int64
}

func (l *lister) List(context.Context, *podresourcesapi.ListPodResourcesRequest) (*podresourcesapi.ListPodResourcesResponse, error) {
	l.calls.Add(1)
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.resp, nil
}

func (l *lister) set(resp *podresourcesapi.ListPodResourcesResponse) {
	l.mu.Lock()
	l.resp = resp
	l.mu.Unlock()
}

// kubelet serves a lister on a unix socket, as the kubelet does.
type kubelet struct {
	t    *testing.T
	path string
	api  *lister
	srv  *grpc.Server
	done chan struct{}
}

func startKubelet(t *testing.T, resp *podresourcesapi.ListPodResourcesResponse) *kubelet {
	t.Helper()
	k := &kubelet{t: t, path: filepath.Join(t.TempDir(), "kubelet.sock"), api: &lister{}}
	k.api.set(resp)
	k.start()
	t.Cleanup(k.stop)
	return k
}

func (k *kubelet) start() {
	k.t.Helper()
	lis, err := net.Listen("unix", k.path)
	if err != nil {
		k.t.Fatalf("listening on %s: %v", k.path, err)
	}
	k.srv = grpc.NewServer()
	podresourcesapi.RegisterPodResourcesListerServer(k.srv, k.api)
	k.done = make(chan struct{})
	go func(srv *grpc.Server, done chan struct{}) {
		defer close(done)
		_ = srv.Serve(lis)
	}(k.srv, k.done)
}

// stop closes the server and its listener, which removes the socket file.
func (k *kubelet) stop() {
	if k.srv == nil {
		return
	}
	k.srv.Stop()
	<-k.done
	k.srv = nil
}

// runClient runs c until the test ends and checks Run returns nil then.
func runClient(t *testing.T, c *Client) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("Run returned %v after cancel, want nil", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func pod(ns, name string, ctrs ...*podresourcesapi.ContainerResources) *podresourcesapi.PodResources {
	return &podresourcesapi.PodResources{Name: name, Namespace: ns, Containers: ctrs}
}

func ctr(name string, devs ...*podresourcesapi.ContainerDevices) *podresourcesapi.ContainerResources {
	return &podresourcesapi.ContainerResources{Name: name, Devices: devs}
}

func devs(resource string, ids ...string) *podresourcesapi.ContainerDevices {
	return &podresourcesapi.ContainerDevices{ResourceName: resource, DeviceIds: ids}
}

func list(pods ...*podresourcesapi.PodResources) *podresourcesapi.ListPodResourcesResponse {
	return &podresourcesapi.ListPodResourcesResponse{PodResources: pods}
}

// twoTrainers is a node with two training pods, one with two containers,
// plus a pod holding a non-GPU device.
func twoTrainers() *podresourcesapi.ListPodResourcesResponse {
	return list(
		pod("ml", "trainer-0",
			ctr("worker", devs("nvidia.com/gpu", gpuA)),
			ctr("sidecar", devs("nvidia.com/gpu", gpuB)),
		),
		pod("research", "trainer-1",
			ctr("main", devs("nvidia.com/gpu", gpuC), devs("example.com/foo", "foo-0"))),
	)
}

func newTestClient(k *kubelet, reg prometheus.Registerer, opts ...Option) *Client {
	opts = append([]Option{
		WithRefreshInterval(20 * time.Millisecond),
		WithCallTimeout(time.Second),
		WithRegisterer(reg),
	}, opts...)
	return New(k.path, opts...)
}

func found(c *Client, id string) func() bool {
	return func() bool { _, ok := c.LookupDevice(id); return ok }
}

func gone(c *Client, id string) func() bool {
	return func() bool { _, ok := c.LookupDevice(id); return !ok }
}

func TestLookupNamesThePodAndContainerOfEachGPU(t *testing.T) {
	k := startKubelet(t, twoTrainers())
	reg := prometheus.NewPedanticRegistry()
	c := newTestClient(k, reg)
	if _, ok := c.LookupDevice(gpuA); ok {
		t.Fatal("LookupDevice found a device before the first List")
	}
	runClient(t, c)
	eventually(t, "first List", found(c, gpuA))

	for _, tc := range []struct {
		id   string
		want probe.PodRef
	}{
		{gpuA, probe.PodRef{Pod: "trainer-0", Namespace: "ml", Container: "worker"}},
		{gpuB, probe.PodRef{Pod: "trainer-0", Namespace: "ml", Container: "sidecar"}},
		{gpuC, probe.PodRef{Pod: "trainer-1", Namespace: "research", Container: "main"}},
		{strings.ToLower(gpuC), probe.PodRef{Pod: "trainer-1", Namespace: "research", Container: "main"}},
		{strings.ToUpper(gpuB), probe.PodRef{Pod: "trainer-0", Namespace: "ml", Container: "sidecar"}},
	} {
		got, ok := c.LookupDevice(tc.id)
		if !ok || got != tc.want {
			t.Errorf("LookupDevice(%q) = %+v, %v; want %+v, true", tc.id, got, ok, tc.want)
		}
	}
	if got, ok := c.LookupDevice("GPU-not-on-this-node"); ok {
		t.Errorf("LookupDevice(unknown) = %+v, true; want false", got)
	}
	if got := testutil.ToFloat64(c.devices); got != 3 {
		t.Errorf("ark_podresources_devices = %v, want 3", got)
	}
	if got := testutil.ToFloat64(c.lastSuccess); got < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("ark_podresources_last_success_timestamp_seconds = %v, want about now", got)
	}
	if got := testutil.ToFloat64(c.errs); got != 0 {
		t.Errorf("ark_podresources_errors_total = %v, want 0", got)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP ark_podresources_devices Devices currently attributed to a pod from the kubelet PodResources API.
# TYPE ark_podresources_devices gauge
ark_podresources_devices 3
# HELP ark_podresources_errors_total Failed List calls to the kubelet PodResources API.
# TYPE ark_podresources_errors_total counter
ark_podresources_errors_total 0
`), "ark_podresources_devices", "ark_podresources_errors_total"); err != nil {
		t.Error(err)
	}
}

func TestResourceSelection(t *testing.T) {
	resp := list(pod("ml", "p",
		ctr("c",
			devs("example.com/foo", "foo-0"),
			devs("amd.com/gpu", "amd-0"),
			devs("nvidia.com/mig-1g.10gb", migA),
			devs("nvidia.com/gpu", gpuA),
		)))
	for _, tc := range []struct {
		name    string
		opts    []Option
		present []string
		absent  []string
	}{
		{
			name:    "default keeps GPU and MIG resources, ignores others",
			present: []string{gpuA, migA, "amd-0"},
			absent:  []string{"foo-0"},
		},
		{
			name:    "configured resource is kept",
			opts:    []Option{WithResourceNames("nvidia.com/gpu", "example.com/foo")},
			present: []string{gpuA, migA, "amd-0", "foo-0"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := startKubelet(t, resp)
			c := newTestClient(k, prometheus.NewRegistry(), tc.opts...)
			runClient(t, c)
			eventually(t, "first List", found(c, gpuA))
			for _, id := range tc.present {
				if _, ok := c.LookupDevice(id); !ok {
					t.Errorf("LookupDevice(%q) not found, want found", id)
				}
			}
			for _, id := range tc.absent {
				if ref, ok := c.LookupDevice(id); ok {
					t.Errorf("LookupDevice(%q) = %+v, want not found", id, ref)
				}
			}
		})
	}
}

func TestMIGDeviceIsStoredAsReported(t *testing.T) {
	// The device plugin's single MIG strategy lists MIG devices under
	// nvidia.com/gpu.
	k := startKubelet(t, list(pod("ml", "mig-job", ctr("main", devs("nvidia.com/gpu", migA)))))
	c := newTestClient(k, prometheus.NewRegistry())
	runClient(t, c)
	eventually(t, "first List", found(c, migA))
	want := probe.PodRef{Pod: "mig-job", Namespace: "ml", Container: "main"}
	if got, _ := c.LookupDevice(migA); got != want {
		t.Errorf("LookupDevice(%q) = %+v, want %+v", migA, got, want)
	}
}

func TestDeletedPodDisappearsAtNextRefresh(t *testing.T) {
	k := startKubelet(t, twoTrainers())
	c := newTestClient(k, prometheus.NewRegistry())
	runClient(t, c)
	eventually(t, "first List", found(c, gpuC))

	k.api.set(list(pod("ml", "trainer-0",
		ctr("worker", devs("nvidia.com/gpu", gpuA)),
		ctr("sidecar", devs("nvidia.com/gpu", gpuB)))))
	eventually(t, "trainer-1's GPU to go", gone(c, gpuC))
	if _, ok := c.LookupDevice(strings.ToLower(gpuC)); ok {
		t.Error("deleted pod's GPU still found ignoring case")
	}
	if _, ok := c.LookupDevice(gpuA); !ok {
		t.Error("remaining pod's GPU lost")
	}
	eventually(t, "devices gauge 2", func() bool { return testutil.ToFloat64(c.devices) == 2 })

	k.api.set(list())
	eventually(t, "all GPUs to go", gone(c, gpuA))
	eventually(t, "devices gauge 0", func() bool { return testutil.ToFloat64(c.devices) == 0 })
}

func TestKubeletDownKeepsLastMapAndRecovers(t *testing.T) {
	k := startKubelet(t, twoTrainers())
	c := newTestClient(k, prometheus.NewRegistry())
	runClient(t, c)
	eventually(t, "first List", found(c, gpuA))
	before := testutil.ToFloat64(c.lastSuccess)

	k.stop()
	eventually(t, "errors counted", func() bool { return testutil.ToFloat64(c.errs) >= 2 })
	if got, ok := c.LookupDevice(gpuC); !ok || got.Pod != "trainer-1" {
		t.Errorf("LookupDevice(%q) = %+v, %v while kubelet down; want last known trainer-1", gpuC, got, ok)
	}
	if got := testutil.ToFloat64(c.devices); got != 3 {
		t.Errorf("ark_podresources_devices = %v while kubelet down, want 3", got)
	}

	// The kubelet comes back with trainer-1 gone.
	k.api.set(list(pod("ml", "trainer-0", ctr("worker", devs("nvidia.com/gpu", gpuA)))))
	calls := k.api.calls.Load()
	k.start()
	eventually(t, "List after restart", func() bool { return k.api.calls.Load() > calls })
	eventually(t, "map from restarted kubelet", gone(c, gpuC))
	if _, ok := c.LookupDevice(gpuA); !ok {
		t.Error("GPU of surviving pod lost after restart")
	}
	if after := testutil.ToFloat64(c.lastSuccess); after < before {
		t.Errorf("last success went back from %v to %v", before, after)
	}
}

func TestMissingSocketIsNoData(t *testing.T) {
	c := New(filepath.Join(t.TempDir(), "kubelet.sock"))
	errc := make(chan error, 1)
	go func() { errc <- c.Run(context.Background()) }()
	select {
	case err := <-errc:
		if !errors.Is(err, probe.ErrNoData) {
			t.Fatalf("Run = %v, want ErrNoData", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return at once without a socket")
	}
}

func TestRunStopsWhenContextEnds(t *testing.T) {
	k := startKubelet(t, twoTrainers())
	c := newTestClient(k, prometheus.NewRegistry(), WithRefreshInterval(time.Hour))
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	eventually(t, "first List", found(c, gpuA))
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("Run = %v after cancel, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestLookupIsSafeDuringRefresh(t *testing.T) {
	k := startKubelet(t, twoTrainers())
	c := newTestClient(k, prometheus.NewRegistry(), WithRefreshInterval(time.Millisecond))
	runClient(t, c)
	eventually(t, "first List", found(c, gpuA))
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 2000 {
				if _, ok := c.LookupDevice(gpuB); !ok {
					t.Error("LookupDevice lost a GPU during refresh")
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestDuplicateRegistrationIsNotFatal(t *testing.T) {
	reg := prometheus.NewRegistry()
	New("unused", WithRegisterer(reg))
	c := New("unused", WithRegisterer(reg))
	if c == nil {
		t.Fatal("New returned nil")
	}
}

func BenchmarkLookupDevice(b *testing.B) {
	c := New("unused")
	c.exact, c.folded = c.index(nodeOf(8, 8))
	id := fmt.Sprintf("GPU-%08d-0000-0000-0000-000000000003", 5)
	lower := strings.ToLower(id)
	b.Run("exact", func(b *testing.B) {
		for b.Loop() {
			if _, ok := c.LookupDevice(id); !ok {
				b.Fatal("not found")
			}
		}
	})
	b.Run("other-case", func(b *testing.B) {
		for b.Loop() {
			if _, ok := c.LookupDevice(lower); !ok {
				b.Fatal("not found")
			}
		}
	})
}

func BenchmarkIndex(b *testing.B) {
	// A busy node: 110 pods (the kubelet's default maximum), most without GPUs.
	resp := nodeOf(8, 1)
	for i := range 102 {
		resp.PodResources = append(resp.PodResources, pod("default", fmt.Sprintf("web-%d", i), ctr("app")))
	}
	c := New("unused")
	b.ReportAllocs()
	for b.Loop() {
		c.index(resp)
	}
}

// nodeOf is a List answer with pods pods of gpus GPUs each.
func nodeOf(pods, gpus int) *podresourcesapi.ListPodResourcesResponse {
	resp := list()
	for p := range pods {
		ids := make([]string, gpus)
		for g := range gpus {
			ids[g] = fmt.Sprintf("GPU-%08d-0000-0000-0000-%012d", p, g)
		}
		resp.PodResources = append(resp.PodResources, pod("ml", fmt.Sprintf("trainer-%d", p), ctr("main", devs("nvidia.com/gpu", ids...))))
	}
	return resp
}
