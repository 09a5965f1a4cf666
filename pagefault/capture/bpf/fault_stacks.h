/* What crosses between fault_stacks.bpf.c (trace -g counted in the kernel) and its loader
 * (pagefault/capture/kernel_counts.py, which mirrors it; tests/test_bpf_engine.py checks the mirror against the
 * object's BTF). The rest is fault_count.h's. */
#ifndef PAGEFAULT_FAULT_STACKS_H
#define PAGEFAULT_FAULT_STACKS_H

#define STACK_DEPTH 64        /* frames kept of each stack, as trace -o records them (perf's max_stack 64) */
#define STACK_ENTRIES 16384   /* distinct stacks, user and kernel together (the map is allocated whole: ~9 MiB) */

/* A stack as bpf_get_stack reads it (addresses leaf first, zeros after its last frame), kept once with its id,
 * keyed by a 64-bit hash of its frames (the stack_ids map). */
struct stack {
	__s32 id;             /* what the count's key holds */
	__u32 frames;         /* how many of ip[] are the stack's */
	__u64 ip[STACK_DEPTH];
};

/* The count map's key: fault_key's, and the fault's stacks and process. */
struct fault_stack_key {
	__u32 state;          /* as fault_key's */
	__s32 user_stack;     /* the stack's id (stack_ids map); < 0: none (-errno) */
	__s32 kernel_stack;
	__u32 tgid;           /* the faulting process: a forked child's faults are its own */
	__u64 vma;            /* as fault_key's */
};

#endif
