package exporter

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ark-gpu/ark/event"
)

// Bus fans events out to subscribers: the local graph, the metrics, later
// the hub forwarder and the rules. Publish never blocks: a subscriber whose
// buffer is full loses the event, and the loss is counted in
// ark_events_dropped_total{subscriber}. A slow subscriber never stalls a
// probe or the other subscribers.
type Bus struct {
	subs    []*subscriber
	dropped *prometheus.CounterVec
	started atomic.Bool
}

type subscriber struct {
	name    string
	ch      chan event.Event
	handle  func([]event.Event)
	dropped prometheus.Counter
}

// maxBatch bounds how many queued events a subscriber handles at once.
const maxBatch = 512

// NewBus returns a Bus whose drop counter is registered on reg (nil: not
// registered).
func NewBus(reg prometheus.Registerer) *Bus {
	b := &Bus{dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ark_events_dropped_total",
		Help: "Events a subscriber of the agent's bus lost because its buffer was full.",
	}, []string{"subscriber"})}
	if reg != nil {
		reg.MustRegister(b.dropped)
	}
	return b
}

// Subscribe adds a subscriber with a buffer of size events; handle gets
// batches of events in order. It must be called before Run.
func (b *Bus) Subscribe(name string, size int, handle func([]event.Event)) {
	if b.started.Load() {
		panic("exporter: Bus.Subscribe after Run")
	}
	if size <= 0 {
		size = 1
	}
	b.subs = append(b.subs, &subscriber{
		name: name, ch: make(chan event.Event, size), handle: handle,
		dropped: b.dropped.WithLabelValues(name),
	})
}

// Publish copies ev to every subscriber without blocking and reports
// whether all of them took it. Strings are immutable and shared; the attrs
// are copied because decoders reuse their storage.
func (b *Bus) Publish(ev *event.Event) bool {
	c := *ev
	if len(ev.Attrs) > 0 {
		c.Attrs = append(event.Attrs(nil), ev.Attrs...)
	}
	ok := true
	for _, s := range b.subs {
		select {
		case s.ch <- c:
		default:
			s.dropped.Inc()
			ok = false
		}
	}
	return ok
}

// Run delivers events to subscribers until ctx ends, then drains what is
// queued and returns.
func (b *Bus) Run(ctx context.Context) {
	b.started.Store(true)
	var wg sync.WaitGroup
	for _, s := range b.subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.run(ctx)
		}()
	}
	wg.Wait()
}

func (s *subscriber) run(ctx context.Context) {
	batch := make([]event.Event, 0, maxBatch)
	for {
		select {
		case <-ctx.Done():
			// Deliver what was accepted before stopping.
			for {
				batch = batch[:0]
				for len(batch) < maxBatch {
					select {
					case ev := <-s.ch:
						batch = append(batch, ev)
						continue
					default:
					}
					break
				}
				if len(batch) == 0 {
					return
				}
				s.handle(batch)
			}
		case ev := <-s.ch:
			batch = append(batch[:0], ev)
		fill:
			for len(batch) < maxBatch {
				select {
				case ev := <-s.ch:
					batch = append(batch, ev)
				default:
					break fill
				}
			}
			s.handle(batch)
			clear(batch) // let the events' strings go
		}
	}
}
