#!/usr/bin/env bash
# Measures the agent's own CPU and memory under a realistic steady load:
# 8 GPUs sampled at 1 Hz for 64 ranks plus 1,000 network events/s, fed by
# hack/loadgen as an exec probe. Prints CPU as % of one core (after a
# warm-up) and RSS. The agent is the node build (tag arkagent, as
# `make build-agent`); AGENT_TAGS= measures the full ark binary instead.
# Usage: hack/bench-agent.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
warm=5
tmp=$(mktemp -d)
trap 'kill "$agent" 2>/dev/null || true; rm -rf "$tmp"' EXIT

tags=${AGENT_TAGS-arkagent}
go build -tags "$tags" -o "$tmp/ark" ./cmd/ark
echo "agent binary (tags '$tags'): $(stat -c %s "$tmp/ark") bytes"
go build -o "$tmp/loadgen" ./hack/loadgen
cat >"$tmp/agent.yaml" <<YAML
probes:
  exec:
    programs:
      - name: loadgen
        command: $tmp/loadgen
        args: ["-gpus", "8", "-ranks", "64", "-net-rate", "1000", "-duration", "0"]
        restart: never
YAML
port=$((20000 + RANDOM % 10000))
"$tmp/ark" agent --node-name bench --web.listen-address "127.0.0.1:$port" \
	--config.file "$tmp/agent.yaml" --path.kmsg "$tmp/no-kmsg" --log.level warn \
	--ipc.socket "$tmp/ark.sock" --audit.file "$tmp/audit.log" &
agent=$!

# CPU time in ns from the scheduler's own accounting, summed over the
# agent's threads: precise, unlike the tick-sampled utime/stime.
cpu() { cat /proc/"$agent"/task/*/schedstat | awk '{s += $1} END {printf "%d", s}'; }
sleep "$warm"
c0=$(cpu)
t0=$(date +%s.%N)
e0=$(curl -sf "127.0.0.1:$port/metrics" | awk '/^ark_events_processed_total/ {s+=$2} END {print s+0}')
sleep "$secs"
c1=$(cpu)
t1=$(date +%s.%N)
e1=$(curl -sf "127.0.0.1:$port/metrics" | awk '/^ark_events_processed_total/ {s+=$2} END {print s+0}')
rss=$(awk '/^VmRSS/ {print $2}' "/proc/$agent/status")
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$agent/status")
awk -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v rss="$rss" -v hwm="$hwm" -v e0="$e0" -v e1="$e1" 'BEGIN {
	el = t1 - t0
	printf "agent under load: %.0f events/s ingested, CPU %.2f%% of one core over %.0fs, RSS %.1f MiB (peak %.1f MiB)\n",
		(e1 - e0) / el, 100 * (c1 - c0) / 1e9 / el, el, rss / 1024, hwm / 1024
}'
