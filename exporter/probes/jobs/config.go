package jobs

import (
	"errors"
	"fmt"
	"time"
)

// Kubernetes modes.
const (
	KubeAuto = "auto" // in-cluster when the agent runs in a pod, or the kubeconfig when given
	KubeOn   = "on"
	KubeOff  = "off"
)

// Config is the probe's section of the agent config:
//
//	probes:
//	  jobs:
//	    interval: 2s
//	    kubernetes: auto
type Config struct {
	// Interval between scans of /proc (default 2s).
	Interval time.Duration `yaml:"interval" json:"interval"`
	// Heartbeat re-emits an unchanged rank's intent.run this often
	// (default 60s), well inside the graph's TTL.
	Heartbeat time.Duration `yaml:"heartbeat" json:"heartbeat"`
	// DevicePrefix is the path of the GPU device nodes without their index
	// (default /dev/nvidia): an open file whose target is the prefix and
	// digits is that GPU.
	DevicePrefix string `yaml:"device_prefix" json:"device_prefix"`
	// MaxEnviron is the largest environment read, in bytes (default
	// 256 KiB); a larger one is skipped and counted.
	MaxEnviron int `yaml:"max_environ_bytes" json:"max_environ_bytes"`
	// Kubernetes is auto, on or off (default auto).
	Kubernetes string `yaml:"kubernetes" json:"kubernetes"`
	// Kubeconfig, when set, is used instead of the in-cluster config.
	Kubeconfig string `yaml:"kubeconfig" json:"kubeconfig"`
	// PodGrace is how long a rank in a pod the informer has not seen yet
	// waits for it before being reported under its launcher's job id
	// (default 30s).
	PodGrace time.Duration `yaml:"pod_grace" json:"pod_grace"`
}

func (c *Config) defaults() {
	if c.Interval == 0 {
		c.Interval = 2 * time.Second
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = time.Minute
	}
	if c.DevicePrefix == "" {
		c.DevicePrefix = "/dev/nvidia"
	}
	if c.MaxEnviron == 0 {
		c.MaxEnviron = 256 << 10
	}
	if c.Kubernetes == "" {
		c.Kubernetes = KubeAuto
	}
	if c.PodGrace == 0 {
		c.PodGrace = 30 * time.Second
	}
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	if c.Interval < 0 {
		errs = append(errs, fmt.Errorf("jobs: interval must be positive, got %s", c.Interval))
	}
	if c.Heartbeat < 0 {
		errs = append(errs, fmt.Errorf("jobs: heartbeat must be positive, got %s", c.Heartbeat))
	}
	if c.MaxEnviron < 0 {
		errs = append(errs, fmt.Errorf("jobs: max_environ_bytes must be positive, got %d", c.MaxEnviron))
	}
	if c.PodGrace < 0 {
		errs = append(errs, fmt.Errorf("jobs: pod_grace must be positive, got %s", c.PodGrace))
	}
	switch c.Kubernetes {
	case KubeAuto, KubeOn, KubeOff:
	default:
		errs = append(errs, fmt.Errorf("jobs: kubernetes must be auto, on or off, got %q", c.Kubernetes))
	}
	return errors.Join(errs...)
}
