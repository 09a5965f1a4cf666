/* Helpers shared by pagefault's BPF programs: the task's mm, the VMA holding an address (the maple-tree
 * search, quiet or recorded), a VMA's name for a summary, the following of a target and its children, and
 * the two programs (raw tracepoint: tp_btf, or raw_tp with RAW_TRACEPOINTS; and classic tracepoint) of each
 * scheduler and system-call hook. Kernel memory is
 * read through CO-RE (offsets relocated against the running kernel's BTF at load). Include after vmlinux.h
 * and libbpf's headers. */
#ifndef PAGEFAULT_BPF_H
#define PAGEFAULT_BPF_H

#include "maple_step.h"    /* struct maple_step_rec: a recorded search's node */
#include "fault_count.h"   /* struct vma_seen, VMA_*: the one record of a named VMA */

/* exceptions:page_fault_user as a classic tracepoint hands it over (tracefs's events/exceptions/
 * page_fault_user/format; the struct is not in BTF): the loader checks these offsets against the format
 * before it chooses this variant. */
struct page_fault_user_args {
	__u64 common;        /* common_type, common_flags, common_preempt_count, common_pid */
	__u64 address;       /* offset 8 */
	__u64 ip;            /* offset 16 */
	__u64 error_code;    /* offset 24 */
};

#define MAPLE_DEPTH 6        /* a maple tree of VMAs this deep holds far more VMAs than max_map_count */
#define MAPLE_MAX_PIVOTS 15  /* maple_range_64's; maple_arange_64 has fewer */
#define MAPLE_NODE_MASK 255ULL
#define MAPLE_TYPE_SHIFT 3
#define MAPLE_TYPE_MASK 0xfULL

/* The flags word of a struct page or a struct folio (PG_* bits), in its two shapes: an unsigned long up to 6.17,
 * a memdesc_flags_t (a struct holding one unsigned long, `f`) from 6.18. Each shape is a local flavour, and
 * the relocation chooses: libbpf's field compatibility (relo_core.c bpf_core_fields_are_compat, 1.1.2 as
 * later) matches an integer only with an integer and a struct only with a struct, so on each kernel exactly
 * one flavour's `flags` exists; the other's reads are never reached, and libbpf poisons them harmlessly.
 * The folio's flags sit in an anonymous struct of a union (libbpf descends into anonymous members). */
struct page___flags_long {
	unsigned long flags;
} __attribute__((preserve_access_index));
struct page___flags_memdesc {
	struct {
		unsigned long f;
	} flags;   /* memdesc_flags_t, declared here: older kernels' vmlinux.h have no such type */
} __attribute__((preserve_access_index));
struct folio___flags_long {
	unsigned long flags;
} __attribute__((preserve_access_index));
struct folio___flags_memdesc {
	struct {
		unsigned long f;
	} flags;
} __attribute__((preserve_access_index));

/* The PG_* word of the struct page at `page` (0 when neither shape is in the kernel's BTF). */
static __always_inline __u64 page_flags_word(const void *page)
{
	__u64 v = 0;
	if (bpf_core_field_exists(((struct page___flags_memdesc *)0)->flags.f))
		bpf_core_read(&v, sizeof(v), &((struct page___flags_memdesc *)page)->flags.f);
	else if (bpf_core_field_exists(((struct page___flags_long *)0)->flags))
		bpf_core_read(&v, sizeof(v), &((struct page___flags_long *)page)->flags);
	return v;
}

/* The PG_* word of the struct folio at `folio` (0 when neither shape is in the kernel's BTF). */
static __always_inline __u64 folio_flags_word(const void *folio)
{
	__u64 v = 0;
	if (bpf_core_field_exists(((struct folio___flags_memdesc *)0)->flags.f))
		bpf_core_read(&v, sizeof(v), &((struct folio___flags_memdesc *)folio)->flags.f);
	else if (bpf_core_field_exists(((struct folio___flags_long *)0)->flags))
		bpf_core_read(&v, sizeof(v), &((struct folio___flags_long *)folio)->flags);
	return v;
}

static __always_inline struct mm_struct *current_mm(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	return BPF_CORE_READ(task, mm);
}

/* ---- the maple-tree search, in the objects that define MAPLE_SEARCH before including this: its global
 * function (maple_slot) would otherwise be in every object, and libbpf relocates it at every load whether a
 * program calls it or not (~9 ms of latency.bpf.o's load here) ---- */
#ifdef MAPLE_SEARCH
/* Where a maple node of `type` keeps its pivots and its slots, and how many pivots it has (maple_range_64's or
 * maple_arange_64's layout, from BTF: CO-RE, not a table of ours). */
static __always_inline void maple_layout(__u64 type, __u32 *pivots_at, __u32 *slots_at, __u32 *npivots)
{
	if (type == bpf_core_enum_value(enum maple_type, maple_arange_64)) {
		*pivots_at = bpf_core_field_offset(struct maple_arange_64, pivot);
		*slots_at = bpf_core_field_offset(struct maple_arange_64, slot);
		*npivots = bpf_core_field_size(struct maple_arange_64, pivot) / 8;
	} else {
		*pivots_at = bpf_core_field_offset(struct maple_range_64, pivot);
		*slots_at = bpf_core_field_offset(struct maple_range_64, slot);
		*npivots = bpf_core_field_size(struct maple_range_64, pivot) / 8;
	}
}

/* The slot of a node whose `npivots` pivots are in `pivots` that `addr` falls in, as mas_walk() picks it: the
 * first pivot >= addr (a 0 pivot past the first ends the node's data), else the slot after the last pivot. */
static __always_inline __s32 maple_pick(const __u64 *pivots, __u32 npivots, __u64 addr)
{
	__u32 off = npivots;
	for (__u32 i = 0; i < MAPLE_MAX_PIVOTS; i++) {
		if (i >= npivots)
			break;
		if (pivots[i] >= addr || (pivots[i] == 0 && i > 0)) {
			off = i;
			break;
		}
	}
	return off;
}

/* Whether `off` is the slot maple_pick() takes among the `npivots` pivots in `pivots`: its own pivot (if it has
 * one) is >= addr or ends the data, and the one before it (if any) is below addr and does not. Pivots rise up to
 * the 0 that ends a node's data, so the two next to the slot answer for all; a check of two words, where picking
 * the slot again (maple_pick inlined) made the verifier follow every place the scan could stop at once more
 * (journey_walk's fault program: 17,033 instructions processed, against 2,214). */
static __always_inline int maple_slot_agrees(const __u64 *pivots, __u32 npivots, __u64 addr, __s32 off)
{
	if (off < 0 || off > npivots || npivots > MAPLE_MAX_PIVOTS)
		return 0;
	/* 64-bit indices: a 32-bit one is widened once for its comparison and again for the read, and the verifier
	 * bounded only the first copy (it refused the read) */
	__u64 at = (__u32)off;
	if (at < npivots && at < MAPLE_MAX_PIVOTS) {
		__u64 p = pivots[at];
		if (!(p >= addr || (p == 0 && at > 0)))
			return 0;
	}
	__u64 below = at - 1;
	if (at > 0 && below < MAPLE_MAX_PIVOTS) {
		__u64 before = pivots[below];
		if (before >= addr || (before == 0 && below > 0))
			return 0;
	}
	return 1;
}

/* The slot of the maple node `entry` (an encoded node: its address and type) that `addr` falls in (maple_pick,
 * from one read of the node's pivots); -1: the node could not be read.
 *
 * A global function, not inlined, so the verifier checks it once per program with unknown arguments: inlined in
 * the search's loop it was checked again at every depth for each pivot the scan could stop at (fault_count's
 * fault program: 11,757 instructions processed and ~30 ms of a ~58 ms load on 6.18 here; 3,279 and ~4 ms with
 * this function). Only scalars in and out: how a global function's pointer arguments are checked
 * differs across the kernels pagefault loads on. */
__noinline __s32 maple_slot(__u64 entry, __u64 addr)
{
	__u64 pivots[MAPLE_MAX_PIVOTS];
	__u64 node = entry & ~MAPLE_NODE_MASK;
	__u32 pivots_at, slots_at, npivots;
	maple_layout((entry >> MAPLE_TYPE_SHIFT) & MAPLE_TYPE_MASK, &pivots_at, &slots_at, &npivots);
	if (npivots > MAPLE_MAX_PIVOTS)
		return -1;
	/* the node's pivots in one read (both layouts hold 15 words from the pivots on) */
	if (bpf_probe_read_kernel(pivots, MAPLE_MAX_PIVOTS * sizeof(__u64), (void *)(node + pivots_at)))
		return -1;
	return maple_pick(pivots, npivots, addr);
}

/* The VMA holding `addr` in `mm` (0: none), found as mas_walk() does: from the root, in each node the slot
 * maple_slot() picks, down to a leaf (maple_dense or maple_leaf_64, whose slot holds the VMA). The node layouts
 * and type numbers come from BTF (CO-RE). bpf_find_vma would do this for us, but costs an irq_work per call in
 * an IRQs-off tracepoint (~12.7 µs per fault measured).
 *
 * pivots, steps, depth: NULL for a quiet search; else each node's MAPLE_MAX_PIVOTS pivots are read into pivots
 * first (the leaf's stay there), the slot maple_slot picks is checked against them (maple_slot_agrees), and each
 * node read is recorded in steps[0..MAPLE_DEPTH) (root first), *depth counting them. root: NULL, or where the
 * tree's root entry goes (left alone before 6.1, whose VMAs are in an rbtree). Constant NULLs are folded away
 * where the search is inlined. */
static __always_inline __u64 maple_search(struct mm_struct *mm, __u64 addr, __u64 *pivots,
					  struct maple_step_rec *steps, __u32 *depth, __u64 *root)
{
	if (!bpf_core_field_exists(mm->mm_mt))
		return 0;
	__u64 entry = (__u64)BPF_CORE_READ(mm, mm_mt.ma_root);
	if (root)
		*root = entry;
	if (!((entry & 3) == 2 && entry > 4096))
		return entry;   /* not a node: the root holds the only entry (or none) */
	const __u64 dense = bpf_core_enum_value(enum maple_type, maple_dense);
	const __u64 leaf = bpf_core_enum_value(enum maple_type, maple_leaf_64);

	for (__u32 d = 0; d < MAPLE_DEPTH; d++) {
		__u64 node = entry & ~MAPLE_NODE_MASK;
		__u64 type = (entry >> MAPLE_TYPE_SHIFT) & MAPLE_TYPE_MASK;
		__u32 pivots_at, slots_at, npivots;
		maple_layout(type, &pivots_at, &slots_at, &npivots);
		if (pivots && (npivots > MAPLE_MAX_PIVOTS ||
			       bpf_probe_read_kernel(pivots, MAPLE_MAX_PIVOTS * sizeof(__u64), (void *)(node + pivots_at))))
			return 0;   /* recorded: the pivots kept are read first, before anything of the node is recorded */
		__s32 off = maple_slot(entry, addr);
		if (off < 0 || off > MAPLE_MAX_PIVOTS)
			return 0;
		if (pivots && !maple_slot_agrees(pivots, npivots, addr, off))
			return 0;   /* the node changed between the two reads: nothing recorded that disagrees with itself */
		__u64 next = 0;
		if (bpf_probe_read_kernel(&next, sizeof(next), (void *)(node + slots_at + (__u64)off * 8)))
			return 0;
		if (steps) {
			steps[d].node = node;
			steps[d].type = type;
			steps[d].slot = off;
			steps[d].entry = next;
			*depth = d + 1;
		}
		if (type == dense || type == leaf)
			return next;
		entry = next;
	}
	return 0;
}

/* The VMA holding `addr` in `mm` (0: none), searched quietly. */
static __always_inline __u64 maple_find_vma(struct mm_struct *mm, __u64 addr)
{
	return maple_search(mm, addr, 0, 0, 0, 0);
}
#endif

/* ---- the VMAs a summary names (struct vma_seen, fault_count.h: the one record
 * capture/mapping_watch.maps_from_kernel reads) ---- */

/* Keep VMA `v` of `mm`, named, in `vmas` (a hash map keyed by struct vma_key: the current process, whose fault
 * this is, and vm_start; of struct vma_seen), read now: at the end the process and its mm may be gone. The name is the file's (its dentry's), or for an anonymous
 * VMA what /proc/PID/maps would call it: [heap], [stack], or a special mapping's own name ([vdso], [vvar]).
 * Returns 1 when the VMA was not kept because the map is full (for the caller's counter), else 0. */
static __always_inline int keep_vma_named(void *vmas, struct vm_area_struct *v, struct mm_struct *mm, __u64 start)
{
	struct vma_key key = {.tgid = bpf_get_current_pid_tgid() >> 32, .start = start};
	if (bpf_map_lookup_elem(vmas, &key))
		return 0;
	struct vma_seen s = {.start = start};
	s.end = BPF_CORE_READ(v, vm_end);
	bpf_core_read(&s.flags, sizeof(s.flags), &v->vm_flags);
	s.pgoff = BPF_CORE_READ(v, vm_pgoff);
	struct file *file = BPF_CORE_READ(v, vm_file);
	if (file) {
		const unsigned char *name = BPF_CORE_READ(file, f_path.dentry, d_name.name);
		bpf_probe_read_kernel_str(s.name, sizeof(s.name), name);
	} else {
		__u64 brk = BPF_CORE_READ(mm, brk), start_brk = BPF_CORE_READ(mm, start_brk);
		__u64 stack = BPF_CORE_READ(mm, start_stack);
		/* the tests /proc/PID/maps makes for [heap] and [stack] */
		if (start <= brk && s.end >= start_brk) {
			s.what = VMA_HEAP;
		} else if (start <= stack && s.end >= stack) {
			s.what = VMA_STACK;
		} else if (BPF_CORE_READ(v, vm_ops) && BPF_CORE_READ(v, vm_private_data)) {
			/* an anonymous VMA with operations: a special mapping ([vdso], [vvar]) */
			struct vm_special_mapping *sm = BPF_CORE_READ(v, vm_private_data);
			const char *name = BPF_CORE_READ(sm, name);
			if (bpf_probe_read_kernel_str(s.name, sizeof(s.name), name) < 0)
				s.name[0] = 0;
			s.what = VMA_SPECIAL;
		}
	}
	return bpf_map_update_elem(vmas, &key, &s, BPF_NOEXIST) ? 1 : 0;
}

/* ---- following a target and the children it forks (an object defines FOLLOW_FORKS before including this,
 * and its `settings` in .rodata carry target_tgid and from_exec) ---- */
#ifdef FOLLOW_FORKS
__u32 started = 0;          /* the target has exec'ed (with settings.from_exec) */
__u32 children_seen = 0;    /* the children map holds anything: most machine-wide events skip its lookup */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} children SEC(".maps");

/* Is `tgid` the target (from its exec on, where asked) or a child it forked? `target` and `from_exec`: the
 * object's settings, constants to the verifier. */
static __always_inline int target_or_child(__u32 tgid, __u32 target, __u32 from_exec)
{
	if (tgid == target)
		return !from_exec || started;
	return children_seen && bpf_map_lookup_elem(&children, &tgid);
}

/* At a fork (which runs in the parent) of a followed process: its new child is followed too. */
static __always_inline int follow_child(int parent_followed, __u32 child)
{
	if (!parent_followed)
		return 0;
	__u8 one = 1;
	bpf_map_update_elem(&children, &child, &one, BPF_ANY);
	children_seen = 1;
	return 0;
}

/* At an exec: the target's starts the following (settings.from_exec). */
static __always_inline void start_at_exec(__u32 target)
{
	if ((__u32)(bpf_get_current_pid_tgid() >> 32) == target)
		started = 1;
}

/* Each FOLLOW_FORKS object defines followed(tgid): target_or_child() with its settings. */
static __always_inline int followed(__u32 tgid);

/* At a fork (which runs in the parent): a followed process's new child is followed too. */
static __always_inline int follow_fork(__u32 child)
{
	return follow_child(followed(bpf_get_current_pid_tgid() >> 32), child);
}

/* The object's programs that follow its target's forks (fork_btf, fork_tp) and start at its exec (exec_btf,
 * exec_tp), `target` being its settings' target_tgid; after the object's settings and followed(). An object
 * with more to do at an exec writes its own exec programs. */
#define FOLLOW_FORK_PROGRAMS() SCHED_FORK_PROGRAMS(fork_btf, fork_tp, follow_fork)
#define FOLLOW_EXEC_PROGRAMS(target)                                                                      \
	static __always_inline int exec_starts_target(void)                                                \
	{                                                                                                  \
		start_at_exec(target);                                                                     \
		return 0;                                                                                  \
	}                                                                                                  \
	SCHED_PROGRAMS(sched_process_exec, exec_btf, exec_tp, exec_starts_target)
#endif

/* ---- the fault path: the handlers of mm/memory.c and mm/huge_memory.c a fault can go through, in the order
 * of the path, each with its index in capture/kprobes.py FAULT_HANDLERS (the same order: enum
 * fault_handler below, which the objects' BTF carries, holds the two together in a test). X(index, function)
 * for each; the fault-path objects make their programs with it. ---- */
#define FOR_EACH_FAULT_HANDLER(X)                                                                         \
	X(0, __handle_mm_fault) X(1, handle_pte_fault) X(2, do_anonymous_page) X(3, do_fault)              \
	X(4, do_read_fault) X(5, do_cow_fault) X(6, do_shared_fault) X(7, filemap_map_pages)               \
	X(8, filemap_fault) X(9, do_wp_page) X(10, wp_page_copy) X(11, wp_page_reuse) X(12, do_swap_page) \
	X(13, do_huge_pmd_anonymous_page) X(14, do_huge_pmd_wp_page) X(15, do_numa_page) X(16, finish_fault)
#define FAULT_HANDLER_ENUM(index, fn) FH_##fn = index,
enum fault_handler {
	FOR_EACH_FAULT_HANDLER(FAULT_HANDLER_ENUM)
	FAULT_HANDLERS_N = 17,
};

/* ---- the scheduler's and system calls' hooks, each as its two programs: the raw tracepoint (where the
 * kernel's BTF has btf_trace_EVENT) and the classic tracepoint; capture/bpf's KernelHooks chooses one, the
 * loader turns the other off. `fn` is the object's handler. ----
 *
 * The raw tracepoint is BTF-typed (tp_btf/EVENT) unless the object defines RAW_TRACEPOINTS before including
 * this header: then it is a plain one (raw_tp/EVENT). Both run the same way at each event; what differs is the
 * load. A tp_btf program is attached by its BTF id, so libbpf parses the kernel's whole BTF at every load to
 * find it (~10 ms here) even where the object's CO-RE relocations are resolved from a small slice of it
 * (capture/core_btf.py); a raw_tp program is attached by name. Its arguments are untyped words, so an object
 * that defines RAW_TRACEPOINTS reads every pointer argument through CO-RE (BPF_CORE_READ), never directly. */
#ifdef RAW_TRACEPOINTS
#define RAW_HOOK(event) SEC("raw_tp/" #event)
#else
#define RAW_HOOK(event) SEC("tp_btf/" #event)
#endif

/* sched_process_fork: fn(the child's tgid) */
#define SCHED_FORK_PROGRAMS(btf_name, tp_name, fn)                                                        \
	RAW_HOOK(sched_process_fork)                                                                       \
	int BPF_PROG(btf_name, struct task_struct *parent, struct task_struct *child)                       \
	{                                                                                                  \
		return fn(BPF_CORE_READ(child, tgid));                                                     \
	}                                                                                                  \
	SEC("tracepoint/sched/sched_process_fork")                                                         \
	int tp_name(struct trace_event_raw_sched_process_fork *ctx)                                        \
	{                                                                                                  \
		return fn(BPF_CORE_READ(ctx, child_pid));                                                  \
	}

/* an event of the current task with nothing read from it: sched_process_exec, sched_process_exit...: fn() */
#define SCHED_PROGRAMS(event, btf_name, tp_name, fn)                                                      \
	RAW_HOOK(event)                                                                                    \
	int BPF_PROG(btf_name)                                                                             \
	{                                                                                                  \
		return fn();                                                                               \
	}                                                                                                  \
	SEC("tracepoint/sched/" #event)                                                                    \
	int tp_name(void *ctx)                                                                             \
	{                                                                                                  \
		return fn();                                                                               \
	}

/* raw_syscalls:sys_enter: fn(the system call's number) */
#define SYS_ENTER_PROGRAMS(btf_name, tp_name, fn)                                                         \
	RAW_HOOK(sys_enter)                                                                                \
	int BPF_PROG(btf_name, struct pt_regs *regs, long id)                                              \
	{                                                                                                  \
		return fn(id);                                                                             \
	}                                                                                                  \
	SEC("tracepoint/raw_syscalls/sys_enter")                                                           \
	int tp_name(struct trace_event_raw_sys_enter *ctx)                                                 \
	{                                                                                                  \
		return fn(BPF_CORE_READ(ctx, id));                                                         \
	}

#endif
