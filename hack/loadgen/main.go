// Command loadgen prints a realistic steady agent load as JSONL on stdout,
// for measuring the agent as an exec probe: per-GPU samples at 1 Hz for the
// ranks on each GPU, and network events at a fixed rate.
//
//	loadgen -gpus 8 -ranks 64 -net-rate 1000 -duration 60s
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"time"
)

func main() {
	gpus := flag.Int("gpus", 8, "GPUs on the host")
	ranks := flag.Int("ranks", 64, "ranks (processes) on the host")
	netRate := flag.Int("net-rate", 1000, "network events per second")
	duration := flag.Duration("duration", time.Minute, "how long to run (0: forever)")
	job := flag.String("job", "train/bench", "job id")
	flag.Parse()

	w := bufio.NewWriterSize(os.Stdout, 1<<16)
	defer func() { _ = w.Flush() }()
	now := func() int64 { return time.Now().UnixMilli() }
	for r := range *ranks {
		fmt.Fprintf(w, `{"ts":%d,"event_type":"intent.run","entity_id":"pid-%d","value":"running","pid":%d,"job_id":%q,"attrs":{"rank":"%d","addr":"10.0.0.1:%d"}}`+"\n",
			now(), 100000+r, 100000+r, *job, r, 29500+r)
	}
	if err := w.Flush(); err != nil {
		return
	}
	end := time.Now().Add(*duration)
	tick := time.NewTicker(10 * time.Millisecond) // 100 slices a second
	defer tick.Stop()
	slice, netDone := 0, 0
	for range tick.C {
		if *duration > 0 && time.Now().After(end) {
			return
		}
		ts := now()
		if slice%100 == 0 {
			for r := range *ranks {
				g := r % *gpus
				fmt.Fprintf(w, `{"ts":%d,"event_type":"compute.util","entity_id":"gpu-%d","value":"%d","pid":%d,"job_id":%q}`+"\n", ts, g, 90+r%10, 100000+r, *job)
				fmt.Fprintf(w, `{"ts":%d,"event_type":"compute.mem","entity_id":"gpu-%d","value":"%d","pid":%d,"job_id":%q}`+"\n", ts, g, 40<<30+r, 100000+r, *job)
			}
		}
		// Spread the network events evenly over the slices of a second.
		want := (slice%100 + 1) * *netRate / 100
		for ; netDone < want; netDone++ {
			r := netDone % *ranks
			if netDone%10 == 0 {
				fmt.Fprintf(w, `{"ts":%d,"event_type":"transport.drop","entity_id":"network-ib0","value":"0","pid":%d,"job_id":%q,"attrs":{"peer":"10.0.0.2:%d"}}`+"\n", ts, 100000+r, *job, 29500+r)
			} else {
				fmt.Fprintf(w, `{"ts":%d,"event_type":"transport.bw","entity_id":"network-ib0","value":"%d","pid":%d,"job_id":%q}`+"\n", ts, 20_000_000_000+netDone, 100000+r, *job)
			}
		}
		if slice%100 == 99 {
			netDone = 0
		}
		slice++
		if err := w.Flush(); err != nil {
			return // the agent went away
		}
	}
}
