package rules

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/ast"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/common/types/traits"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/graph"
	"github.com/ark-gpu/ark/xid"
)

// Graph is what conditions may ask of the causal graph beyond the event at
// hand. The agent implements it over its graph.Graph; node is the event's
// host (node_id) and pid the process on it.
type Graph interface {
	// ErrorsReachable returns the live errors reachable from the process
	// along WaitsOn, Consumes and BlockedBy edges.
	ErrorsReachable(node string, pid int64) []ErrorInfo
	// WaitsOn reports whether the process has a live WaitsOn edge to a
	// resource whose entity id (without the host prefix) starts with prefix.
	WaitsOn(node string, pid int64, prefix string) bool
}

// ErrorInfo is one error a process reaches in the graph.
type ErrorInfo struct {
	EntityID  string     // the resource the error is on: "gpu-3"
	EventType event.Type // error.hw, error.net, topo.link_down
	Severity  string     // xid.Severity names: info, transient, degraded, fatal
	XID       int        // the XID code, 0 when not an XID
	Summary   string     // one line for people
}

// The CEL variables of a condition.
const (
	varEvent = "event"
	varEdge  = "edge"
	varNode  = "node"
	varGraph = "graph"
)

// Fields of the map variables; a condition naming another field is
// rejected when the rule loads rather than failing on every event.
var (
	eventFields = []string{"ts", "event_type", "entity_id", "node_id", "job_id", "pid", "value", "num", "attrs"}
	edgeFields  = []string{"type", "from", "to"}
	nodeFields  = []string{"pid", "job_id", "state", "rank"}
)

var graphType = cel.OpaqueType("ark.Graph")

var (
	envOnce sync.Once
	celEnv  *cel.Env
	envErr  error
)

// environment returns the CEL environment conditions are checked in.
func environment() (*cel.Env, error) {
	envOnce.Do(func() { celEnv, envErr = newEnv() })
	return celEnv, envErr
}

func newEnv() (*cel.Env, error) {
	return cel.NewEnv(
		cel.CrossTypeNumericComparisons(true),
		cel.Variable(varEvent, cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable(varEdge, cel.MapType(cel.StringType, cel.StringType)),
		cel.Variable(varNode, cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable(varGraph, graphType),
		cel.Function("xid_severity",
			cel.Overload("xid_severity_string", []*cel.Type{cel.StringType}, cel.StringType,
				cel.UnaryBinding(func(v ref.Val) ref.Val {
					s, _ := v.Value().(string)
					code, err := strconv.Atoi(strings.TrimSpace(s))
					if err != nil {
						return types.String("unknown")
					}
					return xidSeverity(code)
				})),
			cel.Overload("xid_severity_int", []*cel.Type{cel.IntType}, cel.StringType,
				cel.UnaryBinding(func(v ref.Val) ref.Val {
					n, _ := v.Value().(int64)
					return xidSeverity(int(n))
				})),
		),
		cel.Function("resource_class",
			cel.Overload("resource_class_string", []*cel.Type{cel.StringType}, cel.StringType,
				cel.UnaryBinding(func(v ref.Val) ref.Val {
					s, _ := v.Value().(string)
					if i := strings.LastIndexByte(s, '/'); i >= 0 {
						s = s[i+1:]
					}
					return types.String(graph.ResourceClass(s))
				})),
		),
		cel.Function("is_stuck",
			cel.Overload("is_stuck_string", []*cel.Type{cel.StringType}, cel.BoolType,
				cel.UnaryBinding(func(v ref.Val) ref.Val {
					s, _ := v.Value().(string)
					return types.Bool(graph.IsStuckState(s))
				})),
		),
		cel.Function("errors",
			cel.MemberOverload("graph_errors_int", []*cel.Type{graphType, cel.IntType},
				cel.ListType(cel.MapType(cel.StringType, cel.DynType)),
				cel.BinaryBinding(func(g, pid ref.Val) ref.Val {
					return g.(*graphVal).errors(pid)
				})),
		),
		cel.Function("fatal_error_reachable",
			cel.MemberOverload("graph_fatal_error_reachable_int", []*cel.Type{graphType, cel.IntType}, cel.BoolType,
				cel.BinaryBinding(func(g, pid ref.Val) ref.Val {
					return g.(*graphVal).fatalReachable(pid)
				})),
		),
		cel.Function("waits_on",
			cel.MemberOverload("graph_waits_on_int_string", []*cel.Type{graphType, cel.IntType, cel.StringType}, cel.BoolType,
				cel.FunctionBinding(func(args ...ref.Val) ref.Val {
					return args[0].(*graphVal).waitsOn(args[1], args[2])
				})),
		),
	)
}

func xidSeverity(code int) ref.Val {
	e, ok := xid.Lookup(code)
	if !ok {
		return types.String("unknown")
	}
	return types.String(e.Severity().String())
}

// compileCondition type-checks expr and returns its program. The error text
// is CEL's, one line per problem, without the source excerpt.
func compileCondition(expr string) (cel.Program, error) {
	env, err := environment()
	if err != nil {
		return nil, fmt.Errorf("building CEL environment: %w", err)
	}
	checked, iss := env.Compile(expr)
	if iss != nil && iss.Err() != nil {
		return nil, celError(iss.Err().Error())
	}
	if err := checkFields(checked); err != nil {
		return nil, err
	}
	if t := checked.OutputType(); !t.IsExactType(cel.BoolType) {
		return nil, fmt.Errorf("must return bool, not %s", cel.FormatCELType(t))
	}
	prg, err := env.Program(checked, cel.EvalOptions(cel.OptOptimize))
	if err != nil {
		return nil, fmt.Errorf("building program: %w", err)
	}
	return prg, nil
}

// celError keeps the first line of each of CEL's messages: the excerpt
// under it repeats the rule file, and "(in container ”)" says nothing.
func celError(msg string) error {
	var out []string
	for _, line := range strings.Split(msg, "\n") {
		if strings.HasPrefix(line, " |") || strings.TrimSpace(line) == "" {
			continue
		}
		out = append(out, strings.TrimSuffix(line, " (in container '')"))
	}
	return fmt.Errorf("%s", strings.Join(out, "; "))
}

// checkFields rejects a selection of a field the event, edge or node maps
// never carry (event.vaule), which CEL's map type cannot catch.
func checkFields(a *cel.Ast) error {
	native := a.NativeRep()
	var bad []string
	ast.PreOrderVisit(ast.NavigateAST(native), ast.NewExprVisitor(func(e ast.Expr) {
		if e.Kind() != ast.SelectKind {
			return
		}
		sel := e.AsSelect()
		op := sel.Operand()
		if op.Kind() != ast.IdentKind {
			return
		}
		var fields []string
		switch op.AsIdent() {
		case varEvent:
			fields = eventFields
		case varEdge:
			fields = edgeFields
		case varNode:
			fields = nodeFields
		default:
			return
		}
		for _, f := range fields {
			if f == sel.FieldName() {
				return
			}
		}
		loc := native.SourceInfo().GetStartLocation(e.ID())
		bad = append(bad, fmt.Sprintf("ERROR: <input>:%d:%d: undefined field '%s' of %s (want one of %s)",
			loc.Line(), loc.Column()+1, sel.FieldName(), op.AsIdent(), strings.Join(fields, ", ")))
	}))
	if len(bad) > 0 {
		return fmt.Errorf("%s", strings.Join(bad, "; "))
	}
	return nil
}

// activation resolves a condition's variables straight from the Input, so
// an evaluation builds no maps. It is pooled; the objects it hands out
// point back into it.
type activation struct {
	in     Input
	num    float64
	numSet bool
	event  obj
	edge   obj
	node   obj
	attrs  obj
	graph  graphVal
}

var activations = sync.Pool{New: func() any {
	a := &activation{}
	a.event = obj{kind: objEvent, a: a}
	a.edge = obj{kind: objEdge, a: a}
	a.node = obj{kind: objNode, a: a}
	a.attrs = obj{kind: objAttrs, a: a}
	a.graph = graphVal{a: a}
	return a
}}

func getActivation(in *Input) *activation {
	a := activations.Get().(*activation)
	a.in = *in
	a.numSet = false
	return a
}

func (a *activation) release() {
	a.in = Input{}
	activations.Put(a)
}

// ResolveName implements cel.Activation.
func (a *activation) ResolveName(name string) (any, bool) {
	switch name {
	case varEvent:
		return &a.event, true
	case varEdge:
		return &a.edge, true
	case varNode:
		return &a.node, true
	case varGraph:
		return &a.graph, true
	}
	return nil, false
}

// Parent implements cel.Activation.
func (a *activation) Parent() cel.Activation { return nil }

func (a *activation) eventNum() float64 {
	if !a.numSet {
		a.num, _ = a.in.Event.Num()
		a.numSet = true
	}
	return a.num
}

type objKind uint8

const (
	objEvent objKind = iota + 1
	objEdge
	objNode
	objAttrs
)

// obj is one of the map variables, read lazily from the activation's Input.
type obj struct {
	kind objKind
	a    *activation
}

var (
	_ ref.Val       = (*obj)(nil)
	_ traits.Mapper = (*obj)(nil)
)

func (o *obj) keys() []string {
	switch o.kind {
	case objEvent:
		return eventFields
	case objEdge:
		return edgeFields
	case objNode:
		return nodeFields
	}
	ks := make([]string, 0, len(o.a.in.Event.Attrs))
	for _, at := range o.a.in.Event.Attrs {
		ks = append(ks, at.Key)
	}
	return ks
}

func (o *obj) field(name string) (ref.Val, bool) {
	in := &o.a.in
	switch o.kind {
	case objEvent:
		ev := in.Event
		switch name {
		case "ts":
			return types.Int(ev.TS), true
		case "event_type":
			return types.String(ev.Type), true
		case "entity_id":
			return types.String(ev.EntityID), true
		case "node_id":
			return types.String(ev.NodeID), true
		case "job_id":
			return types.String(ev.JobID), true
		case "pid":
			return types.Int(ev.PID), true
		case "value":
			return types.String(ev.Value), true
		case "num":
			return types.Double(o.a.eventNum()), true
		case "attrs":
			return &o.a.attrs, true
		}
	case objEdge:
		switch name {
		case "type":
			if in.Edge.Type == 0 {
				return types.String(""), true
			}
			return types.String(in.Edge.Type.String()), true
		case "from":
			return types.String(in.Edge.From), true
		case "to":
			return types.String(in.Edge.To), true
		}
	case objNode:
		switch name {
		case "pid":
			return types.Int(in.Process.PID), true
		case "job_id":
			return types.String(in.Process.JobID), true
		case "state":
			return types.String(in.Process.State), true
		case "rank":
			return types.String(in.Process.Rank), true
		}
	case objAttrs:
		if v, ok := in.Event.Attrs.Lookup(name); ok {
			return types.String(v), true
		}
	}
	return nil, false
}

// Find implements traits.Mapper.
func (o *obj) Find(key ref.Val) (ref.Val, bool) {
	k, ok := key.(types.String)
	if !ok {
		return nil, false
	}
	return o.field(string(k))
}

// Get implements traits.Indexer.
func (o *obj) Get(key ref.Val) ref.Val {
	if v, ok := o.Find(key); ok {
		return v
	}
	return types.NewErr("no such key: %v", key)
}

// Contains implements traits.Container.
func (o *obj) Contains(key ref.Val) ref.Val {
	_, ok := o.Find(key)
	return types.Bool(ok)
}

// Size implements traits.Sizer.
func (o *obj) Size() ref.Val { return types.Int(len(o.keys())) }

// Iterator implements traits.Iterable over the keys.
func (o *obj) Iterator() traits.Iterator {
	return types.NewStringList(types.DefaultTypeAdapter, o.keys()).Iterator()
}

// Type implements ref.Val.
func (o *obj) Type() ref.Type { return types.MapType }

// Value implements ref.Val with a native copy.
func (o *obj) Value() any {
	m := make(map[string]any)
	for _, k := range o.keys() {
		v, _ := o.field(k)
		m[k] = v.Value()
	}
	return m
}

// ConvertToNative implements ref.Val.
func (o *obj) ConvertToNative(t reflect.Type) (any, error) {
	m := o.Value()
	if reflect.TypeOf(m).AssignableTo(t) {
		return m, nil
	}
	return nil, fmt.Errorf("type conversion error from map to %v", t)
}

// ConvertToType implements ref.Val.
func (o *obj) ConvertToType(t ref.Type) ref.Val {
	switch t {
	case types.MapType:
		return o
	case types.TypeType:
		return types.MapType
	}
	return types.NewErr("type conversion error from map to %s", t.TypeName())
}

// Equal implements ref.Val: maps are equal when they hold the same keys
// with equal values.
func (o *obj) Equal(other ref.Val) ref.Val {
	m, ok := other.(traits.Mapper)
	if !ok {
		return types.False
	}
	ks := o.keys()
	if m.Size() != types.Int(len(ks)) {
		return types.False
	}
	for _, k := range ks {
		ov, found := m.Find(types.String(k))
		if !found {
			return types.False
		}
		v, _ := o.field(k)
		if v.Equal(ov) != types.True {
			return types.False
		}
	}
	return types.True
}

// graphVal is the `graph` variable: the Input's Graph for the event's host.
type graphVal struct{ a *activation }

var _ ref.Val = (*graphVal)(nil)

func (g *graphVal) target() (Graph, string) {
	return g.a.in.Graph, g.a.in.Event.NodeID
}

func (g *graphVal) errors(pid ref.Val) ref.Val {
	gr, node := g.target()
	p, _ := pid.Value().(int64)
	if gr == nil || p == 0 {
		return types.NewRefValList(types.DefaultTypeAdapter, nil)
	}
	errs := gr.ErrorsReachable(node, p)
	out := make([]ref.Val, 0, len(errs))
	for _, e := range errs {
		out = append(out, types.NewStringInterfaceMap(types.DefaultTypeAdapter, map[string]any{
			"entity_id":  e.EntityID,
			"event_type": string(e.EventType),
			"severity":   e.Severity,
			"xid":        int64(e.XID),
			"summary":    e.Summary,
		}))
	}
	return types.NewRefValList(types.DefaultTypeAdapter, out)
}

func (g *graphVal) fatalReachable(pid ref.Val) ref.Val {
	gr, node := g.target()
	p, _ := pid.Value().(int64)
	if gr == nil || p == 0 {
		return types.False
	}
	for _, e := range gr.ErrorsReachable(node, p) {
		if e.Severity == xid.SeverityFatal.String() {
			return types.True
		}
	}
	return types.False
}

func (g *graphVal) waitsOn(pid, prefix ref.Val) ref.Val {
	gr, node := g.target()
	p, _ := pid.Value().(int64)
	s, _ := prefix.Value().(string)
	if gr == nil || p == 0 {
		return types.False
	}
	return types.Bool(gr.WaitsOn(node, p, s))
}

// Type implements ref.Val.
func (g *graphVal) Type() ref.Type { return graphType }

// Value implements ref.Val.
func (g *graphVal) Value() any { return g.a.in.Graph }

// ConvertToNative implements ref.Val.
func (g *graphVal) ConvertToNative(t reflect.Type) (any, error) {
	return nil, fmt.Errorf("type conversion error from ark.Graph to %v", t)
}

// ConvertToType implements ref.Val.
func (g *graphVal) ConvertToType(t ref.Type) ref.Val {
	if t == types.TypeType {
		return graphType
	}
	return types.NewErr("type conversion error from ark.Graph to %s", t.TypeName())
}

// Equal implements ref.Val.
func (g *graphVal) Equal(other ref.Val) ref.Val { return types.Bool(other == ref.Val(g)) }
