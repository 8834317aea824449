package exporter

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"testing"
	"time"

	"github.com/ark-gpu/ark/internal/fakeclock"
	"github.com/ark-gpu/ark/internal/fold"
	"github.com/ark-gpu/ark/rules"
)

func TestRepeatedRuleMatchesAreFoldedWithACount(t *testing.T) {
	var buf bytes.Buffer
	clock := fakeclock.New(time.Unix(1764300000, 0))
	c := &control{
		a:    &Agent{log: slog.New(slog.NewJSONHandler(&buf, nil)), cfg: Config{Now: clock.Now}},
		loud: fold.New[matchKey, rules.Match](matchLogWindow, 4096),
	}
	xid := rules.Match{Rule: "xid-fatal", EntityID: "gpu-3", Message: "Xid 79"}
	for range 2000 {
		c.logMatch(xid)
		clock.Advance(10 * time.Millisecond)
	}
	c.logMatch(rules.Match{Rule: "xid-fatal", EntityID: "gpu-4", Message: "Xid 79"})
	clock.Advance(matchLogWindow)
	c.logMatch(xid) // the window ended: its summary, then a new first line

	type line struct {
		Msg     string `json:"msg"`
		Rule    string `json:"rule"`
		Entity  string `json:"entity"`
		Repeats int    `json:"repeats"`
	}
	var got []line
	for _, b := range bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n")) {
		var l line
		if err := json.Unmarshal(b, &l); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		got = append(got, l)
	}
	want := map[line]int{
		{Msg: "rule matched", Rule: "xid-fatal"}:                                       3, // gpu-3 twice (two windows), gpu-4 once
		{Msg: "rule matched again", Rule: "xid-fatal", Entity: "gpu-3", Repeats: 1999}: 1,
	}
	for _, l := range got {
		l.Entity = map[bool]string{true: l.Entity, false: ""}[l.Msg == "rule matched again"]
		want[l]--
	}
	for l, n := range want {
		if n != 0 {
			t.Errorf("%+v: %d lines more than wanted (negative: missing); got %d lines in all:\n%s", l, -n, len(got), buf.String())
		}
	}
	if len(got) != 4 {
		t.Errorf("got %d log lines for 2,002 matches, want 4:\n%s", len(got), buf.String())
	}
}
