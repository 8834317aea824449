package exporter

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

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
	kick    chan struct{} // drain now: the queue is half full
	handle  func([]event.Event)
	dropped prometheus.Counter
}

// maxBatch bounds how many queued events a subscriber handles at once.
const maxBatch = 512

// tick is how often a subscriber drains its queue. Probes write in bursts
// many times a second; waking every subscriber for each burst costs more
// CPU (scheduler wake-ups, futexes) than the events themselves at a steady
// node's rate, and the graph does not need the events sooner.
const tick = 500 * time.Millisecond

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
		name: name, ch: make(chan event.Event, size), kick: make(chan struct{}, 1), handle: handle,
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
			if len(s.ch) > cap(s.ch)/2 {
				select {
				case s.kick <- struct{}{}:
				default:
				}
			}
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
	// A subscriber drains its queue on a tick, or at once when the queue is
	// half full (Publish kicks it): at a steady node's rate that is a few
	// wake-ups a second instead of one per probe write.
	t := time.NewTicker(tick)
	defer t.Stop()
	batch := make([]event.Event, 0, maxBatch)
	for {
		select {
		case <-ctx.Done():
			s.drain(batch)
			return
		case <-t.C:
		case <-s.kick:
		}
		s.drain(batch)
	}
}

// drain delivers everything queued, in batches.
func (s *subscriber) drain(batch []event.Event) {
	for {
		batch = batch[:0]
	fill:
		for len(batch) < maxBatch {
			select {
			case ev := <-s.ch:
				batch = append(batch, ev)
			default:
				break fill
			}
		}
		if len(batch) == 0 {
			return
		}
		s.handle(batch)
		clear(batch) // let the events' strings go
	}
}
