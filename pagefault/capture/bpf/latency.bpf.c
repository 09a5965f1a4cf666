// SPDX-License-Identifier: GPL-2.0
/* pagefault trace --latency: every fault of one process (and the children it forks) timed from
 * handle_mm_fault's entry to its return, into log2 histograms kept in the kernel per (last outcome handler,
 * return value, the VMA's start); nothing is streamed.
 *
 * handle_mm_fault and each outcome handler have two programs, fentry/fexit (BPF trampolines: a call, no
 * trap) and kprobe/kretprobe; the loader loads one kind and turns the other off, and turns off each handler
 * this kernel cannot hook (inlined, renamed, not traceable). The VMA is read at the entry, where the fault
 * holds it, for both kinds: a kretprobe cannot read the arguments, and at fexit a fault that returned
 * VM_FAULT_RETRY or VM_FAULT_COMPLETED has dropped its lock, so its VMA may already be freed. Each VMA is
 * named once (struct vma_seen, as the counter names its own) for the summary's mapping column. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#define FOLLOW_FORKS        /* the target and its children (pagefault.bpf.h) */
#include "pagefault.bpf.h"
#include "latency.h"

const volatile struct latency_settings settings = {};

struct latency_hist empty_hist = {};   /* a new histogram's first value (too large for the stack) */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 2048);
	__type(key, struct latency_key);
	__type(value, struct latency_hist);
} hists SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct fault_timing);
} timing SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct vma_key);
	__type(value, struct vma_seen);
} vmas SEC(".maps");

/* the VMA this CPU named last, by its process and start (another process's VMA can start at the same address):
 * a run of faults in one VMA looks it up in `vmas` once */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct vma_key);
} last_named SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LAT_N);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void bump(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&counters, &which);
	if (n)
		*n += 1;
}

static __always_inline int followed(__u32 tgid)
{
	return target_or_child(tgid, settings.target_tgid, settings.from_exec);
}

/* floor(log2(v)) for v > 0, as libbpf-tools' bits.bpf.h */
static __always_inline __u64 log2_u32(__u32 v)
{
	__u32 shift, r;
	r = (v > 0xFFFF) << 4; v >>= r;
	shift = (v > 0xFF) << 3; v >>= shift; r |= shift;
	shift = (v > 0xF) << 2; v >>= shift; r |= shift;
	shift = (v > 0x3) << 1; v >>= shift; r |= shift;
	r |= (v >> 1);
	return r;
}

static __always_inline __u64 log2_u64(__u64 v)
{
	__u32 hi = v >> 32;
	return hi ? log2_u32(hi) + 32 : log2_u32(v);
}

/* Name the VMA once (pagefault.bpf.h's keep_vma_named), read now: at the end the process and its mm may be
 * gone. */
static __always_inline void name_vma(struct vm_area_struct *v, __u64 start)
{
	__u32 zero = 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct vma_key *last = bpf_map_lookup_elem(&last_named, &zero);
	if (last && last->start == start && last->tgid == tgid)
		return;
	if (last) {
		last->start = start;
		last->tgid = tgid;
	}
	if (keep_vma_named(&vmas, v, BPF_CORE_READ(v, vm_mm), start))
		bump(LAT_UNNAMED);
}

static __always_inline int on_enter(struct vm_area_struct *vma)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	if (!followed(id >> 32))
		return 0;
	/* set field by field: an initializer with a non-zero field becomes a constant in .rodata, whose size
	 * must stay the settings' alone */
	struct fault_timing t = {};
	t.handler = NO_HANDLER;
	t.vm_start = BPF_CORE_READ(vma, vm_start);
	name_vma(vma, t.vm_start);
	t.start_ns = bpf_ktime_get_ns();   /* after the naming: it is ours, not the fault's */
	if (bpf_map_update_elem(&timing, &tid, &t, BPF_ANY))
		bump(LAT_UNTIMED);
	return 0;
}

static __always_inline int on_handler(enum outcome_handler code)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	if (!followed(id >> 32))
		return 0;
	struct fault_timing *t = bpf_map_lookup_elem(&timing, &tid);
	if (t)
		t->handler = code;
	return 0;
}

static __always_inline int on_return(__u32 ret)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	if (!followed(id >> 32))
		return 0;
	struct fault_timing *t = bpf_map_lookup_elem(&timing, &tid);
	if (!t)
		return 0;   /* a fault that entered before the entry program was attached */
	__u64 d = now - t->start_ns;
	struct latency_key key = {.handler = t->handler, .retval = ret, .vm_start = t->vm_start};
	bpf_map_delete_elem(&timing, &tid);
	struct latency_hist *h = bpf_map_lookup_elem(&hists, &key);
	if (!h) {
		bpf_map_update_elem(&hists, &key, &empty_hist, BPF_NOEXIST);
		h = bpf_map_lookup_elem(&hists, &key);
		if (!h) {
			bump(LAT_NO_ROOM);
			return 0;
		}
	}
	__u64 slot = d ? log2_u64(d) + 1 : 0;
	/* the bound is checked on the register that indexes: without the barrier clang tests the value before
	 * its + 1, which the 6.1 verifier cannot carry over (seen: "R1 unbounded memory access") */
	barrier_var(slot);
	if (slot >= LATENCY_SLOTS)
		slot = LATENCY_SLOTS - 1;
	h->slots[slot] += 1;   /* this CPU's own histogram: no atomic needed */
	h->total_ns += d;
	if (d > h->max_ns)
		h->max_ns = d;
	bump(LAT_TIMED);
	return 0;
}

/* handle_mm_fault(struct vm_area_struct *vma, unsigned long address, unsigned int flags, struct pt_regs *regs)
 * returns vm_fault_t (unsigned int) on every kernel since 5.9 */
SEC("fentry/handle_mm_fault")
int BPF_PROG(enter_fentry, struct vm_area_struct *vma)
{
	return on_enter(vma);
}

SEC("fexit/handle_mm_fault")
int BPF_PROG(return_fexit, struct vm_area_struct *vma, unsigned long address, unsigned int flags,
	     struct pt_regs *regs, vm_fault_t ret)
{
	return on_return(ret);
}

SEC("kprobe/handle_mm_fault")
int BPF_KPROBE(enter_kprobe, struct vm_area_struct *vma)
{
	return on_enter(vma);
}

SEC("kretprobe/handle_mm_fault")
int BPF_KRETPROBE(return_kretprobe, unsigned long ret)
{
	return on_return((__u32)ret);
}

/* One fentry and one kprobe program per outcome handler, named FUNCTION_fentry and FUNCTION_kprobe. */
#define OUTCOME_HANDLER(fn)                                             \
	SEC("fentry/" #fn)                                              \
	int BPF_PROG(fn##_fentry)                                       \
	{                                                               \
		return on_handler(H_##fn);                              \
	}                                                               \
	SEC("kprobe/" #fn)                                              \
	int BPF_KPROBE(fn##_kprobe)                                     \
	{                                                               \
		return on_handler(H_##fn);                              \
	}

OUTCOME_HANDLER(do_anonymous_page)
OUTCOME_HANDLER(do_read_fault)
OUTCOME_HANDLER(do_cow_fault)
OUTCOME_HANDLER(do_shared_fault)
OUTCOME_HANDLER(filemap_fault)
OUTCOME_HANDLER(do_wp_page)
OUTCOME_HANDLER(wp_page_copy)
OUTCOME_HANDLER(wp_page_reuse)
OUTCOME_HANDLER(do_swap_page)
OUTCOME_HANDLER(do_huge_pmd_anonymous_page)
OUTCOME_HANDLER(do_huge_pmd_wp_page)
OUTCOME_HANDLER(do_numa_page)

/* the target's forks are followed, and its exec starts the following (pagefault.bpf.h) */
FOLLOW_FORK_PROGRAMS()
FOLLOW_EXEC_PROGRAMS(settings.target_tgid)

char LICENSE[] SEC("license") = "GPL";
