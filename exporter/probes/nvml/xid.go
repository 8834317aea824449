package nvmlprobe

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probe"
	"github.com/ark-gpu/ark/xid"
)

// startXID registers every GPU for XID critical errors and, when at least
// one accepted, starts the goroutine that waits for them; wg owns it and it
// ends with ctx. Where the driver or the GPU has no event sets it does
// nothing.
func (p *Probe) startXID(ctx context.Context, wg *sync.WaitGroup, sink probe.Sink) {
	set, ret := p.lib.EventSetCreate()
	if ret != nvml.SUCCESS {
		p.logger.Debug("nvml: no XID events: creating an event set", "err", ret)
		return
	}
	registered := 0
	for _, g := range p.gpus {
		switch ret := g.dev.RegisterEvents(nvml.EventTypeXidCriticalError, set); ret {
		case nvml.SUCCESS:
			registered++
		case nvml.ERROR_NOT_SUPPORTED:
			p.logger.Debug("nvml: no XID events for this GPU", "gpu", g.index)
		default:
			p.logger.Warn("nvml: registering for XID events", "gpu", g.index, "err", ret)
		}
	}
	if registered == 0 {
		p.freeSet(set)
		return
	}
	wg.Go(func() {
		defer p.freeSet(set)
		p.waitXID(ctx, set, sink)
	})
}

func (p *Probe) freeSet(set nvml.EventSet) {
	if ret := set.Free(); ret != nvml.SUCCESS {
		p.logger.Debug("nvml: freeing the event set", "err", ret)
	}
}

// waitXID turns XID events into error.hw until ctx ends. The wait blocks in
// the driver for at most waitTimeout, which bounds how late it sees ctx.
func (p *Probe) waitXID(ctx context.Context, set nvml.EventSet, sink probe.Sink) {
	ms := uint32(p.waitTimeout / time.Millisecond)
	failing := false
	for ctx.Err() == nil {
		data, ret := set.Wait(ms)
		switch ret {
		case nvml.SUCCESS:
			failing = false
			if data.EventType&nvml.EventTypeXidCriticalError != 0 {
				p.emitXID(sink, data)
			}
		case nvml.ERROR_TIMEOUT:
			failing = false
		default:
			if !failing {
				p.logger.Warn("nvml: waiting for XID events failed, retrying each interval", "err", ret)
				failing = true
			}
			t := time.NewTimer(p.cfg.Interval)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
	}
}

func (p *Probe) emitXID(sink probe.Sink, data nvml.EventData) {
	g := p.gpuOf(data.Device)
	if g == nil {
		p.logger.Warn("nvml: XID on a device that was not discovered", "xid", data.EventData)
		return
	}
	code := strconv.FormatUint(data.EventData, 10)
	value := "Xid " + code
	if e, ok := xid.Lookup(int(data.EventData)); ok {
		value += ": " + e.Description
	}
	ev := event.Event{
		TS:       p.now().UnixMilli(),
		Type:     event.ErrorHW,
		EntityID: g.entity,
		Value:    value,
		Attrs:    event.Attrs{{Key: event.AttrXID, Value: code}, {Key: event.AttrPCIBus, Value: g.pciBus}},
	}
	sink.Emit(&ev)
}

// gpuOf finds the discovered GPU of an event's device by its UUID: device
// handles need not be comparable.
func (p *Probe) gpuOf(dev nvml.Device) *gpu {
	if dev == nil {
		return nil
	}
	uuid, ret := dev.GetUUID()
	if ret != nvml.SUCCESS {
		return nil
	}
	for _, g := range p.gpus {
		if g.uuid == uuid {
			return g
		}
	}
	return nil
}
