package kmsg

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

type fixtureCase struct {
	lineNo int
	kind   string
	code   int
	bus    string
	pid    int64
	name   string
	line   string
}

func readFixture(t *testing.T) []fixtureCase {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "xid-lines.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var cases []fixtureCase
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		text := sc.Text()
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.SplitN(text, "\t", 6)
		if len(fields) != 6 {
			t.Fatalf("xid-lines.txt:%d: %d fields, want 6", n, len(fields))
		}
		dash := func(s string) string {
			if s == "-" {
				return ""
			}
			return s
		}
		c := fixtureCase{lineNo: n, kind: fields[0], bus: dash(fields[2]), name: dash(fields[4]), line: fields[5]}
		if c.kind == "xid" {
			if c.code, err = strconv.Atoi(fields[1]); err != nil {
				t.Fatalf("xid-lines.txt:%d: code: %v", n, err)
			}
			if c.pid, err = strconv.ParseInt(fields[3], 10, 64); err != nil {
				t.Fatalf("xid-lines.txt:%d: pid: %v", n, err)
			}
		}
		cases = append(cases, c)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return cases
}

func TestParseXIDReadsEveryFixtureLine(t *testing.T) {
	cases := readFixture(t)
	var xids int
	for _, c := range cases {
		x, st := parse([]byte(c.line))
		got, ok := ParseXID([]byte(c.line))
		if ok != (st == isXID) || got != x {
			t.Errorf("line %d: ParseXID and parse disagree", c.lineNo)
		}
		switch c.kind {
		case "xid":
			xids++
			if st != isXID {
				t.Errorf("line %d: not parsed (status %d): %s", c.lineNo, st, c.line)
				continue
			}
			if x.Code != c.code || x.PCIBus != c.bus || x.PID != c.pid || x.PIDKnown != (c.pid > 0) || x.Name != c.name {
				t.Errorf("line %d: got code=%d bus=%q pid=%d known=%v name=%q, want code=%d bus=%q pid=%d name=%q",
					c.lineNo, x.Code, x.PCIBus, x.PID, x.PIDKnown, x.Name, c.code, c.bus, c.pid, c.name)
			}
			if x.Message == "" {
				t.Errorf("line %d: empty message", c.lineNo)
			}
		case "none":
			if st != notXID {
				t.Errorf("line %d: look-alike got status %d, want not an XID line: %s", c.lineNo, st, c.line)
			}
		default:
			if st.reason() != c.kind {
				t.Errorf("line %d: got reason %q, want %q: %s", c.lineNo, st.reason(), c.kind, c.line)
			}
		}
	}
	if xids < 20 {
		t.Errorf("fixture has %d XID lines, want at least 20", xids)
	}
}

func TestParseXIDSplitsPidNameAndMessage(t *testing.T) {
	tests := []struct {
		name string
		line string
		want XID
	}{
		{
			name: "pid and name",
			line: "NVRM: Xid (PCI:0000:9b:00): 79, pid=1582259, name=python, GPU has fallen off the bus.",
			want: XID{Code: 79, PCIBus: "0000:9b:00", PID: 1582259, PIDKnown: true, Name: "python", Message: "GPU has fallen off the bus."},
		},
		{
			name: "no pid",
			line: "NVRM: Xid (PCI:0000:3b:00): 48, An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at partition 6, subpartition 0.",
			want: XID{Code: 48, PCIBus: "0000:3b:00", Message: "An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at partition 6, subpartition 0."},
		},
		{
			name: "quoted unknown pid",
			line: "NVRM: Xid (PCI:0000:07:00): 63, pid='<unknown>', name=<unknown>, Row Remapper: New row (0x0000000f9ec21c91) marked for remapping, reset gpu to activate.",
			want: XID{Code: 63, PCIBus: "0000:07:00", Message: "Row Remapper: New row (0x0000000f9ec21c91) marked for remapping, reset gpu to activate."},
		},
		{
			name: "nvlink5 with unknown pid",
			line: "NVRM: Xid (PCI:0008:01:00): 145, pid=<unknown>, name=<unknown>, NVLINK: RLW Error",
			want: XID{Code: 145, PCIBus: "0008:01:00", Message: "NVLINK: RLW Error"},
		},
		{
			name: "recovery action",
			line: "NVRM: Xid (PCI:0000:17:00): 154, GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)",
			want: XID{Code: 154, PCIBus: "0000:17:00", Message: "GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)"},
		},
		{
			name: "kmsg record with dictionary lines",
			line: "4,1234,5678901234,-;NVRM: Xid (PCI:0000:9b:00): 79, pid=1582259, name=python, GPU has fallen off the bus.\n SUBSYSTEM=pci\n DEVICE=+pci:0000:9b:00.0\n",
			want: XID{Code: 79, PCIBus: "0000:9b:00", PID: 1582259, PIDKnown: true, Name: "python", Message: "GPU has fallen off the bus."},
		},
		{
			name: "upper case bus with function, trailing CR",
			line: "[  42.000001] NVRM: Xid (PCI:0000:9B:00.0): 79, pid=0, GPU has fallen off the bus.\r",
			want: XID{Code: 79, PCIBus: "0000:9b:00", Message: "GPU has fallen off the bus."},
		},
		{
			name: "no message",
			line: "NVRM: Xid (PCI:0000:9b:00): 43, pid=10226, name=python",
			want: XID{Code: 43, PCIBus: "0000:9b:00", PID: 10226, PIDKnown: true, Name: "python"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ParseXID([]byte(tt.line))
			if !ok {
				t.Fatalf("not parsed: %q", tt.line)
			}
			if got != tt.want {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestRecoveryActionNamesTheNewAction(t *testing.T) {
	code, name, ok := recoveryAction("GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)")
	if !ok || code != "0x2" || name != "Node Reboot Required" {
		t.Errorf("got %q %q %v", code, name, ok)
	}
	if _, _, ok := recoveryAction("GPU recovery action changed"); ok {
		t.Error("a message without a target action parsed")
	}
}

func TestParseXIDDoesNotAllocateOnOtherLines(t *testing.T) {
	var lines [][]byte
	for _, c := range readFixture(t) {
		if c.kind != "xid" {
			lines = append(lines, []byte(c.line))
		}
	}
	for _, l := range noiseTemplates {
		lines = append(lines, []byte(l))
	}
	var matched int
	allocs := testing.AllocsPerRun(100, func() {
		for _, l := range lines {
			if _, ok := ParseXID(l); ok {
				matched++
			}
		}
	})
	if matched != 0 {
		t.Fatalf("%d non-XID lines matched", matched/101)
	}
	if allocs != 0 {
		t.Errorf("ParseXID allocated %.1f times over %d non-XID lines, want 0", allocs, len(lines))
	}
}
