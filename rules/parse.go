package rules

import (
	"bytes"
	"embed"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"
)

// Error is a problem with one rule, located in its file.
type Error struct {
	File string // the file as it was named to the loader
	Line int    // 1-based; 0 when the whole file is at fault
	Rule string // the rule's name, when it got that far
	Err  error
}

// Error formats the problem as "file:line: rule \"name\": message".
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	if e.Rule != "" {
		fmt.Fprintf(&b, "rule %q: ", e.Rule)
	}
	b.WriteString(e.Err.Error())
	return b.String()
}

// Unwrap returns the underlying problem.
func (e *Error) Unwrap() error { return e.Err }

//go:embed defaults/*.yaml
var defaultsFS embed.FS

var (
	defaultsOnce  sync.Once
	defaultRules  []*Rule
	defaultsError []error
)

func loadDefaults() {
	names, err := defaultsFS.ReadDir("defaults")
	if err != nil {
		defaultsError = []error{fmt.Errorf("reading embedded default rules: %w", err)}
		return
	}
	for _, n := range names {
		name := path.Join("defaults", n.Name())
		data, err := defaultsFS.ReadFile(name)
		if err != nil {
			defaultsError = append(defaultsError, fmt.Errorf("reading embedded %s: %w", name, err))
			continue
		}
		rs, errs := parseFile("rules/"+name, data)
		defaultRules = append(defaultRules, rs...)
		defaultsError = append(defaultsError, errs...)
	}
}

// Defaults returns the embedded default rule set (rules/defaults/*.yaml).
// They are tested, so a failure to load them is a bug and panics.
func Defaults() *RuleSet {
	defaultsOnce.Do(loadDefaults)
	if len(defaultsError) > 0 {
		panic(fmt.Sprintf("rules: embedded defaults do not load: %v", defaultsError))
	}
	rs, errs := build(defaultRules, nil)
	if len(errs) > 0 {
		panic(fmt.Sprintf("rules: embedded defaults do not load: %v", errs))
	}
	return rs
}

// Parse loads the rules of one file's content; name is used in errors. A
// bad rule is reported and left out; the others load.
func Parse(name string, data []byte) (*RuleSet, []error) {
	rs, errs := parseFile(name, data)
	set, more := build(rs, nil)
	return set, append(errs, more...)
}

// LoadFiles loads the rules of the named files, in order. A file that
// cannot be read or a bad rule is reported; the other rules load.
func LoadFiles(files ...string) (*RuleSet, []error) {
	var all []*Rule
	var errs []error
	for _, f := range files {
		rs, fe := readFile(f)
		all = append(all, rs...)
		errs = append(errs, fe...)
	}
	set, more := build(all, nil)
	return set, append(errs, more...)
}

// LoadDir loads every *.yaml and *.yml file of dir (not its
// subdirectories, nor hidden files), in name order.
func LoadDir(dir string) (*RuleSet, []error) {
	files, err := ruleFiles(dir)
	if err != nil {
		set, _ := build(nil, nil)
		return set, []error{err}
	}
	return LoadFiles(files...)
}

// Check validates the rule files of dir (or the single file dir names)
// offline, for `ark rules check`: it returns every problem found.
func Check(dir string) []error {
	fi, err := os.Stat(dir)
	if err != nil {
		return []error{fmt.Errorf("checking rules: %w", err)}
	}
	if !fi.IsDir() {
		_, errs := LoadFiles(dir)
		return errs
	}
	_, errs := LoadDir(dir)
	return errs
}

// ruleFiles lists the rule files of dir. Symlinks are followed so a
// Kubernetes ConfigMap mount (x.yaml -> ..data/x.yaml) works.
func ruleFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("reading rules directory: %w", err)
	}
	var files []string
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, ".") || (!strings.HasSuffix(n, ".yaml") && !strings.HasSuffix(n, ".yml")) {
			continue
		}
		p := filepath.Join(dir, n)
		fi, err := os.Stat(p)
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		files = append(files, p)
	}
	sort.Strings(files)
	return files, nil
}

func readFile(name string) ([]*Rule, []error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, []error{&Error{File: name, Err: fmt.Errorf("reading rule file: %w", err)}}
	}
	return parseFile(name, data)
}

// parseFile parses and compiles every document of a file. Documents are
// split on "---" lines before YAML sees them, so a syntax error in one
// leaves the others loadable.
func parseFile(name string, data []byte) ([]*Rule, []error) {
	var rules []*Rule
	var errs []error
	for _, d := range splitDocuments(data) {
		r, es := parseDocument(name, d.offset, d.text)
		errs = append(errs, es...)
		if r != nil && len(es) == 0 {
			rules = append(rules, r)
		}
	}
	return rules, errs
}

type document struct {
	offset int // lines of the file before the document's first line
	text   []byte
}

func isDocumentMarker(line []byte) bool {
	line = bytes.TrimRight(line, "\r\n")
	for _, m := range [][]byte{[]byte("---"), []byte("...")} {
		if bytes.Equal(line, m) || (bytes.HasPrefix(line, m) && (line[3] == ' ' || line[3] == '\t')) {
			return true
		}
	}
	return false
}

func splitDocuments(data []byte) []document {
	lines := bytes.SplitAfter(data, []byte("\n"))
	var docs []document
	start := 0
	flush := func(end int) {
		if end > start {
			docs = append(docs, document{offset: start, text: bytes.Join(lines[start:end], nil)})
		}
	}
	for i, l := range lines {
		if isDocumentMarker(l) {
			flush(i)
			// The marker line itself is kept blank so line numbers line up.
			lines[i] = []byte("\n")
			start = i
		}
	}
	flush(len(lines))
	return docs
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

func parseDocument(file string, offset int, text []byte) (*Rule, []error) {
	var root yaml.Node
	if err := yaml.Unmarshal(text, &root); err != nil {
		msg := err.Error()
		line := offset + 1
		if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
			n, _ := strconv.Atoi(m[1])
			line, msg = offset+n, "yaml: "+m[2]
		}
		return nil, []error{&Error{File: file, Line: line, Err: fmt.Errorf("%s", msg)}}
	}
	if root.Kind == 0 || len(root.Content) == 0 {
		return nil, nil // empty document: comments only
	}
	p := &ruleParser{file: file, offset: offset}
	r := p.rule(root.Content[0])
	sort.SliceStable(p.errs, func(i, j int) bool { return p.errs[i].Line < p.errs[j].Line })
	errs := make([]error, len(p.errs))
	for i, e := range p.errs {
		errs[i] = e
	}
	return r, errs
}

// ruleParser walks one document's nodes, so every error carries the line
// it is about and unknown fields are caught (strict YAML).
type ruleParser struct {
	file   string
	offset int
	name   string
	errs   []*Error
}

func (p *ruleParser) fail(n *yaml.Node, format string, args ...any) {
	p.errs = append(p.errs, &Error{File: p.file, Line: p.offset + n.Line, Rule: p.name, Err: fmt.Errorf(format, args...)})
}

// fields returns a mapping's values by key, reporting unknown and
// duplicate keys.
func (p *ruleParser) fields(n *yaml.Node, what string, known ...string) map[string]*yaml.Node {
	if n.Kind != yaml.MappingNode {
		p.fail(n, "%s must be a mapping", what)
		return nil
	}
	out := make(map[string]*yaml.Node, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		ok := false
		for _, f := range known {
			if k.Value == f {
				ok = true
				break
			}
		}
		prefix := what + ": "
		if what == "rule" {
			prefix = ""
		}
		switch {
		case !ok:
			p.fail(k, "%sunknown field %q", prefix, k.Value)
		case out[k.Value] != nil:
			p.fail(k, "%sduplicate field %q", prefix, k.Value)
		default:
			out[k.Value] = v
		}
	}
	return out
}

func (p *ruleParser) scalar(n *yaml.Node, what string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		p.fail(n, "%s must be a string", what)
		return "", false
	}
	return n.Value, true
}

func (p *ruleParser) rule(n *yaml.Node) *Rule {
	f := p.fields(n, "rule", "name", "description", "severity", "triggers", "actions", "cooldown")
	if f == nil {
		return nil
	}
	r := &Rule{File: p.file, Line: p.offset + n.Line, Severity: SeverityWarning, Cooldown: DefaultCooldown}
	if v := f["name"]; v != nil {
		r.Name, _ = p.scalar(v, "name")
	}
	if r.Name == "" {
		p.fail(n, "name is required")
	}
	p.name = r.Name
	// Errors found before the name was known get it now.
	for _, e := range p.errs {
		e.Rule = r.Name
	}
	if v := f["description"]; v != nil {
		r.Description, _ = p.scalar(v, "description")
	}
	if v := f["severity"]; v != nil {
		if s, ok := p.scalar(v, "severity"); ok {
			r.Severity = Severity(s)
			if !validSeverity(r.Severity) {
				p.fail(v, "invalid severity %q (want one of info, warning, critical)", s)
			}
		}
	}
	if v := f["cooldown"]; v != nil {
		if s, ok := p.scalar(v, "cooldown"); ok {
			d, err := time.ParseDuration(s)
			switch {
			case err != nil:
				p.fail(v, "invalid cooldown %q: want a duration like 30s or 5m", s)
			case d < 0:
				p.fail(v, "invalid cooldown %q: must not be negative", s)
			default:
				r.Cooldown = d
			}
		}
	}
	if v := f["triggers"]; v != nil && v.Kind != yaml.SequenceNode {
		p.fail(v, "triggers must be a list")
	} else if v == nil || len(v.Content) == 0 {
		at := n
		if v != nil {
			at = v
		}
		p.fail(at, "at least one trigger is required")
	} else {
		for _, t := range v.Content {
			if tr, ok := p.trigger(t); ok {
				r.Triggers = append(r.Triggers, tr)
			}
		}
	}
	if v := f["actions"]; v != nil {
		if v.Kind != yaml.SequenceNode {
			p.fail(v, "actions must be a list")
		} else {
			for _, a := range v.Content {
				if ac, ok := p.action(a); ok {
					r.Actions = append(r.Actions, ac)
				}
			}
		}
	}
	return r
}

func (p *ruleParser) trigger(n *yaml.Node) (Trigger, bool) {
	f := p.fields(n, "trigger", "event_type", "condition")
	if f == nil {
		return Trigger{}, false
	}
	var t Trigger
	ok := true
	if v := f["event_type"]; v == nil {
		p.fail(n, "trigger: event_type is required")
		ok = false
	} else if s, sok := p.scalar(v, "event_type"); sok {
		t.EventType = s
		if !validEventType(s) {
			p.fail(v, "unknown event type %q", s)
			ok = false
		}
	} else {
		ok = false
	}
	if v := f["condition"]; v != nil {
		s, sok := p.scalar(v, "condition")
		if !sok {
			return t, false
		}
		t.Condition = strings.TrimSpace(s)
		if t.Condition != "" {
			prg, err := compileCondition(t.Condition)
			if err != nil {
				p.fail(v, "condition: %w", err)
				return t, false
			}
			t.prg = prg
		}
	}
	return t, ok
}

func (p *ruleParser) action(n *yaml.Node) (Action, bool) {
	f := p.fields(n, "action", "type", "params")
	if f == nil {
		return Action{}, false
	}
	var a Action
	v := f["type"]
	if v == nil {
		p.fail(n, "action: type is required")
		return a, false
	}
	s, ok := p.scalar(v, "action type")
	if !ok {
		return a, false
	}
	a.Type = ActionType(s)
	if pv := f["params"]; pv != nil {
		if pv.Kind != yaml.MappingNode {
			p.fail(pv, "action %s: params must be a mapping", a.Type)
			return a, false
		}
		a.Params = make(map[string]string, len(pv.Content)/2)
		for i := 0; i+1 < len(pv.Content); i += 2 {
			k, val := pv.Content[i], pv.Content[i+1]
			if val.Kind != yaml.ScalarNode {
				p.fail(val, "action %s: param %q must be a string or a number", a.Type, k.Value)
				ok = false
				continue
			}
			if _, dup := a.Params[k.Value]; dup {
				p.fail(k, "action %s: duplicate param %q", a.Type, k.Value)
				ok = false
				continue
			}
			a.Params[k.Value] = val.Value
		}
	}
	if !ok {
		return a, false // a bad param would also read as missing
	}
	for _, err := range a.validate() {
		p.fail(v, "%w", err)
		ok = false
	}
	return a, ok
}
