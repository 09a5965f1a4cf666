/* The count shared by fault_count.bpf.c (trace's summary) and fault_stacks.bpf.c (trace -g: the same count with
 * each fault's user and kernel stack in its key): its maps, its per-thread fault in progress and every hook.
 * Included once per object, after vmlinux.h, libbpf's headers, pagefault.bpf.h and fault_count.h (and, with
 * COUNT_STACKS defined, fault_stacks.h). */
#ifndef PAGEFAULT_FAULT_COUNT_BPF_H
#define PAGEFAULT_FAULT_COUNT_BPF_H

#define VM_SHARED 0x8ULL
#define GFP_MOVABLE 0x8U   /* ___GFP_MOVABLE: bit 3 on every kernel since 2.6 */
#define SIGBUS 7
#define SIGSEGV 11
#define SI_USER 0
#define SI_KERNEL 0x80
#define ENOENT 2
#define ENOSPC 28
#define X86_PAGE_SHIFT 12
#define EEXIST 17

const volatile struct fault_count_settings settings = {};

#ifdef COUNT_STACKS
typedef struct fault_stack_key count_key_t;   /* fault_stacks.h */
#define COUNT_KEYS 32768
#else
typedef struct fault_key count_key_t;
#define COUNT_KEYS 8192
#endif

/* A plain hash, not a per-CPU one: it is written once per run of alike faults (flush_run), not per fault, so an
 * atomic add costs nothing that shows, while a per-CPU hash is allocated whole for every possible CPU when the
 * object loads (9 ms for fault_count's 8192 keys and 20 ms for fault_stacks' 32768 on this 2-CPU machine, of
 * a load + attach of ~40 ms; more CPUs, more). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, COUNT_KEYS);
	__type(key, count_key_t);
	__type(value, __u64);
} counts SEC(".maps");

#ifdef COUNT_STACKS
/* Each distinct stack (user or kernel), kept once with its id, keyed by a 64-bit hash of its frames. A key of the
 * whole stack (STACK_DEPTH addresses) made the map hash and compare 512 bytes at every fault: ~200 ns of a fault's
 * ~1 us here (bench/flame.py), where a 64-bit hash of the frames is a multiplication each; the stack kept
 * in the value is compared with the one read, so two stacks never share an id (a hash collision, which would
 * need two of at most STACK_ENTRIES stacks to agree on 64 bits, is counted as a stack not taken). Not a
 * BPF_MAP_TYPE_STACK_TRACE map: it keeps a stack by a hash of the addresses into a bucket and drops a stack
 * whose bucket holds another (-EEXIST; seen here for a whole kernel path in about one run in ten), which would
 * leave its faults without frames. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STACK_ENTRIES);
	__type(key, __u64);
	__type(value, struct stack);
} stack_ids SEC(".maps");

/* the stack being read (too big for the BPF stack), per CPU */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct stack);
} scratch SEC(".maps");

/* ids are handed out per CPU, no atomics needed: the CPU's number above bit 20, its own count below */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} next_stack SEC(".maps");

/* Set on this CPU while a fault's stacks are read. The user stack is read frame by frame without faulting
 * (copy_from_user_nofault): where code has no frame pointers the walk follows data as if it were one, and a
 * read of an unmapped page takes a kernel-mode fault on a user address, which page_fault_kernel would
 * count as the program's (seen: ~47 extra for a 64-page read() program). Those faults are this program's
 * own, and the kernel does not count them (page faults are disabled). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} walking SEC(".maps");

#define X86_PF_USER 4
__s32 user_entry_stack = -1;   /* the kernel stack of a user-mode fault, its id (-1: not read yet) */

/* FNV-1a over the stack's frames, 64 bits (the words after them are zeros: bpf_get_stack clears the rest). Only
 * the frames read, not all STACK_DEPTH words: a fault's user stack is a few frames, and hashing and comparing
 * all 64 words cost ~400 instructions at every fault. A loop that stops at a count the verifier does not know
 * is checked once per count it could stop at: inlined in the fault programs that was ~300 ms a program here,
 * in scratch_stack_id (a global function, checked once) it is a few thousand instructions. */
static __always_inline __u64 stack_hash(const struct stack *s)
{
	__u64 h = 0xcbf29ce484222325ULL;
	for (__u32 i = 0; i < STACK_DEPTH; i++) {
		if (i >= s->frames)
			break;
		h = (h ^ s->ip[i]) * 0x100000001b3ULL;
	}
	return h;
}

/* the same stack: as many frames, each the same (the words after them are zeros in both) */
static __always_inline int same_stack(const struct stack *a, const struct stack *b)
{
	if (a->frames != b->frames)
		return 0;
	__u64 differ = 0;
	for (__u32 i = 0; i < STACK_DEPTH; i++) {
		if (i >= a->frames)
			break;
		differ |= a->ip[i] ^ b->ip[i];
	}
	return !differ;
}

/* The id of the stack in this CPU's scratch (just read, `frames` deep), given one the first time it is seen; < 0:
 * the map of stacks is full (-ENOSPC), or another stack has its hash (-EEXIST). A global function, not inlined:
 * the verifier checks its hash and compares (a few hundred instructions) once per program, not once for each of
 * the three places a fault's stacks are read and each path leading there (fault_stacks' fault program: 23,718
 * instructions processed, ~20 ms of its load on 6.18 here, before). */
__noinline __s32 scratch_stack_id(__u32 frames)
{
	__u32 zero = 0;
	struct stack *s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return -ENOENT;
	s->frames = frames;
	__u64 h = stack_hash(s);
	struct stack *kept = bpf_map_lookup_elem(&stack_ids, &h);
	if (kept)
		return same_stack(kept, s) ? kept->id : -EEXIST;
	__u32 *next = bpf_map_lookup_elem(&next_stack, &zero);
	if (!next)
		return -ENOENT;
	s->id = (__s32)((bpf_get_smp_processor_id() & 0x3ff) << 20 | (*next & 0xfffff));
	if (!bpf_map_update_elem(&stack_ids, &h, s, BPF_NOEXIST)) {
		*next += 1;
		return s->id;
	}
	kept = bpf_map_lookup_elem(&stack_ids, &h);   /* another CPU kept it first, or the map is full */
	if (!kept)
		return -ENOSPC;
	return same_stack(kept, s) ? kept->id : -EEXIST;
}

/* The id of the stack bpf_get_stack reads with `flags` (BPF_F_USER_STACK or 0), given one the first time it is
 * seen; < 0: not read (-errno), or scratch_stack_id's refusal. */
static __always_inline __s32 stack_id(void *ctx, __u64 flags)
{
	__u32 zero = 0;
	struct stack *s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return -ENOENT;
	long n = bpf_get_stack(ctx, s->ip, sizeof(s->ip), flags);
	if (n < 0)
		return n;
	return scratch_stack_id((__u32)n / 8);
}

static __always_inline __u32 *walking_flag(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&walking, &zero);
}
#endif

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct thread_fault);
} threads SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct vma_key);
	__type(value, struct vma_seen);
} vmas SEC(".maps");

/* Each followed process's command name (fault_count.h's struct process_name), by tgid: counting reads no COMM
 * record, so the summary's rows by process are named from here. */
#define PROCESS_NAMES 8192
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PROCESS_NAMES);
	__type(key, __u32);
	__type(value, struct process_name);
} process_names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNT_N);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void bump(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&counters, &which);
	if (n)
		*n += 1;
}

static __always_inline int followed(__u32 tgid)
{
	return target_or_child(tgid, settings.target_tgid, settings.from_exec);
}

/* Keep the current process's command name: `flags` BPF_NOEXIST at a thread's first fault (the name it has, unless
 * one is kept already), BPF_ANY at its exec (the new image's name replaces it). */
static __always_inline void keep_process_name(__u32 tgid, __u64 flags)
{
	struct process_name name = {};
	bpf_get_current_comm(name.comm, sizeof(name.comm));
	long err = bpf_map_update_elem(&process_names, &tgid, &name, flags);
	if (err && err != -EEXIST)
		bump(COUNT_UNNAMED_PROCS);
}

/* Add the thread's run of alike faults to the count map. */
static __always_inline void flush_run(struct thread_fault *t)
{
	if (!t->run_count)
		return;
	count_key_t key = {.state = t->run_state, .vma = t->run_vma};
#ifdef COUNT_STACKS
	key.user_stack = t->run_user_stack;
	key.kernel_stack = t->run_kernel_stack;
#endif
	key.tgid = t->tgid;
	__u64 *n = bpf_map_lookup_elem(&counts, &key);
	if (n) {
		__sync_fetch_and_add(n, t->run_count);   /* shared by every CPU */
	} else if (bpf_map_update_elem(&counts, &key, &t->run_count, BPF_NOEXIST)) {
		/* another CPU made the key meanwhile (EEXIST): add to its; else the map is full */
		n = bpf_map_lookup_elem(&counts, &key);
		if (n) {
			__sync_fetch_and_add(n, t->run_count);
		} else {
			__u32 which = COUNT_UNCLASSIFIED;
			__u64 *lost = bpf_map_lookup_elem(&counters, &which);
			if (lost)
				*lost += t->run_count;
		}
	}
	t->run_count = 0;
}

static __always_inline void close_fault(struct thread_fault *t)
{
	__u32 state = t->state & ~ST_OPEN;
	if (t->run_count && t->run_state == state && t->run_vma == t->vma && t->run_user_stack == t->user_stack &&
	    t->run_kernel_stack == t->kernel_stack) {
		t->run_count += 1;
	} else {
		flush_run(t);
		t->run_state = state;
		t->run_vma = t->vma;
		t->run_user_stack = t->user_stack;
		t->run_kernel_stack = t->kernel_stack;
		t->run_count = 1;
	}
	t->state = 0;
}

/* The file behind the thread's VMA, as the page-cache tracepoint names a file: its inode's number and its
 * super block's device (the inode's own device where it has no super block); 0: no file. */
static __always_inline void keep_file(struct thread_fault *t, struct file *file)
{
	t->file_ino = 0;
	if (!file)
		return;
	struct inode *inode = BPF_CORE_READ(file, f_inode);
	t->file_ino = BPF_CORE_READ(inode, i_ino);
	struct super_block *sb = BPF_CORE_READ(inode, i_sb);
	t->file_dev = sb ? BPF_CORE_READ(sb, s_dev) : BPF_CORE_READ(inode, i_rdev);
}

static __always_inline void find_vma(struct thread_fault *t, __u64 addr)
{
	struct mm_struct *mm = current_mm();
	struct vm_area_struct *v = (struct vm_area_struct *)maple_find_vma(mm, addr);
	if (v) {
		__u64 start = BPF_CORE_READ(v, vm_start);
		if (start <= addr) {
			__u64 end = BPF_CORE_READ(v, vm_end);
			__u64 flags = 0;
			bpf_core_read(&flags, sizeof(flags), &v->vm_flags);
			struct file *file = BPF_CORE_READ(v, vm_file);
			t->vm_start = start;
			t->vm_end = end;
			t->vma = start << 3 | (file ? KIND_FILE : 0) | (flags & VM_SHARED ? KIND_SHARED : 0);
			t->vm_pgoff = BPF_CORE_READ(v, vm_pgoff);
			keep_file(t, file);
			if (keep_vma_named(&vmas, v, mm, start))
				bump(COUNT_UNNAMED);
			return;
		}
	}
	/* no VMA: below the stack it grows; anywhere else it is a SIGSEGV */
	__u64 stack = BPF_CORE_READ(mm, start_stack);
	t->vm_start = 0;
	t->vm_end = 0;
	t->file_ino = 0;
	t->vma = addr < stack && addr + settings.stack_reach > stack ? KIND_GROWTH : 0;
}

static __always_inline int on_fault(void *ctx, __u64 addr, __u64 error_code)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	if (!followed(id >> 32))
		return 0;
	bump(COUNT_TOTAL);
	struct thread_fault *t = bpf_map_lookup_elem(&threads, &tid);
	if (!t) {
		struct thread_fault fresh = {};
		bpf_map_update_elem(&threads, &tid, &fresh, BPF_NOEXIST);
		t = bpf_map_lookup_elem(&threads, &tid);
		if (!t) {
			bump(COUNT_UNTRACKED);
			return 0;
		}
		/* a thread's first fault: its process's name, where its exec has not kept one (a forked child) */
		keep_process_name(id >> 32, BPF_NOEXIST);
	} else if (t->state) {
		close_fault(t);
	}
	t->state = ST_OPEN | (__u32)(error_code & 0x3f) << ST_CODE_SHIFT;
	t->tgid = id >> 32;
#ifdef COUNT_STACKS
	/* the stacks of the faulting thread as the tracepoint sees them: the user one from the registers saved at
	 * its entry to the kernel (the faulting instruction, or the system call's site), the kernel one from here.
	 * A fault taken in user mode enters the kernel on a fresh stack and the tracepoint fires at the trap's
	 * entry, before any path of the kernel's: its kernel stack is the entry's own (asm_exc_page_fault,
	 * exc_page_fault), the same at every such fault, so it is read once (unwinding it cost ~3.5 µs a fault
	 * here). A kernel-mode fault's is read each time: it is the system call's path to the user address. */
	__u32 *walk = walking_flag();
	if (walk)
		*walk = 1;
	t->user_stack = stack_id(ctx, BPF_F_USER_STACK);
	if (!(error_code & X86_PF_USER)) {
		t->kernel_stack = stack_id(ctx, 0);
	} else {
		if (user_entry_stack < 0)
			user_entry_stack = stack_id(ctx, 0);
		t->kernel_stack = user_entry_stack;
	}
	if (walk)
		*walk = 0;
	if (t->user_stack < 0 || t->kernel_stack < 0)
		bump(COUNT_NO_STACK);
#endif
	if (!(addr >= t->vm_start && addr < t->vm_end))
		find_vma(t, addr);
	/* the faulting page's index in its file (page_fault_user and _kernel are x86's: 4 KiB pages) */
	t->fault_index = t->vm_pgoff + ((addr - t->vm_start) >> X86_PAGE_SHIFT);
	return 0;
}

RAW_HOOK(page_fault_user)
int BPF_PROG(fault_btf, unsigned long address, struct pt_regs *regs, unsigned long error_code)
{
	return on_fault(ctx, address, error_code);
}

SEC("tracepoint/exceptions/page_fault_user")
int fault_tp(struct page_fault_user_args *ctx)
{
	return on_fault(ctx, ctx->address, ctx->error_code);
}

/* A fault taken in kernel mode on a user address: a system call copying to or from the program's memory
 * (read() into a fresh buffer faults in copy_to_user). The kernel charges it to the program as it does a
 * user-mode fault (its page-faults counter), so it is counted too; its error code lacks X86_PF_USER, which
 * keeps the mode in the count's key. Faults on kernel addresses (the upper half: vmalloc...) are not the
 * program's. A kernel-mode fault with page faults disabled (a *_nofault copy), which the kernel fixes up
 * without counting it, cannot be told apart here: task->pagefault_disabled read in this program is 1 at
 * every fault, user-mode ones included (seen on 6.18), so it says nothing of the faulting code. */
static __always_inline int on_kernel_fault(void *ctx, __u64 addr, __u64 error_code)
{
	if ((__s64)addr < 0)
		return 0;
#ifdef COUNT_STACKS
	__u32 *walk = walking_flag();
	if (walk && *walk)
		return 0;   /* a fault of our own stack walk, above */
#endif
	return on_fault(ctx, addr, error_code);
}

RAW_HOOK(page_fault_kernel)
int BPF_PROG(fault_kernel_btf, unsigned long address, struct pt_regs *regs, unsigned long error_code)
{
	return on_kernel_fault(ctx, address, error_code);
}

/* page_fault_kernel's classic record is page_fault_user's (one event class, x86_exceptions) */
SEC("tracepoint/exceptions/page_fault_kernel")
int fault_kernel_tp(struct page_fault_user_args *ctx)
{
	return on_kernel_fault(ctx, ctx->address, ctx->error_code);
}

static __always_inline int on_alloc(__u32 order, __u64 gfp)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	if (!followed(id >> 32))
		return 0;
	bump(COUNT_ALLOCS);
	struct thread_fault *t = bpf_map_lookup_elem(&threads, &tid);
	if (t && t->state && (gfp & GFP_MOVABLE)) {
		__u32 s = t->state;
		if (order > ((s >> ST_ORDER_SHIFT) & 31))
			s = (s & ~(31u << ST_ORDER_SHIFT)) | (order & 31) << ST_ORDER_SHIFT;
		t->state = s | ST_ALLOC;
	}
	return 0;
}

RAW_HOOK(mm_page_alloc)
int BPF_PROG(alloc_btf, struct page *page, unsigned int order, gfp_t gfp_flags, int migratetype)
{
	return on_alloc(order, gfp_flags);
}

SEC("tracepoint/kmem/mm_page_alloc")
int alloc_tp(struct trace_event_raw_mm_page_alloc *ctx)
{
	return on_alloc(BPF_CORE_READ(ctx, order), BPF_CORE_READ(ctx, gfp_flags));
}

/* A page-cache add is the fault's own read from disk only when it is the faulting page: the same file (inode
 * number and device) and a folio (index, 2^order pages) that holds the fault's index. That is what makes the
 * fault major to the kernel (filemap_fault found no folio: VM_FAULT_MAJOR). The thread's fault stays open
 * until its next one, so any other add in between is not the fault's: readahead of other pages (a minor fault
 * to the kernel), or a system call's (a write() that fills the cache, a read()). */
static __always_inline int on_cache_add(__u64 ino, __u32 dev, __u64 index, __u32 order)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	if (!followed(id >> 32))
		return 0;
	struct thread_fault *t = bpf_map_lookup_elem(&threads, &tid);
	if (!t || !t->state || !t->file_ino || t->file_ino != ino || t->file_dev != dev)
		return 0;
	if (index <= t->fault_index && t->fault_index - index < (1ULL << (order & 31)))
		t->state |= ST_CACHE;
	return 0;
}

/* struct folio of 6.1-6.?: its order in a byte of its own (later kernels keep it in _flags_1's low byte) */
struct folio___order_byte {
	unsigned char _folio_order;
} __attribute__((preserve_access_index));

/* a folio's order, as folio_order() reads it on the running kernel: 0 unless it is a head (PG_head) */
static __always_inline __u32 order_of_folio(struct folio *folio)
{
	/* the flags word through CO-RE, in the shape this kernel has (pagefault.bpf.h's folio_flags_word) */
	if (!(folio_flags_word(folio) & (1ULL << bpf_core_enum_value(enum pageflags, PG_head))))
		return 0;
	struct folio___order_byte *old = (void *)folio;
	if (bpf_core_field_exists(old->_folio_order))
		return BPF_CORE_READ(old, _folio_order);
	__u64 flags_1 = 0;
	bpf_core_read(&flags_1, sizeof(flags_1), &folio->_flags_1);
	return flags_1 & 0xff;
}

RAW_HOOK(mm_filemap_add_to_page_cache)
int BPF_PROG(cache_btf, struct folio *folio)
{
	/* the tracepoint's own fields, read as its TP_fast_assign reads them */
	struct inode *host = BPF_CORE_READ(folio, mapping, host);
	struct super_block *sb = BPF_CORE_READ(host, i_sb);
	__u32 dev = sb ? BPF_CORE_READ(sb, s_dev) : BPF_CORE_READ(host, i_rdev);
	return on_cache_add(BPF_CORE_READ(host, i_ino), dev, BPF_CORE_READ(folio, index), order_of_folio(folio));
}

SEC("tracepoint/filemap/mm_filemap_add_to_page_cache")
int cache_tp(struct trace_event_raw_mm_filemap_op_page_cache *ctx)
{
	/* `order` is in the record from the kernels that add large folios to the page cache on; before: 0 */
	__u32 order = bpf_core_field_exists(ctx->order) ? BPF_CORE_READ(ctx, order) : 0;
	return on_cache_add(BPF_CORE_READ(ctx, i_ino), BPF_CORE_READ(ctx, s_dev), BPF_CORE_READ(ctx, index), order);
}

static __always_inline int on_signal(int sig, int code)
{
	if (sig != SIGBUS && sig != SIGSEGV)
		return 0;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct thread_fault *t = bpf_map_lookup_elem(&threads, &tid);
	if (t && t->state)
		t->state |= (__u32)sig << ST_SIG_SHIFT | (__u32)(code & 0xff) << ST_SICODE_SHIFT;
	return 0;
}

RAW_HOOK(signal_generate)
int BPF_PROG(signal_btf, int sig, struct kernel_siginfo *info)
{
	/* the classic tracepoint's code: SEND_SIG_NOINFO (0) is SI_USER, SEND_SIG_PRIV (1) SI_KERNEL */
	int code = (__u64)info == 0 ? SI_USER : (__u64)info == 1 ? SI_KERNEL : BPF_CORE_READ(info, si_code);
	return on_signal(sig, code);
}

SEC("tracepoint/signal/signal_generate")
int signal_tp(struct trace_event_raw_signal_generate *ctx)
{
	return on_signal(BPF_CORE_READ(ctx, sig), BPF_CORE_READ(ctx, code));
}

/* fork runs in the parent: a followed process's new child is followed too (pagefault.bpf.h) */
FOLLOW_FORK_PROGRAMS()

/* a thread that ends, or execs a new image, closes its fault in progress and forgets its VMA */
static __always_inline void forget_thread(__u32 tid)
{
	struct thread_fault *t = bpf_map_lookup_elem(&threads, &tid);
	if (!t)
		return;
	if (t->state)
		close_fault(t);
	flush_run(t);
	bpf_map_delete_elem(&threads, &tid);
}

static __always_inline int on_exit(void)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (followed(id >> 32))
		forget_thread((__u32)id);
	return 0;
}

SCHED_PROGRAMS(sched_process_exit, exit_btf, exit_tp, on_exit)

/* exec's point of no return (6.10 on), just before perf_event_exec() enables the kernel's own counters of an
 * exec'ing task: counting starts here, as theirs does, so that the faults exec itself takes on the new image
 * (copying argv and auxv to the new stack, clearing .bss) are counted as the kernel counts them. Where the
 * kernel lacks it, counting starts at sched_process_exec, after those. */
static __always_inline int on_prepare_exec(void)
{
	start_at_exec(settings.target_tgid);
	return 0;
}

SCHED_PROGRAMS(sched_prepare_exec, prepare_exec_btf, prepare_exec_tp, on_prepare_exec)

static __always_inline int on_exec(void)
{
	__u64 id = bpf_get_current_pid_tgid();
	start_at_exec(settings.target_tgid);
	if (followed(id >> 32)) {
		forget_thread((__u32)id);
		keep_process_name(id >> 32, BPF_ANY);   /* the new image's name: the last exec's is the one shown */
	}
	return 0;
}

/* the target's exec starts the count (where sched_prepare_exec has not already) and forgets its old image */
SCHED_PROGRAMS(sched_process_exec, exec_btf, exec_tp, on_exec)

#endif
