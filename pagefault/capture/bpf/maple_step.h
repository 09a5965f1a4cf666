/* One node of a maple-tree search, as a recorded search keeps it (pagefault.bpf.h's maple_search) and
 * journey_walk.h's records carry it to Python (capture/bpf_walk.py MAPLE_STEP mirrors it). */
#ifndef PAGEFAULT_MAPLE_STEP_H
#define PAGEFAULT_MAPLE_STEP_H

struct maple_step_rec {
	__u64 node;          /* the node's address (the entry less its type bits) */
	__u32 type;          /* enum maple_type */
	__u32 slot;          /* the slot taken */
	__u64 entry;         /* what that slot holds: the next node's entry, or at a leaf the VMA */
};

#endif
