/* What crosses between arm64_walk.bpf.c and its Python loader (pagefault/capture/arm64_fault.py, which
 * mirrors every struct here once; tests/test_arm64_walk_bpf.py checks the mirror against the object's BTF).
 * Plain fixed-width fields, no pointers, explicit padding. */
#ifndef PAGEFAULT_ARM64_WALK_H
#define PAGEFAULT_ARM64_WALK_H

#define WALK_LEVELS 5    /* a 52-bit walk with 4 KiB pages (LPA2) has five: level -1 to 3 */
#define WALK_PAGES 4     /* pages one walk at a system call reads (the entry-kinds check reads two) */
#define STACK_DEPTH 32   /* kernel frames kept per stack: el0 entry to handle_mm_fault is about 10 */

/* Settings, in .rodata: set by the loader before load, constants to the verifier. */
struct arm64_walk_settings {
	__u32 target_tgid;
	__u32 levels;                 /* descriptors in one walk (2..5) */
	__u64 fault_page;             /* the page whose first fault is followed (0: none, a walk at a system call only) */
	__u64 page_mask;              /* ~(page size - 1) */
	__u64 page_size;
	__u64 table_mask;             /* a table descriptor's next-level address bits (LPA2: 49..granule) */
	__u64 page_offset;            /* PAGE_OFFSET, with memstart_addr in kallsyms: linear = this - memstart_addr */
	__u64 linear_offset;          /* known already (a walk at a system call): virtual = physical + this */
	__s64 syscall_nr;             /* the walk at a system call: at this one (-1: the target's first after its fault) */
	__u32 npages;                 /* pages in `pages` */
	__u32 _pad;
	__u64 pages[WALK_PAGES];
	__u32 shift[WALK_LEVELS];     /* each level's index: (address >> shift) & mask */
	__u32 _pad2;
	__u64 mask[WALK_LEVELS];
};

/* The capture's state, one global in .bss, read by the loader through the map (lost, linear). */
#define ST_WAITING 0      /* for the fault */
#define ST_IN_FAULT 1
#define ST_RETURNED 2
#define ST_DONE 3         /* walked after */
struct arm64_walk_state {
	__u32 state;
	__u32 fault_tid;
	__u64 fault_t0;
	__u64 linear;         /* the linear map's offset once derived here (0: not yet) */
	__u64 lost;           /* records the ring buffer had no room for */
};

enum arm64_walk_kind {
	EV_FAULT = 1,     /* handle_mm_fault entered for the page: struct fault_event */
	EV_BEFORE = 2,    /* the walk at that entry: struct walk_event */
	EV_ALLOC = 3,     /* a page allocated inside the fault: struct alloc_event */
	EV_RETURN = 4,    /* handle_mm_fault returned: struct return_event */
	EV_AFTER = 5,     /* the walk at the next system call (or the one asked for): struct walk_event */
	EV_LINEAR = 6,    /* the linear map's offset, derived: struct linear_event */
};

struct fault_event {
	__u32 kind;
	__u32 flags;          /* handle_mm_fault's flags argument */
	__u64 address;
	__u64 pc;             /* the saved user registers' PC and PSTATE */
	__u64 pstate;
	__u64 vm_start;
	__u64 vm_end;
	__u64 vm_flags;
	__u64 vm_page_prot;
	__u64 ktime_ns;
	__s64 stack_bytes;    /* bpf_get_stack's return: bytes of `stack` filled, or a negative errno */
	__u64 stack[STACK_DEPTH];
};

struct walk_event {
	__u32 kind;
	__u32 nreads;         /* descriptors read: the walk stops below an invalid or block descriptor */
	__u64 page;
	__u64 pgd;            /* mm->pgd: the top table's linear-map address */
	__u64 linear_offset;  /* the offset used to follow the tables (0: unknown, only the top one read) */
	__u64 value[WALK_LEVELS];
	__u64 table[WALK_LEVELS];   /* each descriptor's table, physical */
};

struct alloc_event {
	__u32 kind;
	__u32 order;
	__u64 pfn;
	__u64 gfp_flags;
	__s64 stack_bytes;
	__u64 stack[STACK_DEPTH];
};

struct return_event {
	__u32 kind;
	__u32 retval;         /* vm_fault_t */
	__u64 duration_ns;
};

#define LINEAR_MEMSTART 1     /* PAGE_OFFSET - memstart_addr, read through kallsyms' address */
#define LINEAR_PGD_ALLOC 2    /* pgd_alloc's returned address - its page's PFN × page size */
struct linear_event {
	__u32 kind;
	__u32 how;
	__u64 offset;
	__u64 memstart_or_address;
	__u64 pfn;
};

#endif
