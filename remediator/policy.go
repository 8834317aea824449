package remediator

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	amlabels "github.com/prometheus/alertmanager/pkg/labels"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"
)

// Class is a fault class: what kind of hardware fault an alert reports.
type Class string

// The fault classes (remediator/README.md).
const (
	PersistentXidError   Class = "PersistentXidError"
	RdmaLinkDown         Class = "RdmaLinkDown"
	StorageDeviceFailure Class = "StorageDeviceFailure"
	OtherHardwareFailure Class = "OtherHardwareFailure"
)

// Valid reports whether c is one of the defined classes.
func (c Class) Valid() bool {
	switch c {
	case PersistentXidError, RdmaLinkDown, StorageDeviceFailure, OtherHardwareFailure:
		return true
	}
	return false
}

// StepType is one kind of remediation step.
type StepType string

// The steps a class may run, in the order the policy lists them.
const (
	// StepTaint adds ark.dev/hardware-fault=<class>:NoSchedule to the node.
	StepTaint StepType = "taint"
	// StepCondition sets the node condition ArkHardwareFault=True.
	StepCondition StepType = "condition"
	// StepEvent records a Kubernetes Event on the node.
	StepEvent StepType = "event"
	// StepAgentAction asks the node's agent to run an allow-listed action
	// on every rank of a job on the node (e.g. Signal SIGUSR1 so they
	// checkpoint).
	StepAgentAction StepType = "agent_action"
	// StepWait waits, e.g. for the ranks to finish a checkpoint.
	StepWait StepType = "wait"
	// StepEvict evicts the node's pods through the Eviction API.
	StepEvict StepType = "evict"
)

// OnResolved says what a resolved alert does to a node.
type OnResolved string

// What a resolved alert may do.
const (
	// Keep leaves the taint and condition: a human clears hardware faults.
	Keep OnResolved = "keep"
	// Untaint removes the taint and sets the condition to False.
	Untaint OnResolved = "untaint"
)

// Policy is the remediation policy (--remediation.policy). Load it with
// Load or LoadFile, which apply the defaults and validate it.
type Policy struct {
	// NodeLabels are the alert labels that name the node, tried in order.
	// A value with a port (instance="node-7:9464") is cut at the colon.
	NodeLabels []string `yaml:"node_labels" json:"node_labels"`
	// Cooldown is how long after acting on a node further alerts for it
	// do nothing. It is kept in a node annotation, so it survives hub
	// restarts and is shared by replicas.
	Cooldown model.Duration `yaml:"cooldown" json:"cooldown"`
	// BlastRadius consults the causal graph before acting: when the
	// node's ranks stall because of a fault on another node, the root
	// node is acted on instead and this node's alert is recorded as
	// suppressed.
	BlastRadius *bool `yaml:"blast_radius" json:"blast_radius"`
	// CircuitBreaker caps how many nodes may be tainted.
	CircuitBreaker Breaker `yaml:"circuit_breaker" json:"circuit_breaker"`
	// Eviction tunes the evict step.
	Eviction Eviction `yaml:"eviction" json:"eviction"`
	// Routes map alerts to classes; the first route whose matchers all
	// match wins. Alerts that match no route are ignored (and counted).
	Routes []Route `yaml:"routes" json:"routes"`
	// Classes says what to do for each fault class.
	Classes map[Class]*ClassPolicy `yaml:"classes" json:"classes"`
}

// Breaker is the circuit breaker: it refuses to taint a node past either
// limit and records why.
type Breaker struct {
	// MaxTaintedRatio is the largest share of the cluster's nodes that
	// may carry the ark taint (default 0.1); 1 turns the ratio check off.
	MaxTaintedRatio float64 `yaml:"max_tainted_ratio" json:"max_tainted_ratio"`
	// MaxNodesPerHour is how many nodes may be remediated in any hour
	// (default 20); 0 turns the check off.
	MaxNodesPerHour *int `yaml:"max_nodes_per_hour" json:"max_nodes_per_hour"`
}

// Eviction tunes the evict step.
type Eviction struct {
	// Timeout bounds how long a PDB may hold evictions back (429) before
	// the step reports partial_failure (default 10m).
	Timeout model.Duration `yaml:"timeout" json:"timeout"`
	// InitialBackoff and MaxBackoff bound the retry delay after a 429
	// (defaults 1s and 30s).
	InitialBackoff model.Duration `yaml:"initial_backoff" json:"initial_backoff"`
	MaxBackoff     model.Duration `yaml:"max_backoff" json:"max_backoff"`
}

// Route maps alerts to a class.
type Route struct {
	// Matchers use Alertmanager's syntax (`alertname=~"Xid.*"`); all must
	// match.
	Matchers []string `yaml:"matchers" json:"matchers"`
	Class    Class    `yaml:"class" json:"class"`

	matchers amlabels.Matchers
}

// ClassPolicy is what to do for one class.
type ClassPolicy struct {
	Steps      []Step     `yaml:"steps" json:"steps"`
	OnResolved OnResolved `yaml:"on_resolved" json:"on_resolved"`
}

// Step is one remediation step. Only the fields of its type may be set.
type Step struct {
	Type StepType `yaml:"type" json:"type"`
	// Action and Params: agent_action only (an action of the agent's
	// allow-list and its parameters).
	Action string            `yaml:"action,omitempty" json:"action,omitempty"`
	Params map[string]string `yaml:"params,omitempty" json:"params,omitempty"`
	// Duration: wait only.
	Duration model.Duration `yaml:"duration,omitempty" json:"duration,omitempty"`
}

// Defaults applied to zero fields.
const (
	DefaultCooldown        = 5 * time.Minute
	DefaultMaxTaintedRatio = 0.1
	DefaultMaxNodesPerHour = 20
	DefaultEvictionTimeout = 10 * time.Minute
	DefaultInitialBackoff  = time.Second
	DefaultMaxBackoff      = 30 * time.Second
)

// DefaultNodeLabels are the labels tried for the node name: Ark's own,
// kube-state-metrics', dcgm-exporter's and Prometheus' instance.
var DefaultNodeLabels = []string{"node", "kubernetes_node", "Hostname", "hostname", "instance"}

// labelName is Prometheus' classic label name syntax, which alert labels use.
var labelName = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

// agentActions is the agent executor's allow-list (exporter/executor).
var agentActions = map[string]bool{"Signal": true, "GracefulShutdown": true, "RunHook": true, "ReportOnly": true}

// ErrInvalidPolicy wraps every validation error.
var ErrInvalidPolicy = errors.New("invalid remediation policy")

// LoadFile reads and validates a policy file.
func LoadFile(path string) (*Policy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the remediation policy: %w", err)
	}
	p, err := Load(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// Load parses a policy: unknown fields are errors, defaults fill what is
// left out, and every problem found is reported at once.
func Load(b []byte) (*Policy, error) {
	p := &Policy{}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(p); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: %w", ErrInvalidPolicy, err)
	}
	p.setDefaults()
	if err := p.validate(); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *Policy) setDefaults() {
	if len(p.NodeLabels) == 0 {
		p.NodeLabels = DefaultNodeLabels
	}
	if p.Cooldown == 0 {
		p.Cooldown = model.Duration(DefaultCooldown)
	}
	if p.BlastRadius == nil {
		t := true
		p.BlastRadius = &t
	}
	if p.CircuitBreaker.MaxTaintedRatio == 0 {
		p.CircuitBreaker.MaxTaintedRatio = DefaultMaxTaintedRatio
	}
	if p.CircuitBreaker.MaxNodesPerHour == nil {
		n := DefaultMaxNodesPerHour
		p.CircuitBreaker.MaxNodesPerHour = &n
	}
	if p.Eviction.Timeout == 0 {
		p.Eviction.Timeout = model.Duration(DefaultEvictionTimeout)
	}
	if p.Eviction.InitialBackoff == 0 {
		p.Eviction.InitialBackoff = model.Duration(DefaultInitialBackoff)
	}
	if p.Eviction.MaxBackoff == 0 {
		p.Eviction.MaxBackoff = model.Duration(DefaultMaxBackoff)
	}
	for _, c := range p.Classes {
		if c != nil && c.OnResolved == "" {
			c.OnResolved = Keep
		}
	}
}

func (p *Policy) validate() error {
	var errs []string
	bad := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	for _, l := range p.NodeLabels {
		if !labelName.MatchString(l) {
			bad("node_labels: invalid label name %q", l)
		}
	}
	if r := p.CircuitBreaker.MaxTaintedRatio; r < 0 || r > 1 {
		bad("circuit_breaker.max_tainted_ratio: %v is not between 0 and 1", r)
	}
	if n := *p.CircuitBreaker.MaxNodesPerHour; n < 0 {
		bad("circuit_breaker.max_nodes_per_hour: %d is negative", n)
	}
	if p.Eviction.InitialBackoff > p.Eviction.MaxBackoff {
		bad("eviction: initial_backoff %s is longer than max_backoff %s", p.Eviction.InitialBackoff, p.Eviction.MaxBackoff)
	}
	if len(p.Routes) == 0 {
		bad("routes: at least one route is required")
	}
	for i := range p.Routes {
		r := &p.Routes[i]
		if !r.Class.Valid() {
			bad("routes[%d]: unknown class %q (want one of %s)", i, r.Class, classList())
		} else if p.Classes[r.Class] == nil {
			bad("routes[%d]: class %q has no entry under classes", i, r.Class)
		}
		if len(r.Matchers) == 0 {
			bad("routes[%d]: at least one matcher is required", i)
		}
		r.matchers = r.matchers[:0]
		for _, s := range r.Matchers {
			m, err := amlabels.ParseMatcher(s)
			if err != nil {
				bad("routes[%d]: invalid matcher %q: %v", i, s, err)
				continue
			}
			r.matchers = append(r.matchers, m)
		}
	}
	for _, name := range sortedClasses(p.Classes) {
		c := p.Classes[name]
		if !name.Valid() {
			bad("classes: unknown class %q (want one of %s)", name, classList())
			continue
		}
		if c == nil || len(c.Steps) == 0 {
			bad("classes.%s: at least one step is required", name)
			continue
		}
		if c.OnResolved != Keep && c.OnResolved != Untaint {
			bad("classes.%s: on_resolved %q is not %q or %q", name, c.OnResolved, Keep, Untaint)
		}
		for i, s := range c.Steps {
			for _, e := range s.problems() {
				bad("classes.%s.steps[%d] (%s): %s", name, i, s.Type, e)
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalidPolicy, strings.Join(errs, "; "))
	}
	return nil
}

func (s Step) problems() []string {
	var out []string
	notFor := func(field string, set bool) {
		if set {
			out = append(out, field+" is only valid for "+string(map[string]StepType{
				"action": StepAgentAction, "params": StepAgentAction, "duration": StepWait}[field])+" steps")
		}
	}
	switch s.Type {
	case StepTaint, StepCondition, StepEvent, StepEvict:
		notFor("action", s.Action != "")
		notFor("params", len(s.Params) > 0)
		notFor("duration", s.Duration != 0)
	case StepAgentAction:
		if !agentActions[s.Action] {
			out = append(out, fmt.Sprintf("action %q is not one the agent allows (Signal, GracefulShutdown, RunHook, ReportOnly)", s.Action))
		}
		notFor("duration", s.Duration != 0)
	case StepWait:
		if s.Duration <= 0 {
			out = append(out, "duration must be positive")
		}
		notFor("action", s.Action != "")
		notFor("params", len(s.Params) > 0)
	case "":
		out = append(out, "type is required")
	default:
		out = append(out, fmt.Sprintf("unknown step type %q", s.Type))
	}
	return out
}

// Route returns the class of an alert with labels ls, or false when no
// route matches.
func (p *Policy) Route(ls map[string]string) (Class, bool) {
	for _, r := range p.Routes {
		ok := true
		for _, m := range r.matchers {
			if !m.Matches(ls[m.Name]) {
				ok = false
				break
			}
		}
		if ok {
			return r.Class, true
		}
	}
	return "", false
}

// NodeOf returns the node an alert names and the label it came from.
func (p *Policy) NodeOf(ls map[string]string) (node, label string) {
	for _, l := range p.NodeLabels {
		v := strings.TrimSpace(ls[l])
		if v == "" {
			continue
		}
		if l == "instance" {
			// host:port, [v6]:port
			if h, _, ok := cutPort(v); ok {
				v = h
			}
		}
		return v, l
	}
	return "", ""
}

func cutPort(v string) (string, string, bool) {
	i := strings.LastIndexByte(v, ':')
	if i < 0 || strings.Count(v, ":") > 1 && !strings.HasPrefix(v, "[") {
		return v, "", false
	}
	return strings.Trim(v[:i], "[]"), v[i+1:], true
}

// HasTaintStep reports whether class c taints.
func (p *Policy) HasTaintStep(c Class) bool {
	for _, s := range p.Classes[c].Steps {
		if s.Type == StepTaint {
			return true
		}
	}
	return false
}

func classList() string {
	return strings.Join([]string{string(PersistentXidError), string(RdmaLinkDown), string(StorageDeviceFailure), string(OtherHardwareFailure)}, ", ")
}

func sortedClasses(m map[Class]*ClassPolicy) []Class { return slices.Sorted(maps.Keys(m)) }
