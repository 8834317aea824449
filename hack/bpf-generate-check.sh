#!/usr/bin/env bash
# Regenerates the committed bpf2go output (bpf/*_bpfel.go, *.o) and fails
# when it differs from what is committed: the objects in git must be the
# ones the C sources build. Skips, saying why, when clang or libbpf-dev is
# missing (hack/bpf-deps.sh installs them as root).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v clang >/dev/null || [ ! -f /usr/include/bpf/bpf_helpers.h ]; then
	echo "hack/bpf-generate-check.sh: clang or libbpf-dev missing: not checked (run hack/bpf-deps.sh as root)" >&2
	exit 0
fi
go generate ./bpf/
if ! git diff --exit-code --stat -- bpf/; then
	echo "hack/bpf-generate-check.sh: the committed eBPF objects differ from what bpf/*.c builds: run make generate and commit" >&2
	exit 1
fi
