# Ark — make targets are the entry points. See README.md.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -o pipefail -c
GO ?= go
PKGS := ./...
BIN := bin/ark
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# go-nvml's header marks some NVML calls deprecated; the probe does not use
# them, and the warnings would drown real build output.
export CGO_CFLAGS ?= -O2 -g -Wno-deprecated-declarations
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build test test-unit lint fmt bench bench-hub bench-remediation demo fuzz kube clean generate generate-check bpf-deps vmlinux

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/ark

## test: every test, with the race detector, plus lint (what CI runs)
test: lint kube bpf-deps generate-check
	$(GO) test -race -count=1 $(PKGS)

## kube: build (once, cached in ~/.cache/ark) the real etcd, kube-apiserver
## and kube-controller-manager the remediation tests run against
kube:
	@hack/kube.sh >/dev/null

## bpf-deps: clang, llvm, libbpf-dev, bpftool and nftables for the eBPF
## probe's generation and tests (apt, as root; once)
bpf-deps:
	@hack/bpf-deps.sh

## generate: rebuild the committed eBPF objects and Go bindings (bpf/)
generate: bpf-deps
	$(GO) generate ./bpf/

## generate-check: regenerating the eBPF objects gives no diff
generate-check: bpf-deps
	@hack/bpf-generate-check.sh

## vmlinux: dump this kernel's BTF as bpf/vmlinux.h (committed)
vmlinux:
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > bpf/vmlinux.h

## test-unit: the fast inner loop
test-unit:
	$(GO) test -count=1 ./event/... ./graph/... ./xid/...

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { gofmt -l .; echo "gofmt: files above need formatting (make fmt)"; exit 1; }
	$(GO) vet $(PKGS)
	"$$(hack/tools.sh golangci-lint)" run $(PKGS)

fmt:
	gofmt -w $$(git ls-files '*.go')

## bench: the performance claims, on one core, then the agent's own
## CPU and RSS under a realistic load (BENCH_AGENT_SECS, default 30)
BENCH_PKGS := ./event/ ./link/ ./graph/ ./hack/hubsim/ ./exporter/ ./exporter/probes/kmsg/ ./exporter/probes/jobs/
BENCH_AGENT_SECS ?= 30
bench: kube
	$(GO) test -run '^$$' -bench . -benchmem -cpu 1 -benchtime 2s $(BENCH_PKGS)
	hack/bench-agent.sh $(BENCH_AGENT_SECS)
	$(MAKE) bench-remediation

## bench-remediation: against a real kube-apiserver: webhook → taint
## latency (one alert at a time) and nodes quarantined per second (100
## alerts at once, 16 in flight, circuit breaker off)
bench-remediation: kube
	$(GO) test -run '^$$' -bench WebhookToTaint -benchtime 300x ./remediator/ | grep -E 'ns/op|^ok|^FAIL'
	$(GO) test -run '^$$' -bench QuarantineThroughput -benchtime 5x ./remediator/ | grep -E 'ns/op|^ok|^FAIL'

## bench-hub: the hub at 10,000 simulated hosts over loopback WebSockets
## (hack/bench-hub.sh AGENTS SECONDS; about 100 s)
bench-hub:
	hack/bench-hub.sh 10000 40

## fuzz: run the event and link-frame decoder fuzzers for a while each (FUZZTIME=2m)
FUZZTIME ?= 60s
fuzz:
	$(GO) test ./event -run '^$$' -fuzz FuzzDecode -fuzztime $(FUZZTIME)
	$(GO) test ./link -run '^$$' -fuzz FuzzDecodeFast -fuzztime $(FUZZTIME)

## demo: Ark's main job on the shipped incident recording
demo: build
	./$(BIN) analyze --input testdata/scenarios/xid79-4node.jsonl --job train/example

clean:
	rm -rf bin
