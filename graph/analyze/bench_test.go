//go:build linux

package analyze

import (
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/ark-gpu/ark/graph"
)

// BenchmarkAnalyzeRecording replays the recording named by
// ARK_BENCH_RECORDING end to end (map, decode, order, apply, why) and
// reports events per second. hack/bench-analyze.sh builds a 1.3 M-event,
// 64-host recording with hack/recordgen and runs it.
func BenchmarkAnalyzeRecording(b *testing.B) {
	path := os.Getenv("ARK_BENCH_RECORDING")
	if path == "" {
		b.Skip("ARK_BENCH_RECORDING is not set: hack/bench-analyze.sh builds a recording and runs this")
	}
	job := os.Getenv("ARK_BENCH_JOB")
	if job == "" {
		job = "train/big"
	}
	var events uint64
	cpu0 := cpuTime(b)
	for b.Loop() {
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		rep, err := Run(f, Options{Target: graph.Target{JobID: job}})
		_ = f.Close()
		if err != nil {
			b.Fatal(err)
		}
		if !rep.Found || len(rep.Causes) == 0 {
			b.Fatalf("%s: no cause found in the recording", job)
		}
		events += rep.Events
	}
	cpu := cpuTime(b) - cpu0
	b.ReportMetric(float64(events)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(events)/cpu.Seconds(), "events/cpu-s")
}

func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
