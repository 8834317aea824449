package arkreceiver

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/open-telemetry/opentelemetry-collector-contrib/extension/storage/filestorage"
	"github.com/open-telemetry/opentelemetry-collector-contrib/pkg/golden"
	"github.com/open-telemetry/opentelemetry-collector-contrib/pkg/pdatatest/pmetrictest"
	"github.com/open-telemetry/opentelemetry-collector-contrib/pkg/pdatatest/ptracetest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/extension"
	"go.opentelemetry.io/collector/extension/extensiontest"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/exporter/probes/execprobe"
	"github.com/ark-gpu/ark/graphsvc"
)

var update = flag.Bool("update", false, "rewrite the golden files")

const incident = "../../testdata/scenarios/xid79-4node.jsonl"

// TestShippedIncidentMatchesGoldenMetricsAndTraces reads the shipped
// incident in one batch and compares both signals with the golden files.
func TestShippedIncidentMatchesGoldenMetricsAndTraces(t *testing.T) {
	cfg := testConfig(incident)
	cfg.MaxBatch = 1 << 20 // the whole file in one batch: one golden file each
	s := startReceiver(t, cfg, nil)
	require.Eventually(t, func() bool {
		return len(s.traces.AllTraces()) == 1 && len(s.metrics.AllMetrics()) == 1
	}, 30*time.Second, 20*time.Millisecond)

	// The golden files are kept gzipped (megabytes of YAML otherwise).
	mPath := filepath.Join("testdata", "golden", "xid79-4node-metrics.yaml.gz")
	tPath := filepath.Join("testdata", "golden", "xid79-4node-traces.yaml.gz")
	tmp := t.TempDir()
	mYAML, tYAML := filepath.Join(tmp, "metrics.yaml"), filepath.Join(tmp, "traces.yaml")
	if *update {
		require.NoError(t, golden.WriteMetrics(t, mYAML, s.metrics.AllMetrics()[0], golden.SkipMetricTimestampNormalization()))
		require.NoError(t, golden.WriteTraces(t, tYAML, s.traces.AllTraces()[0]))
		gzipFile(t, mYAML, mPath)
		gzipFile(t, tYAML, tPath)
	}
	gunzipFile(t, mPath, mYAML)
	gunzipFile(t, tPath, tYAML)
	wantM, err := golden.ReadMetrics(mYAML)
	require.NoError(t, err)
	require.NoError(t, pmetrictest.CompareMetrics(wantM, s.metrics.AllMetrics()[0],
		pmetrictest.IgnoreMetricDataPointsOrder(), pmetrictest.IgnoreResourceMetricsOrder(), pmetrictest.IgnoreMetricsOrder()))
	wantT, err := golden.ReadTraces(tYAML)
	require.NoError(t, err)
	require.NoError(t, ptracetest.CompareTraces(wantT, s.traces.AllTraces()[0],
		ptracetest.IgnoreResourceSpansOrder(), ptracetest.IgnoreSpansOrder()))
}

// TestShippedIncidentTracesRebuildTheSameEvents: the hub reading the
// receiver's spans gets back every event of the file, plus one copy of
// the XID per job (here one job, so the XID now carries it).
func TestShippedIncidentTracesRebuildTheSameEvents(t *testing.T) {
	cfg := testConfig(incident)
	cfg.MaxBatch = 1 << 20
	s := startReceiver(t, cfg, nil)
	require.Eventually(t, func() bool { return len(s.traces.AllTraces()) == 1 }, 30*time.Second, 20*time.Millisecond)

	got, dropped := graphsvc.TracesToEvents(s.traces.AllTraces()[0])
	require.Zero(t, dropped.Total())
	f, err := os.Open(incident)
	require.NoError(t, err)
	defer f.Close()
	dec := event.NewDecoder(f)
	var want []event.Event
	for {
		var ev event.Event
		if err := dec.Decode(&ev); err != nil {
			break
		}
		if ev.Type == event.ErrorHW && ev.JobID == "" {
			ev.JobID = "train/example"
		}
		want = append(want, ev)
	}
	require.Len(t, got, len(want))
	byNode := func(evs []event.Event) map[string][]string {
		m := map[string][]string{}
		for i := range evs {
			m[evs[i].NodeID] = append(m[evs[i].NodeID], string(event.AppendJSON(nil, &evs[i])))
		}
		return m
	}
	assert.Equal(t, byNode(want), byNode(got))
}

func TestHostFaultIsSentOncePerJobUsingTheDevice(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "in.jsonl")
	writeFile(t, path, strings.Join([]string{
		`{"ts":1764300000,"event_type":"intent.run","entity_id":"pid-1","node_id":"n1","pid":1,"job_id":"a","value":"running","attrs":{"rank":"0"}}`,
		`{"ts":1764300000,"event_type":"intent.run","entity_id":"pid-2","node_id":"n1","pid":2,"job_id":"b","value":"running","attrs":{"rank":"0"}}`,
		`{"ts":1764300000,"event_type":"intent.run","entity_id":"pid-3","node_id":"n2","pid":3,"job_id":"c","value":"running","attrs":{"rank":"0"}}`,
		`{"ts":1764300001,"event_type":"compute.util","entity_id":"gpu-0","node_id":"n1","pid":1,"value":90}`,
		`{"ts":1764300001,"event_type":"transport.bw","entity_id":"network-ib0","node_id":"n1","pid":2,"value":100}`,
		`{"ts":1764300001,"event_type":"compute.util","entity_id":"gpu-0","node_id":"n1","pid":2,"value":90}`,
		`{"ts":1764300001,"event_type":"compute.util","entity_id":"gpu-0","node_id":"n2","pid":3,"value":90}`,
		`{"ts":1764300002,"event_type":"error.hw","entity_id":"gpu-0","node_id":"n1","value":"Xid 79","attrs":{"xid":"79"}}`,
		`{"ts":1764300002,"event_type":"topo.link_down","entity_id":"network-ib0","node_id":"n1","value":"1"}`,
		`{"ts":1764300002,"event_type":"error.hw","entity_id":"gpu-5","node_id":"n1","value":"Xid 48","attrs":{"xid":"48"}}`,
	}, "\n")+"\n")
	cfg := testConfig(path)
	s := startReceiver(t, cfg, nil)
	require.Eventually(t, func() bool { return len(s.traces.AllTraces()) == 1 }, 30*time.Second, 20*time.Millisecond)
	evs, _ := graphsvc.TracesToEvents(s.traces.AllTraces()[0])
	var faults []string
	for _, ev := range evs {
		if ev.Type.IsError() || ev.Type == event.TopoLinkDown {
			faults = append(faults, ev.NodeID+"/"+ev.EntityID+" job="+ev.JobID)
		}
	}
	assert.Equal(t, []string{
		"n1/gpu-0 job=a", "n1/gpu-0 job=b", // both jobs use the GPU; n2's gpu-0 is another device
		"n1/network-ib0 job=b",
		"n1/gpu-5 job=", // nobody uses it: sent once, by host
	}, faults)
	td := s.traces.AllTraces()[0]
	traceOf := map[string]string{}
	for _, rs := range td.ResourceSpans().All() {
		for _, sp := range rs.ScopeSpans().At(0).Spans().All() {
			if job, ok := sp.Attributes().Get(graphsvc.AttrJobID); ok && sp.Name() == "error.hw" {
				traceOf[job.Str()] = sp.TraceID().String()
			}
		}
	}
	assert.Equal(t, graphsvc.TraceIDFor(&event.Event{JobID: "a"}).String(), traceOf["a"], "the copy for job a is in a's trace")
	assert.Equal(t, graphsvc.TraceIDFor(&event.Event{JobID: "b"}).String(), traceOf["b"])
}

// TestTailFollowsRotationAndResumesAfterRestart: lines appended just
// before a rename are read from the renamed file, the new file from its
// start, and after a restart exactly the lines written while the
// receiver was down: every line once.
func TestTailFollowsRotationAndResumesAfterRestart(t *testing.T) {
	dir := t.TempDir()
	logs := filepath.Join(dir, "logs")
	require.NoError(t, os.Mkdir(logs, 0o755))
	path := filepath.Join(logs, "events.jsonl")
	store := filepath.Join(dir, "storage")
	require.NoError(t, os.Mkdir(store, 0o755))
	appendSeq(t, path, 0, 50)

	cfg := testConfig(filepath.Join(logs, "*.jsonl"))
	storageID := component.MustNewID("file_storage")
	cfg.StorageID = &storageID
	cfg.StartAt = StartAtEnd // a checkpoint wins over start_at after a restart

	run := func() *started {
		host := newStorageHost(t, storageID, store)
		return startReceiver(t, cfg, host)
	}
	// First run, first poll: start_at end skips the existing 50 lines.
	s1 := run()
	// Wait for the first poll to have opened the file at its end.
	require.Eventually(t, func() bool { return s1.rcv.tail != nil && tailOpen(s1.rcv) == 1 }, 10*time.Second, 10*time.Millisecond)
	appendSeq(t, path, 50, 80)
	require.NoError(t, os.Rename(path, path+".1")) // not included any more
	appendSeq(t, path+".1", 80, 90)                // the writer still had it open
	appendSeq(t, path, 90, 120)
	require.Eventually(t, func() bool { return len(spanValues(s1.traces.AllTraces())) >= 70 }, 30*time.Second, 10*time.Millisecond)
	s1.stop(t)

	appendSeq(t, path, 120, 150) // while the receiver is down
	s2 := run()
	appendSeq(t, path, 150, 151) // a sentinel: anything repeated arrives before it
	require.Eventually(t, func() bool {
		v := spanValues(s2.traces.AllTraces())
		return len(v) > 0 && v[len(v)-1] == "150"
	}, 30*time.Second, 10*time.Millisecond)

	values := append(spanValues(s1.traces.AllTraces()), spanValues(s2.traces.AllTraces())...)
	var want []string
	for i := 50; i <= 150; i++ {
		want = append(want, fmt.Sprint(i))
	}
	assert.Equal(t, want, values, "every line after the start once, in order")
}

// TestTruncatedFileIsReadFromItsStart: copytruncate rotation.
func TestTruncatedFileIsReadFromItsStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.jsonl")
	appendSeq(t, path, 0, 20)
	s := startReceiver(t, testConfig(path), nil)
	require.Eventually(t, func() bool { return len(spanValues(s.traces.AllTraces())) == 20 }, 30*time.Second, 10*time.Millisecond)
	require.NoError(t, os.Truncate(path, 0))
	require.Eventually(t, func() bool { return tailOffset(s.rcv) == 0 }, 10*time.Second, 10*time.Millisecond)
	appendSeq(t, path, 20, 25)
	require.Eventually(t, func() bool { return len(spanValues(s.traces.AllTraces())) == 25 }, 30*time.Second, 10*time.Millisecond)
	requireEachOnce(t, spanValues(s.traces.AllTraces()), 25)
}

// TestBadLinesAreCountedAndTheRestFlows: every kind of bad line, and an
// unfinished last line once the file is rotated away, is counted by
// reason in the receiver's own metrics; the good lines around them flow.
func TestBadLinesAreCountedAndTheRestFlows(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "events.jsonl")
	writeFile(t, path, seqLine(0)+
		"this is not json\n"+
		`{"ts":1764300000000,"event_type":"gpu.melted","entity_id":"gpu-0","value":1}`+"\n"+
		`{"event_type":"compute.util","entity_id":"gpu-0","value":1}`+"\n"+
		`{"ts":1764300000000,"event_type":"compute.util","entity_id":"gpu-0","value":"`+strings.Repeat("9", 300)+`"}`+"\n"+
		`{"ts":"yesterday","event_type":"compute.util","entity_id":"gpu-0","value":1}`+"\n"+
		seqLine(1)+
		`{"ts":1764300000000,"event_type":"compu`) // the writer died here
	cfg := testConfig(filepath.Join(dir, "*.jsonl"))
	cfg.MaxLineBytes = 256
	s := startReceiver(t, cfg, nil)
	require.Eventually(t, func() bool { return len(spanValues(s.traces.AllTraces())) == 2 }, 30*time.Second, 10*time.Millisecond)
	require.NoError(t, os.Rename(path, path+".old"))
	want := map[string]int64{
		event.ReasonNotJSON:      2, // the text and the unfinished line
		event.ReasonUnknownType:  1,
		event.ReasonMissingField: 1,
		event.ReasonTooLong:      1,
		event.ReasonInvalidField: 1,
	}
	require.Eventually(t, func() bool { return assert.ObjectsAreEqual(want, s.rejected()) }, 30*time.Second, 10*time.Millisecond,
		"rejected %v", s.rejected())
	assert.Equal(t, []string{"0", "1"}, spanValues(s.traces.AllTraces()))
}

func TestSocketAcceptsJSONLFromSeveralConnections(t *testing.T) {
	cfg := createDefaultConfig().(*Config)
	cfg.Listen = ListenConfig{Endpoint: "127.0.0.1:0", Transport: "tcp"}
	cfg.FlushInterval = 10 * time.Millisecond
	s := startReceiver(t, cfg, nil)
	addr := s.rcv.sock.Addr().String()
	for c := range 2 {
		conn, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		w := bufio.NewWriter(conn)
		for i := range 10 {
			_, _ = w.WriteString(seqLine(c*10 + i))
		}
		_, _ = w.WriteString("{broken\n")
		require.NoError(t, w.Flush())
		require.NoError(t, conn.Close())
	}
	require.Eventually(t, func() bool { return len(spanValues(s.traces.AllTraces())) == 20 }, 30*time.Second, 10*time.Millisecond)
	requireEachOnce(t, spanValues(s.traces.AllTraces()), 20)
	require.Eventually(t, func() bool { return s.rejected()[event.ReasonNotJSON] == 2 }, 10*time.Second, 10*time.Millisecond)
}

func TestUnixSocketAcceptsJSONL(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ark.sock")
	cfg := createDefaultConfig().(*Config)
	cfg.Listen = ListenConfig{Endpoint: sock, Transport: "unix"}
	cfg.FlushInterval = 10 * time.Millisecond
	s := startReceiver(t, cfg, nil)
	conn, err := net.Dial("unix", sock)
	require.NoError(t, err)
	_, err = conn.Write([]byte(seqLine(0)))
	require.NoError(t, err)
	require.NoError(t, conn.Close())
	require.Eventually(t, func() bool { return len(spanValues(s.traces.AllTraces())) == 1 }, 30*time.Second, 10*time.Millisecond)
}

func TestExecProbeEventsFlowWithTheAgentsSemantics(t *testing.T) {
	cfg := createDefaultConfig().(*Config)
	cfg.FlushInterval = 10 * time.Millisecond
	cfg.Exec.Programs = []execprobe.ProgramConfig{{
		Name:    "printer",
		Command: "/bin/sh",
		Args:    []string{"-c", "printf '%s' '" + seqLine(0) + seqLine(1) + "not json\n'; exec sleep 3600"},
		Restart: "never",
	}}
	cfg.Exec.SetDefaults()
	require.NoError(t, cfg.Validate())
	s := startReceiver(t, cfg, nil)
	require.Eventually(t, func() bool { return len(spanValues(s.traces.AllTraces())) == 2 }, 30*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool { return s.rejected()[event.ReasonNotJSON] == 1 }, 10*time.Second, 10*time.Millisecond)
	// Shutdown (at cleanup) stops the sleeping child: goleak and the
	// probe's own group kill would fail otherwise.
}

func TestMetricsFollowTheDocumentedMapping(t *testing.T) {
	b := newMetricsBuilder(true)
	evs := []event.Event{
		{TS: 1000, Type: event.ComputeUtil, EntityID: "gpu-1", NodeID: "n1", PID: 7, JobID: "j", Value: "85"},
		{TS: 1000, Type: event.ErrorHW, EntityID: "gpu-1", NodeID: "n1", Value: "Xid 79", Attrs: event.Attrs{{Key: "xid", Value: "79"}}},
		{TS: 2000, Type: event.ErrorHW, EntityID: "gpu-1", NodeID: "n1", Value: "Xid 79", Attrs: event.Attrs{{Key: "xid", Value: "79"}}},
		{TS: 2000, Type: event.TopoLinkDown, EntityID: "network-ib0", NodeID: "n1", Value: "0"},
		{TS: 2000, Type: event.ComputeMem, EntityID: "gpu-1", NodeID: "n1", Value: "lots"}, // not a number: no point
	}
	md := b.build(evs)
	require.Equal(t, 1, md.ResourceMetrics().Len())
	res := md.ResourceMetrics().At(0).Resource().Attributes()
	host, _ := res.Get("host.name")
	node, _ := res.Get("k8s.node.name")
	assert.Equal(t, "n1", host.Str())
	assert.Equal(t, "n1", node.Str())
	ms := md.ResourceMetrics().At(0).ScopeMetrics().At(0).Metrics()
	require.Equal(t, 3, ms.Len())
	util := ms.At(0)
	assert.Equal(t, "hw.gpu.utilization", util.Name())
	assert.InDelta(t, 0.85, util.Gauge().DataPoints().At(0).DoubleValue(), 1e-9)
	attrs := util.Gauge().DataPoints().At(0).Attributes().AsRaw()
	assert.Equal(t, map[string]any{"hw.id": "gpu-1", "hw.type": "gpu", "process.pid": int64(7), "ark.job_id": "j"}, attrs)
	errs := ms.At(1)
	assert.Equal(t, "hw.errors", errs.Name())
	assert.True(t, errs.Sum().IsMonotonic())
	require.Equal(t, 2, errs.Sum().DataPoints().Len())
	assert.Equal(t, int64(2), errs.Sum().DataPoints().At(1).IntValue(), "cumulative")
	assert.Equal(t, errs.Sum().DataPoints().At(0).StartTimestamp(), errs.Sum().DataPoints().At(1).StartTimestamp())
	// The next batch goes on counting.
	md = b.build(evs[1:2])
	assert.Equal(t, int64(3), md.ResourceMetrics().At(0).ScopeMetrics().At(0).Metrics().At(0).Sum().DataPoints().At(0).IntValue())
	link := ms.At(2)
	assert.Equal(t, "ark.link.down", link.Name())
	assert.Zero(t, link.Gauge().DataPoints().At(0).DoubleValue(), "value 0 means back up")
}

// tailOpen is how many files the tailer holds open.
func tailOpen(r *arkReceiver) int {
	r.deliverMu.Lock()
	defer r.deliverMu.Unlock()
	return len(r.tail.files)
}

func tailOffset(r *arkReceiver) int64 {
	r.deliverMu.Lock()
	defer r.deliverMu.Unlock()
	for _, tf := range r.tail.files {
		return tf.offset
	}
	return -1
}

// storageHost offers one real file_storage extension.
type storageHost struct {
	component.Host
	exts map[component.ID]component.Component
}

func (h storageHost) GetExtensions() map[component.ID]component.Component { return h.exts }

func newStorageHost(t *testing.T, id component.ID, dir string) component.Host {
	t.Helper()
	f := filestorage.NewFactory()
	cfg := f.CreateDefaultConfig().(*filestorage.Config)
	cfg.Directory = dir
	ext, err := f.Create(context.Background(), extensiontest.NewNopSettings(f.Type()), cfg)
	require.NoError(t, err)
	require.NoError(t, ext.Start(context.Background(), componenttest.NewNopHost()))
	t.Cleanup(func() { require.NoError(t, ext.Shutdown(context.Background())) })
	return storageHost{Host: componenttest.NewNopHost(), exts: map[component.ID]component.Component{id: extension.Extension(ext)}}
}
