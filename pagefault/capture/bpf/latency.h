/* What crosses between latency.bpf.c and its Python loader (pagefault/capture/latency.py, which mirrors every
 * struct here once; tests/test_latency_and_kprobes.py checks the mirror against the object's BTF).
 * Plain fixed-width fields, no pointers, explicit padding. The VMAs are named in fault_count.h's
 * struct vma_seen, the one record capture/mapping_watch.maps_from_kernel reads. */
#ifndef PAGEFAULT_LATENCY_H
#define PAGEFAULT_LATENCY_H

/* The handlers that name a fault's outcome, each with its code in a histogram's key (the leaves of the
 * path: latency.py's OUTCOME_HANDLERS lists the same names in this order, and a test holds the two to the
 * object's BTF). NO_HANDLER: none of them ran (inlined, or not probed here). */
enum outcome_handler {
	NO_HANDLER = -1,
	H_do_anonymous_page = 0,
	H_do_read_fault = 1,
	H_do_cow_fault = 2,
	H_do_shared_fault = 3,
	H_filemap_fault = 4,
	H_do_wp_page = 5,
	H_wp_page_copy = 6,
	H_wp_page_reuse = 7,
	H_do_swap_page = 8,
	H_do_huge_pmd_anonymous_page = 9,
	H_do_huge_pmd_wp_page = 10,
	H_do_numa_page = 11,
};

/* Settings, in .rodata: set by the loader before load, constants to the verifier. */
struct latency_settings {
	__u32 target_tgid;   /* the traced process; its forked children are followed too */
	__u32 from_exec;     /* 1: time from the target's exec on (a held child's faults before it are the tool's) */
};

/* A histogram's key: the last outcome handler the fault went through, what handle_mm_fault returned, and
 * the VMA it was given. */
struct latency_key {
	enum outcome_handler handler;
	__u32 retval;        /* vm_fault_t */
	__u64 vm_start;
};

/* log2 buckets of nanoseconds: slot 0 holds 0 ns, slot s ≥ 1 holds [2^(s-1), 2^s) (bpftrace's hist()); the
 * last slot also holds everything longer (2^38 ns, over four minutes). */
#define LATENCY_SLOTS 40
struct latency_hist {
	__u64 slots[LATENCY_SLOTS];
	__u64 total_ns;
	__u64 max_ns;
};

/* Per thread (key: tid), while a fault is inside handle_mm_fault. */
struct fault_timing {
	__u64 start_ns;
	__u64 vm_start;      /* read at the entry, where the fault holds the VMA */
	__s32 handler;       /* enum outcome_handler: the last one entered */
	__u32 _pad;
};

/* Per-CPU counters (an array indexed by these). */
enum latency_counter {
	LAT_TIMED = 0,       /* faults timed into a histogram */
	LAT_NO_ROOM = 1,     /* faults not kept: the histogram map was full */
	LAT_UNNAMED = 2,     /* VMAs not named: their map was full */
	LAT_UNTIMED = 3,     /* faults not timed: the per-thread map was full */
	LAT_N = 4,
};

#endif
