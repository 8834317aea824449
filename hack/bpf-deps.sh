#!/usr/bin/env bash
# Installs what the eBPF flow probe's generation and tests need beyond Go:
# clang/llvm (compile bpf/*.c), libbpf-dev (bpf_helpers.h and friends),
# bpftool (dump vmlinux.h) and nftables (the tests' packet loss: this
# kernel has no netem). Idempotent: a run that finds every command present
# does nothing (well under a second). Without root or apt it says so and exits 0: the tests that need
# the tools skip with that reason.
set -euo pipefail

pkgs=(clang llvm libbpf-dev bpftool nftables)

have() {
	command -v clang >/dev/null && command -v llvm-strip >/dev/null &&
		command -v bpftool >/dev/null && command -v nft >/dev/null &&
		[ -f /usr/include/bpf/bpf_helpers.h ]
}

if have; then
	exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
	echo "hack/bpf-deps.sh: not root or no apt-get: ${pkgs[*]} not installed (eBPF tests will skip)" >&2
	exit 0
fi
echo "hack/bpf-deps.sh: installing ${pkgs[*]} (first run only)" >&2
export DEBIAN_FRONTEND=noninteractive
apt_opts=(-o DPkg::Lock::Timeout=600 -qq)
apt-get "${apt_opts[@]}" install -y --no-install-recommends "${pkgs[@]}" >/dev/null 2>&1 ||
	{ apt-get "${apt_opts[@]}" update >/dev/null && apt-get "${apt_opts[@]}" install -y --no-install-recommends "${pkgs[@]}" >/dev/null; }
have || { echo "hack/bpf-deps.sh: ${pkgs[*]} installed but a command is still missing" >&2; exit 1; }
