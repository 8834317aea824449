package exporter

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/ark-gpu/ark/exporter/probe"
)

// FileConfig is the agent's config file: one section per probe, and the
// executor's section.
//
//	probes:
//	  exec:
//	    programs:
//	      - name: nccl-watch
//	        command: /opt/probes/nccl-watch
//	  kmsg:
//	    dedup_window: 10s
type FileConfig struct {
	Probes   map[string]yaml.Node `yaml:"probes" json:"probes"`
	Executor yaml.Node            `yaml:"executor" json:"executor"`
}

// Decode decodes a top-level section ("executor") strictly into v; an
// absent section leaves v as it is.
func (fc *FileConfig) Decode(section string, v any) error {
	if fc == nil || section != "executor" || fc.Executor.Kind == 0 {
		return nil
	}
	return decodeNode(section, &fc.Executor, v)
}

func decodeNode(name string, node *yaml.Node, v any) error {
	raw, err := yaml.Marshal(node)
	if err != nil {
		return fmt.Errorf("%s config: %w", name, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("%s config: %s", name, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	return nil
}

// LoadConfig parses a config file's contents strictly: unknown top-level
// keys are errors. Probe sections are checked by their probes.
func LoadConfig(data []byte) (*FileConfig, error) {
	var fc FileConfig
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&fc); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return &fc, nil
}

// LoadConfigFile reads and parses path.
func LoadConfigFile(path string) (*FileConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading agent config: %w", err)
	}
	fc, err := LoadConfig(data)
	if err != nil {
		return nil, fmt.Errorf("parsing agent config %s: %w", path, err)
	}
	return fc, nil
}

// section returns a decoder for one probe's section: strict, and a no-op
// when the section is absent.
func (fc *FileConfig) section(name string) func(v any) error {
	return func(v any) error {
		if fc == nil {
			return nil
		}
		node, ok := fc.Probes[name]
		if !ok || node.Kind == 0 {
			return nil
		}
		return decodeNode("probe "+name, &node, v)
	}
}

// checkProbes reports every section under probes: that names no known
// probe, like the unknown keys everywhere else in the file.
func (fc *FileConfig) checkProbes(specs []probe.Spec) error {
	if fc == nil {
		return nil
	}
	known := make([]string, len(specs))
	for i, s := range specs {
		known[i] = s.Name
	}
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(fc.Probes)) {
		if !slices.Contains(known, name) {
			errs = append(errs, fmt.Errorf("agent config: probes: unknown probe %q (known: %s)", name, strings.Join(known, ", ")))
		}
	}
	return errors.Join(errs...)
}
