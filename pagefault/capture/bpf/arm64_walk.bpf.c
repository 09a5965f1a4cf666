// SPDX-License-Identifier: GPL-2.0
/* The arm64 journey's capture: one write fault of the target on one page, from the inside.
 *
 * arm64 kernels have no exceptions:page_fault_user tracepoint, and do_mem_abort, do_translation_fault and
 * do_page_fault refuse kprobes, so the fault is met at handle_mm_fault: its address, flags, VMA and the
 * saved user registers (PC, PSTATE), the kernel stack that led there, and the page-table walk as the MMU
 * found it (one descriptor per level, read through the kernel's linear map). Then the pages allocated
 * inside the fault (kmem:mm_page_alloc, with their stacks), handle_mm_fault's return, and the walk again
 * at the target's next system call, when the fault is handled and the store retried.
 *
 * With no fault page set, only a walk of up to WALK_PAGES pages at the target's system call `syscall_nr`
 * is made (the entry-kinds check reads a present and a PROT_NONE PTE so).
 *
 * handle_mm_fault and pgd_alloc each have fentry/fexit programs (BPF trampolines: Debian's arm64 6.12) and
 * kprobe/kretprobe ones (arm64 6.1 has no trampolines for kernel functions); the loader attaches one kind.
 * sys_enter has a tp_btf and a classic-tracepoint program. mm_page_alloc is the classic tracepoint only:
 * its record carries the PFN, where tp_btf hands over a struct page * whose PFN needs vmemmap's base.
 *
 * The linear map's offset (virtual = physical + offset, to follow each table descriptor's physical
 * address): PAGE_OFFSET - memstart_addr where kallsyms has memstart_addr (CONFIG_KALLSYMS_ALL, as Debian's
 * 6.12), read through its address; else from a pgd_alloc (the loader forks once to make one run): the
 * PGD page's returned linear address minus its PFN × the page size. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "pagefault.bpf.h"
#include "arm64_walk.h"

char LICENSE[] SEC("license") = "GPL";

const volatile struct arm64_walk_settings settings = {};

/* memstart_addr (PHYS_OFFSET) by its kallsyms address, which libbpf reads; 0 where kallsyms lacks it */
extern const void memstart_addr __ksym __weak;

/* in a section of its own, so that the loader finds it at offset 0 of that map */
struct arm64_walk_state st SEC(".data.state") = {};

/* the records' types in the object's BTF (they are only ever cast from the ring buffer), for the test that
 * holds the Python mirror to them */
const struct fault_event *unused_fault_event __attribute__((unused));
const struct walk_event *unused_walk_event __attribute__((unused));
const struct alloc_event *unused_alloc_event __attribute__((unused));
const struct return_event *unused_return_event __attribute__((unused));
const struct linear_event *unused_linear_event __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

/* Threads inside pgd_alloc (key: tid) → the PFN of the page allocated there (0: none yet). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u64);
} pgd_tids SEC(".maps");

static __always_inline void *reserve(__u64 size)
{
	void *e = bpf_ringbuf_reserve(&events, size, 0);
	if (!e)
		__sync_fetch_and_add(&st.lost, 1);
	return e;
}

static __always_inline __u64 linear_now(void)
{
	return settings.linear_offset ? settings.linear_offset : st.linear;
}

/* PAGE_OFFSET - memstart_addr, read once, where the loader found memstart_addr in kallsyms. */
static __always_inline void learn_linear_from_memstart(void)
{
	if (st.linear || !settings.page_offset || !&memstart_addr)
		return;
	__s64 memstart = 0;
	if (bpf_probe_read_kernel(&memstart, sizeof(memstart), &memstart_addr))
		return;
	st.linear = settings.page_offset - memstart;
	struct linear_event *e = reserve(sizeof(*e));
	if (!e)
		return;
	e->kind = EV_LINEAR;
	e->how = LINEAR_MEMSTART;
	e->offset = st.linear;
	e->memstart_or_address = memstart;
	e->pfn = 0;
	bpf_ringbuf_submit(e, 0);
}

/* One descriptor per level from the table at mm->pgd, each next table found through the linear map; the
 * walk stops below a descriptor that is not a valid table (bits 1..0 = 0b11), as the MMU's does. */
static __always_inline void walk(struct walk_event *e, __u64 page, __u64 pgd, __u64 lin)
{
	__u64 t = pgd;
	e->page = page;
	e->pgd = pgd;
	e->linear_offset = lin;
	e->nreads = 0;
	for (int i = 0; i < WALK_LEVELS; i++) {
		e->value[i] = 0;
		e->table[i] = 0;
	}
	for (__u32 i = 0; i < WALK_LEVELS; i++) {
		if (i >= settings.levels)
			break;
		__u64 index = (page >> settings.shift[i]) & settings.mask[i];
		__u64 v = 0;
		if (bpf_probe_read_kernel(&v, sizeof(v), (void *)(t + index * 8)))
			break;
		e->value[i] = v;
		e->table[i] = lin ? t - lin : 0;
		e->nreads = i + 1;
		if ((v & 3) != 3 || !lin)
			break;
		t = lin + (v & settings.table_mask);
	}
}

static __always_inline __u64 current_pgd(void)
{
	struct mm_struct *mm = current_mm();
	return mm ? (__u64)BPF_CORE_READ(mm, pgd) : 0;
}

static __always_inline int on_fault(void *ctx, struct vm_area_struct *vma, __u64 address, __u32 flags,
				    struct pt_regs *regs)
{
	if (!settings.fault_page || (address & settings.page_mask) != settings.fault_page || st.state != ST_WAITING)
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	if ((id >> 32) != settings.target_tgid)
		return 0;
	st.state = ST_IN_FAULT;
	st.fault_tid = (__u32)id;
	st.fault_t0 = bpf_ktime_get_ns();
	learn_linear_from_memstart();

	struct fault_event *f = reserve(sizeof(*f));
	if (f) {
		f->kind = EV_FAULT;
		f->flags = flags;
		f->address = address;
		f->pc = PT_REGS_IP_CORE(regs);
#if defined(__TARGET_ARCH_arm64)
		f->pstate = BPF_CORE_READ((const struct user_pt_regs *)regs, pstate);
#else
		f->pstate = BPF_CORE_READ(regs, flags);   /* built for x86 too, where this program has no use */
#endif
		f->vm_start = BPF_CORE_READ(vma, vm_start);
		f->vm_end = BPF_CORE_READ(vma, vm_end);
		f->vm_flags = BPF_CORE_READ(vma, vm_flags);
		f->vm_page_prot = BPF_CORE_READ(vma, vm_page_prot.pgprot);
		f->ktime_ns = st.fault_t0;
		f->stack_bytes = bpf_get_stack(ctx, f->stack, sizeof(f->stack), 0);
		bpf_ringbuf_submit(f, 0);
	}
	struct walk_event *w = reserve(sizeof(*w));
	if (w) {
		walk(w, settings.fault_page, current_pgd(), linear_now());
		w->kind = EV_BEFORE;
		bpf_ringbuf_submit(w, 0);
	}
	return 0;
}

static __always_inline int on_return(__u32 ret)
{
	if (st.state != ST_IN_FAULT || (__u32)bpf_get_current_pid_tgid() != st.fault_tid)
		return 0;
	st.state = ST_RETURNED;
	struct return_event *r = reserve(sizeof(*r));
	if (r) {
		r->kind = EV_RETURN;
		r->retval = ret;
		r->duration_ns = bpf_ktime_get_ns() - st.fault_t0;
		bpf_ringbuf_submit(r, 0);
	}
	return 0;
}

SEC("fentry/handle_mm_fault")
int BPF_PROG(fault_fentry, struct vm_area_struct *vma, unsigned long address, unsigned int flags, struct pt_regs *regs)
{
	return on_fault(ctx, vma, address, flags, regs);
}

SEC("fexit/handle_mm_fault")
int BPF_PROG(fault_fexit, struct vm_area_struct *vma, unsigned long address, unsigned int flags, struct pt_regs *regs,
	     unsigned int ret)
{
	return on_return(ret);
}

SEC("kprobe/handle_mm_fault")
int BPF_KPROBE(fault_kprobe, struct vm_area_struct *vma, unsigned long address, unsigned int flags, struct pt_regs *regs)
{
	return on_fault(ctx, vma, address, flags, regs);
}

SEC("kretprobe/handle_mm_fault")
int BPF_KRETPROBE(fault_kretprobe, unsigned int ret)
{
	return on_return(ret);
}

/* --- the linear offset from a pgd_alloc, where memstart_addr cannot be read ------------------------------- */

static __always_inline int pgd_enter(void)
{
	if (st.linear || settings.page_offset || settings.linear_offset)
		return 0;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 none = 0;
	bpf_map_update_elem(&pgd_tids, &tid, &none, BPF_ANY);
	return 0;
}

static __always_inline int pgd_return(__u64 returned)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 *pfn = bpf_map_lookup_elem(&pgd_tids, &tid);
	if (!pfn)
		return 0;
	if (*pfn && returned && !st.linear) {
		st.linear = returned - *pfn * settings.page_size;
		struct linear_event *e = reserve(sizeof(*e));
		if (e) {
			e->kind = EV_LINEAR;
			e->how = LINEAR_PGD_ALLOC;
			e->offset = st.linear;
			e->memstart_or_address = returned;
			e->pfn = *pfn;
			bpf_ringbuf_submit(e, 0);
		}
	}
	bpf_map_delete_elem(&pgd_tids, &tid);
	return 0;
}

SEC("fentry/pgd_alloc")
int BPF_PROG(pgd_fentry, struct mm_struct *mm)
{
	return pgd_enter();
}

SEC("fexit/pgd_alloc")
int BPF_PROG(pgd_fexit, struct mm_struct *mm, void *ret)
{
	return pgd_return((__u64)ret);
}

SEC("kprobe/pgd_alloc")
int BPF_KPROBE(pgd_kprobe, struct mm_struct *mm)
{
	return pgd_enter();
}

SEC("kretprobe/pgd_alloc")
int BPF_KRETPROBE(pgd_kretprobe, void *ret)
{
	return pgd_return((__u64)ret);
}

/* --- pages allocated: in the fault, or the PGD page inside pgd_alloc ------------------------------------- */

SEC("tracepoint/kmem/mm_page_alloc")
int alloc_tp(struct trace_event_raw_mm_page_alloc *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	if (st.state == ST_IN_FAULT && tid == st.fault_tid) {
		struct alloc_event *a = reserve(sizeof(*a));
		if (!a)
			return 0;
		a->kind = EV_ALLOC;
		a->order = ctx->order;
		a->pfn = ctx->pfn;
		a->gfp_flags = ctx->gfp_flags;
		a->stack_bytes = bpf_get_stack(ctx, a->stack, sizeof(a->stack), 0);
		bpf_ringbuf_submit(a, 0);
		return 0;
	}
	if (st.linear || settings.page_offset || settings.linear_offset)
		return 0;
	__u64 *pfn = bpf_map_lookup_elem(&pgd_tids, &tid);
	if (pfn && !*pfn)
		*pfn = ctx->pfn;
	return 0;
}

/* --- the walk at the target's system call ---------------------------------------------------------------- */

static __always_inline int on_syscall(long id)
{
	if (st.state == ST_DONE)
		return 0;
	if ((bpf_get_current_pid_tgid() >> 32) != settings.target_tgid)
		return 0;
	if (settings.syscall_nr >= 0 && id != settings.syscall_nr)
		return 0;
	if (settings.fault_page && st.state != ST_RETURNED)
		return 0;
	st.state = ST_DONE;
	__u64 pgd = current_pgd();
	__u64 lin = linear_now();
	for (__u32 p = 0; p < WALK_PAGES; p++) {
		__u64 page;
		if (settings.fault_page) {
			if (p > 0)
				break;
			page = settings.fault_page;
		} else {
			if (p >= settings.npages)
				break;
			page = settings.pages[p];
		}
		struct walk_event *w = reserve(sizeof(*w));
		if (!w)
			break;
		walk(w, page, pgd, lin);
		w->kind = EV_AFTER;
		bpf_ringbuf_submit(w, 0);
	}
	return 0;
}

SYS_ENTER_PROGRAMS(sys_enter_btf, sys_enter_tp, on_syscall)
