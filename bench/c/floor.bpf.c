// SPDX-License-Identifier: GPL-2.0
/* The floor under pagefault's in-kernel counts, for bench/summary_only.py and bench/flame.py: programs on the
 * same hooks as the counter, of the same kind (raw_tp/page_fault_user and raw_tp/mm_page_alloc: no whole-BTF
 * parse at load, as the counter's RAW_TRACEPOINTS), that do nothing but what any
 * such tool must do, so that the cost of the hooks themselves is measured apart from pagefault's work.
 *   empty_*   return at once: the cost of a program on the hook (the tracepoint's call into BPF)
 *   stack_*   read the faulting thread's user stack with bpf_get_stack, as trace -g must, and keep nothing
 * Built by the bench with clang against the vmlinux.h scripts/build-bpf.sh made; never part of pagefault. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

const volatile __u32 target_tgid = 0;

struct frames {
	__u64 ip[64];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct frames);
} scratch SEC(".maps");

SEC("raw_tp/page_fault_user")
int BPF_PROG(empty_fault)
{
	return 0;
}

SEC("raw_tp/mm_page_alloc")
int BPF_PROG(empty_alloc)
{
	return 0;
}

SEC("raw_tp/page_fault_user")
int BPF_PROG(stack_fault)
{
	__u32 zero = 0;
	if ((__u32)(bpf_get_current_pid_tgid() >> 32) != target_tgid)
		return 0;
	struct frames *f = bpf_map_lookup_elem(&scratch, &zero);
	if (f)
		bpf_get_stack(ctx, f->ip, sizeof(f->ip), BPF_F_USER_STACK);
	return 0;
}
