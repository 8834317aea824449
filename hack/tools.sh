#!/usr/bin/env bash
# Installs the pinned tools the Makefile needs into a cache directory that
# survives between runs, and prints the path of the one asked for.
#   hack/tools.sh golangci-lint   -> path to the pinned golangci-lint binary
#   hack/tools.sh kustomize       -> path to the pinned kustomize binary
# The cache is $ARK_CACHE (default ~/.cache/ark); a tool already there is used
# as is, so only the first run on a machine pays for the build.
set -euo pipefail

GOLANGCI_LINT_VERSION=${GOLANGCI_LINT_VERSION:-v2.15.0}
KUSTOMIZE_VERSION=${KUSTOMIZE_VERSION:-v5.8.2}
cache=${ARK_CACHE:-${HOME:-/root}/.cache/ark}
mkdir -p "$cache/bin"

tool=${1:?usage: hack/tools.sh TOOL}
case "$tool" in
golangci-lint)
	dir="$cache/bin/golangci-lint-$GOLANGCI_LINT_VERSION.d"
	bin="$dir/golangci-lint"
	if [ ! -x "$bin" ]; then
		echo "hack/tools.sh: building golangci-lint $GOLANGCI_LINT_VERSION into $dir (first run only, a few minutes)" >&2
		GOBIN="$dir" GOFLAGS=-buildvcs=false go install "github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$GOLANGCI_LINT_VERSION" >&2
	fi
	echo "$bin"
	;;
kustomize)
	dir="$cache/bin/kustomize-$KUSTOMIZE_VERSION.d"
	bin="$dir/kustomize"
	if [ ! -x "$bin" ]; then
		echo "hack/tools.sh: building kustomize $KUSTOMIZE_VERSION into $dir (first run only, about a minute)" >&2
		GOBIN="$dir" GOFLAGS=-buildvcs=false CGO_ENABLED=0 go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" >&2
	fi
	echo "$bin"
	;;
*)
	echo "hack/tools.sh: unknown tool $tool" >&2
	exit 2
	;;
esac
