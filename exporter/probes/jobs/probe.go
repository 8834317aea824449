package jobs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ark-gpu/ark/exporter/probe"
)

func init() {
	probe.Register(probe.Spec{
		Name:    "jobs",
		Help:    "job and rank discovery from launcher variables, GPU device files and Kubernetes pods",
		Default: true,
		New:     New,
	})
}

// Probe scans /proc for ranks and emits their intent.run.
type Probe struct {
	env  probe.Env
	cfg  Config
	m    *metrics
	pods *Pods // nil without Kubernetes
	now  func() time.Time
}

// New builds the probe from env.
func New(env probe.Env) (probe.Probe, error) {
	var cfg Config
	if env.Config != nil {
		if err := env.Config(&cfg); err != nil {
			return nil, err
		}
	}
	cfg.defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if !supported {
		return nil, fmt.Errorf("jobs: needs Linux's /proc: %w", probe.ErrNoData)
	}
	if _, err := os.Stat(env.Paths.Proc("self", "stat")); err != nil {
		return nil, fmt.Errorf("jobs: %s unreadable: %w", env.Paths.ProcFS, probe.ErrNoData)
	}
	m, err := newMetrics(env.Registerer)
	if err != nil {
		return nil, err
	}
	if env.Logger == nil {
		env.Logger = slog.New(slog.DiscardHandler)
	}
	p := &Probe{env: env, cfg: cfg, m: m, now: time.Now}
	rc, err := kubeConfig(cfg)
	if err != nil {
		return nil, err
	}
	if rc != nil {
		cs, err := kubernetes.NewForConfig(rc)
		if err != nil {
			return nil, fmt.Errorf("jobs: kubernetes client: %w", err)
		}
		if p.pods, err = NewPods(cs, env.NodeName, 0); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// kubeConfig: the kubeconfig when given, else the in-cluster config; nil
// when Kubernetes is off or, in auto mode, absent.
func kubeConfig(cfg Config) (*rest.Config, error) {
	if cfg.Kubernetes == KubeOff {
		return nil, nil
	}
	if cfg.Kubeconfig != "" {
		rc, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("jobs: kubeconfig %s: %w", cfg.Kubeconfig, err)
		}
		return rc, nil
	}
	rc, err := rest.InClusterConfig()
	switch {
	case err == nil:
		return rc, nil
	case errors.Is(err, rest.ErrNotInCluster) && cfg.Kubernetes == KubeAuto:
		return nil, nil
	}
	return nil, fmt.Errorf("jobs: kubernetes in-cluster config: %w", err)
}

// Run scans until ctx ends; the pod informer, when there is one, runs as
// long and is stopped before Run returns.
func (p *Probe) Run(ctx context.Context, sink probe.Sink) error {
	var pods podSource
	var wg sync.WaitGroup
	if p.pods != nil {
		ictx, cancel := context.WithCancel(ctx)
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.pods.Run(ictx)
		}()
		defer func() {
			cancel()
			wg.Wait()
		}()
		pods = p.pods
	}
	s := newScanner(p.env.Paths, p.cfg, pods, func(reason string) {
		p.m.skipped.WithLabelValues(reason).Inc()
	})
	if p.env.GPUs != nil {
		s.gpuResolve = p.env.GPUs.GPUIndexByPCI
	}
	return probe.Poll(ctx, p.env, p.cfg.Interval, func(context.Context) error {
		n, err := s.scan(p.now(), sink)
		if err != nil {
			return fmt.Errorf("jobs: scanning %s: %w", p.env.Paths.ProcFS, err)
		}
		p.m.ranks.Set(float64(n))
		return nil
	})
}
