#!/usr/bin/env bash
# Prints the path of a promtool binary, installing it on first use (Debian's
# prometheus package, unpacked into the cache: see hack/prometheus.sh).
set -euo pipefail
exec "$(dirname "$0")/prometheus.sh" promtool
