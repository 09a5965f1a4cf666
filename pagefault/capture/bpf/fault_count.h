/* What crosses between fault_count.bpf.c and its Python loader (pagefault/capture/kernel_counts.py, which
 * mirrors every struct here once; tests/test_bpf_engine.py checks the mirror against the object's BTF).
 * Plain fixed-width fields, no pointers, explicit padding. */
#ifndef PAGEFAULT_FAULT_COUNT_H
#define PAGEFAULT_FAULT_COUNT_H

/* A thread's fault in progress, packed in one word (struct thread_fault.state, struct fault_key.state):
 * bit 0 open, 1-6 the x86 error code, 7 a movable allocation, 8-12 its largest order, 13 its own page added to the page cache (a read from disk),
 * 14-18 the signal, 19-26 its si_code. */
#define ST_OPEN (1u << 0)
#define ST_CODE_SHIFT 1
#define ST_ALLOC (1u << 7)
#define ST_ORDER_SHIFT 8
#define ST_CACHE (1u << 13)
#define ST_SIG_SHIFT 14
#define ST_SICODE_SHIFT 19

/* The VMA's key in a count: vm_start << 3 | kind. With vm_start 0: 4 a fault below the stack with no VMA
 * (growth), 0 no VMA at all. */
#define KIND_FILE 1
#define KIND_SHARED 2
#define KIND_GROWTH 4

/* Settings, in .rodata: set by the loader before load, constants to the verifier. */
struct fault_count_settings {
	__u32 target_tgid;   /* the traced process; its forked children are followed too */
	__u32 from_exec;     /* 1: count from the target's exec on (a held child's faults before it are not its) */
	__u64 stack_reach;   /* a fault with no VMA this little below mm->start_stack is taken as stack growth */
};

/* The count map's key: one fault, closed, by what it did and where. */
struct fault_key {
	__u32 state;         /* as above, without ST_OPEN */
	__u32 tgid;          /* the faulting process: a child's faults (gcc's cc1, as, ld) are its own */
	__u64 vma;           /* vm_start << 3 | kind */
};

/* A followed process's command name (key: tgid), for the summary's rows by process: its comm as its last exec
 * set it (sched_process_exec), else as it was at its first fault counted (a forked child that does not exec
 * keeps its parent's). A process that exec'ed twice shows its last name only. */
#define COMM_LEN 16          /* TASK_COMM_LEN */
struct process_name {
	char comm[COMM_LEN];
};

/* Per thread (key: tid): its fault in progress, the VMA of its last fault, and its run of closed faults of
 * one kind not yet added to the count map (a first-touch loop closes thousands alike: one map update per run,
 * not per fault). The loader adds a thread's run and open fault to the counts when it reads them. */
struct thread_fault {
	__u32 state;
	__u32 run_state;     /* the run's kind (a state without ST_OPEN) */
	__u64 vm_start;
	__u64 vm_end;
	__u64 vma;
	__u64 run_vma;       /* the run's VMA key */
	__u64 run_count;     /* faults in the run (0: none) */
	__s32 user_stack;    /* fault_stacks only (else 0): the fault's stack ids, and its run's */
	__s32 kernel_stack;
	__s32 run_user_stack;
	__s32 run_kernel_stack;
	__u32 tgid;          /* the thread's process */
	__u32 _pad;
	__u64 vm_pgoff;      /* the VMA's offset in its file, in pages */
	__u64 file_ino;      /* its file's inode number (0: no file), and the device below: as the page-cache */
	__u64 fault_index;   /* tracepoint names a file; the fault's page's index in that file */
	__u32 file_dev;
	__u32 _pad2;
};

/* The named VMAs' key (the vmas maps of fault_count and latency): a VMA by its process and its start. The
 * processes of one count (a forked child, an exec'ed program) can each hold a different mapping at one address
 * (without ASLR every PIE executable starts at one address): keyed by the start alone, all were named by the
 * first one seen. */
struct vma_key {
	__u32 tgid;
	__u32 _pad;
	__u64 start;
};

/* A VMA that held a fault, read at that fault (key: struct vma_key): the mapping's name for the summary. */
#define VMA_NAME_LEN 64
#define VMA_HEAP 1       /* anonymous, holding the brk area (/proc's [heap]) */
#define VMA_STACK 2      /* anonymous, holding mm->start_stack (/proc's [stack]) */
#define VMA_SPECIAL 4    /* a special mapping: name is its vm_special_mapping's ([vdso], [vvar]) */
struct vma_seen {
	__u64 start;
	__u64 end;
	__u64 pgoff;         /* in pages */
	__u64 flags;         /* vm_flags */
	__u32 what;          /* VMA_* */
	__u32 _pad;
	char name[VMA_NAME_LEN];   /* the file's name (its dentry's, not its path), or the special mapping's */
};

/* Per-CPU counters (an array indexed by these). */
enum fault_counter {
	COUNT_TOTAL = 0,        /* every fault of the followed processes */
	COUNT_ALLOCS = 1,       /* their page allocations (mm_page_alloc) */
	COUNT_UNCLASSIFIED = 2, /* faults closed while the count map was full */
	COUNT_UNNAMED = 3,      /* VMAs not kept because their map was full */
	COUNT_UNTRACKED = 4,    /* faults of threads the thread map had no room for */
	COUNT_NO_STACK = 5,     /* fault_stacks: faults whose user or kernel stack was not taken (map full, no frame) */
	COUNT_UNNAMED_PROCS = 6,/* processes whose command name was not kept because their map was full */
	COUNT_N = 7,
};

#endif
