// SPDX-License-Identifier: GPL-2.0
/* pagefault trace's summary-only count: every fault of one process (and the children it forks), counted in
 * the kernel by what it did and the VMA it hit; nothing is streamed.
 *
 * Per thread, the fault in progress is kept open (what it allocated, whether its own page was added to the page
 * cache: a read from disk, the signal it raised) and closed at the thread's next fault, its exec or its exit, adding one to
 * counts[(state, vm_start << 3 | kind)] (through the thread's run of alike faults: one map update per run).
 * The VMA is the thread's last one while it holds the address, else the maple tree's answer; a VMA found so is kept once in `vmas`, named, for the summary's mapping column.
 *
 * Faults are counted in both modes: page_fault_user's, and page_fault_kernel's on user addresses (a system call
 * touching the program's memory); the error code in the key tells them apart (X86_PF_USER).
 *
 * Each hook has two programs, a raw tracepoint (raw_tp: RAW_TRACEPOINTS) and the classic tracepoint; the loader
 * turns off, before load, the one it does not use.
 *
 * The count itself is in fault_count.bpf.h, which fault_stacks.bpf.c (trace -g) shares. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#define MAPLE_SEARCH        /* the VMA of a faulting address found in the maple tree (pagefault.bpf.h) */
#define FOLLOW_FORKS        /* the target and its children (pagefault.bpf.h) */
#define RAW_TRACEPOINTS     /* raw_tp, not tp_btf: no whole-BTF parse at each load (pagefault.bpf.h) */
#include "pagefault.bpf.h"
#include "fault_count.h"
#include "fault_count.bpf.h"   /* the count itself: its maps and hooks */

char LICENSE[] SEC("license") = "GPL";
