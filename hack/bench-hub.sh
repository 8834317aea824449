#!/usr/bin/env bash
# Measures the hub at cluster scale on this machine: starts `ark hub` and
# hack/hubsim, which links AGENTS simulated hosts (default 10,000: 80,000
# GPUs, jobs of 512 ranks) over loopback WebSockets and sends the folded
# stream agents would. Prints the hub's sustained ingest rate (steady and
# overloaded), its RSS, and why latency for a 512-rank job under that load
# as a separate client process sees it (hack/whyprobe, one kept and one new
# connection per query, the hub's own time from the answers' Server-Timing
# header, and a no-op endpoint for the floor), then checks the hub logged no
# warnings or errors.
#
# The simulator stands for 10,000 remote hosts, whose CPU is not the hub's:
# it runs at nice 19. Niceness only shares the CPU out, though: the kernel
# still makes a woken hub thread wait for the simulator's time slice, for
# milliseconds at a time where the query takes one (graphsvc/README.md,
# "At scale"). So during the steady phase, where why
# latency is measured, the hub and the prober run SCHED_RR (priority 1)
# where this shell may set it (root, CAP_SYS_NICE or an RLIMIT_RTPRIO); for
# the overload phase the hub goes back to the default policy, since a
# real-time hub there would starve the load generator and measure the
# simulator instead. STEADY_RR=0 keeps the default policy throughout.
# hubsim calls back at each phase boundary (-phase-hook) and waits, so the
# switches and the prober's start and stop fall between phases.
#
# Usage: hack/bench-hub.sh [AGENTS] [SECONDS]   (SECONDS: the steady phase, default 40)
# Environment:
#   HUBSIM_FLAGS   extra hubsim flags, e.g. '-overload 0'
#   HUBSIM_NICE    the simulator's niceness (default 19; 0 to share the CPU equally)
#   HUB_FLAGS      extra hub flags, e.g. --web.enable-pprof
#   HUB_ENV        environment for the hub only, e.g. 'GODEBUG=gctrace=1 GOMAXPROCS=4'
#   STEADY_RR      1 (default where allowed): the hub and the prober run SCHED_RR in the steady phase; 0: never
#   HUB_MEMORY_LIMIT  the hub's Go soft memory limit in bytes (default 440 MiB; 0: none)
#   PROBE_FLAGS    extra whyprobe flags, e.g. '-slow 10ms' (each slower query, timed)
#   PROBE_NICE     the prober's niceness (default 0; none under SCHED_RR)
#   PROFILE_DIR    heap, goroutine, CPU (5 s) and trace (3 s) profiles taken there mid-steady
#   KEEP_DIR       the hub's log kept there
set -euo pipefail
cd "$(dirname "$0")/.."
agents=${1:-10000}
secs=${2:-40}
tmp=$(mktemp -d)
hub= sim= probe=
cleanup() {
	[[ -n $sim ]] && kill "$sim" 2>/dev/null || true
	[[ -n $probe ]] && kill "$probe" 2>/dev/null || true
	if [[ -n $hub ]] && kill "$hub" 2>/dev/null; then
		wait "$hub" 2>/dev/null || true
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# One socket per agent in each process, plus some.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (($(ulimit -n) < agents + 512)); then
	echo "bench-hub: $agents agents need 'ulimit -n' >= $((agents + 512)), have $(ulimit -n)" >&2
	exit 1
fi

go build -o "$tmp/ark" ./cmd/ark
go build -o "$tmp/hubsim" ./hack/hubsim
go build -o "$tmp/whyprobe" ./hack/whyprobe
od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$tmp/token"
port=$((20000 + RANDOM % 10000))
# As deployed: a 512Mi container with the Go runtime's soft limit at 90% of
# it (HUB_MEMORY_LIMIT bytes; 0 turns it off).
mem_limit=${HUB_MEMORY_LIMIT:-$((440 << 20))}
steady_rr=${STEADY_RR:-1}
if [[ $steady_rr == 1 ]] && ! chrt -r 1 true 2>/dev/null; then
	echo "bench-hub: cannot use SCHED_RR here (not root, no CAP_SYS_NICE or RLIMIT_RTPRIO, or no chrt); the hub shares the CPU with the simulator throughout" >&2
	steady_rr=0
fi
# shellcheck disable=SC2086 # HUB_ENV and HUB_FLAGS are lists of words
env ${HUB_ENV:-} "$tmp/ark" hub --web.listen-address "127.0.0.1:$port" --token-file "$tmp/token" --log.level info --memory-limit "$mem_limit" ${HUB_FLAGS:-} 2>"$tmp/hub.log" &
hub=$!

hub_died() {
	echo "bench-hub: the hub (pid $hub) died; the end of its log:" >&2
	tail -n 20 "$tmp/hub.log" >&2
	exit 1
}
for _ in $(seq 100); do
	curl -sf "127.0.0.1:$port/readyz" >/dev/null && break
	kill -0 "$hub" 2>/dev/null || hub_died
	sleep 0.1
done
curl -sf "127.0.0.1:$port/readyz" >/dev/null || { echo "bench-hub: the hub is not ready after 10s" >&2; exit 1; }

echo "hub: pid $hub on 127.0.0.1:$port, --memory-limit $mem_limit, SCHED_RR in the steady phase: $([[ $steady_rr == 1 ]] && echo yes || echo no); hubsim -agents $agents -steady ${secs}s ${HUBSIM_FLAGS:-}"

# hubsim calls the phase hook at each phase boundary and waits for it: the
# hook hands the event to this script (which runs at the default priority,
# where the prober should start) and waits for the answer.
mkfifo "$tmp/phase" "$tmp/phase.done"
cat >"$tmp/phase-hook" <<HOOK
#!/usr/bin/env bash
echo "\$1" >"$tmp/phase"
read -r answer <"$tmp/phase.done"
[[ \$answer == ok ]]
HOOK
chmod +x "$tmp/phase-hook"
# Both opened both ways: reads never see end of file, and an answer never
# waits for a hook that is gone (hubsim killed mid-phase).
exec 3<>"$tmp/phase" 4<>"$tmp/phase.done"

# shellcheck disable=SC2086 # HUBSIM_FLAGS is a list of flags
nice -n "${HUBSIM_NICE:-19}" "$tmp/hubsim" -hub "http://127.0.0.1:$port" -token-file "$tmp/token" -hub-pid "$hub" \
	-phase-hook "$tmp/phase-hook" -agents "$agents" -steady "${secs}s" ${HUBSIM_FLAGS:-} >"$tmp/report" &
sim=$!

# stop_probe ends the running why prober, which then prints its numbers.
stop_probe() {
	if [[ -n $probe ]]; then
		kill -TERM "$probe" 2>/dev/null || true
		wait "$probe" 2>/dev/null || true
		probe=
	fi
}

# hub_policy rr|other puts every thread of the hub under SCHED_RR 1 or back
# under SCHED_OTHER. It goes over the threads until none is left behind:
# the Go runtime starts threads while it runs, and one may end under it.
hub_policy() {
	local want flag prio left d pol
	if [[ $1 == rr ]]; then want=2 flag=-r prio=1; else want=0 flag=-o prio=0; fi
	for _ in 1 2 3 4 5; do
		left=0
		for d in /proc/"$hub"/task/*; do
			# The policy is field 41 of stat; after "(comm) " fields start at 3.
			pol=$(sed 's/.*) //' "$d/stat" 2>/dev/null | cut -d' ' -f39) || continue
			if [[ -n $pol && $pol != "$want" ]]; then
				left=$((left + 1))
				chrt "$flag" -p "$prio" "${d##*/}" >/dev/null 2>&1 || true
			fi
		done
		if ((left == 0)); then
			return 0
		fi
	done
	return 1
}

# on_phase does what a phase boundary needs, then answers the hook: an
# operator's client in its own process asks why through each phase (the
# latency a user sees, apart from the simulator's own scheduling), and in
# the steady phase the hub runs SCHED_RR.
rr_on=0
on_phase() {
	local answer=ok sched='' target=5ms
	case $1 in
	steady | overload)
		if [[ $1 == steady ]]; then
			steady_at=$SECONDS
		fi
		# The 5 ms target is for the realistic (steady) load.
		if [[ $1 == overload ]]; then
			target=0
		fi
		if [[ $1 == steady && $steady_rr == 1 ]]; then
			rr_on=1
			if hub_policy rr; then
				sched='chrt -r 1'
			else
				echo "bench-hub: could not put every hub thread under SCHED_RR" >&2
				answer=failed
			fi
		fi
		if [[ $answer == ok ]]; then
			# shellcheck disable=SC2086 # sched and PROBE_FLAGS are lists of words
			$sched nice -n "${PROBE_NICE:-0}" "$tmp/whyprobe" -url "http://127.0.0.1:$port/api/v1/why?job_id=train%2Fjob-0" \
				-floor "http://127.0.0.1:$port/healthz" -target "$target" ${PROBE_FLAGS:-} >"$tmp/probe-$1" 2>&1 &
			probe=$!
		fi
		;;
	steady-done | overload-done)
		stop_probe
		if ((rr_on)); then
			rr_on=0
			if ! hub_policy other; then
				echo "bench-hub: could not put every hub thread back under SCHED_OTHER" >&2
				answer=failed
			fi
		fi
		;;
	esac
	echo "$answer" >&4
}

# Fail fast when the hub dies under the load.
steady_at= profiled=
while kill -0 "$sim" 2>/dev/null; do
	kill -0 "$hub" 2>/dev/null || hub_died
	if read -r -t 0.5 event <&3; then
		on_phase "$event"
		continue
	fi
	# Halfway through the steady phase.
	if [[ -n ${PROFILE_DIR:-} && -z $profiled && -n $steady_at ]] && ((SECONDS - steady_at >= secs / 2)); then
		profiled=1
		mkdir -p "$PROFILE_DIR"
		curl -sf "127.0.0.1:$port/debug/pprof/heap" -o "$PROFILE_DIR/heap.pb.gz" || true
		curl -sf "127.0.0.1:$port/debug/pprof/goroutine" -o "$PROFILE_DIR/goroutine.pb.gz" || true
		# The CPU profile runs during the trace, which then holds CPU samples.
		curl -sf "127.0.0.1:$port/debug/pprof/profile?seconds=5" -o "$PROFILE_DIR/cpu.pb.gz" &
		curl -sf "127.0.0.1:$port/debug/pprof/trace?seconds=3" -o "$PROFILE_DIR/trace.out" || true
		curl -sf "127.0.0.1:$port/debug/pprof/heap" -o "$PROFILE_DIR/heap-later.pb.gz" || true
		wait $! || true
		curl -sf "127.0.0.1:$port/metrics" -o "$PROFILE_DIR/metrics.txt" || true
		cp "$tmp/ark" "$PROFILE_DIR/ark"
	fi
done
# A hook that handed an event over as hubsim ended is answered, not left
# waiting.
while read -r -t 0.1 _ <&3; do
	echo failed >&4
done
rc=0
wait "$sim" || rc=$?
sim=
cat "$tmp/report"
stop_probe
for phase in steady overload; do
	[[ -s $tmp/probe-$phase ]] && sed "s|^|$phase: whyprobe, a separate client process asking why job_id=train/job-0: |" "$tmp/probe-$phase"
done
if [[ -n ${KEEP_DIR:-} ]]; then mkdir -p "$KEEP_DIR" && cp "$tmp/hub.log" "$KEEP_DIR/"; fi
kill -0 "$hub" 2>/dev/null || hub_died
echo "folding ratio (events in per event forwarded): measured by the forwarder's benchmark," \
	"go test -run '^\$' -bench BenchmarkFoldSteadyLoad ./exporter/forwarder/ (metric in/forwarded)"

# The hub should have logged nothing above info at this scale.
warns=$(grep -cE 'level=(WARN|ERROR)' "$tmp/hub.log" || true)
echo "hub log: $(wc -l <"$tmp/hub.log") lines, $warns warnings or errors; most frequent:" \
	"$(grep -oE 'msg="[^"]*"|msg=[^ ]*' "$tmp/hub.log" | sort | uniq -c | sort -rn | head -n 4 | awk '{$1=$1; print}' | paste -sd ';' -)"
if ((warns > 0)); then
	grep -E 'level=(WARN|ERROR)' "$tmp/hub.log" | head -n 10
	rc=1
fi
if ((rc != 0)); then
	echo "bench-hub: FAILED (hubsim exit $rc or hub warnings above)" >&2
fi
exit "$rc"
