#!/usr/bin/env bash
# Prints the path of a Prometheus tool, installing it on first use:
#   hack/prometheus.sh prometheus | promtool   (Debian package prometheus)
#   hack/prometheus.sh alertmanager | amtool   (Debian package prometheus-alertmanager)
# The .deb is downloaded and unpacked into the cache ($ARK_CACHE, default
# ~/.cache/ark) rather than installed, so no service is started on the
# machine. A binary of that name already on PATH is used as is.
set -euo pipefail

tool=${1:?usage: hack/prometheus.sh prometheus|promtool|alertmanager|amtool}
file=$tool
case "$tool" in
prometheus | promtool) pkg=prometheus ;;
alertmanager) pkg=prometheus-alertmanager file=prometheus-alertmanager ;; # Debian's name
amtool) pkg=prometheus-alertmanager ;;
*)
	echo "hack/prometheus.sh: unknown tool $tool" >&2
	exit 2
	;;
esac
if command -v "$tool" >/dev/null 2>&1; then
	command -v "$tool"
	exit 0
fi
cache=${ARK_CACHE:-${HOME:-/root}/.cache/ark}
dir="$cache/$pkg-deb"
bin="$dir/usr/bin/$file"
if [ ! -x "$bin" ]; then
	echo "hack/prometheus.sh: fetching Debian's $pkg package for $tool into $dir" >&2
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	(
		cd "$tmp"
		if ! apt-get download "$pkg" >&2 2>/dev/null; then
			apt-get update >&2
			apt-get download "$pkg" >&2
		fi
	)
	# Unpacked beside the final directory and moved in one step, so that
	# two tests installing at once never see half a package.
	mkdir -p "$cache"
	part=$(mktemp -d "$dir.XXXXXX")
	dpkg-deb -x "$tmp/${pkg}_"*.deb "$part"
	if [ ! -x "$bin" ]; then
		rm -rf "$dir"
		mv "$part" "$dir"
	else
		rm -rf "$part"
	fi
fi
"$bin" --version >/dev/null 2>&1
echo "$bin"
