// SPDX-License-Identifier: GPL-2.0
/* The scenarios' every-fault timing: each call of handle_mm_fault by one process (and the children it forks),
 * with its address and flags, the handlers it went through and when, its return value and its duration, kept
 * in the kernel in a map (struct fault_call, fault_calls.h) that the loader reads once at the end: nothing
 * needs reading while the program runs, and a call that has not returned by then is kept too.
 *
 * handle_mm_fault and each handler have two programs, fentry/fexit (BPF trampolines: a call, no trap) and
 * kprobe/kretprobe; the loader loads one kind and turns the other off, and turns off each handler this kernel
 * cannot hook. The scheduler hooks (the target's exec starts the following; its forks are followed) each have
 * a tp_btf and a classic-tracepoint program (pagefault.bpf.h). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#define FOLLOW_FORKS        /* the target and its children (pagefault.bpf.h) */
#include "pagefault.bpf.h"
#include "fault_calls.h"

const volatile struct fault_calls_settings settings = {};

/* Every call kept (key: its thread and start). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CALLS_MAX);
	__type(key, struct fault_call_key);
	__type(value, struct fault_call);
} calls SEC(".maps");

/* Per thread (key: tid), while a call is inside handle_mm_fault: its start, which keys it in `calls`. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u64);
} inside SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CALLS_N);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* a new call's first value (set field by field: the entry's values are known only there) */
struct fault_call empty_call = {};

static __always_inline void bump(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&counters, &which);
	if (n)
		*n += 1;
}

/* Never written: its value type keeps enum fault_handler in the object's BTF, where a test holds
 * capture/kprobes.py FAULT_HANDLERS to it. */
struct names {
	enum fault_handler handler;
};
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct names);
} names SEC(".maps");

static __always_inline int followed(__u32 tgid)
{
	return target_or_child(tgid, settings.target_tgid, settings.from_exec);
}

static __always_inline struct fault_call *call_inside(__u32 tid)
{
	__u64 *start = bpf_map_lookup_elem(&inside, &tid);
	if (!start)
		return 0;
	struct fault_call_key key = {.tid = tid, .start_ns = *start};
	return bpf_map_lookup_elem(&calls, &key);
}

static __always_inline int on_entry(__u64 address, __u32 flags)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	if (!followed(id >> 32))
		return 0;
	struct fault_call_key key = {.tid = tid, .start_ns = bpf_ktime_get_ns()};
	if (bpf_map_update_elem(&calls, &key, &empty_call, BPF_NOEXIST)) {
		bump(CALLS_DROPPED);
		return 0;
	}
	struct fault_call *c = bpf_map_lookup_elem(&calls, &key);
	if (!c)
		return 0;
	if (bpf_map_update_elem(&inside, &tid, &key.start_ns, BPF_ANY)) {
		bpf_map_delete_elem(&calls, &key);
		bump(CALLS_UNTRACKED);
		return 0;
	}
	c->start_ns = key.start_ns;
	c->address = address;
	c->flags = flags;
	c->pid = id >> 32;
	c->tid = tid;
	return 0;
}

static __always_inline int on_handler(__u32 handler)
{
	__u64 now = bpf_ktime_get_ns();
	struct fault_call *c = call_inside((__u32)bpf_get_current_pid_tgid());
	if (!c)
		return 0;
	__u32 n = c->npath;
	c->npath = n + 1;
	if (n >= CALL_PATH)
		return 0;
	n &= CALL_PATH - 1;   /* the bound on the register that indexes, for the 6.1 verifier */
	c->path[n] = handler;
	c->path_ns[n] = now - c->start_ns;
	return 0;
}

static __always_inline int on_return(__u32 ret)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct fault_call *c = call_inside(tid);
	if (!c)
		return 0;   /* a call that entered before the entry program was attached */
	c->duration_ns = now - c->start_ns;
	c->retval = ret;
	c->returned = 1;
	bpf_map_delete_elem(&inside, &tid);
	return 0;
}

/* handle_mm_fault(struct vm_area_struct *vma, unsigned long address, unsigned int flags, struct pt_regs *regs)
 * returns vm_fault_t (unsigned int) on every kernel since 5.9 */
SEC("fentry/handle_mm_fault")
int BPF_PROG(hmf_fentry, struct vm_area_struct *vma, unsigned long address, unsigned int flags)
{
	return on_entry(address, flags);
}

SEC("fexit/handle_mm_fault")
int BPF_PROG(hmf_fexit, struct vm_area_struct *vma, unsigned long address, unsigned int flags,
	     struct pt_regs *regs, vm_fault_t ret)
{
	return on_return(ret);
}

SEC("kprobe/handle_mm_fault")
int BPF_KPROBE(hmf_kprobe, struct vm_area_struct *vma, unsigned long address, unsigned int flags)
{
	return on_entry(address, flags);
}

SEC("kretprobe/handle_mm_fault")
int BPF_KRETPROBE(hmf_kretprobe, unsigned long ret)
{
	return on_return((__u32)ret);
}

/* One fentry and one kprobe program per handler, named fe_FUNCTION and kp_FUNCTION (as journey_walk's). */
#define HANDLER(index, fn)                                                          \
	SEC("fentry/" #fn) int BPF_PROG(fe_##fn) { return on_handler(index); }     \
	SEC("kprobe/" #fn) int BPF_KPROBE(kp_##fn) { return on_handler(index); }

FOR_EACH_FAULT_HANDLER(HANDLER)

/* the target's forks are followed, and its exec starts the following (pagefault.bpf.h) */
FOLLOW_FORK_PROGRAMS()
FOLLOW_EXEC_PROGRAMS(settings.target_tgid)

char LICENSE[] SEC("license") = "GPL";
