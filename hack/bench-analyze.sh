#!/usr/bin/env bash
# Measures `ark analyze` on a 1.3 M-event, 64-host recording built by
# hack/recordgen (cached under ${ARK_CACHE:-~/.cache/ark}/bench): events per
# second through analyze.Run on one core (a Go benchmark), then the ark
# binary end to end: CPU time, events/s, and its peak RSS against the
# recording's size. Usage: hack/bench-analyze.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${ARK_CACHE:-$HOME/.cache/ark}/bench
mkdir -p "$cache"
rec=$cache/recording-64x1.3M.jsonl
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

go build -o "$tmp/recordgen" ./hack/recordgen
go build -o "$tmp/ark" ./cmd/ark
if [[ ! -s $rec ]]; then
	"$tmp/recordgen" -hosts 64 -events 1300000 -o "$rec.tmp"
	mv "$rec.tmp" "$rec"
fi

ARK_BENCH_RECORDING=$rec go test -run '^$' -bench AnalyzeRecording -benchtime 3x -cpu 1 ./graph/analyze/ |
	grep -E 'ns/op|^ok|^FAIL'

# Peak RSS and CPU time from the kernel's accounting of the finished
# child (getrusage), so no /usr/bin/time is needed.
GOMAXPROCS=1 "$tmp/ark" analyze --input "$rec" --job train/big >/dev/null &
pid=$!
hwm=0
while kill -0 "$pid" 2>/dev/null; do
	h=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
	((${h:-0} > hwm)) && hwm=$h
	sleep 0.05
done
wait "$pid"
bytes=$(stat -c %s "$rec")
events=$(wc -l <"$rec")
awk -v hwm="$hwm" -v bytes="$bytes" -v ev="$events" 'BEGIN {
	printf "ark analyze: %d events, recording %.1f MiB, peak RSS %.1f MiB (%.2fx the recording)\n",
		ev, bytes / 1048576, hwm / 1024, hwm * 1024 / bytes
}'
