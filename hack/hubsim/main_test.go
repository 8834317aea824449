package main

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/graphsvc/hubd"
	"github.com/ark-gpu/ark/link"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const t0 = int64(1_764_300_000_000)

func TestFramesAreWhatTheLinkDecodes(t *testing.T) {
	c := newCluster(4, 2, 1, 1, t0)
	snap := c.hosts[1].snapshot(t0)
	var errs []event.Event
	fault(c.hosts[1], 3, 48, t0, 0, func(_ *host, evs []event.Event) { errs = append(errs, evs...) })
	evs := append(snap, errs...)
	f, err := link.Decode(frameBytes(nil, link.TypeEvents, 42, false, evs))
	if err != nil {
		t.Fatal(err)
	}
	if f.Type != link.TypeEvents || f.Seq != 42 || len(f.Events) != len(evs) {
		t.Fatalf("decoded %s seq %d with %d events, want events seq 42 with %d", f.Type, f.Seq, len(f.Events), len(evs))
	}
	for i := range evs {
		if got, want := string(event.AppendJSON(nil, &f.Events[i])), string(event.AppendJSON(nil, &evs[i])); got != want {
			t.Errorf("event %d: decoded %s, sent %s", i, got, want)
		}
	}
	f, err = link.Decode(frameBytes(nil, link.TypeSnapshot, 0, true, snap))
	if err != nil || f.Type != link.TypeSnapshot || !f.Done {
		t.Fatalf("snapshot frame: %+v %v", f.Type, err)
	}
}

// simulate ticks the cluster's folders for d from t0 and returns every
// host's forwarded events.
func simulate(c *cluster, from int64, d time.Duration) map[*host][]event.Event {
	out := map[*host][]event.Event{}
	for now := from; now < from+d.Milliseconds(); now += tickEvery.Milliseconds() {
		for _, h := range c.hosts {
			out[h] = h.tick(now, out[h])
		}
	}
	return out
}

func TestSteadyFoldedStreamIsAboutTheRateAndKeepsEveryKeyAlive(t *testing.T) {
	for _, rate := range []float64{1, 2} {
		c := newCluster(64, 64, rate, 1, t0)
		out := simulate(c, t0, 10*time.Minute)
		var n int
		for _, h := range c.hosts {
			n += len(out[h])
			last := map[string]int64{}
			for _, ev := range out[h] {
				k := string(ev.Type) + ev.EntityID + ev.Attrs.Get(event.AttrPeer) + string(rune(ev.PID))
				if p, ok := last[k]; ok && ev.TS-p > keepAliveMS+tickEvery.Milliseconds() {
					t.Fatalf("%s: %s %s forwarded %d ms after the previous one", h.name, ev.Type, ev.EntityID, ev.TS-p)
				}
				last[k] = ev.TS
			}
		}
		got := float64(n) / 600 / 64
		if got < 0.8*rate || got > 1.2*rate {
			t.Errorf("rate %.1f: %.2f events/s/host forwarded, want within 20%%", rate, got)
		}
	}
}

func TestAFaultStallsTheJobTowardTheFaultyRankUntilItRecovers(t *testing.T) {
	c := newCluster(8, 4, 0.5, 1, t0)
	h := c.hosts[2]
	faulty := h.addr(5)
	got := map[*host][]event.Event{}
	fault(h, 5, 79, t0, 30_000, func(o *host, evs []event.Event) { got[o] = append(got[o], evs...) })
	if ev := got[h][0]; ev.Type != event.ErrorHW || ev.EntityID != "gpu-5" || ev.Attrs.Get(event.AttrXID) != "79" ||
		!strings.Contains(ev.Value, "Xid 79") {
		t.Errorf("the faulty host's first event is %+v, want XID 79 on gpu-5", ev)
	}
	stalled, dropping := 0, 0
	for _, o := range h.job.hosts {
		for _, ev := range got[o] {
			switch {
			case ev.Type == event.ProcessState && ev.Value == "D":
				stalled++
			case ev.Type == event.TransportDrop && ev.Attrs.Get(event.AttrPeer) == faulty && ev.Value != "0":
				dropping++
			}
		}
	}
	if ranks := len(h.job.hosts) * gpusPerHost; stalled != ranks || dropping != ranks-1 {
		t.Errorf("%d ranks stalled and %d dropping toward %s, want %d and %d", stalled, dropping, faulty, ranks, ranks-1)
	}
	for _, o := range c.hosts {
		if o.job != h.job && len(got[o]) > 0 {
			t.Errorf("%s of another job got %d events", o.name, len(got[o]))
		}
	}

	after := simulate(c, t0+30_000, time.Second)
	for _, o := range h.job.hosts {
		for r := range gpusPerHost {
			if s := o.keys[r*keysPerRank+int(kState)].str; s != "R" {
				t.Errorf("%s rank %d is %q after the job recovered", o.name, r, s)
			}
		}
		for i, k := range o.keys {
			if k.kind == kDrop && k.peer == faulty && (!k.gone && i >= gpusPerHost*keysPerRank+2 || k.num != 0) {
				t.Errorf("%s: the drop key toward %s is still live: %+v", o.name, faulty, k)
			}
		}
		var ends int
		for _, ev := range after[o] {
			if ev.Type == event.TransportDrop && ev.Attrs.Get(event.AttrPeer) == faulty && ev.Value == "0" {
				ends++
			}
		}
		if want := gpusPerHost; o == h {
			if ends != want-1 {
				t.Errorf("%s forwarded %d drops ending, want %d", o.name, ends, want-1)
			}
		} else if ends != want {
			t.Errorf("%s forwarded %d drops ending, want %d", o.name, ends, want)
		}
	}
}

func TestSimulationAgainstAHubFindsTheInjectedFault(t *testing.T) {
	hub, err := hubd.New(hubd.Config{Token: "secret"})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- hub.Serve(ctx, ln, "", "") }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Error(err)
		}
	}()

	cfg := defaultConfig()
	cfg.Hub, cfg.Token = "http://"+ln.Addr().String(), "secret"
	cfg.Agents, cfg.OverloadAgents = 128, 16
	cfg.Steady, cfg.Overload, cfg.Settle = 2*time.Second, time.Second, time.Second
	cfg.WhyEvery, cfg.FaultEvery, cfg.FaultHold = 20*time.Millisecond, 500*time.Millisecond, time.Second
	// The phase hook is called at each boundary, in order.
	dir := t.TempDir()
	hooked := filepath.Join(dir, "hooked")
	cfg.PhaseHook = filepath.Join(dir, "hook")
	if err := os.WriteFile(cfg.PhaseHook, []byte("#!/bin/sh\necho \"$1\" >>"+hooked+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	s, err := newSim(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := s.run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	rep.print(&out, cfg)
	t.Log("\n" + out.String())
	if rep.Connected != 128 || rep.Final[`ark_hub_link_agents{state="connected"}`] != 128 {
		t.Errorf("%d agents connected, the hub counts %v, want 128", rep.Connected, rep.Final[`ark_hub_link_agents{state="connected"}`])
	}
	if w := rep.Steady.Why; w.N == 0 || w.Errors > 0 || !w.Last.names(rep.WhyExpected) || w.Last.Ranks != 512 {
		t.Errorf("why in the steady phase: %d answers, %d errors (%s), last %+v; want XID 79 on %s over 512 ranks",
			w.N, w.Errors, w.Err, w.Last, rep.WhyExpected)
	}
	if rep.Steady.HubEvents <= 0 || rep.Overload.HubEvents <= rep.Steady.HubEvents*float64(rep.Overload.Elapsed)/float64(rep.Steady.Elapsed) {
		t.Errorf("hub applied %.0f events steady, %.0f overloaded: the overload should ingest more", rep.Steady.HubEvents, rep.Overload.HubEvents)
	}
	if !strings.HasPrefix(rep.FixResult, "dry_run from "+strings.Split(rep.WhyExpected, "/")[0]) {
		t.Errorf("fix: %s", rep.FixResult)
	}
	if r := rep.Final["ark_hub_events_rejected_total"] + rep.Final["ark_hub_frames_rejected_total"]; r != 0 {
		t.Errorf("the hub rejected %.0f events or frames", r)
	}
	if b, err := os.ReadFile(hooked); err != nil || string(b) != "steady\nsteady-done\noverload\noverload-done\n" {
		t.Errorf("phase hook calls %q (%v), want steady, steady-done, overload, overload-done", b, err)
	}
}

// A failing phase hook ends the run with an error that names the phase;
// without one, nothing runs.
func TestPhaseHookFailureIsAnError(t *testing.T) {
	s := &sim{cfg: config{PhaseHook: "false"}}
	if err := s.hook(context.Background(), "steady-done"); err == nil || !strings.Contains(err.Error(), "false steady-done") {
		t.Errorf("failing hook: %v, want an error naming it and the phase", err)
	}
	s.cfg.PhaseHook = ""
	if err := s.hook(context.Background(), "steady"); err != nil {
		t.Errorf("no hook: %v", err)
	}
}
