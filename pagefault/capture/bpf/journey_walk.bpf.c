// SPDX-License-Identifier: GPL-2.0
/* The journey's reads of one fault (pagefault journey; journey -p PID and journey -- CMD): the page-table
 * walk from the task's mm->pgd through the kernel's direct map, mm->map_count, the maple-tree search for the
 * address and the VMA it ends at, read when the fault enters the kernel (page_fault_user, before the
 * handler; page_fault_kernel for --kind kernel, a fault on a user address taken inside a system call); then, at the thread's next kernel entry (a system call, or with MODE_PROGRAM its next fault),
 * the walk again and the struct page of the frame the entry now names, through vmemmap.
 *
 * MODE_PAGE follows the target's first fault on the page the loader writes into state.page; MODE_PROGRAM
 * picks the fault with a selector (settings.selector), reading every candidate's PTE and VMA quietly for
 * SEL_KIND, and stops the program (SIGSTOP) after the second read so that /proc can be read.
 *
 * With settings.fault_probes, handle_mm_fault's arguments, the handlers it runs, its return value and
 * duration are recorded for the followed fault, and the VMA-making call of MODE_PAGE's mmap: each as an
 * fentry/fexit program and as a kprobe/kretprobe program; the loader keeps the kind this kernel attaches.
 *
 * Each tracepoint hook has a BTF-typed raw tracepoint (tp_btf) program and a classic tracepoint one; the
 * loader turns off, before load, what it does not use. Records go through one ring buffer. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#define MAPLE_SEARCH        /* the VMA of a faulting address found in the maple tree (pagefault.bpf.h) */
#include "pagefault.bpf.h"
#include "journey_walk.h"

#define FRAME_MASK 0x000ffffffffff000ULL
#define PTE_PRESENT 0x1ULL
#define PTE_HUGE 0x80ULL       /* _PAGE_PSE: a PUD or PMD entry that maps the page itself */
#define PTE_PROTNONE 0x100ULL  /* _PAGE_PROTNONE (the global bit's place): a PROT_NONE or NUMA-hinting entry */
#define VM_WRITE 0x2ULL
#define VM_HUGEPAGE 0x20000000ULL
#define SIGSTOP 19
#define XA_CHUNK_MASK 63

const volatile struct walk_settings settings = {};

struct walk_state state = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} records SEC(".maps");

/* Never written: its value type keeps the ring buffer's record structs in the object's BTF (a ring buffer has
 * no value type), where tests/test_journey_walk_bpf.py holds the Python mirror to them. */
struct record_types {
	struct walk_read read;
	struct walk_event event;
};
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct record_types);
} record_types SEC(".maps");

/* A struct folio as 6.1 to 6.5 laid out its order (a byte in the first tail page); 6.6 on: _flags_1's low byte. */
struct folio___old {
	unsigned char _folio_order;
} __attribute__((preserve_access_index));

static __always_inline void *reserve(__u64 size)
{
	void *r = bpf_ringbuf_reserve(&records, size, 0);
	if (!r)
		__sync_fetch_and_add(&state.lost, 1);
	return r;
}

static __always_inline __u64 read_u64(__u64 addr)
{
	__u64 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), (void *)addr);
	return v;
}

/* struct page's flags word (pagefault.bpf.h: an unsigned long to 6.17, a memdesc_flags_t after, chosen by CO-RE) */
static __always_inline __u64 page_flags(__u64 page)
{
	return page_flags_word((const void *)page);
}

/* Shift of the index at level `pos` (0 = the top) of a `levels`-level walk. */
static __always_inline __u32 level_shift(__u32 levels, __u32 pos)
{
	return 12 + 9 * (levels - 1 - pos);
}

/* The walk of `page` from mm->pgd: one entry per level, stopping below a non-present or huge entry. With `r`,
 * every entry and its table's physical address go there; the last two levels' entries come back in
 * *pte / *pmd (0 where the walk stopped above them). Returns the last entry read. */
static __always_inline __u64 walk(struct walk_read *r, __u64 pgd, __u64 base, __u64 page, __u64 *pte, __u64 *pmd)
{
	const __u32 levels = settings.levels == 5 ? 5 : 4;
	__u64 t = pgd, e = 0;
	*pte = 0;
	*pmd = 0;
	/* unrolled (so no break: a stopped walk skips its remaining levels): as a loop, clang ended its body
	 * with a fall-through into the loop's head, a back-edge the 6.1 verifier refuses whatever the loop's
	 * bound ("back-edge from insn N to N+1", EINVAL) */
	int stopped = 0;
#pragma unroll
	for (__u32 pos = 0; pos < WALK_MAX_LEVELS; pos++) {
		if (stopped || pos >= levels)
			continue;
		e = read_u64(t + ((page >> level_shift(levels, pos)) & 0x1ff) * 8);
		if (r) {
			r->entry[pos] = e;
			r->table[pos] = t - base;
			r->levels_read = pos + 1;
		}
		if (pos == levels - 1) {
			*pte = e;
			stopped = 1;
			continue;
		}
		if (pos == levels - 2)
			*pmd = e;
		/* not present, or a huge PUD or PMD entry that maps the page itself: nothing below it */
		if (!(e & PTE_PRESENT) || ((pos == levels - 3 || pos == levels - 2) && (e & PTE_HUGE))) {
			stopped = 1;
			continue;
		}
		t = base + (e & FRAME_MASK);
	}
	return e;
}

/* The maple-tree search for `addr` (pagefault.bpf.h's maple_search), each node recorded in `r` (root first),
 * the leaf's pivots too. The node layouts used are BTF's (CO-RE): they agree with the typed access by
 * construction, so maple_layout_ok is 1 wherever a node is read. */
static __always_inline __u64 maple_search_recorded(struct walk_read *r, struct mm_struct *mm, __u64 addr)
{
	if (!bpf_core_field_exists(mm->mm_mt))
		return 0;
	__u64 vma = maple_search(mm, addr, r->pivots, r->maple, &r->maple_depth, &r->maple_root);
	r->have |= HAVE_MAPLE_ROOT;
	if (r->maple_depth) {
		r->maple_layout_ok = 1;
		r->have |= HAVE_LAYOUT;
		__u32 last = r->maple_depth - 1;
		const __u32 dense = bpf_core_enum_value(enum maple_type, maple_dense);
		const __u32 leaf = bpf_core_enum_value(enum maple_type, maple_leaf_64);
		if (last < WALK_MAPLE_DEPTH && (r->maple[last].type == dense || r->maple[last].type == leaf))
			r->have |= HAVE_PIVOTS;
	}
	return vma;
}

static __always_inline void read_vma(struct walk_read *r, __u64 vma)
{
	struct vm_area_struct *v = (struct vm_area_struct *)vma;
	r->vma = vma;
	r->vm_start = BPF_CORE_READ(v, vm_start);
	r->vm_end = BPF_CORE_READ(v, vm_end);
	bpf_core_read(&r->vm_flags, sizeof(r->vm_flags), &v->vm_flags);
	r->vm_page_prot = BPF_CORE_READ(v, vm_page_prot.pgprot);
	r->vm_file = (__u64)BPF_CORE_READ(v, vm_file);
	r->anon_vma = (__u64)BPF_CORE_READ(v, anon_vma);
	r->have |= HAVE_VMA;
}

/* The struct page of the frame in `e` (a present entry) at vmemmap + pfn × sizeof(struct page); for a page of
 * a large folio, the folio's order, and for a tail page its head's flags and counts too. */
static __always_inline void read_folio(struct walk_read *r, __u64 e)
{
	__u64 vmemmap = state.vmemmap;
	if (!vmemmap || !(e & PTE_PRESENT))
		return;
	const __u64 size = bpf_core_type_size(struct page);
	__u64 pfn = (e & FRAME_MASK) >> 12;
	struct page *pg = (struct page *)(vmemmap + pfn * size);
	r->folio_pfn = pfn;
	r->page_flags = page_flags((__u64)pg);
	r->refcount = BPF_CORE_READ(pg, _refcount.counter);
	r->mapcount = BPF_CORE_READ(pg, _mapcount.counter);
	r->have |= HAVE_FOLIO;

	__u64 head = (__u64)pg;
	if (bpf_core_field_exists(pg->compound_head)) {
		__u64 ch = BPF_CORE_READ(pg, compound_head);
		if (ch & 1) {   /* a tail page: compound_head holds its head, bit 0 set */
			head = ch - 1;
			struct page *hp = (struct page *)head;
			r->head_pfn = (head - vmemmap) / size;
			r->head_flags = page_flags(head);
			r->head_refcount = BPF_CORE_READ(hp, _refcount.counter);
			r->head_mapcount = BPF_CORE_READ(hp, _mapcount.counter);
			r->have |= HAVE_HEAD;
		}
	}
	if (!bpf_core_enum_value_exists(enum pageflags, PG_head))
		return;
	__u64 head_bit = 1ULL << bpf_core_enum_value(enum pageflags, PG_head);
	__u64 head_flags = head == (__u64)pg ? r->page_flags : r->head_flags;
	if (!(head_flags & head_bit))
		return;   /* an order-0 page */
	/* _folio_order where the kernel has it (its _flags_1, if any, is then the first tail's flags, not the
	 * order); else _flags_1's low byte */
	struct folio *folio = (struct folio *)head;
	struct folio___old *old = (struct folio___old *)head;
	if (bpf_core_field_exists(old->_folio_order)) {
		r->folio_order = BPF_CORE_READ(old, _folio_order);
		r->have |= HAVE_ORDER;
	} else if (bpf_core_field_exists(folio->_flags_1)) {
		r->folio_order = BPF_CORE_READ(folio, _flags_1) & 0xff;
		r->have |= HAVE_ORDER;
	}
}

static __always_inline struct walk_read *start_read(__u32 kind, __u64 *base, __u64 *pgd)
{
	struct walk_read *r = reserve(sizeof(*r));
	if (!r)
		return 0;
	__builtin_memset(r, 0, sizeof(*r));
	struct mm_struct *mm = current_mm();
	*pgd = (__u64)BPF_CORE_READ(mm, pgd);
	*base = settings.mode == MODE_PAGE ? *pgd - state.pgd_physical : settings.direct_map_base;
	r->kind = kind;
	r->tid = (__u32)bpf_get_current_pid_tgid();
	r->time_ns = bpf_ktime_get_ns();
	r->direct_map_base = *base;
	r->pgd_virtual = *pgd;
	r->map_count = BPF_CORE_READ(mm, map_count);
	r->have = HAVE_OBJECTS;
	return r;
}

/* The system call the current thread is in, from its saved user registers (orig_ax on x86-64, syscallno on
 * arm64: the number entry_SYSCALL_64 / el0_svc saved); -1 when it is in none. */
static __always_inline __s32 current_syscall(void)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
#if defined(__TARGET_ARCH_x86)
	return (__s32)BPF_CORE_READ(regs, orig_ax);
#elif defined(__TARGET_ARCH_arm64)
	return (__s32)BPF_CORE_READ(regs, syscallno);
#else
	return -1;
#endif
}

/* At the chosen fault's entry: the walk, the objects and the maple-tree search; for a fault taken in kernel
 * mode, the system call it was taken in. */
static __always_inline void read_before(__u64 addr, __u64 ip, __u64 error_code, int kernel_mode)
{
	__u64 base, pgd, pte, pmd;
	struct walk_read *r = start_read(REC_BEFORE, &base, &pgd);
	if (!r)
		return;
	r->address = addr;
	r->ip = ip;
	r->error_code = error_code;
	r->nth = state.n;
	r->syscall_nr = -1;
	if (kernel_mode) {
		r->have |= HAVE_KERNEL_MODE;
		r->syscall_nr = current_syscall();
	}
	walk(r, pgd, base, addr & ~0xfffULL, &pte, &pmd);
	__u64 vma = maple_search_recorded(r, current_mm(), addr);
	if (vma)
		read_vma(r, vma);
	bpf_ringbuf_submit(r, 0);
}

/* At the thread's next kernel entry: the walk again, and the struct page its last entry names. */
static __always_inline void read_after(void)
{
	__u64 base, pgd, pte, pmd;
	struct walk_read *r = start_read(REC_AFTER, &base, &pgd);
	if (!r)
		return;
	r->address = state.addr;
	r->ip = state.ip;
	r->nth = state.n;
	__u64 e = walk(r, pgd, base, state.addr & ~0xfffULL, &pte, &pmd);
	read_folio(r, e);
	bpf_ringbuf_submit(r, 0);
}

/* Is the file page of `v` at `addr` in the page cache (a folio in the mapping's xarray, not a shadow value)? */
static __always_inline int in_page_cache(struct vm_area_struct *v, __u64 addr)
{
	__u64 idx = ((addr - BPF_CORE_READ(v, vm_start)) >> 12) + BPF_CORE_READ(v, vm_pgoff);
	__u64 x = (__u64)BPF_CORE_READ(v, vm_file, f_mapping, i_pages.xa_head);
	const __u32 slots = bpf_core_field_offset(struct xa_node, slots);
	for (int d = 0; d < 6; d++) {
		if (!((x & 3) == 2 && x > 4096))
			return x != 0 && !(x & 1);
		struct xa_node *node = (struct xa_node *)(x - 2);
		__u8 shift = BPF_CORE_READ(node, shift);
		x = read_u64((__u64)node + slots + ((idx >> shift) & XA_CHUNK_MASK) * 8);
	}
	return 0;
}

/* What a fault of settings.kind looks like at its entry: the error code, the PTE and PMD (a quiet walk),
 * the VMA the maple tree gives and, for a file page, the page cache. */
static __always_inline int looks_like_kind(struct mm_struct *mm, __u64 addr, __u64 ec)
{
	__u64 pte, pmd;
	walk(0, (__u64)BPF_CORE_READ(mm, pgd), settings.direct_map_base, addr & ~0xfffULL, &pte, &pmd);
	struct vm_area_struct *v = (struct vm_area_struct *)maple_find_vma(mm, addr);
	int has = v && BPF_CORE_READ(v, vm_start) <= addr;
	__u64 flags = 0;
	int anon = 0, filed = 0;
	if (has) {
		bpf_core_read(&flags, sizeof(flags), &v->vm_flags);
		/* the kernel's vma_is_anonymous(): no vm_ops ([vdso] and [vvar] have none of a file, but ops) */
		anon = BPF_CORE_READ(v, vm_ops) == 0;
		filed = BPF_CORE_READ(v, vm_file) != 0;
	}
	__u64 stack = BPF_CORE_READ(mm, start_stack);
	int below_stack = addr < stack && addr + settings.stack_reach > stack;
	switch (settings.kind) {
	case WK_ANON:
		return anon && pte == 0 && (ec & 2) && !(flags & VM_HUGEPAGE);
	case WK_ZERO:
		return anon && pte == 0 && !(ec & 2) && !(ec & 16);
	case WK_COW:
		return has && (pte & PTE_PRESENT) && (ec & 3) == 3;
	case WK_FILE:
		return filed && pte == 0;
	case WK_MAJOR:
		return filed && pte == 0 && !in_page_cache(v, addr);
	case WK_SWAP:
		return anon && pte != 0 && !(pte & PTE_PRESENT) && !(pte & PTE_PROTNONE);
	case WK_THP:
		return anon && pmd == 0 && (flags & VM_HUGEPAGE);
	case WK_STACK:
		return !has && below_stack;
	case WK_SEGV:
		return (!has && !below_stack) || (has && (ec & 2) && !(flags & VM_WRITE));
	}
	return 0;
}

/* Is `ip` in one of the ranges? An executable's range compares its ELF address (RIP − (start_code − its
 * lowest executable p_vaddr)); a library's, its file offset in the VMA holding it (RIP − vm_start +
 * vm_pgoff pages), if that VMA maps the range's inode. `exe_only`: the executable's ranges only (no VMA read). */
static __always_inline int in_ranges(struct mm_struct *mm, __u64 ip, int exe_only)
{
	__u64 elf = ip - (BPF_CORE_READ(mm, start_code) - settings.elf_low);
	__u64 ino = 0, off = 0, libraries = 0;
	for (__u32 i = 0; i < WALK_RANGES; i++)
		libraries |= settings.range_ino[i];
	if (!exe_only && libraries) {
		struct vm_area_struct *v = (struct vm_area_struct *)maple_find_vma(mm, ip);
		if (v && BPF_CORE_READ(v, vm_start) <= ip) {
			ino = BPF_CORE_READ(v, vm_file, f_inode, i_ino);
			off = ip - BPF_CORE_READ(v, vm_start) + (BPF_CORE_READ(v, vm_pgoff) << 12);
		}
	}
	for (__u32 i = 0; i < WALK_RANGES; i++) {
		if (i >= settings.nranges)
			break;
		__u64 x = elf;
		if (settings.range_ino[i]) {
			if (exe_only || !ino || ino != settings.range_ino[i])
				continue;
			x = off;
		}
		if (x >= settings.range_lo[i] && x < settings.range_hi[i])
			return 1;
	}
	return 0;
}

#define CHAIN_FRAMES 16

/* Does the user call chain pass through an executable's range? The word at the user's sp (a leaf that keeps
 * no frame, memset say, has its return address there) and the return addresses of the frame-pointer chain,
 * each less one (a call's return address may be the next line's first byte). Reads of user memory that fail
 * (IRQs are off here: a page not present) end the chain. */
static __always_inline int chain_in_ranges(struct mm_struct *mm)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	__u64 sp = PT_REGS_SP_CORE(regs), fp = PT_REGS_FP_CORE(regs), ret = 0;
	if (!bpf_probe_read_user(&ret, sizeof(ret), (void *)sp) && in_ranges(mm, ret - 1, 1))
		return 1;
	for (int i = 0; i < CHAIN_FRAMES; i++) {
		__u64 frame[2] = {0, 0};   /* saved fp, return address */
		if (!fp || bpf_probe_read_user(frame, sizeof(frame), (void *)fp))
			return 0;
		if (frame[1] && in_ranges(mm, frame[1] - 1, 1))
			return 1;
		if (frame[0] <= fp)
			return 0;   /* a frame pointer chain grows up the stack; anything else is not one */
		fp = frame[0];
	}
	return 0;
}

/* Does a VMA of `mm` hold `addr`? (A kernel-mode fault outside every VMA is a bad user pointer the kernel
 * meets, e.g. a NULL passed to a system call: its exception-table fixup returns -EFAULT; not a fault that maps
 * memory, which --kind kernel asks for.) */
static __always_inline int in_a_vma(struct mm_struct *mm, __u64 addr)
{
	struct vm_area_struct *v = (struct vm_area_struct *)maple_find_vma(mm, addr);
	return v && BPF_CORE_READ(v, vm_start) <= addr;
}

static __always_inline int selected(__u64 addr, __u64 ip, __u64 ec, int kernel_mode)
{
	struct mm_struct *mm = current_mm();
	/* a fault taken in kernel mode is a candidate of --kind kernel only (its hook is loaded for no other) */
	if (kernel_mode || (settings.selector == SEL_KIND && settings.kind == WK_KERNEL))
		return kernel_mode && settings.selector == SEL_KIND && settings.kind == WK_KERNEL && in_a_vma(mm, addr);
	switch (settings.selector) {
	case SEL_NTH:
		return state.n == settings.nth;
	case SEL_ADDRESS:
		return (addr & ~0xfffULL) == settings.page;
	case SEL_RANGES:
		return in_ranges(mm, ip, 0) || (settings.chain && chain_in_ranges(mm));
	case SEL_KIND:
		return looks_like_kind(mm, addr, ec);
	}
	return ip >= BPF_CORE_READ(mm, start_code) && ip < BPF_CORE_READ(mm, end_code);
}

static __always_inline void after_and_stop(void)
{
	read_after();
	state.stage = STAGE_DONE;
	if (settings.stop_after)
		bpf_send_signal(SIGSTOP);
}

static __always_inline int on_fault(__u64 addr, __u64 ip, __u64 ec, int kernel_mode)
{
	__u64 id = bpf_get_current_pid_tgid();
	if ((__u32)(id >> 32) != settings.target_tgid)
		return 0;
	if (settings.mode == MODE_PAGE) {
		__u64 page = state.page;
		if (page && state.stage == STAGE_WAITING && (addr & ~0xfffULL) == page) {
			state.tid = (__u32)id;
			state.addr = addr;
			state.ip = ip;
			read_before(addr, ip, ec, kernel_mode);
			state.stage = STAGE_FAULTED;
		}
		return 0;
	}
	if (settings.from_exec && !state.execd)
		return 0;
	/* the thread's next user-mode fault is its next kernel entry; a kernel-mode one is not: it may be taken
	 * inside the chosen fault's own handling, before its PTE is set (perf's walk of the user stack for an
	 * allocation sample's call chain, copy_from_user_nmi, faults so), so the read waits for the next system
	 * call or user-mode fault */
	if (state.stage == STAGE_FAULTED && (__u32)id == state.tid && !kernel_mode &&
	    (addr != state.addr || ip != state.ip)) {
		after_and_stop();
		return 0;
	}
	if (state.stage != STAGE_WAITING)
		return 0;
	state.n += 1;
	if (!selected(addr, ip, ec, kernel_mode))
		return 0;
	state.tid = (__u32)id;
	state.addr = addr;
	state.ip = ip;
	read_before(addr, ip, ec, kernel_mode);
	state.stage = STAGE_FAULTED;
	return 0;
}

SEC("tp_btf/page_fault_user")
int BPF_PROG(fault_btf, unsigned long address, struct pt_regs *regs, unsigned long error_code)
{
	return on_fault(address, PT_REGS_IP_CORE(regs), error_code, 0);   /* regs->ip on x86, ->pc on arm64 */
}

SEC("tracepoint/exceptions/page_fault_user")
int fault_tp(struct page_fault_user_args *ctx)
{
	return on_fault(ctx->address, ctx->ip, ctx->error_code, 0);
}

/* exceptions:page_fault_kernel (x86 only: arch/x86/mm/fault.c traces a fault taken with regs not in user mode
 * there, with the same class and arguments as page_fault_user). Only a user address is a candidate: below
 * the user half's top (TASK_SIZE_MAX's page above it, 4- or 5-level), e.g. copy_to_user into a fresh buffer
 * inside read(). `ip` is then the kernel's instruction. */
static __always_inline int on_kernel_fault(__u64 address, __u64 ip, __u64 error_code)
{
	const __u64 user_top = 1ULL << (settings.levels == 5 ? 56 : 47);
	if (address >= user_top)
		return 0;
	/* a fault under pagefault_disable() is never handled (x86's faulthandler_disabled(): the exception table's
	 * fixup answers it): perf's walk of the user stack for a sample's call chain (copy_from_user_nmi) takes
	 * such faults, nested in other faults. Read through the BTF pointer, not bpf_probe_read_kernel, whose own
	 * pagefault_disable() would count itself. */
	struct task_struct *task = bpf_get_current_task_btf();
	if (task->pagefault_disabled)
		return 0;
	return on_fault(address, ip, error_code, 1);
}

SEC("tp_btf/page_fault_kernel")
int BPF_PROG(fault_kernel_btf, unsigned long address, struct pt_regs *regs, unsigned long error_code)
{
	return on_kernel_fault(address, PT_REGS_IP_CORE(regs), error_code);
}

SEC("tracepoint/exceptions/page_fault_kernel")
int fault_kernel_tp(struct page_fault_user_args *ctx)   /* the same record as page_fault_user's (one event class) */
{
	return on_kernel_fault(ctx->address, ctx->ip, ctx->error_code);
}

/* MODE_SYSCALL: each page's walk, read at once */
static __always_inline void read_pages(void)
{
	for (__u32 i = 0; i < WALK_RANGES; i++) {
		if (i >= settings.nranges)
			break;
		__u64 base, pgd, pte, pmd;
		struct walk_read *r = start_read(REC_AT_SYSCALL, &base, &pgd);
		if (!r)
			return;
		r->address = settings.range_lo[i];
		walk(r, pgd, base, settings.range_lo[i] & ~0xfffULL, &pte, &pmd);
		bpf_ringbuf_submit(r, 0);
	}
}

static __always_inline int on_syscall(long nr)
{
	if (settings.mode == MODE_SYSCALL) {
		if (nr != settings.syscall_nr || state.stage != STAGE_WAITING ||
		    (__u32)(bpf_get_current_pid_tgid() >> 32) != settings.target_tgid)
			return 0;
		state.stage = STAGE_DONE;
		read_pages();
		return 0;
	}
	if (state.stage != STAGE_FAULTED)
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	if ((__u32)(id >> 32) != settings.target_tgid)
		return 0;
	if (settings.mode == MODE_PROGRAM && (__u32)id != state.tid)
		return 0;
	after_and_stop();
	return 0;
}

SYS_ENTER_PROGRAMS(syscall_btf, syscall_tp, on_syscall)

struct trace_event_raw_mm_lru_insertion___page {
	struct page *page;
} __attribute__((preserve_access_index));

/* vmemmap's base from the first LRU insertion anywhere: folio − pfn × sizeof(struct page). The classic
 * tracepoint only: its record holds the pfn, which the raw tracepoint's arguments (the folio alone) do not. */
SEC("tracepoint/pagemap/mm_lru_insertion")
int lru_tp(struct trace_event_raw_mm_lru_insertion *ctx)
{
	if (state.vmemmap)
		return 0;
	/* the record's folio (a page before the tracepoint's folio conversion: 6.1's has `page`); either is the
	 * address of the struct page that pfn names */
	struct trace_event_raw_mm_lru_insertion___page *old = (void *)ctx;
	__u64 folio = bpf_core_field_exists(ctx->folio) ? (__u64)BPF_CORE_READ(ctx, folio)
							: (__u64)BPF_CORE_READ(old, page);
	__u64 pfn = BPF_CORE_READ(ctx, pfn);
	__u64 size = bpf_core_type_size(struct page);
	__u64 vmemmap = folio - pfn * size;
	if (__sync_val_compare_and_swap(&state.vmemmap, 0, vmemmap) != 0)
		return 0;
	struct walk_event *e = reserve(sizeof(*e));
	if (!e)
		return 0;
	__builtin_memset(e, 0, sizeof(*e));
	e->kind = REC_VMEMMAP;
	e->time_ns = bpf_ktime_get_ns();
	e->v[0] = vmemmap;
	e->v[1] = folio;
	e->v[2] = pfn;
	e->v[3] = size;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* MODE_PROGRAM: a spawned program is followed from its exec (before it, the held child is a copy of us). */
static __always_inline int on_exec(void)
{
	if ((__u32)(bpf_get_current_pid_tgid() >> 32) == settings.target_tgid)
		state.execd = 1;
	return 0;
}

SCHED_PROGRAMS(sched_process_exec, exec_btf, exec_tp, on_exec)

static __always_inline int on_exit(void)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (state.stage != STAGE_FAULTED || (__u32)(id >> 32) != settings.target_tgid || (__u32)id != state.tid)
		return 0;
	state.stage = STAGE_DONE;
	struct walk_event *e = reserve(sizeof(*e));
	if (!e)
		return 0;
	__builtin_memset(e, 0, sizeof(*e));
	e->kind = REC_EXITED;
	e->time_ns = bpf_ktime_get_ns();
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SCHED_PROGRAMS(sched_process_exit, exit_btf, exit_tp, on_exit)

/* ---- the fault path: handle_mm_fault and its handlers, for the followed fault (settings.fault_probes) ---- */

static __always_inline struct walk_event *event(__u32 kind, __u32 id)
{
	struct walk_event *e = reserve(sizeof(*e));
	if (!e)
		return 0;
	__builtin_memset(e, 0, sizeof(*e));
	e->kind = kind;
	e->id = id;
	e->time_ns = bpf_ktime_get_ns();
	return e;
}

static __always_inline int ours(void)
{
	return (__u32)(bpf_get_current_pid_tgid() >> 32) == settings.target_tgid;
}

/* handle_mm_fault runs after the page_fault_user tracepoint: stage FAULTED and the page say it is the followed
 * fault's */
static __always_inline int on_hmf_entry(struct vm_area_struct *vma, __u64 address, __u64 flags)
{
	if (!settings.fault_probes || !ours() || state.stage != STAGE_FAULTED || state.kp != 0 ||
	    (address & ~0xfffULL) != (state.addr & ~0xfffULL))
		return 0;
	state.kp = 1;
	state.kt0 = bpf_ktime_get_ns();
	struct walk_event *e = event(REC_FAULT_ENTRY, 0);
	if (!e)
		return 0;
	e->v[0] = (__u64)vma;
	e->v[1] = address;
	e->v[2] = flags;
	e->v[3] = BPF_CORE_READ(vma, vm_start);
	e->v[4] = BPF_CORE_READ(vma, vm_end);
	bpf_core_read(&e->v[5], sizeof(e->v[5]), &vma->vm_flags);
	e->w[0] = BPF_CORE_READ(vma, vm_page_prot.pgprot);
	e->w[1] = (__u64)BPF_CORE_READ(vma, vm_file);
	e->w[2] = (__u64)BPF_CORE_READ(vma, anon_vma);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

static __always_inline int on_hmf_return(__u64 ret)
{
	if (!settings.fault_probes || !ours() || state.kp != 1)
		return 0;
	state.kp = 2;
	struct walk_event *e = event(REC_FAULT_RETURN, 0);
	if (!e)
		return 0;
	e->v[0] = ret & 0xffffffff;   /* vm_fault_t: an unsigned int */
	e->v[1] = e->time_ns - state.kt0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("fentry/handle_mm_fault")
int BPF_PROG(hmf_fentry, struct vm_area_struct *vma, unsigned long address, unsigned int flags)
{
	return on_hmf_entry(vma, address, flags);
}

SEC("fexit/handle_mm_fault")
int BPF_PROG(hmf_fexit, struct vm_area_struct *vma, unsigned long address, unsigned int flags, struct pt_regs *regs,
	     vm_fault_t ret)
{
	return on_hmf_return(ret);
}

SEC("kprobe/handle_mm_fault")
int BPF_KPROBE(hmf_kprobe, struct vm_area_struct *vma, unsigned long address, unsigned int flags)
{
	return on_hmf_entry(vma, address, flags);
}

SEC("kretprobe/handle_mm_fault")
int BPF_KRETPROBE(hmf_kretprobe, long ret)
{
	return on_hmf_return(ret);
}

static __always_inline int on_handler(__u32 index)
{
	if (!ours() || state.kp != 1)
		return 0;
	struct walk_event *e = event(REC_HANDLER, index);
	if (!e)
		return 0;
	e->v[0] = e->time_ns - state.kt0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* One fentry and one kprobe program per handler (pagefault.bpf.h's list), `index` its place in
 * capture/kprobes.py FAULT_HANDLERS. */
#define HANDLER(index, fn)                                                \
	SEC("fentry/" #fn) int BPF_PROG(fe_##fn) { return on_handler(index); } \
	SEC("kprobe/" #fn) int BPF_KPROBE(kp_##fn) { return on_handler(index); }

FOR_EACH_FAULT_HANDLER(HANDLER)

/* ---- the VMA-making call of MODE_PAGE's mmap (before the page is known), and the merges inside it ---- */

static __always_inline int on_mmap(__u32 index, __u64 file, __u64 addr, __u64 len, __u64 vm_flags, __u64 pgoff)
{
	if (!settings.fault_probes || !ours() || state.mmap_stage != 0)
		return 0;
	state.mmap_stage = 1;
	struct walk_event *e = event(REC_MMAP, index);
	if (!e)
		return 0;
	e->v[0] = file;
	e->v[1] = addr;
	e->v[2] = len;
	e->v[3] = vm_flags;
	e->v[4] = pgoff;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

static __always_inline int on_mmap_return(__u64 ret)
{
	if (!settings.fault_probes || !ours() || state.mmap_stage != 1)
		return 0;
	state.mmap_stage = 2;
	struct walk_event *e = event(REC_MMAP_RETURN, 0);
	if (e) {
		e->v[0] = ret;
		bpf_ringbuf_submit(e, 0);
	}
	return 0;
}

static __always_inline int on_merge(__u32 index, __u64 ret)
{
	if (!settings.fault_probes || !ours() || state.mmap_stage != 1)
		return 0;
	struct walk_event *e = event(REC_MERGE, index);
	if (e) {
		e->v[0] = ret;
		bpf_ringbuf_submit(e, 0);
	}
	return 0;
}

/* __mmap_region (6.13 on) and mmap_region (before) take (file, addr, len, vm_flags, pgoff, uf); index: their
 * place in capture/kprobes.py MMAP_FUNCTIONS. The return value of an fexit program comes from
 * bpf_get_func_ret, which needs no count of the arguments. */
#define MMAP_FN(index, fn)                                                                                 \
	SEC("fentry/" #fn) int BPF_PROG(fe_##fn, __u64 file, __u64 addr, __u64 len, __u64 flags, __u64 pgoff) \
	{ return on_mmap(index, file, addr, len, flags, pgoff); }                                           \
	SEC("fexit/" #fn) int BPF_PROG(fx_##fn)                                                             \
	{ __u64 ret = 0; bpf_get_func_ret(ctx, &ret); return on_mmap_return(ret); }                          \
	SEC("kprobe/" #fn) int BPF_KPROBE(kp_##fn, __u64 file, __u64 addr, __u64 len, __u64 flags, __u64 pgoff) \
	{ return on_mmap(index, file, addr, len, flags, pgoff); }                                           \
	SEC("kretprobe/" #fn) int BPF_KRETPROBE(kr_##fn, __u64 ret) { return on_mmap_return(ret); }

MMAP_FN(0, __mmap_region)
MMAP_FN(1, mmap_region)

/* The merges, per era (capture/kprobes.py MERGE_FUNCTIONS): the VMA they return, or 0. */
#define MERGE_FN(index, fn)                                                                         \
	SEC("fexit/" #fn) int BPF_PROG(fx_##fn)                                                      \
	{ __u64 ret = 0; bpf_get_func_ret(ctx, &ret); return on_merge(index, ret); }                  \
	SEC("kretprobe/" #fn) int BPF_KRETPROBE(kr_##fn, __u64 ret) { return on_merge(index, ret); }

MERGE_FN(0, vma_merge_new_range)
MERGE_FN(1, vma_expand)
MERGE_FN(2, vma_merge)

char LICENSE[] SEC("license") = "GPL";
