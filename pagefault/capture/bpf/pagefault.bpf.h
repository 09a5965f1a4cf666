/* Helpers shared by pagefault's BPF programs: the task's mm and the VMA holding an address, read through
 * CO-RE (offsets relocated against the running kernel's BTF at load). Include after vmlinux.h and libbpf's
 * headers. */
#ifndef PAGEFAULT_BPF_H
#define PAGEFAULT_BPF_H

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

static __always_inline struct mm_struct *current_mm(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	return BPF_CORE_READ(task, mm);
}

/* The VMA holding `addr` in `mm` (0: none), found as mas_walk() does: from the root, in each node the
 * first pivot ≥ addr picks the slot (a 0 pivot past the first ends the node's data), down to a leaf. The
 * node layouts and type numbers come from BTF (CO-RE), not from a table of ours. bpf_find_vma would do
 * this for us, but costs an irq_work per call in this IRQs-off tracepoint (~12.7 µs per fault measured). */
static __always_inline __u64 maple_find_vma(struct mm_struct *mm, __u64 addr)
{
	if (!bpf_core_field_exists(mm->mm_mt))
		return 0;   /* before 6.1: an rbtree of VMAs */
	__u64 entry = (__u64)BPF_CORE_READ(mm, mm_mt.ma_root);
	if (!((entry & 3) == 2 && entry > 4096))
		return entry;   /* not a node: the root holds the only entry */
	const __u64 dense = bpf_core_enum_value(enum maple_type, maple_dense);
	const __u64 leaf = bpf_core_enum_value(enum maple_type, maple_leaf_64);
	const __u64 arange = bpf_core_enum_value(enum maple_type, maple_arange_64);
	const __u32 r_piv = bpf_core_field_offset(struct maple_range_64, pivot);
	const __u32 r_slot = bpf_core_field_offset(struct maple_range_64, slot);
	const __u32 r_n = bpf_core_field_size(struct maple_range_64, pivot) / 8;
	const __u32 a_piv = bpf_core_field_offset(struct maple_arange_64, pivot);
	const __u32 a_slot = bpf_core_field_offset(struct maple_arange_64, slot);
	const __u32 a_n = bpf_core_field_size(struct maple_arange_64, pivot) / 8;
	__u64 pivots[MAPLE_MAX_PIVOTS];

	for (int depth = 0; depth < MAPLE_DEPTH; depth++) {
		__u64 node = entry & ~MAPLE_NODE_MASK;
		__u64 type = (entry >> MAPLE_TYPE_SHIFT) & MAPLE_TYPE_MASK;
		int ar = type == arange;
		__u32 npiv = ar ? a_n : r_n;
		if (npiv > MAPLE_MAX_PIVOTS)
			return 0;
		/* the node's pivots in one read (both layouts hold 15 words from the pivots on) */
		if (bpf_probe_read_kernel(pivots, sizeof(pivots), (void *)(node + (ar ? a_piv : r_piv))))
			return 0;
		__u32 off = npiv;
		for (__u32 i = 0; i < MAPLE_MAX_PIVOTS; i++) {
			if (i >= npiv)
				break;
			if (pivots[i] >= addr || (pivots[i] == 0 && i > 0)) {
				off = i;
				break;
			}
		}
		__u64 next = 0;
		if (bpf_probe_read_kernel(&next, sizeof(next), (void *)(node + (ar ? a_slot : r_slot) + (__u64)off * 8)))
			return 0;
		if (type == dense || type == leaf)
			return next;
		entry = next;
	}
	return 0;
}

#endif
