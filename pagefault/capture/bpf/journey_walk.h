/* What crosses between journey_walk.bpf.c and its Python loader (pagefault/capture/bpf_walk.py mirrors every
 * struct here once; tests/test_journey_walk_bpf.py checks the mirror against the object's BTF).
 * Plain fixed-width fields, no pointers, explicit padding. */
#ifndef PAGEFAULT_JOURNEY_WALK_H
#define PAGEFAULT_JOURNEY_WALK_H

#include "maple_step.h"   /* struct maple_step_rec: one node of the maple-tree search */

#define WALK_MAX_LEVELS 5
#define WALK_MAPLE_DEPTH 6
#define WALK_PIVOTS 15
#define WALK_RANGES 8
#define WALK_HANDLERS 24

/* How the fault to follow is chosen (settings.mode / settings.selector). */
enum walk_mode {
	MODE_PAGE = 0,      /* the exercise's journey: the target's first fault on settings.page (or .bss page) */
	MODE_PROGRAM = 1,   /* journey -p / -- CMD: the first fault the selector accepts */
	MODE_SYSCALL = 2,   /* the walks of the pages in settings.range_lo[0..nranges) at the target's next
			       entry into system call settings.syscall_nr (REC_AT_SYSCALL each, then done) */
};

enum walk_selector {
	SEL_OWN_CODE = 0,   /* RIP in [mm->start_code, mm->end_code) */
	SEL_NTH = 1,        /* the program's settings.nth-th fault */
	SEL_ADDRESS = 2,    /* the first fault on settings.page */
	SEL_RANGES = 3,     /* RIP in one of settings.range_lo/hi: an ELF address of the executable (range_ino 0), or
			       a file offset in the mapped file of inode range_ino (a library); settings.chain 1:
			       or a return address on the user stack in an executable's range */
	SEL_KIND = 4,       /* the first fault that looks like settings.kind at entry */
};

enum walk_kind {
	WK_ANON = 0, WK_ZERO = 1, WK_COW = 2, WK_FILE = 3, WK_MAJOR = 4, WK_SWAP = 5, WK_THP = 6, WK_STACK = 7,
	WK_SEGV = 8,
	WK_KERNEL = 9,      /* a fault on a user address taken in kernel mode (page_fault_kernel: inside a system call) */
};

/* Settings, in .rodata: set by the loader before load, constants to the verifier. */
struct walk_settings {
	__u32 target_tgid;
	__u32 levels;         /* 4 or 5 */
	__u32 mode;           /* enum walk_mode */
	__u32 selector;       /* enum walk_selector (MODE_PROGRAM) */
	__u32 kind;           /* enum walk_kind (SEL_KIND) */
	__u32 from_exec;      /* 1: the target's faults count from its exec (a held child before it is a copy of us) */
	__u32 stop_after;     /* 1: SIGSTOP the target at the read after the fault (MODE_PROGRAM) */
	__u32 fault_probes;   /* 1: the handle_mm_fault / handler programs follow the walked fault */
	__u64 direct_map_base;/* MODE_PROGRAM: derived before, once per boot */
	__u64 page;           /* SEL_ADDRESS: the page */
	__u64 nth;            /* SEL_NTH */
	__u64 elf_low;        /* SEL_RANGES: the lowest executable p_vaddr of the ELF file */
	__u64 stack_reach;    /* a fault with no VMA this little below mm->start_stack is stack growth */
	__u32 nranges;
	__u32 syscall_nr;     /* MODE_SYSCALL */
	__u64 range_lo[WALK_RANGES];
	__u64 range_hi[WALK_RANGES];
	__u64 range_ino[WALK_RANGES]; /* SEL_RANGES: 0: range_lo/hi are ELF addresses of the executable; else file
					 offsets in the file of this inode, found through the RIP's VMA */
	__u32 chain;          /* SEL_RANGES: 1: [sp] and the frame-pointer chain's return addresses match too */
	__u32 _pad_chain;
};

/* Run-time state, in .bss: the loader reads it, and writes `page` (MODE_PAGE) when the page is known. */
enum walk_stage { STAGE_WAITING = 0, STAGE_FAULTED = 1, STAGE_DONE = 2 };
struct walk_state {
	__u64 page;           /* MODE_PAGE: the page to follow; 0: not yet known (nothing is read) */
	__u64 pgd_physical;   /* MODE_PAGE: the PGD's physical address (the direct map's base = mm->pgd − it),
				 written before page: the object is loaded before the exec that allocates it */
	__u32 stage;          /* enum walk_stage */
	__u32 execd;          /* the target has exec'ed (or was not held: settings.from_exec 0) */
	__u32 tid;            /* the chosen fault's thread */
	__u32 kp;             /* 0 handle_mm_fault not seen, 1 inside it, 2 returned */
	__u64 n;              /* the target's faults so far */
	__u64 addr;           /* the chosen fault's address and RIP */
	__u64 ip;
	__u64 vmemmap;        /* vmemmap's base, from the first LRU insertion seen; 0: none yet */
	__u64 kt0;            /* handle_mm_fault's entry time */
	__u32 mmap_stage;     /* 0 no VMA-making call seen, 1 inside it, 2 returned; MMAP_NOT_YET: the loader has
				 not armed it (the exec's own mappings are not the one followed) */
	__u32 _pad;
	__u64 lost;           /* records the ring buffer had no room for */
};

#define MMAP_NOT_YET 3

/* Records in the ring buffer; each starts with its kind. */
enum walk_record_kind {
	REC_BEFORE = 1,       /* struct walk_read: at the fault's entry (page_fault_user, or page_fault_kernel) */
	REC_AFTER = 2,        /* struct walk_read: at the thread's next kernel entry */
	REC_VMEMMAP = 3,      /* struct walk_event: v = vmemmap, folio, pfn, sizeof(struct page) */
	REC_FAULT_ENTRY = 4,  /* v = vma pointer, address, flags, vm_start, vm_end, vm_flags; w = page_prot, file, anon_vma */
	REC_FAULT_RETURN = 5, /* v = retval, duration ns */
	REC_HANDLER = 6,      /* id = handler index, v = ns after handle_mm_fault's entry */
	REC_MMAP = 7,         /* id = function index, v = file, addr, len, vm_flags, pgoff */
	REC_MMAP_RETURN = 8,  /* v = retval */
	REC_MERGE = 9,        /* id = function index, v = retval */
	REC_EXITED = 10,      /* the chosen fault's thread exited before its next kernel entry */
	REC_AT_SYSCALL = 11,  /* struct walk_read: MODE_SYSCALL's walk of one page (its address in .address) */
};

/* Which of a walk_read's fields were read (walk_read.have). */
#define HAVE_OBJECTS (1u << 0)      /* map_count */
#define HAVE_MAPLE_ROOT (1u << 1)
#define HAVE_LAYOUT (1u << 2)       /* the root is a node: maple_layout_ok is meaningful */
#define HAVE_VMA (1u << 3)
#define HAVE_FOLIO (1u << 4)
#define HAVE_HEAD (1u << 5)         /* the page is a tail page: folio_head_* read from its head */
#define HAVE_PIVOTS (1u << 6)
#define HAVE_ORDER (1u << 7)        /* folio_order read (a head or tail page of a large folio) */
#define HAVE_KERNEL_MODE (1u << 8)  /* the fault was taken in kernel mode (page_fault_kernel); syscall_nr read */

struct walk_read {
	__u32 kind;           /* REC_BEFORE or REC_AFTER */
	__u32 tid;
	__u64 time_ns;        /* bpf_ktime_get_ns: CLOCK_MONOTONIC, the perf samples' clock */
	__u64 address;
	__u64 ip;
	__u64 error_code;
	__u64 nth;
	__u64 direct_map_base;
	__u64 pgd_virtual;
	__u32 levels_read;    /* entries read, top level first: the walk stops below a non-present or huge entry */
	__u32 have;           /* HAVE_* */
	__u64 entry[WALK_MAX_LEVELS];
	__u64 table[WALK_MAX_LEVELS];   /* each level's table, physical */
	__s64 map_count;
	__u64 maple_root;
	__u32 maple_layout_ok;
	__u32 maple_depth;
	__u64 vma;
	__u64 vm_start;
	__u64 vm_end;
	__u64 vm_flags;
	__u64 vm_page_prot;
	__u64 vm_file;
	__u64 anon_vma;
	__u64 folio_pfn;
	__u64 page_flags;
	__s32 refcount;
	__s32 mapcount;
	__u64 head_pfn;
	__u64 head_flags;
	__s32 head_refcount;
	__s32 head_mapcount;
	__u32 folio_order;
	__s32 syscall_nr;     /* HAVE_KERNEL_MODE: the system call the thread was in (its saved user registers'
				 orig_ax on x86-64, syscallno on arm64); -1: not in one */
	struct maple_step_rec maple[WALK_MAPLE_DEPTH];
	__u64 pivots[WALK_PIVOTS];
};

struct walk_event {
	__u32 kind;
	__u32 id;
	__u64 time_ns;
	__u64 v[6];
	__u64 w[3];
};

#endif
