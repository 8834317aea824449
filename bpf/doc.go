// Package bpf holds Ark's eBPF programs (CO-RE C compiled by bpf2go, the
// generated Go bindings and objects committed so that building needs no
// clang) and their loaders. flow.c accounts TCP flows per socket from
// tracepoints; Flows loads and attaches it (Linux only).
package bpf

// vmlinux.h is this kernel's BTF dumped as C (make vmlinux); CO-RE
// relocations make the objects run on other kernels with BTF.
//go:generate go tool bpf2go -tags linux -target bpfel -type flow -type flow_event flow flow.c -- -I/usr/include -Wall -Werror -O2
