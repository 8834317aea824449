package hubd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ark-gpu/ark/graph"
	"github.com/ark-gpu/ark/graphsvc"
	"github.com/ark-gpu/ark/graphsvc/agents"
	"github.com/ark-gpu/ark/internal/audit"
	"github.com/ark-gpu/ark/remediator"
)

// RemediationConfig turns on the Alertmanager webhook (POST
// /api/v1/alerts) and the remediator behind it.
type RemediationConfig struct {
	// PolicyFile is the remediation policy (remediator.LoadFile).
	PolicyFile string
	// Kubeconfig is used when set; otherwise the in-cluster config.
	Kubeconfig string
	// AuditFile is the remediator's audit log.
	AuditFile string
	DryRun    bool
	// BasicAuthFile holds "user:password" lines Alertmanager's basic_auth
	// may present; the hub's bearer token is always accepted.
	BasicAuthFile string
	// Election: leader election among replicas when LeaderElect is set.
	LeaderElect bool
	Election    remediator.Election
}

// remediation is a running remediator and its election.
type remediation struct {
	r      *remediator.Remediator
	leader *remediator.Leader
	client kubernetes.Interface
	elect  *remediator.Election
	audit  *audit.Log
	log    *slog.Logger
	m      *remediator.Metrics
}

// kubeClient builds a client from a kubeconfig file or, without one, the
// pod's ServiceAccount.
func kubeClient(kubeconfig string) (kubernetes.Interface, error) {
	var (
		cfg *rest.Config
		err error
	)
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	cfg.UserAgent = "ark-hub"
	// Remediating many nodes at once must not queue on client-side
	// throttling; the API server's priority and fairness still applies.
	cfg.QPS, cfg.Burst = 200, 400
	return kubernetes.NewForConfig(cfg)
}

func newRemediation(cfg RemediationConfig, token string, core *graphsvc.Hub, d dispatcher, reg prometheus.Registerer,
	log *slog.Logger) (*remediation, error) {
	policy, err := remediator.LoadFile(cfg.PolicyFile)
	if err != nil {
		return nil, err
	}
	users, err := readBasicAuth(cfg.BasicAuthFile)
	if err != nil {
		return nil, err
	}
	client, err := kubeClient(cfg.Kubeconfig)
	if err != nil {
		return nil, err
	}
	if cfg.AuditFile == "" {
		return nil, errors.New("remediation needs an audit log file (--remediation.audit-file)")
	}
	al, err := audit.Open(audit.Config{Path: cfg.AuditFile})
	if err != nil {
		return nil, fmt.Errorf("opening the remediation audit log: %w", err)
	}
	m := remediator.NewMetrics(reg)
	rm := &remediation{client: client, audit: al, log: log, m: m}
	opts := remediator.Options{
		Policy: policy, Client: client, Graph: graphView{core}, Agents: d, Audit: al, DryRun: cfg.DryRun,
		Logger: log, Metrics: m, Auth: authFunc(token, users),
	}
	if cfg.LeaderElect {
		rm.leader = &remediator.Leader{}
		e := cfg.Election
		if cfg.DryRun && e.Name == "ark-hub" {
			// A dry-run hub must not take the lease from the real ones.
			e.Name = "ark-hub-dry-run"
		}
		if err := e.Validate(); err != nil {
			_ = al.Close()
			return nil, err
		}
		rm.elect = &e
		opts.IsLeader = rm.leader.IsLeader
	} else {
		m.SetLeader(true)
	}
	rm.r, err = remediator.New(opts)
	if err != nil {
		_ = al.Close()
		return nil, err
	}
	return rm, nil
}

// run works the remediator (and campaigns for the lease) until ctx ends.
func (rm *remediation) run(ctx context.Context) {
	done := make(chan struct{})
	if rm.leader != nil {
		go func() {
			defer close(done)
			rm.leader.Run(ctx, rm.client, *rm.elect, rm.m, rm.log)
		}()
	} else {
		close(done)
	}
	_ = rm.r.Run(ctx)
	<-done
	_ = rm.audit.Close()
}

// readBasicAuth reads "user:password" lines.
func readBasicAuth(path string) (map[string]string, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the webhook basic-auth file: %w", err)
	}
	users := map[string]string{}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		u, p, ok := strings.Cut(line, ":")
		if !ok || u == "" || p == "" {
			return nil, fmt.Errorf("%s:%d: want user:password", path, i+1)
		}
		users[u] = p
	}
	return users, nil
}

// authFunc accepts the hub's bearer token or a basic-auth user.
func authFunc(token string, users map[string]string) func(user, pass, bearer string) bool {
	return func(user, pass, bearer string) bool {
		if bearer != "" {
			return agents.BearerToken(token).Matches(bearer)
		}
		want, ok := users[user]
		return ok && agents.BearerToken(want).Matches(pass)
	}
}

// graphView answers the remediator's questions from the hub's graph.
type graphView struct{ h *graphsvc.Hub }

func (g graphView) RootCause(node string) (remediator.Root, bool) {
	res, err := g.h.Why(graph.Target{Node: node}, 0)
	if err != nil || !res.Found || len(res.Causes) == 0 {
		return remediator.Root{}, false
	}
	c := res.Causes[0]
	for _, own := range res.Causes {
		// The node's own fault is acted on even when another node's fault
		// ranks first: two broken nodes are two remediations.
		if own.Kind == "error" && own.NodeID == node && !own.Downstream && !own.Sympathetic {
			c = own
			break
		}
	}
	if c.Kind != "error" || c.NodeID == "" {
		// A symptom (a saturated device) is not a hardware fault to act on.
		return remediator.Root{}, false
	}
	return remediator.Root{Node: c.NodeID, Class: classOf(c), Summary: c.EntityID + ": " + c.Summary}, true
}

// classOf maps a cause to the fault class the remediation policy names.
func classOf(c graph.Cause) remediator.Class {
	switch {
	case c.XID != 0:
		return remediator.PersistentXidError
	case c.EventType == "topo.link_down" || c.EventType == "error.net":
		return remediator.RdmaLinkDown
	}
	switch graph.ResourceClass(c.EntityID) {
	case "nic":
		return remediator.RdmaLinkDown
	case "storage":
		return remediator.StorageDeviceFailure
	}
	return remediator.OtherHardwareFailure
}

func (g graphView) Ranks(node string) []remediator.Rank {
	ps := g.h.Processes(graph.ProcessFilter{Node: node})
	out := make([]remediator.Rank, 0, len(ps.Processes))
	for _, p := range ps.Processes {
		if p.JobID == "" || p.State == "exited" {
			continue
		}
		out = append(out, remediator.Rank{PID: p.PID, JobID: p.JobID})
	}
	return out
}
