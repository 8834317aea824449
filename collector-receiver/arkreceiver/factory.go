package arkreceiver

import (
	"context"
	"sync"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/receiver"

	"github.com/ark-gpu/ark/collector-receiver/arkreceiver/internal/metadata"
)

// NewFactory returns the factory of the ark receiver.
func NewFactory() receiver.Factory {
	f := &factory{receivers: map[*Config]*arkReceiver{}}
	return receiver.NewFactory(
		metadata.Type,
		createDefaultConfig,
		receiver.WithMetrics(f.createMetrics, metadata.MetricsStability),
		receiver.WithTraces(f.createTraces, metadata.TracesStability),
	)
}

// factory hands the metrics and traces pipelines that name one receiver
// the same instance, so its inputs are read once.
type factory struct {
	mu        sync.Mutex
	receivers map[*Config]*arkReceiver
}

func (f *factory) get(cfg component.Config, set receiver.Settings) (*arkReceiver, error) {
	c := cfg.(*Config)
	f.mu.Lock()
	defer f.mu.Unlock()
	if r, ok := f.receivers[c]; ok {
		return r, nil
	}
	r, err := newReceiver(c, set)
	if err != nil {
		return nil, err
	}
	f.receivers[c] = r
	return r, nil
}

// shared wraps the instance so that its Shutdown also forgets it.
type shared struct {
	*arkReceiver
	f   *factory
	cfg *Config
}

func (s shared) Shutdown(ctx context.Context) error {
	s.f.mu.Lock()
	delete(s.f.receivers, s.cfg)
	s.f.mu.Unlock()
	return s.arkReceiver.Shutdown(ctx)
}

func (f *factory) createMetrics(_ context.Context, set receiver.Settings, cfg component.Config, next consumer.Metrics) (receiver.Metrics, error) {
	r, err := f.get(cfg, set)
	if err != nil {
		return nil, err
	}
	r.metrics = next
	return shared{r, f, cfg.(*Config)}, nil
}

func (f *factory) createTraces(_ context.Context, set receiver.Settings, cfg component.Config, next consumer.Traces) (receiver.Traces, error) {
	r, err := f.get(cfg, set)
	if err != nil {
		return nil, err
	}
	r.traces = next
	return shared{r, f, cfg.(*Config)}, nil
}
