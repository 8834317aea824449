#!/usr/bin/env bash
# Prints the path of otelcol-ark, the OpenTelemetry Collector with the ark
# receiver, building it with the OpenTelemetry Collector Builder from
# collector-receiver/builder-config.yaml on first use. The build is cached
# under $ARK_CACHE (default ~/.cache/ark), keyed by a hash of the builder
# config, the builder's version, and every Go source file (and go.mod/go.sum)
# that goes into the receiver, so a cached build is reused until one of them
# changes.
set -euo pipefail

BUILDER_VERSION=${BUILDER_VERSION:-v0.165.0}
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${ARK_CACHE:-${HOME:-/root}/.cache/ark}
builder="$cache/bin/builder-$BUILDER_VERSION.d/builder"
if [ ! -x "$builder" ]; then
	echo "hack/otelcol.sh: installing the OpenTelemetry Collector Builder $BUILDER_VERSION" >&2
	GOBIN="$(dirname "$builder")" GOFLAGS=-buildvcs=false go install "go.opentelemetry.io/collector/cmd/builder@$BUILDER_VERSION" >&2
fi

cd "$root/collector-receiver"
# The receiver's own files and the main module's packages it imports.
sources=$(go list -deps -f '{{if .Module}}{{if or (eq .Module.Path "github.com/ark-gpu/ark") (eq .Module.Path "github.com/ark-gpu/ark/collector-receiver")}}{{$d := .Dir}}{{range .GoFiles}}{{$d}}/{{.}} {{end}}{{range .EmbedFiles}}{{$d}}/{{.}} {{end}}{{end}}{{end}}' ./arkreceiver)
key=$(
	{
		echo "$BUILDER_VERSION"
		cat builder-config.yaml go.mod go.sum ../go.mod ../go.sum
		for f in $sources; do
			echo "${f#"$root"/}"
			cat "$f"
		done
	} | sha256sum | cut -c1-16
)
out="$cache/otelcol/$key"
bin="$out/otelcol-ark"
if [ ! -x "$bin" ]; then
	echo "hack/otelcol.sh: building otelcol-ark ($key) into $out (first build: several minutes)" >&2
	work=$(mktemp -d)
	trap 'rm -rf "$work"' EXIT
	# The config's paths are relative to collector-receiver/; the build
	# happens elsewhere, so they become absolute.
	sed -e "s#^\(  output_path:\).*#\1 $work/build#" \
		-e "s#=> \.\./\.\./\.\.\$#=> $root#" \
		-e "s#=> \.\./\.\.\$#=> $root/collector-receiver#" \
		builder-config.yaml >"$work/builder-config.yaml"
	start=$(date +%s)
	"$builder" --config "$work/builder-config.yaml" >"$work/build.log" 2>&1 || {
		cat "$work/build.log" >&2
		exit 1
	}
	mkdir -p "$out"
	mv "$work/build/otelcol-ark" "$bin.tmp"
	mv "$bin.tmp" "$bin"
	echo "hack/otelcol.sh: built in $(($(date +%s) - start))s" >&2
fi
echo "$bin"
