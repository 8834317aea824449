package event

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"testing"
)

// benchStream builds a realistic agent stream: mostly utilization and
// bandwidth samples, some drops with a peer, an occasional XID.
func benchStream(n int) []byte {
	var buf bytes.Buffer
	ts := int64(1764300000000)
	for i := range n {
		pid := 3000 + i%64
		gpu := i % 8
		switch i % 10 {
		case 0, 1, 2:
			fmt.Fprintf(&buf, `{"ts":%d,"event_type":"compute.util","entity_id":"gpu-%d","node_id":"node-17","value":"%d","pid":%d,"job_id":"train/llama-70b"}`+"\n", ts, gpu, 80+i%20, pid)
		case 3, 4:
			fmt.Fprintf(&buf, `{"ts":%d,"event_type":"compute.mem","entity_id":"gpu-%d","node_id":"node-17","value":%d,"pid":%d,"job_id":"train/llama-70b"}`+"\n", ts, gpu, 40<<30+i, pid)
		case 5, 6:
			fmt.Fprintf(&buf, `{"ts":%d,"event_type":"transport.bw","entity_id":"network-ib0","node_id":"node-17","value":"20423938499","pid":%d,"job_id":"train/llama-70b"}`+"\n", ts, pid)
		case 7:
			fmt.Fprintf(&buf, `{"ts":%d,"event_type":"process.state","entity_id":"pid-%d","node_id":"node-17","value":"R","pid":%d,"job_id":"train/llama-70b"}`+"\n", ts, pid, pid)
		case 8:
			fmt.Fprintf(&buf, `{"ts":%d,"event_type":"transport.drop","entity_id":"network-ib0","node_id":"node-17","value":"3","pid":%d,"job_id":"train/llama-70b","attrs":{"peer":"10.9.0.3:29501"}}`+"\n", ts, pid)
		case 9:
			if i%1000 == 9 {
				fmt.Fprintf(&buf, `{"ts":%d,"event_type":"error.hw","entity_id":"gpu-%d","node_id":"node-17","value":"Xid 79: GPU has fallen off the bus.","pid":%d,"attrs":{"xid":"79","pci_bus":"0000:c1:00"}}`+"\n", ts, gpu, pid)
			} else {
				fmt.Fprintf(&buf, `{"ts":%d,"event_type":"storage.iops","entity_id":"storage-nvme0n1","node_id":"node-17","value":1520,"pid":%d}`+"\n", ts, pid)
			}
		}
		if i%64 == 63 {
			ts += 1000
		}
	}
	return buf.Bytes()
}

// BenchmarkDecode measures the streaming decoder: events/s and allocs/event
// on a realistic mix.
func BenchmarkDecode(b *testing.B) {
	const n = 10000
	data := benchStream(n)
	b.SetBytes(int64(len(data) / n))
	b.ReportAllocs()
	r := bytes.NewReader(data)
	d := NewDecoder(r)
	var ev Event
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		err := d.Decode(&ev)
		if errors.Is(err, io.EOF) {
			r.Reset(data)
			d = NewDecoder(r)
			err = d.Decode(&ev)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkEncode measures the encoder.
func BenchmarkEncode(b *testing.B) {
	ev := Event{TS: 1764300000000, Type: TransportDrop, EntityID: "network-ib0", NodeID: "node-17", Value: "3",
		PID: 3001, JobID: "train/llama-70b", Attrs: Attrs{{AttrPeer, "10.9.0.3:29501"}}}
	enc := NewEncoder(io.Discard)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if err := enc.Encode(&ev); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
