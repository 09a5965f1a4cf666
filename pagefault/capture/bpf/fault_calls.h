/* What crosses between fault_calls.bpf.c and its Python loader (pagefault/capture/kprobes.py EveryFaultProbe,
 * which mirrors every struct here once; tests/test_latency_and_kprobes.py checks the mirror against the
 * object's BTF). Plain fixed-width fields, no pointers, explicit padding. */
#ifndef PAGEFAULT_FAULT_CALLS_H
#define PAGEFAULT_FAULT_CALLS_H

#define CALLS_MAX 16384      /* calls kept; later ones are counted (CALLS_DROPPED) */
#define CALL_PATH 16         /* handlers kept per call, in the order entered */

/* Settings, in .rodata: set by the loader before load, constants to the verifier. */
struct fault_calls_settings {
	__u32 target_tgid;   /* the traced process; its forked children are followed too */
	__u32 from_exec;     /* 1: from the target's exec on (a held child's faults before it are the tool's) */
};

/* A call's key in the `calls` map: its thread and its start (one thread enters one call at a time). */
struct fault_call_key {
	__u32 tid;
	__u32 _pad;
	__u64 start_ns;
};

/* One call of handle_mm_fault by a followed thread (written at the entry, completed by the handlers and the
 * return). */
struct fault_call {
	__u64 start_ns;      /* bpf_ktime_get_ns() at the entry: CLOCK_MONOTONIC, the perf samples' clock */
	__u64 duration_ns;   /* to the return (0 while it has not returned) */
	__u64 address;       /* handle_mm_fault's address argument */
	__u32 flags;         /* its flags argument (enum fault_flag bits) */
	__u32 retval;        /* vm_fault_t */
	__u32 pid;           /* the thread's process */
	__u32 tid;
	__u32 returned;      /* 1: the return was seen */
	__u32 npath;         /* handlers entered (more than CALL_PATH: the later ones are not kept) */
	__u32 path_ns[CALL_PATH];   /* each one's time after the entry, ns */
	__u8 path[CALL_PATH];       /* each handler entered: enum fault_handler (pagefault.bpf.h) */
};

/* The object's counters (an array indexed by these). */
enum fault_calls_counter {
	CALLS_DROPPED = 0,     /* calls not kept: the map of calls was full */
	CALLS_UNTRACKED = 1,   /* calls not kept: the map of calls in progress was full */
	CALLS_N = 2,
};

#endif
