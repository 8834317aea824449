#!/usr/bin/env bash
# Prints the path of a promtool binary, installing it on first use.
# promtool comes from Debian's prometheus package; the .deb is downloaded and
# unpacked into the cache ($ARK_CACHE, default ~/.cache/ark) rather than
# installed, so no Prometheus service is started on the machine.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
	command -v promtool
	exit 0
fi
cache=${ARK_CACHE:-${HOME:-/root}/.cache/ark}
dir="$cache/prometheus-deb"
bin="$dir/usr/bin/promtool"
if [ ! -x "$bin" ]; then
	echo "hack/promtool.sh: fetching Debian's prometheus package for promtool into $dir" >&2
	mkdir -p "$dir"
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	(
		cd "$tmp"
		if ! apt-get download prometheus >&2 2>/dev/null; then
			apt-get update >&2
			apt-get download prometheus >&2
		fi
	)
	dpkg-deb -x "$tmp"/prometheus_*.deb "$dir"
fi
"$bin" --version >/dev/null
echo "$bin"
