package llm

import (
	"strings"
	"testing"
)

func TestReplaceKeepsWordsWhole(t *testing.T) {
	a := NewAnonymizer()
	a.Add(Host, "node-1")
	a.Add(Host, "node-10")
	a.Add(IP, "10.9.0.3")
	a.Add(Job, "train/example")
	got := a.Replace("node-1/pid-3 waits on node-10/gpu-0 via 10.9.0.3:29500, not 10.9.0.31; job/train/example")
	want := "HOST_1/pid-3 waits on HOST_2/gpu-0 via IP_1:29500, not 10.9.0.31; job/JOB_1"
	if got != want {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
}

func TestScanFindsAddressesAndPaths(t *testing.T) {
	a := NewAnonymizer()
	a.Scan(`ckpt write to /data/alice/run7 failed; peer 192.168.4.20 and fe80::1:2 unreachable (value=/mnt/x)`)
	got := a.Replace(`/data/alice/run7 192.168.4.20 fe80::1:2 /mnt/x 15:04:05`)
	if got != "PATH_1 IP_1 IP_2 PATH_2 15:04:05" {
		t.Fatalf("got %q", got)
	}
}

func TestRestoreMapsBackAndMarksInventedNames(t *testing.T) {
	a := NewAnonymizer()
	a.Add(Host, "gpu-node-a17")
	out, unknown := a.Restore("HOST_1 lost gpu-6; HOST_7 looks fine")
	if out != "gpu-node-a17 lost gpu-6; HOST_7 "+Unknown+" looks fine" || len(unknown) != 1 || unknown[0] != "HOST_7" {
		t.Fatalf("got %q %v", out, unknown)
	}
}

func TestRestorerJoinsPlaceholdersSplitAcrossDeltas(t *testing.T) {
	a := NewAnonymizer()
	a.Add(Host, "gpu-node-a17")
	a.Add(Job, "team-x/llama")
	r := a.NewRestorer()
	var b strings.Builder
	for _, d := range []string{"On HO", "ST_", "1 the job JOB", "_1 stalled; HOST_", "9"} {
		b.WriteString(r.Write(d))
	}
	b.WriteString(r.Flush())
	if got := b.String(); got != "On gpu-node-a17 the job team-x/llama stalled; HOST_9 "+Unknown {
		t.Fatalf("got %q", got)
	}
	if len(r.Unknown) != 1 || r.Unknown[0] != "HOST_9" {
		t.Fatalf("unknown %v", r.Unknown)
	}
}
