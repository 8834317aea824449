package jobs

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ark-gpu/ark/exporter/probe"
)

// Reasons a process was skipped, the reason label of
// ark_discovery_skipped_total.
const (
	ReasonVanished        = "vanished"          // the process ended while being read
	ReasonUnreadable      = "unreadable"        // permission denied or another read error
	ReasonEnvironTooLarge = "environ_too_large" // more than max_environ_bytes
	ReasonBadRank         = "bad_rank"          // a rank variable that is not a number
	ReasonNoJobID         = "no_job_id"         // a rank with nothing to name its job by
	ReasonUnknownRuntime  = "unknown_runtime"   // a pod cgroup of no known container layout
	ReasonMalformedStat   = "malformed_stat"    // /proc/<pid>/stat unparsable
	ReasonPodNotFound     = "pod_not_found"     // in a pod the informer never saw within pod_grace
)

type metrics struct {
	skipped *prometheus.CounterVec
	ranks   prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ark_discovery_skipped_total",
			Help: "Processes the jobs probe could not use, by reason; each process is counted once.",
		}, []string{"reason"}),
		ranks: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ark_discovery_ranks",
			Help: "Ranks the jobs probe found on this host at its last scan.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.skipped, err = probe.RegisterOrReuse(reg, m.skipped); err != nil {
		return nil, err
	}
	if m.ranks, err = probe.RegisterOrReuse(reg, m.ranks); err != nil {
		return nil, err
	}
	return m, nil
}
