"""Page-fault flame graphs: every fault's user and kernel stack, weighted by fault count, one root per class.

Formats, each opened by its viewer as it is:
- folded (Brendan Gregg's stackcollapse: "root;frame;…;leaf COUNT" per line) for flamegraph.pl, inferno,
  speedscope and flameshow;
- speedscope's JSON file format (a sampled profile over shared frames; file-format-spec.ts);
- call stacks for the Perfetto/Chrome trace (stackFrames and each sample's "sf").

Stacks come from a recording made with -g; without call chains a fault's stack is its class and the
function of its faulting instruction, and the output says so.

Two kinds of frame are not the program's and are left out, so that identical paths fold into one stack:
- the tracer's own frames at the kernel chain's leaf (``__traceiter_page_fault_user``, ``perf_trace_…``):
  where the tracepoint's caller is inlined they are on some stacks and not on others;
- user "frames" past the first one that points into no executable mapping: a frame-pointer walk through
  code built without frame pointers reads data (a heap or stack address) as a return address, and every
  such stack would be unique. The stack ends there, marked ``[truncated: no frame pointer]``.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..capture.records import Mapping, callchain, distinct_callchains, parse_stream, split_callchain
from ..kernel.kallsyms import KernelSymbols
from ..symbols.elf import eh_frame_unwind, resolve_mapping
from .count_summary import kernel_instruction

# A mapping's protection bits are mmap(2)'s PROT_* (its MMAP2 record's prot, or /proc's perms as kernel_counts reads
# them). The recording's summary (trace_summary: the classifier, the GFP decoding; ~20 ms to import) is imported by
# the functions that read a recording, not here: trace -g counted in the kernel imports this module after the
# program has ended, to name the counted stacks, and needs none of it.
PROT_EXEC = 4

if TYPE_CHECKING:   # a type only: the recording's loader (cattrs) is not imported to read counts
    from ..capture.recording import Recording

TRUNCATED = "[truncated: no frame pointer]"
EH_FRAME_TRUNCATED = "[truncated: eh_frame unwinding stopped]"
UNWOUND_BY_EH_FRAME = "[unwound: eh_frame]"          # which unwinder made the stack, in a --dwarf recording
UNWOUND_BY_FRAME_POINTERS = "[unwound: frame pointers]"
# Kernel frames of the tracing machinery itself, seen at the leaf of a tracepoint's call chain.
TRACER_FRAME_PREFIXES = ("__traceiter_", "perf_trace_", "trace_event_", "__bpf_trace_", "bpf_trace_run", "perf_tp_event",
                         "bpf_prog_")   # a BPF program's own frame, where trace -g counts stacks in the kernel
TRACER_DEPTH = 6   # how deep from the leaf the tracer's frames are looked for

SPEEDSCOPE_SCHEMA = "https://www.speedscope.app/file-format-schema.json"


class Symbolizer:
    """User addresses to "binary:function", kernel addresses to "function", each looked up once."""

    def __init__(self, maps: list[Mapping], ksyms: KernelSymbols | None):
        by_start: dict[int, Mapping] = {}
        for m in maps:
            by_start.setdefault(m.start, m)
        self.maps = sorted(by_start.values(), key=lambda m: m.start)
        self.starts = [m.start for m in self.maps]
        self.ksyms = ksyms
        self.cache: dict[tuple[str, int], str] = {}
        self.placed: dict[int, tuple[str, int | None, int] | None] = {}
        self.refused: dict[tuple[str, int | None], str] = {}
        self.rules: dict = {}                                  # the .eh_frame unwinder's rule per code address
        self.unwound: dict[tuple, list[str]] = {}              # per distinct (registers, stack copy, fp chain)

    def holding(self, ip: int) -> Mapping | None:
        """The mapping that holds `ip` (the first kept at its start), None where none does."""
        i = bisect.bisect_right(self.starts, ip) - 1
        return self.maps[i] if i >= 0 and self.maps[i].contains(ip) else None

    def user(self, ip: int) -> str:
        key = ("u", ip)
        if key not in self.cache:
            m = self.holding(ip)
            if m is None:
                name = ""      # no mapping holds it: a frame-pointer walk through code built without them
            elif m.path.startswith("/"):
                r = resolve_mapping(ip, m)
                base = m.path.rsplit("/", 1)[-1]
                name = f"{base}:{r.symbol}" if r.symbol else f"{base}+0x{r.file_offset:x}"
            else:
                name = f"{m.path or '[anon]'}+0x{ip - m.start:x}"
            self.cache[key] = _clean(name)
        return self.cache[key]

    def site_name(self, key: SiteKey) -> str:
        """A call site (counted_site_keys' key) named as a recording's summary names a faulting instruction: in its
        file, "file:symbol+0xoff" (or "file+0xoff" at the file offset where no symbol holds it), else its address;
        in the kernel, "kernel: function+0xoff"; where there is no site, why."""
        kind, where = key
        if kind == NO_SITE or isinstance(where, str):
            return str(where)
        if kind == KERNEL_SITE:
            return kernel_instruction(self.ksyms.lookup(where) if self.ksyms else None)
        m = self.holding(where)
        return resolve_mapping(where, m).describe() if m is not None and m.path.startswith("/") else f"0x{where:x}"

    def in_code(self, ip: int) -> bool:
        """An executable mapping holds `ip` (what a real return address points into)."""
        m = self.holding(ip)
        return m is not None and bool(m.prot & PROT_EXEC)

    def place(self, pc: int) -> tuple[str, int | None, int] | None:
        """(file, inode, ELF address) of an address in an executable file mapping, for the .eh_frame unwinder;
        None outside executable code. The ELF address comes from the file when it may be read, else from the
        segments the recording saved."""
        if pc in self.placed:
            return self.placed[pc]
        m = self.holding(pc)
        where = None
        if m is not None and m.prot & PROT_EXEC and m.path.startswith("/"):
            r = resolve_mapping(pc, m)
            where = (m.path, m.inode or None, r.elf_vaddr) if r.elf_vaddr is not None else None
        self.placed[pc] = where
        return where

    def cfi_refusal(self, path: str, inode: int | None) -> str:
        """Why the file's .eh_frame may not be read ("" : it may): a recording's file is read only when it is
        provably the file the capture saw (symbols/recorded.py)."""
        key = (path, inode)
        if key not in self.refused:
            m = next((m for m in self.maps if m.path == path), None)
            files = getattr(m, "recorded_files", None)
            self.refused[key] = files.refusal(path, inode or 0) if files is not None else ""
        return self.refused[key]

    def eh_frame_frames(self, copy: tuple[int, int, int, bytes], fp_chain: list[int]) -> list[str]:
        """A stack from a fault's registers and stack copy (bp, sp, ip, bytes), unwound with .eh_frame, root→leaf,
        headed by which unwinder made it: .eh_frame, or the frame-pointer chain where .eh_frame got less far."""
        # keyed by a digest of the copy, not the copy: a recording holds tens of thousands of 8 KiB copies
        key = (copy[:3], hashlib.blake2b(copy[3], digest_size=16).digest(), tuple(fp_chain))
        if key not in self.unwound:
            self.unwound[key] = self._eh_frame_frames(copy, fp_chain)
        return self.unwound[key]

    def _eh_frame_frames(self, copy: tuple[int, int, int, bytes], fp_chain: list[int]) -> list[str]:
        bp, sp, ip, stack = copy
        result = eh_frame_unwind(ip, sp, bp, stack, self.place, self.cfi_refusal, self.rules)
        fp = self.user_frames(fp_chain) if fp_chain else []
        fp_depth = len([f for f in fp if f != TRUNCATED])
        if result.truncated and fp_depth > len(result.frames):
            return [UNWOUND_BY_FRAME_POINTERS] + fp
        names = [self.user(pc) for pc in reversed(result.frames)]
        return [UNWOUND_BY_EH_FRAME] + ([EH_FRAME_TRUNCATED] if result.truncated else []) + names

    def user_frames(self, chain: list[int]) -> list[str]:
        """The user chain (leaf first) as frames root→leaf, cut at the first address outside executable code."""
        kept = []
        for ip in chain:
            if not self.in_code(ip):
                break
            kept.append(ip)
        frames = [self.user(ip) for ip in reversed(kept)]
        return ([TRUNCATED] if len(kept) < len(chain) else []) + frames

    def kernel_frames(self, chain: list[int]) -> list[str]:
        """The kernel chain (leaf first) as frames root→leaf, without the tracer's own frames at its leaf."""
        names = [self.kernel(ip) for ip in chain]
        # everything leafward of the last tracer frame near the leaf: what the tracer ran (a BPF program's JIT
        # image, which kallsyms may name after the text symbol before it) is not the program's path either
        last = max((i for i, name in enumerate(names[:TRACER_DEPTH]) if name.startswith(TRACER_FRAME_PREFIXES)),
                   default=-1)
        return names[last + 1:][::-1]

    def kernel(self, ip: int) -> str:
        key = ("k", ip)
        if key not in self.cache:
            found = self.ksyms.lookup(ip) if self.ksyms else None
            self.cache[key] = _clean(f"{found[0]}_[k]" if found else f"0x{ip:x}_[k]")
        return self.cache[key]


def _clean(name: str) -> str:
    """Folded lines separate frames with ';' and the count with a space."""
    return name.replace(";", ":").replace(" ", "_")


@dataclass(frozen=True)
class FaultSample:
    """What one fault is counted under: its stack and the dimensions a profiler filters by."""

    frames: tuple[str, ...]     # root→leaf, the fault's class first
    fault_class: str
    pid: int
    comm: str
    kernel_mode: bool           # taken in kernel mode (a system call touching the program's memory)


def fault_samples(rec: Recording, ksyms: KernelSymbols | None = None) -> tuple[Counter[FaultSample], bool]:
    """(Counter of faults by stack, class, process and mode; whether call chains were recorded)."""
    from .trace_summary import _chain_symbols, _column, classify_recording, fault_columns, mappings_of, process_names
    meta = rec.meta
    if meta.get("tier", "perf") != "perf":
        raise ValueError("flame graphs need a perf-tier recording (fault classes come from tracepoints)")
    ksyms = _chain_symbols(meta, ksyms or KernelSymbols.load())
    addresses, _tids, _times, result = classify_recording(rec, ksyms)
    stream = parse_stream(rec.data, meta["sample_type"] | (32 if meta.get("callchain") else 0), in_time_order=False,
                          columns=frozenset({"tid"}))
    event_type = _column(stream.samples.event_type, len(stream.samples))
    faults = fault_columns(stream, meta, event_type)
    rows = faults.mask.nonzero()[0].tolist()
    pids = _column(stream.samples.pid, len(stream.samples), np.uint32)[faults.mask].tolist()
    sym = Symbolizer(mappings_of(meta, stream), ksyms)
    chains = stream.samples.callchain_offset is not None
    raw_offsets = stream.samples.raw_offset if meta.get("user_stack") else None
    copies = raw_offsets is not None
    names = process_names(stream)
    samples: Counter[FaultSample] = Counter()
    if copies or not chains:   # --dwarf: each fault's stack copy is its own, unwound one by one
        chain_ids, first_row = (rows, None) if copies else ([0] * len(rows), None)
    else:
        # the faults told apart only by what their frames are made of: the same chain (by its bytes), faulting ip,
        # mode, process and class give the same sample, so each distinct one is decoded and named once (one by one,
        # 262,144 faults took seconds in struct, the chain's split and the symbol lookups)
        which = distinct_callchains(stream.data, stream.samples, np.asarray(rows, dtype=np.int64))[1]
        chain_ids = which.tolist()
        first_row = np.asarray(rows, dtype=np.int64)[np.unique(which, return_index=True)[1]].tolist()
    alike = Counter(zip(chain_ids, faults.ips.tolist(), faults.kernel_mode.tolist(), pids, result.classes))
    for (chain_id, ip, in_kernel, pid, cls), n in alike.items():
        row = first_row[chain_id] if first_row is not None else chain_id
        # a kernel-mode fault's ip is the kernel's (copy_to_user…): its own frame is a kernel one
        leaf = sym.kernel(ip) if in_kernel else sym.user(ip) or f"0x{ip:x}"
        frames = [cls.value]
        if chains:
            kernel, user = split_callchain(callchain(stream.data, stream.samples, row))
            copy = user_stack_copy(stream.data, int(raw_offsets[row])) if raw_offsets is not None else None
            if copy is not None and not in_kernel:
                frames += sym.eh_frame_frames(copy, user)
            else:
                frames += ([UNWOUND_BY_FRAME_POINTERS] if copies and user else []) + \
                    (sym.user_frames(user) if user else [] if in_kernel else [leaf])
            frames += sym.kernel_frames(kernel)
        else:
            frames.append(leaf)
        samples[FaultSample(tuple(frames), cls.value, pid, names.get(pid, ""), bool(in_kernel))] += n
    return samples, chains


def counted_samples(stack_rows: list[tuple[int, ...]], stacks: dict[int, list[int]], maps: list[Mapping],
                    vmas: list, comms: dict[int, str], ksyms: KernelSymbols | None) -> Counter[FaultSample]:
    """The faults counted in the kernel with their stacks (capture/kernel_counts.py, trace -g) as fault_samples
    gives a recording's: rows of (error code, allocated, order, page-cache add, signal, si_code, vma key, faults,
    user stack id, kernel stack id, tgid); the stacks by id, leaf first; the program's mappings (for user
    frames) and the VMAs the counter named (for the class); the process names."""
    from .count_summary import X86_PF_USER, row_class
    sym = Symbolizer(maps, ksyms)
    by_start = {m.start: m for m in vmas}
    samples: Counter[FaultSample] = Counter()
    for row in stack_rows:
        code, n, user_id, kernel_id, tgid = row[0], row[7], row[8], row[9], row[10]
        cls = row_class(row, by_start)
        in_kernel = not code & X86_PF_USER
        user = stacks.get(user_id, [])
        frames = [cls.value] + (sym.user_frames(user) if user else [] if in_kernel else ["[no user stack]"])
        frames += sym.kernel_frames(stacks.get(kernel_id, []))
        samples[FaultSample(tuple(frames), cls.value, tgid, comms.get(tgid, ""), bool(in_kernel))] += n
    return samples


# The kernel's entries for a page fault (x86: the IDT's, Xen PV's, FRED's): in a kernel stack read at the fault's
# tracepoint, the frame just rootward of the entry is the instruction the exception interrupted (the unwinder goes
# on from the registers the entry saved).
EXCEPTION_ENTRIES = ("asm_exc_page_fault", "xen_asm_exc_page_fault", "asm_fred_entrypoint_kernel")
# a call site as counted_site_keys keys it: (USER_SITE or KERNEL_SITE, its address), or (NO_SITE, why there is none)
USER_SITE, KERNEL_SITE, NO_SITE = "user", "kernel", "none"
SiteKey = tuple[str, "int | str"]


def counted_site_keys(stack_rows: list[tuple[int, ...]], stacks: dict[int, list[int]],
                      ksyms: KernelSymbols | None) -> list[tuple[tuple[int, ...], SiteKey]]:
    """Each row counted with its stacks (counted_samples' rows) in count_summary.summarize_counts' shape, (error
    code, ..., vma key, faults, tgid), with its call site's key: the faulting instruction, found in its stacks,
    not yet named (Symbolizer.site_name names the ones a summary keeps).

    A user-mode fault's instruction is its user stack's leaf (the registers saved at the trap). A kernel-mode
    fault's is the frame rootward of the exception's entry (EXCEPTION_ENTRIES) in its kernel stack, found by name
    with `ksyms`. Where the stack needed was not read (its id < 0), no kernel symbols were given, or no entry
    is in the stack, the key says why: (NO_SITE, why).

    :returns: one (row, key) per row of `stack_rows`, in their order; raises nothing."""
    from .count_summary import X86_PF_USER
    found: dict[tuple[bool, int], SiteKey] = {}

    def kernel_key(chain: list[int]) -> SiteKey:
        if ksyms is None:
            return NO_SITE, "(in the kernel: no kernel symbols to find the instruction by)"
        for i, ip in enumerate(chain[:-1]):
            name = ksyms.lookup(ip)
            if name and name[0] in EXCEPTION_ENTRIES:
                return KERNEL_SITE, chain[i + 1]
        return NO_SITE, "(in the kernel: the interrupted instruction is not in its stack)"

    out = []
    for row in stack_rows:
        in_user = bool(row[0] & X86_PF_USER)
        stack_id = row[8] if in_user else row[9]
        if (in_user, stack_id) not in found:
            chain = stacks.get(stack_id, []) if stack_id >= 0 else []
            found[(in_user, stack_id)] = ((NO_SITE, "(no user stack read)" if in_user else "(no kernel stack read)")
                                          if not chain else (USER_SITE, chain[0]) if in_user else kernel_key(chain))
        out.append((tuple(row[:8]) + (row[10],), found[(in_user, stack_id)]))
    return out


def fault_stacks(rec: Recording, ksyms: KernelSymbols | None = None) -> tuple[Counter, bool]:
    """(Counter of stacks root→leaf, with the fault's class as the root; whether call chains were recorded)."""
    samples, chains = fault_samples(rec, ksyms)
    stacks: Counter = Counter()
    for sample, n in samples.items():
        stacks[sample.frames] += n
    return stacks, chains


def folded(stacks: Counter) -> str:
    return "".join(f"{';'.join(frames)} {n}\n" for frames, n in sorted(stacks.items(), key=lambda kv: (-kv[1], kv[0])))


def speedscope(stacks: Counter, name: str) -> dict:
    """A speedscope file: one sampled profile, weights in faults."""
    index: dict[str, int] = {}
    frames: list[dict] = []
    samples, weights = [], []
    for stack, n in sorted(stacks.items(), key=lambda kv: (-kv[1], kv[0])):
        ids = []
        for f in stack:
            if f not in index:
                index[f] = len(frames)
                frames.append({"name": f})
            ids.append(index[f])
        samples.append(ids)
        weights.append(n)
    total = sum(weights)
    return {"$schema": SPEEDSCOPE_SCHEMA, "shared": {"frames": frames}, "name": name, "exporter": "pagefault",
            "activeProfileIndex": 0,
            "profiles": [{"type": "sampled", "name": f"{name}: page faults by class", "unit": "none",
                          "startValue": 0, "endValue": total, "samples": samples, "weights": weights}]}


def sample_stacks(rec: Recording, ksyms: KernelSymbols | None = None) -> list[list[str]] | None:
    """Each sample's stack root→leaf (user, then kernel), in time order as recording_columns gives them;
    None if the recording has no call chains."""
    from .trace_summary import _chain_symbols, mappings_of
    meta = rec.meta
    if not meta.get("callchain"):
        return None
    stream = parse_stream(rec.data, meta["sample_type"] | 32)
    sym = Symbolizer(mappings_of(meta, stream), _chain_symbols(meta, ksyms or KernelSymbols.load()))
    out = []
    for i in range(len(stream.samples)):
        kernel, user = split_callchain(callchain(stream.data, stream.samples, i))
        out.append(sym.user_frames(user) + sym.kernel_frames(kernel))
    return out


def user_stack_copy(data, raw_offset: int) -> tuple[int, int, int, bytes] | None:
    """(RBP, RSP, RIP, the stack copy) of a fault sample recorded with --dwarf: after its raw tracepoint data
    come PERF_SAMPLE_REGS_USER (u64 abi, then BP, SP, IP: the regs asked for, in bit order) and
    PERF_SAMPLE_STACK_USER (u64 size, size bytes, u64 dyn_size: the bytes the kernel really copied). None when
    the sample has none (another event, a kernel thread: abi 0) or they run past the stream."""
    raw_start = raw_offset - 4
    n = len(data)
    if raw_start < 0 or raw_start + 4 > n:
        return None
    raw_size = int.from_bytes(data[raw_start:raw_start + 4], "little")
    pos = raw_start + ((4 + raw_size + 7) & ~7)
    if pos + 8 > n:
        return None
    abi = int.from_bytes(data[pos:pos + 8], "little")
    if abi == 0 or pos + 40 > n:
        return None
    bp, sp, ip = (int.from_bytes(data[pos + 8 * k:pos + 8 * k + 8], "little") for k in (1, 2, 3))
    pos += 32
    size = int.from_bytes(data[pos:pos + 8], "little")
    if size == 0 or pos + 8 + size + 8 > n:
        return None
    dyn = int.from_bytes(data[pos + 8 + size:pos + 16 + size], "little")
    return bp, sp, ip, bytes(data[pos + 8:pos + 8 + min(dyn, size)])
