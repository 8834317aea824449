// Command recordgen writes a large incident recording for `ark analyze`
// benchmarks: one training job over many hosts, each host's events in time
// order and the hosts' logs joined one after another, as a post-mortem
// collects them. Halfway through, one GPU on one host falls off the bus
// (XID 79) and every rank stalls waiting on its peers.
//
//	recordgen -hosts 64 -events 1300000 -o /tmp/incident.jsonl
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
)

// Shape of the cluster: 8 GPUs and 8 ranks per host.
const (
	gpusPerHost = 8
	t0          = int64(1764299880000)
	tickMS      = 100
)

type gen struct {
	hosts, perHost int
	job            string
	faultHost      int
}

func main() {
	hosts := flag.Int("hosts", 64, "hosts in the job")
	events := flag.Int("events", 1_300_000, "events to write, about")
	out := flag.String("o", "-", "output file, - for stdout")
	job := flag.String("job", "train/big", "job id")
	flag.Parse()
	if *hosts < 2 || *events < *hosts*64 {
		fmt.Fprintln(os.Stderr, "recordgen: need -hosts >= 2 and at least 64 events per host")
		os.Exit(2)
	}
	var w io.Writer = os.Stdout
	if *out != "-" {
		f, err := os.Create(*out)
		if err != nil {
			fmt.Fprintln(os.Stderr, "recordgen:", err)
			os.Exit(1)
		}
		defer func() { _ = f.Close() }()
		w = f
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	g := gen{hosts: *hosts, perHost: *events / *hosts, job: *job, faultHost: *hosts / 3}
	for h := range g.hosts {
		g.host(bw, h)
	}
	if err := bw.Flush(); err != nil {
		fmt.Fprintln(os.Stderr, "recordgen:", err)
		os.Exit(1)
	}
}

// host writes one host's log: placement, then a tick of samples per rank
// until the host's share of events is written.
func (g gen) host(w *bufio.Writer, h int) {
	var b []byte
	node := "node-" + strconv.Itoa(h)
	n := 0
	emit := func() {
		b = append(b, '\n')
		_, _ = w.Write(b)
		n++
	}
	pid := func(r int) int { return 10000 + h*100 + r }
	addr := func(host, r int) string {
		return "10." + strconv.Itoa(host/250) + "." + strconv.Itoa(host%250) + ".1:" + strconv.Itoa(29500+r)
	}
	for r := range gpusPerHost {
		b = fmt.Appendf(b[:0], `{"ts":%d,"event_type":"intent.run","entity_id":"pid-%d","node_id":%q,"value":"running","pid":%d,"job_id":%q,"attrs":{"rank":"%d","addr":"%s"}}`,
			t0, pid(r), node, pid(r), g.job, h*gpusPerHost+r, addr(h, r))
		emit()
	}
	// Each tick writes six events per rank.
	ticks := (g.perHost - n) / (6 * gpusPerHost)
	faultTick := ticks / 2
	for t := range ticks {
		ts := t0 + int64(t+1)*tickMS
		stalled := t > faultTick
		for r := range gpusPerHost {
			p := pid(r)
			util := 90 + (t+r)%10
			if stalled {
				util = 0
			}
			b = fmt.Appendf(b[:0], `{"ts":%d,"event_type":"compute.util","entity_id":"gpu-%d","node_id":%q,"value":%d,"pid":%d,"job_id":%q}`,
				ts, r, node, util, p, g.job)
			emit()
			b = fmt.Appendf(b[:0], `{"ts":%d,"event_type":"compute.mem","entity_id":"gpu-%d","node_id":%q,"value":%d,"pid":%d,"job_id":%q}`,
				ts, r, node, 60<<30+t*4096+r, p, g.job)
			emit()
			peer := addr((h+1)%g.hosts, r)
			b = fmt.Appendf(b[:0], `{"ts":%d,"event_type":"transport.bw","entity_id":"network-ib%d","node_id":%q,"value":%d,"pid":%d,"job_id":%q,"attrs":{"peer":"%s"}}`,
				ts, r%4, node, 20_000_000_000+t*1000+r, p, g.job, peer)
			emit()
			drops := 0
			if stalled {
				drops = 1 + t%3
			}
			b = fmt.Appendf(b[:0], `{"ts":%d,"event_type":"transport.drop","entity_id":"network-ib%d","node_id":%q,"value":%d,"pid":%d,"job_id":%q,"attrs":{"peer":"%s"}}`,
				ts, r%4, node, drops, p, g.job, peer)
			emit()
			b = fmt.Appendf(b[:0], `{"ts":%d,"event_type":"storage.iops","entity_id":"storage-nvme0n1","node_id":%q,"value":%d,"pid":%d,"job_id":%q}`,
				ts, node, 1200+t%50, p, g.job)
			emit()
			state := "R"
			if stalled {
				state = "stalled"
			}
			b = fmt.Appendf(b[:0], `{"ts":%d,"event_type":"process.state","entity_id":"pid-%d","node_id":%q,"value":%q,"pid":%d,"job_id":%q}`,
				ts, p, node, state, p, g.job)
			emit()
		}
		if h == g.faultHost && t == faultTick {
			b = fmt.Appendf(b[:0], `{"ts":%d,"event_type":"error.hw","entity_id":"gpu-3","node_id":%q,"value":"GPU has fallen off the bus","attrs":{"xid":"79","pci_bus":"0000:3b:00.0","severity":"fatal"}}`,
				ts, node)
			emit()
		}
	}
}
