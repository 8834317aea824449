// Package podresources attributes GPUs to Kubernetes containers. It polls
// the kubelet's PodResources gRPC API (List) over its unix socket and keeps
// a map from device id (a GPU or MIG UUID) to the pod and container the
// device is assigned to; Client implements probe.PodLookup.
package podresources

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/ark-gpu/ark/exporter/probe"
)

const (
	// DefaultRefreshInterval is how often List is called.
	DefaultRefreshInterval = 10 * time.Second
	// DefaultCallTimeout bounds one List call.
	DefaultCallTimeout = 5 * time.Second
	// DefaultResourceName is the NVIDIA device plugin's resource.
	DefaultResourceName = "nvidia.com/gpu"

	// maxRecvMsgSize matches the kubelet's own pod-resources client: a node
	// with many pods answers List with more than gRPC's 4 MiB default.
	maxRecvMsgSize = 16 << 20
)

// Option configures a Client.
type Option func(*Client)

// WithRefreshInterval sets how often List is called; non-positive values
// keep the default (10s).
func WithRefreshInterval(d time.Duration) Option {
	return func(c *Client) {
		if d > 0 {
			c.interval = d
		}
	}
}

// WithCallTimeout bounds each List call; non-positive values keep the
// default (5s).
func WithCallTimeout(d time.Duration) Option {
	return func(c *Client) {
		if d > 0 {
			c.timeout = d
		}
	}
}

// WithResourceNames replaces the exact resource names whose devices are
// kept (default ["nvidia.com/gpu"]). Resources whose name contains "gpu"
// or starts with "nvidia.com/mig-" (the device plugin's mixed MIG strategy)
// are always kept.
func WithResourceNames(names ...string) Option {
	return func(c *Client) {
		c.resources = make(map[string]struct{}, len(names))
		for _, n := range names {
			c.resources[n] = struct{}{}
		}
	}
}

// WithLogger sets the logger; the default discards.
func WithLogger(l *slog.Logger) Option {
	return func(c *Client) {
		if l != nil {
			c.logger = l
		}
	}
}

// WithRegisterer registers the client's metrics (ark_podresources_*) with r.
func WithRegisterer(r prometheus.Registerer) Option {
	return func(c *Client) { c.reg = r }
}

// Client keeps the kubelet's device assignments fresh and answers
// LookupDevice from them. Build it with New, start Run once; LookupDevice
// is safe for concurrent use at any time and reports nothing before the
// first successful List.
type Client struct {
	socketPath string
	interval   time.Duration
	timeout    time.Duration
	resources  map[string]struct{}
	logger     *slog.Logger
	reg        prometheus.Registerer

	absentOnce sync.Once

	mu sync.RWMutex
	// exact is keyed by the device id as the kubelet reports it; folded by
	// its lower-case form, for callers whose UUIDs differ in case.
	exact  map[string]probe.PodRef
	folded map[string]probe.PodRef

	errs        prometheus.Counter
	lastSuccess prometheus.Gauge
	devices     prometheus.Gauge
}

var _ probe.PodLookup = (*Client)(nil)

// New returns a client for the kubelet pod-resources socket at socketPath
// (normally /var/lib/kubelet/pod-resources/kubelet.sock). It does not touch
// the socket; Run does.
func New(socketPath string, opts ...Option) *Client {
	c := &Client{
		socketPath: socketPath,
		interval:   DefaultRefreshInterval,
		timeout:    DefaultCallTimeout,
		resources:  map[string]struct{}{DefaultResourceName: {}},
		logger:     slog.New(slog.DiscardHandler),
		errs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ark_podresources_errors_total",
			Help: "Failed List calls to the kubelet PodResources API.",
		}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ark_podresources_last_success_timestamp_seconds",
			Help: "Unix time of the last successful List call to the kubelet PodResources API.",
		}),
		devices: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ark_podresources_devices",
			Help: "Devices currently attributed to a pod from the kubelet PodResources API.",
		}),
	}
	for _, o := range opts {
		o(c)
	}
	if c.reg != nil {
		for _, m := range []prometheus.Collector{c.errs, c.lastSuccess, c.devices} {
			if err := c.reg.Register(m); err != nil {
				// New has no error to return, and pod attribution works
				// without its own metrics, so say it and go on.
				c.logger.Error("registering pod-resources metric", "err", err)
			}
		}
	}
	return c
}

// LookupDevice returns the container the device is assigned to. deviceID is
// matched exactly first, then ignoring case.
func (c *Client) LookupDevice(deviceID string) (probe.PodRef, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if ref, ok := c.exact[deviceID]; ok {
		return ref, true
	}
	ref, ok := c.folded[strings.ToLower(deviceID)]
	return ref, ok
}

// Run calls List now and then every refresh interval until ctx ends, when
// it returns nil. When the socket does not exist (not a Kubernetes node) it
// returns an error wrapping probe.ErrNoData at once. A failed List keeps the
// last good map, counts ark_podresources_errors_total and is retried at the
// next tick. Run must not be called twice at the same time.
func (c *Client) Run(ctx context.Context) error {
	if _, err := os.Stat(c.socketPath); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			c.absentOnce.Do(func() {
				c.logger.Info("kubelet pod-resources socket absent, pod attribution off", "path", c.socketPath)
			})
			return fmt.Errorf("pod-resources socket %s: %w", c.socketPath, probe.ErrNoData)
		}
		return fmt.Errorf("checking pod-resources socket: %w", err)
	}
	target, err := c.target()
	if err != nil {
		return err
	}
	// Reconnecting slower than we poll only serves stale data for longer
	// after a kubelet restart, so cap gRPC's backoff at the interval.
	bo := backoff.DefaultConfig
	bo.MaxDelay = c.interval
	bo.BaseDelay = min(bo.BaseDelay, c.interval)
	conn, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: bo, MinConnectTimeout: c.timeout}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsgSize)),
	)
	if err != nil {
		return fmt.Errorf("creating pod-resources client for %s: %w", target, err)
	}
	defer func() {
		if err := conn.Close(); err != nil {
			c.logger.Debug("closing pod-resources connection", "err", err)
		}
	}()
	api := podresourcesapi.NewPodResourcesListerClient(conn)

	t := time.NewTicker(c.interval)
	defer t.Stop()
	failing := false
	for {
		err := c.refresh(ctx, api)
		switch {
		case err != nil && ctx.Err() != nil:
			// Canceled mid-call: not the kubelet's fault.
		case err != nil:
			c.errs.Inc()
			// Warn on the first failure only: a kubelet down for an hour
			// should not log 360 warnings.
			if !failing {
				c.logger.Warn("listing pod resources failed, keeping last assignments", "path", c.socketPath, "err", err)
			} else {
				c.logger.Debug("listing pod resources failed again", "err", err)
			}
			failing = true
		case failing:
			c.logger.Info("listing pod resources recovered", "path", c.socketPath)
			failing = false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// target is the gRPC address of the socket; unix:// needs an absolute path.
func (c *Client) target() (string, error) {
	p, err := filepath.Abs(c.socketPath)
	if err != nil {
		return "", fmt.Errorf("resolving pod-resources socket path %s: %w", c.socketPath, err)
	}
	return "unix://" + p, nil
}

// refresh calls List once and, on success, replaces the map.
func (c *Client) refresh(ctx context.Context, api podresourcesapi.PodResourcesListerClient) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	resp, err := api.List(ctx, &podresourcesapi.ListPodResourcesRequest{})
	if err != nil {
		return fmt.Errorf("listing pod resources: %w", err)
	}
	exact, folded := c.index(resp)
	c.mu.Lock()
	c.exact, c.folded = exact, folded
	c.mu.Unlock()
	c.devices.Set(float64(len(exact)))
	c.lastSuccess.SetToCurrentTime()
	return nil
}

// index builds the device maps from a List response. A device listed for
// two containers (it should not be) keeps the first.
func (c *Client) index(resp *podresourcesapi.ListPodResourcesResponse) (exact, folded map[string]probe.PodRef) {
	exact = make(map[string]probe.PodRef)
	folded = make(map[string]probe.PodRef)
	for _, pod := range resp.GetPodResources() {
		for _, ctr := range pod.GetContainers() {
			for _, dev := range ctr.GetDevices() {
				if !c.matches(dev.GetResourceName()) {
					continue
				}
				ref := probe.PodRef{Pod: pod.GetName(), Namespace: pod.GetNamespace(), Container: ctr.GetName()}
				for _, id := range dev.GetDeviceIds() {
					if id == "" {
						continue
					}
					if prev, dup := exact[id]; dup {
						c.logger.Debug("device listed twice, keeping the first", "device", id, "first", prev, "second", ref)
						continue
					}
					exact[id] = ref
					if _, dup := folded[strings.ToLower(id)]; !dup {
						folded[strings.ToLower(id)] = ref
					}
				}
			}
		}
	}
	return exact, folded
}

// matches reports whether devices of the resource are kept.
func (c *Client) matches(resource string) bool {
	if _, ok := c.resources[resource]; ok {
		return true
	}
	r := strings.ToLower(resource)
	return strings.Contains(r, "gpu") || strings.HasPrefix(r, "nvidia.com/mig-")
}
