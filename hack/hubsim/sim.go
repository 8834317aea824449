package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ark-gpu/ark/event"
	"github.com/ark-gpu/ark/link"
)

// tickEvery is how often the simulated forwarders flush (the forwarder's
// FlushEvery).
const tickEvery = 250 * time.Millisecond

// driveSlices spreads the hosts' ticks over the tick period.
const driveSlices = 250

// sim is one simulation run.
type sim struct {
	cfg        config
	log        *slog.Logger
	base       string // http://host:port
	wsURL      string
	token      string
	dialClient *http.Client
	apiClient  *http.Client
	bufs       bufPool

	c         *cluster
	agents    []*agent
	whyJob    string
	overload  atomic.Bool
	overEvery int // every overEvery-th agent overloads

	snapshotEvents, framesSent, eventsAcked, commands, linkFailures, faults atomic.Int64

	why atomic.Pointer[whyStats]
}

func newSim(cfg config, log *slog.Logger) (*sim, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	u, err := url.Parse(strings.TrimRight(cfg.Hub, "/"))
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("-hub %q: want http://host:port", cfg.Hub)
	}
	ws := *u
	ws.Scheme = map[string]string{"http": "ws", "https": "wss"}[u.Scheme]
	if ws.Scheme == "" {
		return nil, fmt.Errorf("-hub %q: want http:// or https://", cfg.Hub)
	}
	ws.Path = link.Path
	n := cfg.OverloadAgents
	if n <= 0 || n > cfg.Agents {
		n = cfg.Agents
	}
	return &sim{
		cfg: cfg, log: log, base: u.String(), wsURL: ws.String(), token: cfg.Token,
		dialClient: &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{}).DialContext}},
		apiClient:  &http.Client{Timeout: cfg.Timeout, Transport: &http.Transport{MaxIdleConnsPerHost: 4}},
		overEvery:  cfg.Agents / n,
	}, nil
}

func (s *sim) overloading(a *agent) bool {
	return s.overload.Load() && a.h.idx%s.overEvery == 0
}

// phaseStats is what one phase measured.
type phaseStats struct {
	Elapsed        time.Duration
	HubEvents      float64 // applied by the hub (ark_hub_events_received_total{source="link"})
	Acked, Frames  int64   // the simulator's own count
	HubCPU, SimCPU float64 // cores
	HubRSS, HubHWM int64   // KiB
	Why            whySummary
}

func (p phaseStats) rate() float64 { return p.HubEvents / p.Elapsed.Seconds() }

// report is a whole run's result.
type report struct {
	Agents, Connected   int
	Hosts, GPUs, Jobs   int
	Connect             time.Duration
	SnapshotEvents      int64
	SnapshotApplied     time.Duration // from the first dial to the hub having applied every snapshot
	Steady, Overload    phaseStats
	OverloadAgents      int
	WhyJob, WhyExpected string
	Faults              int64
	FixLatency          time.Duration
	FixResult           string
	Final               map[string]float64
	LinkFailures        int64
	SimRSS              int64
}

func (s *sim) run(ctx context.Context) (*report, error) {
	cfg := s.cfg
	rep := &report{Agents: cfg.Agents, Final: map[string]float64{}}
	defer s.apiClient.CloseIdleConnections()
	start := time.Now()
	s.c = newCluster(cfg.Agents, cfg.JobHosts, cfg.Rate, cfg.Seed, start.UnixMilli())
	rep.Hosts, rep.GPUs, rep.Jobs = len(s.c.hosts), len(s.c.hosts)*gpusPerHost, len(s.c.jobs)
	s.whyJob = s.c.jobs[0].id
	rep.WhyJob = s.whyJob
	if _, err := s.scrape(ctx); err != nil {
		return nil, fmt.Errorf("the hub does not answer: %w", err)
	}
	before, _ := s.scrape(ctx)

	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		s.closeAll()
		cancel()
		wg.Wait()
	}()

	// Connect.
	s.log.Info("connecting agents", "agents", cfg.Agents, "jobs", len(s.c.jobs))
	if err := s.connectAll(runCtx, &wg); err != nil {
		return rep, err
	}
	rep.Connected = len(s.agents)
	rep.Connect = time.Since(start)
	rep.SnapshotEvents = s.snapshotEvents.Load()
	s.log.Info("agents connected", "took", rep.Connect.Round(time.Millisecond), "snapshot_events", rep.SnapshotEvents)
	if err := s.waitApplied(ctx, before, float64(rep.SnapshotEvents)); err != nil {
		return rep, err
	}
	rep.SnapshotApplied = time.Since(start)

	// Steady: the folded stream, faults, and why asked repeatedly.
	wg.Go(func() { s.drive(runCtx, rep) })
	wg.Go(func() { s.askWhy(runCtx) })
	if !sleep(ctx, cfg.Settle) {
		return rep, ctx.Err()
	}
	s.log.Info("steady phase", "for", cfg.Steady)
	if err := s.hook(ctx, "steady"); err != nil {
		return rep, err
	}
	var err error
	if rep.Steady, err = s.measure(ctx, cfg.Steady); err != nil {
		return rep, err
	}
	s.log.Info("steady phase done")
	if err := s.hook(ctx, "steady-done"); err != nil {
		return rep, err
	}

	// Overload: some agents send raw samples as fast as acks allow.
	if cfg.Overload > 0 {
		rep.OverloadAgents = (cfg.Agents + s.overEvery - 1) / s.overEvery
		s.log.Info("overload phase", "for", cfg.Overload, "agents", rep.OverloadAgents)
		if err := s.hook(ctx, "overload"); err != nil {
			return rep, err
		}
		s.overload.Store(true)
		for _, a := range s.agents {
			a.poke()
		}
		rep.Overload, err = s.measure(ctx, cfg.Overload)
		s.overload.Store(false)
		if err != nil {
			return rep, err
		}
		s.log.Info("overload phase done")
		if err := s.hook(ctx, "overload-done"); err != nil {
			return rep, err
		}
		s.drain(ctx)
	}

	// A fix through the hub to the faulty GPU's agent, dry run.
	rep.FixLatency, rep.FixResult = s.fix(ctx, rep)

	final, err := s.scrape(ctx)
	if err != nil {
		return rep, fmt.Errorf("the hub does not answer after the run: %w", err)
	}
	rep.Final = final
	rep.Faults = s.faults.Load()
	rep.LinkFailures = s.linkFailures.Load()
	rep.SimRSS, _ = procStatus("self")
	if rep.LinkFailures > 0 {
		return rep, fmt.Errorf("%d agent links failed during the run", rep.LinkFailures)
	}
	return rep, nil
}

// hook runs the phase hook with event and waits for it, so that what it
// does (bench-hub.sh starts and stops its why prober and switches the
// hub's scheduling) happens between phases, not some way into one.
func (s *sim) hook(ctx context.Context, event string) error {
	if s.cfg.PhaseHook == "" {
		return nil
	}
	cmd := exec.CommandContext(ctx, s.cfg.PhaseHook, event)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("phase hook %s %s: %w", s.cfg.PhaseHook, event, err)
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// connectAll links every agent, DialConcurrency at a time, and starts
// their send and read loops.
func (s *sim) connectAll(ctx context.Context, wg *sync.WaitGroup) error {
	sem := make(chan struct{}, s.cfg.DialConcurrency)
	var mu sync.Mutex
	var firstErr error
	var failed int
	var cwg sync.WaitGroup
	for i, h := range s.c.hosts {
		sem <- struct{}{}
		if ctx.Err() != nil {
			break
		}
		a := &agent{s: s, h: h, kick: make(chan struct{}, 1), rng: rand.New(rand.NewPCG(s.cfg.Seed, uint64(i)+1<<32))}
		h.agent = a
		cwg.Go(func() {
			defer func() { <-sem }()
			err := a.connect(ctx)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				if firstErr == nil {
					firstErr = fmt.Errorf("%s: %w", h.name, err)
				}
				if a.ws != nil {
					_ = a.ws.CloseNow()
				}
				return
			}
			s.agents = append(s.agents, a)
			wg.Go(func() { a.read(ctx) })
			wg.Go(func() { a.send(ctx) })
		})
		if n := i + 1; n%2000 == 0 {
			s.log.Info("connecting", "done", n)
		}
	}
	cwg.Wait()
	if failed > 0 {
		return fmt.Errorf("%d of %d agents could not connect; the first: %w", failed, len(s.c.hosts), firstErr)
	}
	return ctx.Err()
}

// waitApplied waits until the hub has applied want more link events than
// it had in before.
func (s *sim) waitApplied(ctx context.Context, before map[string]float64, want float64) error {
	deadline := time.Now().Add(3 * time.Minute)
	for {
		m, err := s.scrape(ctx)
		if err != nil {
			return fmt.Errorf("the hub does not answer: %w", err)
		}
		if m[applied]-before[applied] >= want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the hub applied %.0f of the %.0f snapshot events in 3m", m[applied]-before[applied], want)
		}
		if !sleep(ctx, 200*time.Millisecond) {
			return ctx.Err()
		}
	}
}

// drive is every host's folder: each tick it queues what each host
// forwards, and injects the faults.
func (s *sim) drive(ctx context.Context, rep *report) {
	// Real agents flush on their own clocks, not in phase: each host ticks
	// every tickEvery, the hosts spread over driveSlices slices of it.
	t := time.NewTicker(tickEvery / driveSlices)
	defer t.Stop()
	rng := rand.New(rand.NewPCG(s.cfg.Seed, 7))
	queue := func(h *host, evs []event.Event) {
		if h.agent != nil {
			h.agent.queue(evs)
		}
	}
	// The why job's fault stays: the job is stalled while why is asked.
	now := time.Now().UnixMilli()
	j := s.c.jobs[0]
	h, g := j.hosts[rng.IntN(len(j.hosts))], rng.IntN(gpusPerHost)
	fault(h, g, 79, now, 0, queue)
	s.faults.Add(1)
	rep.WhyExpected = h.name + "/" + h.gpu(g)
	s.log.Info("the why job's fault", "job", j.id, "gpu", rep.WhyExpected, "xid", 79)
	nextFault := now + s.cfg.FaultEvery.Milliseconds()
	var buf []event.Event
	for slice := 0; ; slice = (slice + 1) % driveSlices {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now().UnixMilli()
		if s.cfg.FaultEvery > 0 && now >= nextFault && len(s.c.jobs) > 1 {
			nextFault = now + s.cfg.FaultEvery.Milliseconds()
			j := s.c.jobs[1+rng.IntN(len(s.c.jobs)-1)]
			h, g := j.hosts[rng.IntN(len(j.hosts))], rng.IntN(gpusPerHost)
			fault(h, g, xids[rng.IntN(len(xids))], now, s.cfg.FaultHold.Milliseconds(), queue)
			s.faults.Add(1)
		}
		for i := slice; i < len(s.c.hosts); i += driveSlices {
			h := s.c.hosts[i]
			buf = h.tick(now, buf[:0])
			queue(h, buf)
		}
	}
}

// measure runs a phase for d and returns what the hub did meanwhile.
func (s *sim) measure(ctx context.Context, d time.Duration) (phaseStats, error) {
	var p phaseStats
	m0, err := s.scrape(ctx)
	if err != nil {
		return p, fmt.Errorf("the hub does not answer: %w", err)
	}
	cpu0, self0 := procCPU(s.cfg.HubPID), procCPU(os.Getpid())
	a0, f0 := s.eventsAcked.Load(), s.framesSent.Load()
	t0 := time.Now()
	ws := &whyStats{}
	s.why.Store(ws)
	if !sleep(ctx, d) {
		return p, ctx.Err()
	}
	s.why.Store(nil)
	m1, err := s.scrape(ctx)
	if err != nil {
		return p, fmt.Errorf("the hub does not answer: %w", err)
	}
	p.Elapsed = time.Since(t0)
	p.HubCPU = (procCPU(s.cfg.HubPID) - cpu0) / p.Elapsed.Seconds()
	p.SimCPU = (procCPU(os.Getpid()) - self0) / p.Elapsed.Seconds()
	p.HubEvents = m1[applied] - m0[applied]
	p.Acked, p.Frames = s.eventsAcked.Load()-a0, s.framesSent.Load()-f0
	if s.cfg.HubPID > 0 {
		p.HubRSS, p.HubHWM = procStatus(strconv.Itoa(s.cfg.HubPID))
	}
	p.Why = ws.summary()
	return p, nil
}

// drain waits for the overload's batches to be acknowledged.
func (s *sim) drain(ctx context.Context) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		busy := 0
		for _, a := range s.agents {
			a.mu.Lock()
			if len(a.inflight) > 0 && !a.closed {
				busy++
			}
			a.mu.Unlock()
		}
		if busy == 0 {
			return
		}
		sleep(ctx, 100*time.Millisecond)
	}
}

// closeAll closes every link normally, a few hundred at a time.
func (s *sim) closeAll() {
	sem := make(chan struct{}, 256)
	var wg sync.WaitGroup
	for _, a := range s.agents {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			a.close()
		})
	}
	wg.Wait()
}

// ---- why ----

type whyStats struct {
	mu     sync.Mutex
	lat    []time.Duration
	errs   int
	lastOK whyAnswer
	err    string
}

type whyAnswer struct {
	Found  bool `json:"found"`
	Ranks  int  `json:"ranks"`
	Causes []struct {
		NodeID        string `json:"node_id"`
		EntityID      string `json:"entity_id"`
		XID           int    `json:"xid"`
		AffectedRanks int    `json:"affected_ranks"`
	} `json:"causes"`
}

// whySummary is the latency of the why queries in a phase and the last
// answer.
type whySummary struct {
	N             int
	P50, P99, Max time.Duration
	Errors        int
	Err           string
	Last          whyAnswer
}

func (w *whyStats) summary() whySummary {
	w.mu.Lock()
	defer w.mu.Unlock()
	sum := whySummary{N: len(w.lat), Errors: w.errs, Err: w.err, Last: w.lastOK}
	if len(w.lat) > 0 {
		l := slices.Clone(w.lat)
		slices.Sort(l)
		sum.P50, sum.P99, sum.Max = l[len(l)/2], l[len(l)*99/100], l[len(l)-1]
	}
	return sum
}

// askWhy asks the hub why the why job stalls, one query at a time, while
// a phase is measured.
func (s *sim) askWhy(ctx context.Context) {
	u := s.base + "/api/v1/why?job_id=" + url.QueryEscape(s.whyJob)
	t := time.NewTicker(s.cfg.WhyEvery)
	defer t.Stop()
	var body bytes.Buffer
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w := s.why.Load()
		if w == nil {
			continue
		}
		body.Reset()
		t0 := time.Now()
		code, err := s.get(ctx, u, &body)
		lat := time.Since(t0)
		var ans whyAnswer
		if err == nil && code != http.StatusOK {
			err = fmt.Errorf("status %d: %.200s", code, body.String())
		}
		if err == nil {
			err = json.Unmarshal(body.Bytes(), &ans)
		}
		w.mu.Lock()
		if err != nil {
			w.errs++
			w.err = err.Error()
		} else {
			w.lat = append(w.lat, lat)
			w.lastOK = ans
		}
		w.mu.Unlock()
	}
}

func (s *sim) get(ctx context.Context, u string, body *bytes.Buffer) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	resp, err := s.apiClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	if _, err := body.ReadFrom(resp.Body); err != nil {
		return resp.StatusCode, fmt.Errorf("reading %s: %w", u, err)
	}
	return resp.StatusCode, nil
}

// fix asks the hub for a dry-run fix of the why job's faulty rank and
// returns how long the round trip through the agent link took.
func (s *sim) fix(ctx context.Context, rep *report) (time.Duration, string) {
	node, gpu, ok := strings.Cut(rep.WhyExpected, "/")
	if !ok {
		return 0, "not run"
	}
	g, _ := strconv.Atoi(strings.TrimPrefix(gpu, "gpu-"))
	body := fmt.Sprintf(`{"node":%q,"pid":%d,"job_id":%q,"dry_run":true,"user":"hubsim"}`, node, 4000+g, s.whyJob)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.base+"/api/v1/fix", strings.NewReader(body))
	if err != nil {
		return 0, err.Error()
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	req.Header.Set("Content-Type", "application/json")
	t0 := time.Now()
	resp, err := s.apiClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	lat := time.Since(t0)
	var res link.Result
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &res) != nil {
		return lat, fmt.Sprintf("status %d: %.200s", resp.StatusCode, b)
	}
	return lat, res.Result + " from " + res.Node
}

// ---- the hub's metrics and process ----

// applied is the hub's count of link events applied to its graph.
const applied = `ark_hub_events_received_total{source="link"}`

// scrape reads the hub's /metrics: every sample by its full name and
// labels, and every metric name summed over its labels.
func (s *sim) scrape(ctx context.Context) (map[string]float64, error) {
	var body bytes.Buffer
	code, err := s.get(ctx, s.base+"/metrics", &body)
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: status %d", code)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(&body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		series := line[:i]
		m[series] = v
		if name, _, ok := strings.Cut(series, "{"); ok {
			m[name] += v
		}
	}
	return m, sc.Err()
}

// procStatus returns VmRSS and VmHWM (KiB) of a process ("self" or a pid).
func procStatus(pid string) (rss, hwm int64) {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0, 0
	}
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			rss, _ = strconv.ParseInt(f[1], 10, 64)
		case "VmHWM:":
			hwm, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	return rss, hwm
}

// procCPU returns the CPU seconds a process has used (user and system,
// every thread), 0 when pid is 0 or unreadable.
func procCPU(pid int) float64 {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (u + st) / 100 // USER_HZ is 100 on Linux
}

// ---- the report ----

func (r *report) print(w io.Writer, cfg config) {
	mib := func(kib int64) float64 { return float64(kib) / 1024 }
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	ok := func(b bool) string {
		if b {
			return "ok"
		}
		return "MISSED"
	}
	fmt.Fprintf(w, "cluster: %d hosts (%d agent links, one per host), %d GPUs, %d jobs of up to %d ranks\n",
		r.Hosts, r.Connected, r.GPUs, r.Jobs, cfg.JobHosts*gpusPerHost)
	fmt.Fprintf(w, "connect: %d agents linked in %.1fs; %d snapshot events applied by %.1fs (%.0f events/s)\n",
		r.Connected, r.Connect.Seconds(), r.SnapshotEvents, r.SnapshotApplied.Seconds(),
		float64(r.SnapshotEvents)/max(r.SnapshotApplied.Seconds(), 1e-9))
	st := r.Steady
	if st.Elapsed > 0 {
		fmt.Fprintf(w, "steady: hub ingested %.0f events/s over %.0fs (folded stream, %.2f events/s/host; simulator acked %.0f events/s in %.0f frames/s); CPU: hub %.2f cores, simulator %.2f\n",
			st.rate(), st.Elapsed.Seconds(), st.rate()/float64(max(r.Hosts, 1)),
			float64(st.Acked)/st.Elapsed.Seconds(), float64(st.Frames)/st.Elapsed.Seconds(), st.HubCPU, st.SimCPU)
		if st.HubRSS > 0 {
			fmt.Fprintf(w, "steady: hub RSS %.1f MiB (peak %.1f MiB) at %d hosts (target <= 512 MiB: %s)\n",
				mib(st.HubRSS), mib(st.HubHWM), r.Hosts, ok(st.HubHWM <= 512*1024))
		}
		r.printWhy(w, "steady", st.Why, ok, ms)
	}
	ov := r.Overload
	if ov.Elapsed > 0 {
		fmt.Fprintf(w, "overload: hub ingested %.0f events/s sustained over %.0fs (%d agents sending batches of %d as fast as acks allow, window %d, the others their folded stream; simulator acked %.0f events/s in %.0f frames/s); CPU: hub %.2f cores, simulator %.2f\n",
			ov.rate(), ov.Elapsed.Seconds(), r.OverloadAgents, cfg.OverloadBatch, cfg.OverloadWindow,
			float64(ov.Acked)/ov.Elapsed.Seconds(), float64(ov.Frames)/ov.Elapsed.Seconds(), ov.HubCPU, ov.SimCPU)
		if ov.HubRSS > 0 {
			fmt.Fprintf(w, "overload: hub RSS %.1f MiB (peak %.1f MiB)\n", mib(ov.HubRSS), mib(ov.HubHWM))
		}
		r.printWhy(w, "overload", ov.Why, ok, ms)
	}
	if r.FixResult != "" {
		fmt.Fprintf(w, "fix: dry run through the hub to %s: %s in %.1f ms\n", r.WhyExpected, r.FixResult, ms(r.FixLatency))
	}
	f := r.Final
	fmt.Fprintf(w, "hub at the end: %.0f agents connected, graph %.0f nodes / %.0f edges, evicted %.0f, events rejected %.0f, frames rejected %.0f, link auth failures %.0f\n",
		f[`ark_hub_link_agents{state="connected"}`], f["ark_graph_nodes"], f["ark_graph_edges"], f["ark_graph_evicted_total"],
		f["ark_hub_events_rejected_total"], f["ark_hub_frames_rejected_total"], f["ark_hub_link_auth_failures_total"])
	fmt.Fprintf(w, "simulator: %d faults injected, %d link failures, RSS %.1f MiB\n", r.Faults, r.LinkFailures, mib(r.SimRSS))
}

func (r *report) printWhy(w io.Writer, phase string, s whySummary, ok func(bool) string, ms func(time.Duration) float64) {
	if s.N == 0 {
		fmt.Fprintf(w, "%s: why: no answer (%d errors: %s)\n", phase, s.Errors, s.Err)
		return
	}
	cause := "no cause"
	if len(s.Last.Causes) > 0 {
		c := s.Last.Causes[0]
		cause = fmt.Sprintf("cause #1 %s/%s xid %d, %d ranks affected", c.NodeID, c.EntityID, c.XID, c.AffectedRanks)
	}
	found := s.Last.names(r.WhyExpected)
	// A check that why answers right under the load. The latency is the
	// simulator's own client, scheduled among its 10,000 links (and niced
	// by bench-hub.sh, behind the hub); what a user sees, and the hub's
	// own time, are measured by whyprobe.
	fmt.Fprintf(w, "%s: why job_id=%s (%d ranks) from inside the simulator: %d answers, %d errors; %s (injected %s: %s); latency with the simulator's own scheduling: p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
		phase, r.WhyJob, s.Last.Ranks, s.N, s.Errors, cause, r.WhyExpected, ok(found),
		ms(s.P50), ms(s.P99), ms(s.Max))
}

// names reports whether the answer's first cause is XID 79 on gpu
// ("node/gpu-N").
func (a whyAnswer) names(gpu string) bool {
	return len(a.Causes) > 0 && a.Causes[0].NodeID+"/"+a.Causes[0].EntityID == gpu && a.Causes[0].XID == 79
}
