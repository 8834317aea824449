package arkreceiver

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/confmaptest"

	"github.com/ark-gpu/ark/collector-receiver/arkreceiver/internal/metadata"
	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probes/execprobe"
)

func TestLoadConfig(t *testing.T) {
	cm, err := confmaptest.LoadConf(filepath.Join("testdata", "config.yaml"))
	require.NoError(t, err)
	storageID := component.MustNewID("file_storage")
	allCfg := &Config{
		Include:       []string{"/var/log/ark/*.jsonl", "/var/log/gpu/*.jsonl"},
		StartAt:       StartAtEnd,
		PollInterval:  time.Second,
		StorageID:     &storageID,
		Listen:        ListenConfig{Endpoint: "/run/ark/events.sock", Transport: "unix"},
		MaxLineBytes:  131072,
		MaxBatch:      1000,
		FlushInterval: 500 * time.Millisecond,
		HostName:      "node-7",
		K8sNodeName:   true,
		Exec: execprobe.Config{Programs: []execprobe.ProgramConfig{{
			Name:    "nccl-watch",
			Command: "/opt/probes/nccl-watch.py",
			Args:    []string{"--interval", "5s"},
			Env:     execprobe.EnvVars{"PYTHONUNBUFFERED=1"},
			Restart: execprobe.RestartOnFailure,
			Backoff: execprobe.BackoffConfig{
				Initial:    2 * time.Second,
				Max:        execprobe.DefaultBackoffMax,
				ResetAfter: execprobe.DefaultBackoffResetAfter,
			},
			MaxEventsPerSecond:      execprobe.DefaultMaxEventsPerSecond,
			MaxLineBytes:            execprobe.DefaultMaxLineBytes,
			MaxStderrLinesPerSecond: execprobe.DefaultMaxStderrLinesPerSecond,
			ShutdownGrace:           execprobe.DefaultShutdownGrace,
		}}},
	}
	defaultCfg := createDefaultConfig().(*Config)
	defaultCfg.Include = []string{"/var/log/ark/*.jsonl"}

	tests := []struct {
		id      component.ID
		want    *Config
		wantErr string
	}{
		{id: component.NewID(metadata.Type), want: defaultCfg},
		{id: component.NewIDWithName(metadata.Type, "all"), want: allCfg},
		{
			id: component.NewIDWithName(metadata.Type, "bad"),
			wantErr: `include "/var/log/[*.jsonl": syntax error in pattern
start_at must be "beginning" or "end", got "middle"
poll_interval must be positive, got 0s
listen.transport must be tcp or unix, got "udp"
max_line_bytes must be positive, got -1
max_batch must be positive, got 0
flush_interval must be positive, got -1s`,
		},
		{id: component.NewIDWithName(metadata.Type, "noinput"), wantErr: "no input: set include, listen.endpoint or exec.programs"},
		{id: component.NewIDWithName(metadata.Type, "storage_without_files"), wantErr: "storage is set but no file is included"},
		{
			id: component.NewIDWithName(metadata.Type, "badexec"),
			wantErr: `exec: exec probe "nccl-watch": command is required
exec probe "nccl-watch": invalid restart policy "sometimes" (want always, on-failure or never)
exec probe "nccl-watch": backoff.max (1s) must not be less than backoff.initial (10s)
exec probe programs[1]: name is required`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.id.String(), func(t *testing.T) {
			cfg := NewFactory().CreateDefaultConfig()
			sub, err := cm.Sub(tt.id.String())
			require.NoError(t, err)
			require.NoError(t, sub.Unmarshal(cfg))
			err = confmap.Validate(cfg)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Equal(t, tt.wantErr, err.Error())
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, cfg)
		})
	}
}

func TestDefaultConfigReadsWholeLinesOfTheAgentsSize(t *testing.T) {
	cfg := createDefaultConfig().(*Config)
	assert.Equal(t, event.DefaultMaxLineBytes, cfg.MaxLineBytes)
	assert.Equal(t, StartAtBeginning, cfg.StartAt)
	assert.True(t, cfg.HostEventsPerJob)
	assert.EqualError(t, cfg.Validate(), "no input: set include, listen.endpoint or exec.programs")
}
