#!/usr/bin/env bash
# Prints the directory holding etcd, kube-apiserver and kube-controller-manager,
# building them on first use from Go modules (hack/kube: a wrapper module that
# pins k8s.io/kubernetes and every k8s.io staging module with replace, and
# builds etcd's server at the version kube-apiserver pins).
#
# The binaries are cached under $ARK_CACHE (default ~/.cache/ark)/kube-<hash of
# hack/kube/go.mod+go.sum>; a cached build is used as is. Cold: about 7 minutes
# on 2 cores; cached: instant.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
src="$root/hack/kube"
cache=${ARK_CACHE:-${HOME:-/root}/.cache/ark}
key=$(cat "$src/go.mod" "$src/go.sum" "$src/etcd/main.go" | sha256sum | cut -c1-12)
dir="$cache/kube-$key"
bins=(etcd kube-apiserver kube-controller-manager)

ok=1
for b in "${bins[@]}"; do [ -x "$dir/$b" ] || ok=0; done
if [ "$ok" = 0 ]; then
	echo "hack/kube.sh: building the test control plane into $dir (about 7 minutes cold)" >&2
	mkdir -p "$dir.tmp"
	(
		cd "$src"
		export CGO_ENABLED=0
		go build -trimpath -ldflags=-s -o "$dir.tmp/etcd" ./etcd >&2
		go build -trimpath -ldflags=-s -o "$dir.tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver >&2
		go build -trimpath -ldflags=-s -o "$dir.tmp/kube-controller-manager" k8s.io/kubernetes/cmd/kube-controller-manager >&2
	)
	rm -rf "$dir"
	mv "$dir.tmp" "$dir"
fi
echo "$dir"
