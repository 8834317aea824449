// Package rules is Ark's rule engine: YAML rules whose triggers name an
// event type and a CEL condition over the event, the graph edge it produced
// and the process it concerns, compiled once when the file loads and
// evaluated on each event the local causal graph applies (docs/README.md).
// A match names the rule's actions and the target (pid, job, host) the
// agent's executor or the hub's remediator acts on.
package rules

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/cel-go/cel"

	"github.com/ark-gpu/ark/event"
)

// Severity says how urgent a rule's match is.
type Severity string

// Severities of a rule.
const (
	SeverityInfo     Severity = "info"
	SeverityWarning  Severity = "warning"
	SeverityCritical Severity = "critical"
)

// ActionType is what a rule asks to be done on a match.
type ActionType string

// Action types. Signal, GracefulShutdown and RunHook are executed by the
// agent on the target's processes; ReportOnly records the match; Quarantine
// is a suggestion for the hub's remediator to taint the node.
const (
	ActionSignal           ActionType = "Signal"
	ActionGracefulShutdown ActionType = "GracefulShutdown"
	ActionRunHook          ActionType = "RunHook"
	ActionReportOnly       ActionType = "ReportOnly"
	ActionQuarantine       ActionType = "Quarantine"
)

// ActionTypes lists every action type.
var ActionTypes = []ActionType{ActionSignal, ActionGracefulShutdown, ActionRunHook, ActionReportOnly, ActionQuarantine}

// Signals a Signal or GracefulShutdown action may send.
var Signals = []string{"SIGUSR1", "SIGUSR2", "SIGTERM", "SIGKILL", "SIGCONT", "SIGSTOP"}

// FaultClasses a Quarantine action may name (remediator/README.md).
var FaultClasses = []string{"PersistentXidError", "RdmaLinkDown", "StorageDeviceFailure", "OtherHardwareFailure"}

// DefaultCooldown is how long a rule stays quiet for one target after it
// fired, unless the rule says otherwise.
const DefaultCooldown = time.Minute

// AnyEventType is the trigger event type that matches every event.
const AnyEventType = "*"

// Rule is one loaded, compiled rule. It is immutable once loaded.
type Rule struct {
	Name        string        `json:"name"`
	Description string        `json:"description,omitempty"`
	Severity    Severity      `json:"severity"`
	Triggers    []Trigger     `json:"triggers"`
	Actions     []Action      `json:"actions"`
	Cooldown    time.Duration `json:"cooldown"`
	// File and Line say where the rule was defined.
	File string `json:"file"`
	Line int    `json:"line"`
}

// Trigger fires its rule on an event of EventType ("*" for any) for which
// Condition holds (an empty condition always holds).
type Trigger struct {
	EventType string `json:"event_type"`
	Condition string `json:"condition,omitempty"`
	prg       cel.Program
}

// Action is one thing a rule asks for, with parameters validated per type
// when the rule loads.
type Action struct {
	Type   ActionType        `json:"type"`
	Params map[string]string `json:"params,omitempty"`
}

// Signal is the signal name of a Signal or GracefulShutdown action.
func (a Action) Signal() string { return a.Params["signal"] }

// Wait is how long a GracefulShutdown waits before SIGKILL.
func (a Action) Wait() time.Duration { return a.seconds("wait_seconds") }

// Hook is the hook name of a RunHook action.
func (a Action) Hook() string { return a.Params["hook"] }

// Timeout bounds a RunHook action.
func (a Action) Timeout() time.Duration { return a.seconds("timeout_seconds") }

// Class is the fault class a Quarantine action suggests.
func (a Action) Class() string { return a.Params["class"] }

func (a Action) seconds(key string) time.Duration {
	n, _ := strconv.ParseFloat(a.Params[key], 64)
	return time.Duration(n * float64(time.Second))
}

// actionParam describes one parameter of an action type.
type actionParam struct {
	required bool
	check    func(v string) error
}

var actionParams = map[ActionType]map[string]actionParam{
	ActionSignal: {
		"signal": {required: true, check: oneOf("signal", Signals)},
	},
	ActionGracefulShutdown: {
		"signal":       {required: true, check: oneOf("signal", Signals)},
		"wait_seconds": {required: true, check: positive("wait_seconds")},
	},
	ActionRunHook: {
		"hook":            {required: true, check: nonEmpty("hook")},
		"timeout_seconds": {required: true, check: positive("timeout_seconds")},
	},
	ActionReportOnly: {},
	ActionQuarantine: {
		"class": {check: oneOf("class", FaultClasses)},
	},
}

func oneOf(name string, allowed []string) func(string) error {
	return func(v string) error {
		for _, a := range allowed {
			if v == a {
				return nil
			}
		}
		return fmt.Errorf("invalid %s %q (want one of %s)", name, v, strings.Join(allowed, ", "))
	}
}

func positive(name string) func(string) error {
	return func(v string) error {
		n, err := strconv.ParseFloat(v, 64)
		if err != nil || n <= 0 {
			return fmt.Errorf("%s must be a number > 0, got %q", name, v)
		}
		return nil
	}
}

func nonEmpty(name string) func(string) error {
	return func(v string) error {
		if strings.TrimSpace(v) == "" {
			return fmt.Errorf("%s must not be empty", name)
		}
		return nil
	}
}

// validate reports every problem with the action's type and parameters.
func (a Action) validate() []error {
	spec, ok := actionParams[a.Type]
	if !ok {
		names := make([]string, len(ActionTypes))
		for i, t := range ActionTypes {
			names[i] = string(t)
		}
		return []error{fmt.Errorf("unknown action type %q (want one of %s)", a.Type, strings.Join(names, ", "))}
	}
	var errs []error
	keys := make([]string, 0, len(a.Params))
	for k := range a.Params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		p, ok := spec[k]
		if !ok {
			errs = append(errs, fmt.Errorf("action %s: unknown param %q", a.Type, k))
			continue
		}
		if err := p.check(a.Params[k]); err != nil {
			errs = append(errs, fmt.Errorf("action %s: %w", a.Type, err))
		}
	}
	required := make([]string, 0, len(spec))
	for k, p := range spec {
		if p.required {
			required = append(required, k)
		}
	}
	sort.Strings(required)
	for _, k := range required {
		if _, ok := a.Params[k]; !ok {
			errs = append(errs, fmt.Errorf("action %s: param %q is required", a.Type, k))
		}
	}
	return errs
}

func validEventType(s string) bool {
	if s == AnyEventType {
		return true
	}
	_, ok := event.ParseType(s)
	return ok
}

func validSeverity(s Severity) bool {
	return s == SeverityInfo || s == SeverityWarning || s == SeverityCritical
}
