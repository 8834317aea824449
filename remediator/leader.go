package remediator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// Election configures leader election among hub replicas: only the holder
// of the Lease acts on alerts; the others answer 503 so Alertmanager
// retries and reaches the leader.
type Election struct {
	Namespace, Name, Identity string
	// LeaseDuration, RenewDeadline, RetryPeriod: client-go's (defaults
	// 15s, 10s, 2s).
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// setDefaults fills client-go's usual timings.
func (e *Election) setDefaults() {
	if e.LeaseDuration == 0 {
		e.LeaseDuration = 15 * time.Second
	}
	if e.RenewDeadline == 0 {
		e.RenewDeadline = 10 * time.Second
	}
	if e.RetryPeriod == 0 {
		e.RetryPeriod = 2 * time.Second
	}
}

// Validate fills the default timings and reports settings client-go's
// elector would panic on.
func (e *Election) Validate() error {
	e.setDefaults()
	switch {
	case e.Namespace == "" || e.Name == "" || e.Identity == "":
		return errors.New("leader election: namespace, lease name and identity are required")
	case e.LeaseDuration <= e.RenewDeadline:
		return fmt.Errorf("leader election: lease duration %s must be longer than the renew deadline %s", e.LeaseDuration, e.RenewDeadline)
	case float64(e.RenewDeadline) <= leaderelection.JitterFactor*float64(e.RetryPeriod):
		return fmt.Errorf("leader election: renew deadline %s must be longer than %.1f × the retry period %s",
			e.RenewDeadline, leaderelection.JitterFactor, e.RetryPeriod)
	}
	return nil
}

// Leader runs leader election until ctx ends.
type Leader struct {
	held atomic.Bool
}

// IsLeader reports whether this replica holds the Lease now.
func (l *Leader) IsLeader() bool { return l.held.Load() }

// Run campaigns for the Lease, and again after losing it, until ctx ends;
// on the way out it releases the Lease so another replica takes over at
// once.
func (l *Leader) Run(ctx context.Context, c kubernetes.Interface, e Election, m *Metrics, log *slog.Logger) {
	e.setDefaults()
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: e.Namespace, Name: e.Name},
		Client:     c.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: e.Identity},
	}
	set := func(on bool) {
		l.held.Store(on)
		if m != nil {
			m.SetLeader(on)
		}
	}
	for ctx.Err() == nil {
		leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   e.LeaseDuration,
			RenewDeadline:   e.RenewDeadline,
			RetryPeriod:     e.RetryPeriod,
			ReleaseOnCancel: true,
			Name:            e.Name,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(lctx context.Context) {
					// client-go runs this on a goroutine of its own, which may
					// start after OnStoppedLeading: leading ends with lctx.
					log.Info("leading remediation", "lease", e.Namespace+"/"+e.Name, "identity", e.Identity)
					set(true)
					<-lctx.Done()
					set(false)
				},
				OnStoppedLeading: func() {
					log.Info("stopped leading remediation", "lease", e.Namespace+"/"+e.Name, "identity", e.Identity)
					set(false)
				},
				OnNewLeader: func(id string) {
					if id != e.Identity {
						log.Info("remediation leader", "identity", id)
					}
				},
			},
		})
	}
}
