// SPDX-License-Identifier: GPL-2.0
/* pagefault trace -g, counted in the kernel: fault_count.bpf.c's count of one process's faults (and its
 * children's) with each fault's user and kernel stack in the key, the stacks kept once each in a
 * BPF_MAP_TYPE_STACK_TRACE map. Nothing is streamed: at the end the loader reads the counts and the stacks they
 * name, and the flame graph is built from them (journey/fault_stacks.py), one root per fault class. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#define MAPLE_SEARCH        /* the VMA of a faulting address found in the maple tree (pagefault.bpf.h) */
#define FOLLOW_FORKS        /* the target and its children (pagefault.bpf.h) */
#define RAW_TRACEPOINTS     /* raw_tp, not tp_btf: no whole-BTF parse at each load (pagefault.bpf.h) */
#include "pagefault.bpf.h"
#include "fault_count.h"
#include "fault_stacks.h"
#define COUNT_STACKS 1
#include "fault_count.bpf.h"

char LICENSE[] SEC("license") = "GPL";
