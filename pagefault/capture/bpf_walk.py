"""The bpf tier: the raw page-table entries of one address, read in the kernel from the task's mm->pgd by the
compiled program capture/bpf/journey_walk.bpf.c (a CO-RE object loaded through libbpf; nothing is compiled
when pagefault runs), with the kernel objects around them.

The program follows each entry's frame through the kernel's direct map. The direct map's base
(page_offset_base) is randomised at boot and, without CONFIG_KALLSYMS_ALL, not in /proc/kallsyms; so it is
derived, never assumed: base = mm->pgd (read there) − the PGD page's physical address (the pfn of the
pgd_alloc allocation that perf saw during exec). A base that is not 1 GiB aligned (as the kernel's KASLR
keeps it) is refused.

Entries are read twice: when the fault enters the kernel (page_fault_user, before the handler) and at the
target's next system call (the write that reports the next phase), after the handler installed the PTE.
Records come back through a BPF ring buffer (struct walk_read, journey_walk.h, mirrored here).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import re
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..decode.address import LEVEL_NAMES
from ..evidence import BpfWalk, MapleStep, WalkRead
from .bpf import BpfObjectMissing, Hook, HookChoice, KernelHooks, object_path
from .kaslr import kaslr_seen
from .libbpf import BpfObject, LibbpfError, RingBuffer

FRAME_MASK = 0x000F_FFFF_FFFF_F000
OBJECT = "journey_walk"


class BpfError(Exception):
    """The walk could not be read; the message says why and the fix. `refused`: the programs libbpf's log
    names as the ones the kernel refused (a load failed for them), for a retry without them."""

    def __init__(self, message: str, refused: tuple[str, ...] = ()):
        super().__init__(message)
        self.refused = refused


_REFUSED = re.compile(r"prog '(\w+)': (?:failed|BPF program load failed|-- BEGIN PROG LOAD LOG)")


# struct maple_range_64 (and leaf_64): parent, pivot[15] at +8, slot[16] at +128; struct maple_arange_64:
# parent, pivot[9] at +8, slot[10] at +80 (include/linux/maple_tree.h, the same from 6.1 to 6.18). The
# compiled search takes them from the kernel's BTF (CO-RE), so maple_layout_ok is 1 wherever it reads a node.
MAPLE_LAYOUT = {3: (9, 80), 2: (15, 128), 1: (15, 128)}   # enum maple_type → (pivots, slot offset)
MAPLE_DEPTH = 6
OBJECT_FIELDS = ("map_count", "maple_root", "maple_layout_ok", "vma", "vm_start", "vm_end", "vm_flags",
                 "vm_page_prot", "vm_file", "anon_vma", "folio_pfn", "page_flags", "refcount", "mapcount",
                 # a page of a large folio: its order; a tail page: its head's PFN, flags and counts
                 "folio_order", "folio_head_pfn", "folio_head_flags", "folio_head_refcount", "folio_head_mapcount")

# ---- the Python mirror of journey_walk.h (tests/test_journey_walk_bpf.py holds it to the object's BTF) ----
WALK_RANGES = 8
MODE_PAGE, MODE_PROGRAM, MODE_SYSCALL = 0, 1, 2
SEL_OWN_CODE, SEL_NTH, SEL_ADDRESS, SEL_RANGES, SEL_KIND = range(5)
KINDS = ("anon", "zero", "cow", "file", "major", "swap", "thp", "stack", "segv", "kernel")   # enum walk_kind, in order
STAGE_WAITING, STAGE_FAULTED, STAGE_DONE = range(3)
MMAP_NOT_YET = 3
(REC_BEFORE, REC_AFTER, REC_VMEMMAP, REC_FAULT_ENTRY, REC_FAULT_RETURN, REC_HANDLER, REC_MMAP, REC_MMAP_RETURN,
 REC_MERGE, REC_EXITED, REC_AT_SYSCALL) = range(1, 12)
(HAVE_OBJECTS, HAVE_MAPLE_ROOT, HAVE_LAYOUT, HAVE_VMA, HAVE_FOLIO, HAVE_HEAD, HAVE_PIVOTS, HAVE_ORDER,
 HAVE_KERNEL_MODE) = (1 << i for i in range(9))

SETTINGS = np.dtype([("target_tgid", "<u4"), ("levels", "<u4"), ("mode", "<u4"), ("selector", "<u4"),
                     ("kind", "<u4"), ("from_exec", "<u4"), ("stop_after", "<u4"), ("fault_probes", "<u4"),
                     ("direct_map_base", "<u8"), ("page", "<u8"), ("nth", "<u8"),
                     ("elf_low", "<u8"), ("stack_reach", "<u8"), ("nranges", "<u4"), ("syscall_nr", "<u4"),
                     ("range_lo", "<u8", (WALK_RANGES,)), ("range_hi", "<u8", (WALK_RANGES,)),
                     ("range_ino", "<u8", (WALK_RANGES,)), ("chain", "<u4"), ("_pad_chain", "<u4")])


class State(ctypes.Structure):
    """struct walk_state, the object's .bss, read and written in place (BpfObject.global_data)."""

    _fields_ = [("page", ctypes.c_uint64), ("pgd_physical", ctypes.c_uint64), ("stage", ctypes.c_uint32), ("execd", ctypes.c_uint32),
                ("tid", ctypes.c_uint32), ("kp", ctypes.c_uint32), ("n", ctypes.c_uint64), ("addr", ctypes.c_uint64),
                ("ip", ctypes.c_uint64), ("vmemmap", ctypes.c_uint64), ("kt0", ctypes.c_uint64),
                ("mmap_stage", ctypes.c_uint32), ("_pad", ctypes.c_uint32), ("lost", ctypes.c_uint64)]


MAPLE_STEP = np.dtype([("node", "<u8"), ("type", "<u4"), ("slot", "<u4"), ("entry", "<u8")])
WALK_READ = np.dtype([("kind", "<u4"), ("tid", "<u4"), ("time_ns", "<u8"), ("address", "<u8"), ("ip", "<u8"),
                      ("error_code", "<u8"), ("nth", "<u8"), ("direct_map_base", "<u8"), ("pgd_virtual", "<u8"),
                      ("levels_read", "<u4"), ("have", "<u4"), ("entry", "<u8", (5,)), ("table", "<u8", (5,)),
                      ("map_count", "<i8"), ("maple_root", "<u8"), ("maple_layout_ok", "<u4"), ("maple_depth", "<u4"),
                      ("vma", "<u8"), ("vm_start", "<u8"), ("vm_end", "<u8"), ("vm_flags", "<u8"),
                      ("vm_page_prot", "<u8"), ("vm_file", "<u8"), ("anon_vma", "<u8"), ("folio_pfn", "<u8"),
                      ("page_flags", "<u8"), ("refcount", "<i4"), ("mapcount", "<i4"), ("head_pfn", "<u8"),
                      ("head_flags", "<u8"), ("head_refcount", "<i4"), ("head_mapcount", "<i4"),
                      ("folio_order", "<u4"), ("syscall_nr", "<i4"), ("maple", MAPLE_STEP, (6,)), ("pivots", "<u8", (15,))])
WALK_EVENT = np.dtype([("kind", "<u4"), ("id", "<u4"), ("time_ns", "<u8"), ("v", "<u8", (6,)), ("w", "<u8", (3,))])

# The tracepoint hooks, each with its tp_btf and classic-tracepoint program (capture/bpf KernelHooks chooses).
FAULT_HOOK = Hook("exceptions", "page_fault_user", "fault_btf", "fault_tp",
                  layout={"address": (8, 8), "ip": (16, 8), "error_code": (24, 8)})
# x86's faults taken in kernel mode (on a user address: inside a system call), for --kind kernel; the same
# event class as page_fault_user, so the same record layout (arch/x86/include/asm/trace/exceptions.h)
FAULT_KERNEL_HOOK = Hook("exceptions", "page_fault_kernel", "fault_kernel_btf", "fault_kernel_tp",
                         layout={"address": (8, 8), "ip": (16, 8), "error_code": (24, 8)})
SYSCALL_HOOK = Hook("raw_syscalls", "sys_enter", "syscall_btf", "syscall_tp")
EXEC_HOOK = Hook("sched", "sched_process_exec", "exec_btf", "exec_tp")
EXIT_HOOK = Hook("sched", "sched_process_exit", "exit_btf", "exit_tp")
# vmemmap's base needs the classic tracepoint's pfn field: no tp_btf variant
LRU_PROGRAM = "lru_tp"


@dataclass
class Walked:
    """What one run of the walk object gave: the reads by moment, the other records, and what it lost."""

    reads: dict[str, WalkRead] = field(default_factory=dict)
    raw: dict[str, np.void] = field(default_factory=dict)        # the walk_read record of each moment
    at_syscall: list[np.void] = field(default_factory=list)      # MODE_SYSCALL's walk_reads
    vmemmap: list[int] = field(default_factory=list)             # base, folio, pfn, sizeof(struct page)
    events: list[np.void] = field(default_factory=list)          # the fault-path and mmap walk_events, in order
    exited: bool = False


def walk_read(rec: np.void, when: str, levels: int) -> WalkRead:
    """One walk_read record as the evidence's WalkRead.

    :returns: a WalkRead holding the levels and objects the program read; raises nothing."""
    names = LEVEL_NAMES[levels]
    read = WalkRead(when, pgd_virtual=int(rec["pgd_virtual"]))
    for pos in range(min(int(rec["levels_read"]), len(names))):
        read.entries[names[pos]] = int(rec["entry"][pos])
        read.table_physical[names[pos]] = int(rec["table"][pos])
    have, objs = int(rec["have"]), read.objects
    if have & HAVE_OBJECTS:
        objs["map_count"] = int(rec["map_count"])
    if have & HAVE_MAPLE_ROOT:
        objs["maple_root"] = int(rec["maple_root"])
    if have & HAVE_LAYOUT:
        objs["maple_layout_ok"] = int(rec["maple_layout_ok"])
    for depth in range(int(rec["maple_depth"])):
        step = rec["maple"][depth]
        read.maple_path.append(MapleStep(int(step["node"]), int(step["type"]), int(step["slot"]), int(step["entry"])))
    if have & HAVE_PIVOTS:
        read.maple_leaf_pivots = [int(p) for p in rec["pivots"]]
    if have & HAVE_VMA:
        for name in ("vma", "vm_start", "vm_end", "vm_flags", "vm_page_prot", "vm_file", "anon_vma"):
            objs[name] = int(rec[name])
    if have & HAVE_FOLIO:
        for name in ("folio_pfn", "page_flags", "refcount", "mapcount"):
            objs[name] = int(rec[name])
    if have & HAVE_ORDER:
        objs["folio_order"] = int(rec["folio_order"])
    if have & HAVE_HEAD:
        for name in ("pfn", "flags", "refcount", "mapcount"):
            objs[f"folio_head_{name}"] = int(rec[f"head_{name}"])
    return read


def _verifier_said(log: list[str]) -> str:
    """The verifier's last word on the refused program (the line before its log's end), or ""."""
    lines = [line.split(": ", 1)[-1].strip() for line in log]
    if "-- END PROG LOAD LOG --" not in " ".join(lines):
        return ""
    body = [line for line in lines[:next(i for i, line in enumerate(lines) if "END PROG LOAD LOG" in line)]
            if line and not line.startswith(("processed ", "verification time"))]
    return f"; the verifier: {body[-1][-200:]}" if body else ""


class WalkObject:
    """journey_walk.bpf.o loaded and attached for one target, its records gathered from the ring buffer.

    :param settings: the walk_settings fields to set (the rest 0).
    :param hooks: the tracepoint hooks this use needs; the required ones missing raise BpfError.
    :param extra: further programs to load and attach (the fault-path probes), by name.
    :raises BpfError: one line with the reason and the fix (object not built, libbpf missing, a hook
        missing, the kernel refused a program: the file with libbpf's and the verifier's log is named)."""

    def __init__(self, settings: dict, hooks: tuple[Hook, ...], levels: int, extra: tuple[str, ...] = (),
                 lru: bool = True, kernel: KernelHooks | None = None):
        self.levels = levels
        kernel = kernel or KernelHooks()
        self.choices: list[HookChoice] = [kernel.choose(h) for h in hooks]
        missing = [c for c in self.choices if c.program is None]
        if missing:
            c = missing[0]
            raise BpfError(f"the walk needs {c.hook.system}:{c.hook.event}: {c.reason}")
        self.lru = lru and kernel.tracefs_format("pagemap", "mm_lru_insertion") is not None
        self._settings = settings
        try:
            self._load(extra)
        except BpfError as exc:
            if not (self.lru and LRU_PROGRAM in exc.refused):
                raise
            # the struct page reads lose their vmemmap base; the walk itself still runs
            self.lru = False
            self.lru_refused = str(exc)
            self._load(extra)

    lru_refused = ""

    def _load(self, extra: tuple[str, ...]) -> None:
        wanted = {c.program for c in self.choices if c.program} | set(extra) | ({LRU_PROGRAM} if self.lru else set())
        t0 = time.monotonic()
        try:
            self.obj = BpfObject(object_path(OBJECT))
        except (BpfObjectMissing, LibbpfError) as exc:
            raise BpfError(str(exc)) from None
        self.walked = Walked()
        self.ring: RingBuffer | None = None
        try:
            self.obj.load_only(wanted)
            values = np.zeros(1, dtype=SETTINGS)
            for key, value in self._settings.items():
                values[0][key] = value
            self.obj.set_rodata(values.tobytes())
            self.obj.load()
            self._bss = self.obj.global_data(".bss")
            self.state = State.from_buffer(self._bss)
            self.ring = RingBuffer(self.obj.map("records"), self._record)
            for name in sorted(wanted):
                self.obj.attach(name)
        except LibbpfError as exc:
            refused = tuple(dict.fromkeys(m.group(1) for line in self.obj.log for m in [_REFUSED.search(line)] if m))
            self.close()
            which = f" (the program the kernel refused: {refused[0]}{_verifier_said(self.obj.log)})" if refused else ""
            raise BpfError(str(exc) + which, refused) from None
        self.load_ms = (time.monotonic() - t0) * 1000
        self.programs = sorted(wanted)

    def hooks_text(self) -> list[str]:
        """"EVENT: variant (why)" for each tracepoint hook."""
        out = [f"{c.hook.event}: {c.variant} ({c.reason})" for c in self.choices]
        if self.lru:
            out.append("mm_lru_insertion: tracepoint (vmemmap's base needs its pfn field)")
        return out

    def _record(self, data: bytes) -> None:
        kind = int.from_bytes(data[:4], "little")
        w = self.walked
        if kind in (REC_BEFORE, REC_AFTER, REC_AT_SYSCALL):
            rec = np.frombuffer(data[:WALK_READ.itemsize], dtype=WALK_READ)[0]
            if kind == REC_AT_SYSCALL:
                w.at_syscall.append(rec)
                return
            when = "before" if kind == REC_BEFORE else "after"
            w.raw[when] = rec
            w.reads[when] = walk_read(rec, when, self.levels)
            return
        ev = np.frombuffer(data[:WALK_EVENT.itemsize], dtype=WALK_EVENT)[0]
        if kind == REC_VMEMMAP:
            w.vmemmap = [int(x) for x in ev["v"][:4]]
        elif kind == REC_EXITED:
            w.exited = True
        else:
            w.events.append(ev)

    def poll(self, timeout_ms: int = 0) -> None:
        if self.ring is not None:
            self.ring.poll(timeout_ms)

    def describe(self) -> str:
        """What ran, for the evidence (BpfWalk.script): the object, its programs and each hook's variant."""
        return (f"{self.obj.path} (compiled CO-RE object, loaded through libbpf in {self.load_ms:.0f} ms); programs: "
                + ", ".join(self.programs) + "; hooks: " + "; ".join(self.hooks_text()))

    def lost_note(self) -> str:
        """The records lost (bpf_ringbuf_reserve found no room: counted in the kernel, state.lost), or ""."""
        lost = int(self.state.lost) if "state" in self.__dict__ else self.lost_at_close
        return f"{lost} records found the ring buffer full and were not written" if lost else ""

    lost_at_close = 0
    stage_at_close = STAGE_WAITING   # STAGE_DONE: the walk may have stopped the program (its SIGSTOP)

    def close(self) -> None:
        """Stop reading, detach and free the object (safe to call twice)."""
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        self.obj.detach()   # no program runs from here: the stage read next is the last one
        state = self.__dict__.pop("state", None)
        if state is not None:
            self.lost_at_close = int(state.lost)
            self.stage_at_close = int(state.stage)
            del state
        bss = self.__dict__.pop("_bss", None)
        if bss is not None:
            bss.release()   # the mapping of .bss can then be closed with the object
        self.obj.close()


def make_lru_insertions(rounds: int = 1) -> None:
    """Fault fresh pages of ours: the LRU batches they fill drain into LRU insertions (vmemmap's base).

    :returns: None; raises OSError only if 256 KiB cannot be mapped. Needs no root."""
    for _ in range(rounds):
        pages = mmap.mmap(-1, 64 * 4096)
        for i in range(0, 64 * 4096, 4096):
            pages[i] = 1
        pages.close()


def wait_for_vmemmap(obj: WalkObject, bound: float = 3.0) -> None:
    """An LRU insertion anywhere gives vmemmap's base; our own faults make some within a batch or two.

    :returns: None after at most ``bound`` seconds, with or without vmemmap's base (``obj.state.vmemmap`` says).
    :raises LibbpfError: polling the object's ring buffer failed."""
    waited = time.monotonic()
    while not obj.state.vmemmap and time.monotonic() - waited < bound:
        make_lru_insertions()
        obj.poll(0)
    obj.poll(0)


class BpfTracer:
    """The walk of one page of one process (the exercise's journey), from load to its two reads.

    The object is loaded while the target is held before its exec, the page and the PGD still unknown
    (state.page 0: nothing is read): loading overlaps the start, and nothing needs waiting for. arm_mmap()
    lets the fault-path programs follow the next VMA-making call; set_page() names the page and the PGD once
    the exec's PGD allocation has been seen and the program has mapped the page."""

    def __init__(self, pid: int, levels: int, fault_probes: tuple[str, ...] = (), kernel: KernelHooks | None = None):
        self.levels = levels
        self.pgd_physical = 0
        settings = {"target_tgid": pid, "levels": levels, "mode": MODE_PAGE, "fault_probes": int(bool(fault_probes))}
        self.obj = WalkObject(settings, (FAULT_HOOK, SYSCALL_HOOK), levels, fault_probes, kernel=kernel)
        self.obj.state.mmap_stage = MMAP_NOT_YET

    def arm_mmap(self) -> None:
        self.obj.state.mmap_stage = 0

    def set_page(self, address: int, pgd_physical: int) -> None:
        self.pgd_physical = pgd_physical
        self.obj.state.pgd_physical = pgd_physical    # before the page: a page names a walk to do
        self.obj.state.page = address & ~0xFFF

    def arm(self) -> None:
        """Attached already (libbpf attaches synchronously): only vmemmap's base is waited for, a few ms."""
        wait_for_vmemmap(self.obj)

    def result(self) -> BpfWalk:
        self.obj.poll(0)
        reads = self.obj.walked.reads
        if "before" not in reads:
            raise BpfError("the walk saw no fault on the page" + (f" ({self.obj.lost_note()})" if self.obj.lost_note()
                                                                  else ""))
        base = int(self.obj.walked.raw["before"]["direct_map_base"])
        if base & ((1 << 30) - 1):
            raise BpfError(f"derived direct-map base 0x{base:x} is not 1 GiB aligned: the PGD allocation "
                           "seen was not this mm's PGD")
        walk = BpfWalk(base, self.pgd_physical, dict(reads), self.obj.describe(), self.obj.lost_note())
        if self.obj.walked.vmemmap:
            walk.vmemmap_base, walk.vmemmap_folio, walk.vmemmap_pfn, walk.struct_page_size = self.obj.walked.vmemmap
        walk.kaslr_on, walk.kaslr_how = kaslr_seen()
        return walk

    def stop(self) -> None:
        self.obj.close()


# A fault with no VMA this little below mm->start_stack is taken as stack growth (expand_stack), elsewhere as SIGSEGV.
STACK_REACH = 8 << 20


def entries_at_syscall(pid: int, pages: list[int], direct_map_base: int, levels: int, syscall_nr: int,
                       poke: Callable[[], None], timeout: float = 120.0) -> dict[int, dict[str, int]]:
    """The raw entries of each page of `pid` (at most 8), read when it next enters system call `syscall_nr`.

    direct_map_base: the kernel's map of physical memory (x86's page_offset_base, derived by a bpf-tier
    journey; arm64's linear-map offset), fixed for the boot. poke: makes the target enter that system call;
    it is called once the walk is attached. The compiled walk (MODE_SYSCALL) reads `levels` levels and stops
    below a non-present or huge entry, as the journey's does (arm64's: capture/arm64_fault.py). Raises BpfError.
    """
    if len(pages) > WALK_RANGES:
        raise BpfError(f"the walk reads at most {WALK_RANGES} pages at a system call, not {len(pages)}")
    values = {"target_tgid": pid, "levels": levels, "mode": MODE_SYSCALL, "direct_map_base": direct_map_base,
              "syscall_nr": syscall_nr, "nranges": len(pages), "range_lo": pages + [0] * (WALK_RANGES - len(pages))}
    obj = WalkObject(values, (SYSCALL_HOOK,), levels, lru=False)
    try:
        poke()
        deadline = time.monotonic() + timeout
        while len(obj.walked.at_syscall) < len(pages):
            if time.monotonic() > deadline:
                raise BpfError(f"the target did not enter system call {syscall_nr} within {timeout:.0f} s")
            obj.poll(50)
    finally:
        obj.close()
    names = LEVEL_NAMES[levels]
    entries: dict[int, dict[str, int]] = {}
    for rec in obj.walked.at_syscall:
        entries[int(rec["address"])] = {names[i]: int(rec["entry"][i]) for i in range(int(rec["levels_read"]))}
    return entries


def walk_check(root: bool) -> tuple[bool, str]:
    """For the doctor: whether the journey's compiled walk loads here, the hook variant each event takes, and
    which fault-path variant the journey would take (fentry, else kprobes), found by loading each (as root).
    (True, detail) when the walk itself loads; the fault path is a detail (the journey names it when missing).

    Without root it loads nothing and says so: (False, the fix). Never raises: every failure is its detail."""
    from .kprobes import kprobe_support
    from .libbpf import lib
    try:
        lib()
        object_path(OBJECT)
    except (LibbpfError, BpfObjectMissing) as exc:
        return False, str(exc)
    if not root:
        return False, "libbpf.so.1 and the walk's object are here; loading it needs root"
    from ..kernel import facts
    levels, _why = facts.paging_levels()
    kernel = KernelHooks()
    try:
        walk = BpfTracer(os.getpid(), levels, kernel=kernel)
    except BpfError as exc:
        return False, str(exc)
    hooks = "; ".join(walk.obj.hooks_text())
    walk.stop()
    tried = []
    kprobes, kprobe_why = kprobe_support()
    for variant, programs in (("fentry", ("hmf_fentry", "hmf_fexit")), ("kprobe", ("hmf_kprobe", "hmf_kretprobe"))):
        if variant == "kprobe" and not kprobes:
            tried.append(f"kprobe: {kprobe_why}")
            continue
        try:
            BpfTracer(os.getpid(), levels, programs, kernel=kernel).stop()
        except BpfError as exc:
            code = re.search(r"\(([A-Z0-9]+: [^)]*)\)", str(exc))
            tried.append(f"{variant}: the kernel refused it ({code.group(1) if code else exc})")
            continue
        path = f"handle_mm_fault by {variant}" + (f" ({'; '.join(tried)})" if tried else " (BPF trampolines)")
        break
    else:
        path = "handle_mm_fault not followed: " + "; ".join(tried)
    return True, f"libbpf.so.1 and the walk's object load here; hooks: {hooks}; fault path: {path}"
