package nvmlprobe

import (
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ark-gpu/ark/exporter/probe"
)

// yamlConfig decodes text strictly, as the agent decodes a probe's section.
func yamlConfig(text string) func(v any) error {
	return func(v any) error {
		if text == "" {
			return nil
		}
		dec := yaml.NewDecoder(strings.NewReader(text))
		dec.KnownFields(true)
		return dec.Decode(v)
	}
}

func TestConfigDefaultsOverridesAndErrors(t *testing.T) {
	for _, c := range []struct {
		name    string
		yaml    string
		want    Config
		wantErr string
	}{
		{name: "no section", want: Config{Interval: time.Second, XIDEvents: true}},
		{name: "interval only", yaml: "interval: 5s\n", want: Config{Interval: 5 * time.Second, XIDEvents: true}},
		{name: "xid events off", yaml: "xid_events: false\n", want: Config{Interval: time.Second}},
		{name: "too short", yaml: "interval: 10ms\n", wantErr: `nvml: invalid interval "10ms": must be at least 100ms`},
		{name: "zero", yaml: "interval: 0s\n", wantErr: `nvml: invalid interval "0s": must be at least 100ms`},
		{name: "unknown key", yaml: "intervall: 1s\n", wantErr: "nvml: reading config: yaml: unmarshal errors:\n  line 1: field intervall not found in type nvmlprobe.Config"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, 1, 0)
			p, err := New(probe.Env{Config: yamlConfig(c.yaml)}, r.srv)
			if c.wantErr != "" {
				if err == nil || err.Error() != c.wantErr {
					t.Fatalf("New error = %v, want %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.cfg != c.want {
				t.Errorf("config = %+v, want %+v", p.cfg, c.want)
			}
		})
	}
}
