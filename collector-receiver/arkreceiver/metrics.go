package arkreceiver

import (
	"slices"
	"strings"
	"sync"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/graphsvc"
)

// Metric attributes, semantic-convention names where they exist.
const (
	attrHWID      = "hw.id"   // the entity: gpu-0, network-ib0, storage-nvme0n1
	attrHWType    = "hw.type" // gpu, network, disk
	attrErrorType = "error.type"
	attrState     = "ark.state"
	attrRank      = "ark.rank"
	attrXID       = "ark.xid"
)

// metricDef is the metric an event type becomes.
type metricDef struct {
	name, unit, desc string
	// scale multiplies the value (a percentage becomes a ratio).
	scale float64
	// count makes a cumulative sum of events; otherwise the value is a
	// gauge.
	count bool
	// flag makes a gauge of 1, or 0 when the value is "0" (a link back
	// up); text values (process.state) go in the state attribute.
	flag bool
}

// metricDefs is the mapping documented in the README.
var metricDefs = map[event.Type]metricDef{
	event.ComputeUtil:   {name: "hw.gpu.utilization", unit: "1", desc: "GPU utilisation as a ratio of its capacity.", scale: 0.01},
	event.ComputeMem:    {name: "hw.gpu.memory.usage", unit: "By", desc: "GPU memory used.", scale: 1},
	event.TransportBW:   {name: "ark.network.throughput", unit: "By/s", desc: "Network throughput of a process on a NIC.", scale: 1},
	event.TransportDrop: {name: "ark.network.drops", unit: "{packet}", desc: "Drops or retransmits a process saw toward a NIC or peer in the last interval.", scale: 1},
	event.StorageIOPS:   {name: "ark.storage.operations", unit: "{operation}/s", desc: "Storage operations per second.", scale: 1},
	event.StorageQDepth: {name: "ark.storage.queue_depth", unit: "{request}", desc: "Storage queue depth.", scale: 1},
	event.ProcessState:  {name: "ark.process.state", unit: "1", desc: "1 for the state a process was last seen in (ark.state: R, S, D, Z, exited, stalled).", flag: true},
	event.ErrorHW:       {name: "hw.errors", unit: "{error}", desc: "Hardware and network errors (XID, ECC, PCIe AER, disk I/O, link errors).", count: true},
	event.ErrorNet:      {name: "hw.errors", unit: "{error}", desc: "Hardware and network errors (XID, ECC, PCIe AER, disk I/O, link errors).", count: true},
	event.TopoLinkDown:  {name: "ark.link.down", unit: "1", desc: "1 while a link (NVLink, IB, Ethernet) is down, 0 once back up.", flag: true},
	event.IntentRun:     {name: "ark.job.rank", unit: "1", desc: "1 for each rank the scheduler placed (ark.job_id, ark.rank, process.pid).", flag: true},
	event.ActionExec:    {name: "ark.actions", unit: "{action}", desc: "Actions Ark executed.", count: true},
}

// hwType names the kind of device an entity is.
func hwType(ev *event.Event) string {
	switch ev.Type {
	case event.ComputeUtil, event.ComputeMem:
		return "gpu"
	case event.TransportBW, event.TransportDrop, event.ErrorNet:
		return "network"
	case event.StorageIOPS, event.StorageQDepth:
		return "disk"
	}
	switch {
	case strings.HasPrefix(ev.EntityID, "gpu-"):
		return "gpu"
	case strings.HasPrefix(ev.EntityID, "network-"), strings.HasPrefix(ev.EntityID, "nic-"):
		return "network"
	case strings.HasPrefix(ev.EntityID, "storage-"):
		return "disk"
	}
	return ""
}

// metricsBuilder turns batches of events into metrics. Counts are
// cumulative from the first event of a series, so it keeps their running
// totals.
type metricsBuilder struct {
	k8sNodeName bool

	mu     sync.Mutex
	totals map[string]*runningTotal
}

type runningTotal struct {
	start pcommon.Timestamp
	n     int64
}

func newMetricsBuilder(k8sNodeName bool) *metricsBuilder {
	return &metricsBuilder{k8sNodeName: k8sNodeName, totals: map[string]*runningTotal{}}
}

// resourceMetrics is one host's metrics under construction.
type resourceMetrics struct {
	metrics pmetric.MetricSlice
	byName  map[string]pmetric.Metric
}

// build converts evs, one resource per host in the order hosts first
// appear and one metric per name. Events whose value a gauge cannot read
// are left out of the metrics (they still become spans).
func (b *metricsBuilder) build(evs []event.Event) pmetric.Metrics {
	md := pmetric.NewMetrics()
	hosts := map[string]*resourceMetrics{}
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range evs {
		ev := &evs[i]
		def, ok := metricDefs[ev.Type]
		if !ok {
			continue
		}
		value, ok := 0.0, true
		switch {
		case def.flag:
			value = 1
			if ev.Type == event.TopoLinkDown && ev.Value == "0" {
				value = 0
			}
		case !def.count:
			value, ok = ev.Num()
			value *= def.scale
		}
		if !ok {
			continue
		}
		rm := hosts[ev.NodeID]
		if rm == nil {
			r := md.ResourceMetrics().AppendEmpty()
			putResource(r.Resource().Attributes(), ev.NodeID, b.k8sNodeName)
			sm := r.ScopeMetrics().AppendEmpty()
			sm.Scope().SetName(graphsvc.ScopeName)
			rm = &resourceMetrics{metrics: sm.Metrics(), byName: map[string]pmetric.Metric{}}
			hosts[ev.NodeID] = rm
		}
		m, ok := rm.byName[def.name]
		if !ok {
			m = rm.metrics.AppendEmpty()
			m.SetName(def.name)
			m.SetUnit(def.unit)
			m.SetDescription(def.desc)
			if def.count {
				s := m.SetEmptySum()
				s.SetIsMonotonic(true)
				s.SetAggregationTemporality(pmetric.AggregationTemporalityCumulative)
			} else {
				m.SetEmptyGauge()
			}
			rm.byName[def.name] = m
		}
		ts := pcommon.Timestamp(event.NormalizeTS(ev.TS) * 1e6)
		var dp pmetric.NumberDataPoint
		if def.count {
			dp = m.Sum().DataPoints().AppendEmpty()
		} else {
			dp = m.Gauge().DataPoints().AppendEmpty()
		}
		dp.SetTimestamp(ts)
		putPointAttrs(dp.Attributes(), ev)
		if def.count {
			key := seriesKey(def.name, ev.NodeID, dp.Attributes())
			t := b.totals[key]
			if t == nil {
				t = &runningTotal{start: ts}
				b.totals[key] = t
			}
			t.n++
			dp.SetStartTimestamp(t.start)
			dp.SetIntValue(t.n)
			continue
		}
		dp.SetDoubleValue(value)
	}
	return md
}

// putResource names the host as graphsvc's OTLP mapping does.
func putResource(m pcommon.Map, node string, k8s bool) {
	if node == "" {
		return
	}
	m.PutStr(graphsvc.AttrHostName, node)
	if k8s {
		m.PutStr(graphsvc.AttrK8sNodeName, node)
	}
}

func putPointAttrs(m pcommon.Map, ev *event.Event) {
	if ev.Type != event.IntentRun && ev.Type != event.ProcessState {
		m.PutStr(attrHWID, ev.EntityID)
		if t := hwType(ev); t != "" {
			m.PutStr(attrHWType, t)
		}
	}
	if ev.PID != 0 {
		m.PutInt(graphsvc.AttrPID, ev.PID)
	}
	if ev.JobID != "" {
		m.PutStr(graphsvc.AttrJobID, ev.JobID)
	}
	switch ev.Type {
	case event.ErrorHW, event.ErrorNet:
		if x := ev.Attrs.Get(event.AttrXID); x != "" {
			m.PutStr(attrErrorType, "xid")
			m.PutStr(attrXID, x)
		} else {
			m.PutStr(attrErrorType, string(ev.Type))
		}
	case event.ProcessState:
		m.PutStr(attrState, ev.Value)
	case event.IntentRun:
		if r := ev.Attrs.Get(event.AttrRank); r != "" {
			m.PutStr(attrRank, r)
		}
	}
}

// seriesKey identifies a cumulative series: metric, host and attributes.
func seriesKey(name, node string, attrs pcommon.Map) string {
	parts := make([]string, 0, attrs.Len())
	for k, v := range attrs.All() {
		parts = append(parts, k+"="+v.AsString())
	}
	slices.Sort(parts)
	return name + "\x00" + node + "\x00" + strings.Join(parts, "\x00")
}
