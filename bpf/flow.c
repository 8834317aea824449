//go:build ignore

// Per-socket TCP flow accounting for the agent's tcpflow probe.
//
// Tracepoints only (tp_btf: BTF-typed raw tracepoints, no tracefs needed):
// the kernels Ark runs on may have neither kprobes nor fentry.
//
//   sock_send_length, sock_recv_length  process context: the owner (a tgid
//                                       in the agent's pid namespace) and
//                                       the bytes it moved; recv -EAGAIN
//                                       counts a read that found nothing
//   inet_sock_set_state                 SYN_SENT (connect, process context)
//                                       creates the flow; ESTABLISHED fills
//                                       the ports; CLOSE sends the final
//                                       counters on the ring buffer
//   tcp_probe                           every segment received: the peer's
//                                       window, snd_una, rcv_nxt, srtt
//   tcp_retransmit_skb                  retransmitted segments
//
// Counters live in an LRU hash keyed by the socket's address, so the kernel
// aggregates and user space reads each flow once an interval. A flow is
// created only from process context by a task in the agent's pid namespace:
// softirq events (tcp_probe, retransmits) update known flows only, so the
// flows of other namespaces are never tracked.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

char __license[] SEC("license") = "Dual MIT/GPL";

#define AF_INET 2
#define AF_INET6 10
#define EAGAIN 11
#define MSG_PEEK 2

// The agent's pid namespace (st_dev and st_ino of /proc/self/ns/pid), set
// by the loader.
const volatile __u64 pidns_dev = 0;
const volatile __u64 pidns_ino = 0;

// flow is one socket's state. Shared with Go through bpf2go -type.
struct flow {
	__u64 bytes_tx;  // bytes sent by the owner (sendmsg return values)
	__u64 bytes_rx;  // bytes read by the owner
	__u64 retrans;   // segments retransmitted
	__u64 rx_eagain; // reads that returned -EAGAIN: the owner waits for data
	__u64 last_ns;   // bpf_ktime_get_ns of the latest update
	__u32 pid;       // owner's tgid in the agent's pid namespace
	__u32 snd_una;   // oldest unacknowledged sequence number
	__u32 rcv_nxt;   // next sequence number expected from the peer
	__u32 snd_wnd;   // the peer's advertised receive window (bytes)
	__u32 srtt_us;   // smoothed RTT, microseconds << 3
	__u16 family;    // AF_INET or AF_INET6
	__u16 sport;     // local port, host order
	__u16 dport;     // remote port, host order
	__u16 _pad;
	__u8 saddr[16]; // local address (IPv4: the first 4 bytes)
	__u8 daddr[16]; // remote address
};

// flow_event is what the ring buffer carries: the final counters of a
// flow that closed, so bytes moved since the last read are not lost.
struct flow_event {
	__u64 sk;
	struct flow flow;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536); // the loader may change it
	__type(key, __u64);
	__type(value, struct flow);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__type(value, struct flow_event); // for bpf2go -type
} events SEC(".maps");

// lost counts ring-buffer records that did not fit (index 0).
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

static __always_inline int is_tcp(const struct sock *sk)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	if (family != AF_INET && family != AF_INET6)
		return 0;
	return BPF_CORE_READ(sk, sk_protocol) == IPPROTO_TCP &&
	       BPF_CORE_READ(sk, sk_type) == SOCK_STREAM;
}

static __always_inline void fill_addrs(struct flow *f, const struct sock *sk)
{
	f->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	f->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	f->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (f->family == AF_INET) {
		bpf_core_read(&f->saddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_core_read(&f->daddr, 4, &sk->__sk_common.skc_daddr);
	} else {
		bpf_core_read(&f->saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(&f->daddr, 16, &sk->__sk_common.skc_v6_daddr);
	}
}

static __always_inline void fill_tcp(struct flow *f, const struct sock *sk)
{
	const struct tcp_sock *tp = (const struct tcp_sock *)sk;

	f->snd_una = BPF_CORE_READ(tp, snd_una);
	f->rcv_nxt = BPF_CORE_READ(tp, rcv_nxt);
	f->snd_wnd = BPF_CORE_READ(tp, snd_wnd);
	f->srtt_us = BPF_CORE_READ(tp, srtt_us);
}

// owned_flow returns the flow of sk for the current task, creating it,
// or NULL when sk is not TCP or the task is outside the agent's pid
// namespace. Process context only.
static __always_inline struct flow *owned_flow(const struct sock *sk)
{
	struct bpf_pidns_info ns = {};
	__u64 key = (__u64)sk;
	struct flow *f;

	if (!is_tcp(sk))
		return NULL;
	if (bpf_get_ns_current_pid_tgid(pidns_dev, pidns_ino, &ns, sizeof(ns)))
		return NULL;
	f = bpf_map_lookup_elem(&flows, &key);
	if (!f) {
		struct flow zero = {};

		bpf_map_update_elem(&flows, &key, &zero, BPF_NOEXIST);
		f = bpf_map_lookup_elem(&flows, &key);
		if (!f)
			return NULL;
	}
	f->pid = ns.tgid;
	if (f->sport == 0 || f->dport == 0)
		fill_addrs(f, sk);
	return f;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(send_length, struct sock *sk, int ret, int flags)
{
	struct flow *f;

	if (ret <= 0)
		return 0;
	f = owned_flow(sk);
	if (!f)
		return 0;
	__sync_fetch_and_add(&f->bytes_tx, ret);
	fill_tcp(f, sk);
	f->last_ns = bpf_ktime_get_ns();
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(recv_length, struct sock *sk, int ret, int flags)
{
	struct flow *f;

	if ((ret <= 0 && ret != -EAGAIN) || (flags & MSG_PEEK))
		return 0;
	f = owned_flow(sk);
	if (!f)
		return 0;
	if (ret > 0)
		__sync_fetch_and_add(&f->bytes_rx, ret);
	else
		__sync_fetch_and_add(&f->rx_eagain, 1);
	fill_tcp(f, sk);
	f->last_ns = bpf_ktime_get_ns();
	return 0;
}

SEC("tp_btf/tcp_probe")
int BPF_PROG(tcp_probe, struct sock *sk, const struct sk_buff *skb)
{
	__u64 key = (__u64)sk;
	struct flow *f = bpf_map_lookup_elem(&flows, &key);

	if (!f)
		return 0;
	fill_tcp(f, sk);
	f->last_ns = bpf_ktime_get_ns();
	return 0;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(retransmit, const struct sock *sk, const struct sk_buff *skb, int err)
{
	__u64 key = (__u64)sk;
	struct flow *f;
	__u16 segs = 0;

	if (err)
		return 0; // not sent: TcpRetransSegs does not count it either
	f = bpf_map_lookup_elem(&flows, &key);
	if (!f)
		return 0;
	// tcp_skb_pcount: a TSO skb retransmits several segments at once.
	bpf_core_read(&segs, sizeof(segs), &((struct tcp_skb_cb *)skb->cb)->tcp_gso_segs);
	if (segs == 0)
		segs = 1;
	__sync_fetch_and_add(&f->retrans, segs);
	f->last_ns = bpf_ktime_get_ns();
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(set_state, const struct sock *sk, const int oldstate, const int newstate)
{
	__u64 key = (__u64)sk;
	struct flow_event *e;
	struct flow *f;

	if (newstate == TCP_SYN_SENT) {
		// connect(): the caller owns the socket.
		owned_flow(sk);
		return 0;
	}
	f = bpf_map_lookup_elem(&flows, &key);
	if (!f)
		return 0;
	if (newstate == TCP_ESTABLISHED) {
		fill_addrs(f, sk);
		return 0;
	}
	if (newstate != TCP_CLOSE)
		return 0;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (e) {
		e->sk = key;
		__builtin_memcpy(&e->flow, f, sizeof(*f));
		bpf_ringbuf_submit(e, 0);
	} else {
		__u32 zero = 0;
		__u64 *n = bpf_map_lookup_elem(&lost, &zero);

		if (n)
			*n += 1;
	}
	bpf_map_delete_elem(&flows, &key);
	return 0;
}
