"""The live journey on arm64: one anonymous write fault of the exercise program, seen from the inside by
a compiled BPF program (capture/bpf/arm64_walk.bpf.c, loaded through libbpf: nothing is compiled here).

What arm64 kernels let us see (Debian's 6.1 and 6.12): there is no exceptions:page_fault_user
tracepoint, and do_mem_abort, do_translation_fault and do_page_fault are off limits to kprobes. So the
fault is met at handle_mm_fault, which gets the address, the fault flags, the VMA and the saved user
registers (whose PC is the faulting instruction); its kernel stack shows the arm64 path that led there
(el0_da → do_mem_abort → do_translation_fault → do_page_fault). handle_mm_fault is hooked with fentry/fexit
(BPF trampolines: a call, no breakpoint) where the kernel attaches them (6.12), else with kprobes (6.1,
whose arm64 build has no trampolines for kernel functions); the evidence's `hooks` says which and why.
ESR_EL1 is not kept anywhere a probe can reach for a fault that is handled, so the journey derives it
from the flags and the walk, and says so.

The walk reads every level's descriptor through the kernel's linear map. Its offset (PAGE_OFFSET -
PHYS_OFFSET) is PAGE_OFFSET − memstart_addr where kallsyms has memstart_addr (CONFIG_KALLSYMS_ALL, as
Debian's 6.12); else (Debian's 6.1) it is derived the way the x86 direct-map base is: a PGD page is
allocated (pgd_alloc → __get_free_page, seen by mm_page_alloc with its PFN) and returned as a linear-map
address, so offset = returned address − PFN × page size. The tool forks to make pgd_alloc run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import __version__
from ..decode.arm64_address import lpa2_in_use, split_arm64_address
from ..decode.bits import DecodeError
from ..evidence import Arm64FaultEvidence, Arm64WalkRead, ExerciseOptions
from ..kernel import facts
from ..kernel.kallsyms import KernelSymbols
from . import procfs
from .bpf import BpfObjectMissing, Hook, KernelHooks, object_path
from .bpf_walk import BpfError
from .exercise import ExerciseProcess, build_program
from .libbpf import BpfObject, LibbpfError, RingBuffer

OUTPUT_ADDRESS_MASK = 0x0000_FFFF_FFFF_F000   # OA bits 47..12 (48-bit physical addresses)
WALK_LEVELS, WALK_PAGES, STACK_DEPTH = 5, 4, 32

# The Python mirror of arm64_walk.h (tests/test_arm64_walk_bpf.py holds it to the object's BTF).
SETTINGS = np.dtype([("target_tgid", "<u4"), ("levels", "<u4"), ("fault_page", "<u8"), ("page_mask", "<u8"),
                     ("page_size", "<u8"), ("table_mask", "<u8"), ("page_offset", "<u8"), ("linear_offset", "<u8"),
                     ("syscall_nr", "<i8"), ("npages", "<u4"), ("_pad", "<u4"), ("pages", "<u8", (WALK_PAGES,)),
                     ("shift", "<u4", (WALK_LEVELS,)), ("_pad2", "<u4"), ("mask", "<u8", (WALK_LEVELS,))])
STATE = np.dtype([("state", "<u4"), ("fault_tid", "<u4"), ("fault_t0", "<u8"), ("linear", "<u8"), ("lost", "<u8")])
FAULT_EVENT = np.dtype([("kind", "<u4"), ("flags", "<u4"), ("address", "<u8"), ("pc", "<u8"), ("pstate", "<u8"),
                        ("vm_start", "<u8"), ("vm_end", "<u8"), ("vm_flags", "<u8"), ("vm_page_prot", "<u8"),
                        ("ktime_ns", "<u8"), ("stack_bytes", "<i8"), ("stack", "<u8", (STACK_DEPTH,))])
WALK_EVENT = np.dtype([("kind", "<u4"), ("nreads", "<u4"), ("page", "<u8"), ("pgd", "<u8"), ("linear_offset", "<u8"),
                       ("value", "<u8", (WALK_LEVELS,)), ("table", "<u8", (WALK_LEVELS,))])
ALLOC_EVENT = np.dtype([("kind", "<u4"), ("order", "<u4"), ("pfn", "<u8"), ("gfp_flags", "<u8"),
                        ("stack_bytes", "<i8"), ("stack", "<u8", (STACK_DEPTH,))])
RETURN_EVENT = np.dtype([("kind", "<u4"), ("retval", "<u4"), ("duration_ns", "<u8")])
LINEAR_EVENT = np.dtype([("kind", "<u4"), ("how", "<u4"), ("offset", "<u8"), ("memstart_or_address", "<u8"),
                         ("pfn", "<u8")])
EV_FAULT, EV_BEFORE, EV_ALLOC, EV_RETURN, EV_AFTER, EV_LINEAR = range(1, 7)
RECORDS = {EV_FAULT: FAULT_EVENT, EV_BEFORE: WALK_EVENT, EV_ALLOC: ALLOC_EVENT, EV_RETURN: RETURN_EVENT,
           EV_AFTER: WALK_EVENT, EV_LINEAR: LINEAR_EVENT}
LINEAR_MEMSTART, LINEAR_PGD_ALLOC = 1, 2

# handle_mm_fault and pgd_alloc: (entry, return) programs of each kind, the cheaper kind first
FUNCTION_KINDS = ("fentry", "kprobe")
FAULT_PROGRAMS = {"fentry": ("fault_fentry", "fault_fexit"), "kprobe": ("fault_kprobe", "fault_kretprobe")}
PGD_PROGRAMS = {"fentry": ("pgd_fentry", "pgd_fexit"), "kprobe": ("pgd_kprobe", "pgd_kretprobe")}
SYS_ENTER = Hook("raw_syscalls", "sys_enter", "sys_enter_btf", "sys_enter_tp")
ALLOC_PROGRAM = "alloc_tp"
PGD_ALLOC_MISSING = ("no pgd_alloc allocated a page (a PGD smaller than a page comes from a slab), and this kernel's "
                     "kallsyms lacks memstart_addr: the linear-map offset cannot be derived")


def walk_settings(pid: int, va_bits: int, page_size: int, lpa2: bool, *, fault_page: int = 0,
                  pages: tuple[int, ...] = (), syscall_nr: int = -1, page_offset: int | None = None,
                  linear_offset: int | None = None) -> bytes:
    """arm64_walk's settings: the target, the walk's shape (each level's shift and width, from the same split
    the journey shows), the fault page or the pages to walk at `syscall_nr`, and how the linear offset is
    known (given, PAGE_OFFSET for memstart_addr, or neither: from a pgd_alloc).

    :returns: the settings' bytes, for the object's .rodata; raises nothing (the shape was checked by the split)."""
    split = split_arm64_address(fault_page or pages[0], va_bits, page_size)
    s = np.zeros(1, dtype=SETTINGS)
    s["target_tgid"], s["levels"] = pid, len(split.indices)
    s["fault_page"], s["page_mask"], s["page_size"] = fault_page, ~(page_size - 1) & (2**64 - 1), page_size
    # with LPA2 a table's address runs to bit 49 (bits 51..50 sit in bits 9..8, zero below 1 PiB of RAM)
    s["table_mask"] = ((1 << 50) - 1 if lpa2 else OUTPUT_ADDRESS_MASK) & ~(page_size - 1)
    s["page_offset"], s["linear_offset"] = page_offset or 0, linear_offset or 0
    s["syscall_nr"], s["npages"] = syscall_nr, len(pages)
    s["pages"][0, :len(pages)] = pages
    for i, index in enumerate(split.indices):
        s["shift"][0, i], s["mask"][0, i] = index.shift, (1 << (index.high_bit - index.shift + 1)) - 1
    return s.tobytes()


@dataclass
class WalkSession:
    """arm64_walk loaded and attached, with the records its ring buffer handed over so far, in order."""

    obj: BpfObject
    hooks: list[str]
    records: list[tuple[int, np.void]] = field(default_factory=list)
    ring: RingBuffer | None = None

    def _on_record(self, data: bytes) -> None:
        kind = int.from_bytes(data[:4], "little")
        dtype = RECORDS.get(kind)
        if dtype is None or len(data) < dtype.itemsize:
            raise BpfError(f"arm64_walk handed over a record of kind {kind} and {len(data)} bytes: the object is "
                           "older than the code; fix: bash scripts/build-bpf.sh --force")
        self.records.append((kind, np.frombuffer(data[:dtype.itemsize], dtype=dtype)[0]))

    def poll(self, timeout_ms: int = 0) -> None:
        if self.ring is not None:
            self.ring.poll(timeout_ms)

    def wait_for(self, kind: int, timeout: float, each_round: Callable[[], None] | None = None) -> bool:
        """Poll until a record of `kind` has come (True), running `each_round` between polls, for at most `timeout` s."""
        deadline = time.monotonic() + timeout
        while not any(k == kind for k, _ in self.records):
            if time.monotonic() > deadline:
                return False
            if each_round:
                each_round()
            self.poll(100)
        return True

    def lost(self) -> int:
        """Records the ring buffer had no room for (the program's state, its section .data.state)."""
        return int(np.frombuffer(self.obj.global_data(".data.state")[:STATE.itemsize], dtype=STATE)[0]["lost"])

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        self.obj.close()


def open_walk(settings: bytes, fault: bool, pgd_alloc: bool, kernel: KernelHooks | None = None) -> WalkSession:
    """Open, set up, load and attach arm64_walk: sys_enter (tp_btf, else the classic tracepoint) and, for a
    fault, mm_page_alloc and handle_mm_fault (and pgd_alloc where the linear offset must come from it) with
    fentry/fexit, else kprobes. Attached when it returns: no probe needs to be seen firing first.

    :returns: the session (the caller closes it), its hooks named with why each was chosen.
    :raises BpfError: one line with the reason and the fix (the object not built, libbpf missing, not root,
        the kernel refused every kind of hook; a refused load names the file holding libbpf's log)."""
    kernel = kernel or KernelHooks()
    if os.geteuid() != 0:
        raise BpfError("the arm64 capture loads BPF programs (CAP_BPF and CAP_PERFMON); fix: run it as root (sudo)")
    try:
        path = object_path("arm64_walk")
        BpfObject(path).close()     # libbpf present, the object readable and safe: else one error, not one per kind
    except (BpfObjectMissing, LibbpfError) as exc:
        raise BpfError(str(exc)) from None
    choice = kernel.choose(SYS_ENTER)
    if choice.program is None:
        raise BpfError(f"the walk after the fault needs raw_syscalls:sys_enter: {choice.reason}")
    hooks = [f"sys_enter: {choice.variant} ({choice.reason})"]
    if fault:
        if kernel.tracefs_format("kmem", "mm_page_alloc") is None:
            raise BpfError("the fault's allocation needs the tracepoint kmem:mm_page_alloc, which tracefs lacks")
        hooks.append("mm_page_alloc: tracepoint (its record carries the PFN; tp_btf hands over a struct page *)")
    refused: list[str] = []
    full: list[str] = []      # with libbpf's last warning and the file holding its log, for the error
    kinds = FUNCTION_KINDS if fault or pgd_alloc else ("none",)
    for kind in kinds:
        wanted = {choice.program or ""}
        if fault:
            wanted |= {ALLOC_PROGRAM, *FAULT_PROGRAMS[kind]}
            if pgd_alloc:
                wanted |= set(PGD_PROGRAMS[kind])
        session = None
        try:
            obj = BpfObject(path)
            session = WalkSession(obj, [])
            obj.load_only(wanted)
            obj.set_rodata(settings)
            obj.load()
            # the returns before the entries: every entry seen has its return seen
            order = [choice.program or ""] + ([ALLOC_PROGRAM] if fault else [])
            if fault:
                order += ([PGD_PROGRAMS[kind][1], PGD_PROGRAMS[kind][0]] if pgd_alloc else []) + \
                         [FAULT_PROGRAMS[kind][1], FAULT_PROGRAMS[kind][0]]
            for name in order:
                obj.attach(name)
            session.ring = RingBuffer(obj.map("events"), session._on_record)
        except LibbpfError as exc:
            if session is not None:
                session.close()
            # the kernel's reason, short (the log file it names is kept for the whole error below). 524 is the
            # kernel's ENOTSUPP, which strerror does not know: arm64 6.1 loads fentry programs but cannot attach
            # a trampoline to a kernel function (no ftrace direct calls there)
            why = str(exc).split(": warning: ")[0].replace(
                "524: Unknown error 524", "ENOTSUPP: no BPF trampolines for kernel functions here")
            # the program the kernel refused says more than libbpf's last line ("failed to load object")
            program = next((line.split("libbpf: ", 1)[-1] for line in obj.log if "BPF program load failed" in line), "")
            refused.append(f"{kind} refused: {why}" + (f" ({program})" if program else ""))
            full.append(f"{kind}: {exc}")
            continue
        if fault:
            why = ("BPF trampolines: a call, no breakpoint" if kind == "fentry" else
                   "; ".join(refused) if refused else "breakpoints")
            hooks.append(f"handle_mm_fault: {kind} ({why})")
            if pgd_alloc:
                hooks.append(f"pgd_alloc: {kind} (kallsyms lacks memstart_addr: the linear offset comes from a "
                             "pgd_alloc)")
        session.hooks = hooks
        return session
    if not fault:
        raise BpfError(f"the walk at a system call could not be loaded: {'; '.join(full)}")
    raise BpfError("the arm64 capture could not hook handle_mm_fault: " + "; ".join(full)
                   + "; fix: a kernel that allows BPF trampolines or kprobes (Debian's 6.1 and 6.12 do)")


def symbolize(stack: np.ndarray, stack_bytes: int, symbols: KernelSymbols) -> list[str]:
    """A kernel stack as `function+offset` lines (decimal offsets), innermost first;
    the BPF program's own frames and its trampoline's are left out (fentry's stack starts inside them).

    :returns: the lines (a frame not in ``symbols`` as its hex address); raises nothing. Without root kallsyms
        shows zeros: every frame is then an address."""
    out = []
    for address in stack[:max(stack_bytes, 0) // 8]:
        found = symbols.lookup(int(address)) if address else None
        if found is None:
            if address:
                out.append(f"0x{int(address):x}")
            continue
        name, offset = found
        if not out and name.startswith(("bpf_prog_", "bpf_trampoline_")):
            continue
        out.append(f"{name}+{offset}")
    return out


def apply_records(records: list[tuple[int, np.void]], ev: Arm64FaultEvidence, symbols: KernelSymbols) -> None:
    """Fill `ev` from arm64_walk's records (the allocations in the order they came, with their stacks).

    :returns: None; ``ev`` is filled in place. Raises nothing: a record of a kind it does not know is left out."""
    allocs: list[tuple[int, int, int, list[str]]] = []
    split = split_arm64_address(ev.mapping_start + ev.offset, ev.va_bits, ev.page_size)
    names = [i.level for i in split.indices]
    for kind, r in records:
        if kind == EV_LINEAR:
            ev.linear_offset = int(r["offset"])
            if int(r["how"]) == LINEAR_MEMSTART:
                ev.linear_how = (f"derived: PAGE_OFFSET − memstart_addr (read through its kallsyms address: "
                                 f"0x{int(r['memstart_or_address']):x}) = 0x{ev.linear_offset:x}, as __phys_to_virt() "
                                 "computes it")
            else:
                returned, pfn = int(r["memstart_or_address"]), int(r["pfn"])
                ev.linear_how = (f"derived: pgd_alloc returned 0x{returned:x} for the page of PFN 0x{pfn:x} "
                                 f"(kmem:mm_page_alloc inside it): linear offset = 0x{returned:x} - 0x{pfn:x} × "
                                 f"{ev.page_size} = 0x{ev.linear_offset:x}")
        elif kind == EV_FAULT:
            ev.address, ev.flags, ev.pc, ev.pstate = (int(r[n]) for n in ("address", "flags", "pc", "pstate"))
            ev.vma = {n: int(r[n]) for n in ("vm_start", "vm_end", "vm_flags", "vm_page_prot")}
            ev.kernel_stack = symbolize(r["stack"], int(r["stack_bytes"]), symbols)
        elif kind in (EV_BEFORE, EV_AFTER):
            ev.pgd_virtual = int(r["pgd"])
            reads = [Arm64WalkRead(names[i], int(r["value"][i]), int(r["table"][i]))
                     for i in range(min(int(r["nreads"]), len(names)))]
            if kind == EV_BEFORE:
                ev.walk_before = reads
            else:
                ev.walk_after = reads
        elif kind == EV_ALLOC:
            allocs.append((int(r["pfn"]), int(r["order"]), int(r["gfp_flags"]),
                           symbolize(r["stack"], int(r["stack_bytes"]), symbols)))
        elif kind == EV_RETURN:
            ev.retval, ev.duration_ns = int(r["retval"]), int(r["duration_ns"])
    # the data page is the movable allocation (GFP_HIGHUSER_MOVABLE); page tables are not movable
    data = [a for a in allocs if a[2] & 0x08] or allocs[-1:]
    if data:
        ev.alloc_pfn, ev.alloc_order, ev.alloc_gfp, ev.alloc_stack = data[0]


def _fork_once() -> None:
    """A child that exits at once: its new mm makes pgd_alloc run, which shows the linear map's offset."""
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)


def capture_arm64_fault(options: ExerciseOptions = ExerciseOptions(), progress: Callable[[str], None] | None = None,
                        bound: float = 600.0) -> Arm64FaultEvidence:
    """Run the exercise program and capture its write fault, on an arm64 machine, as root.

    Raises BpfError (the object not built, a hook refused, nothing seen) with the reason and fix.
    """
    try:
        here = facts.machine_arch()
    except DecodeError as exc:
        raise BpfError(f"the arm64 capture runs on arm64 machines: {exc}") from None
    if here.syndrome_traced:    # the trap has a tracepoint here: the live journey follows it, not this capture
        raise BpfError(f"the arm64 capture runs on arm64 machines; this one is {os.uname().machine}")
    va_bits, page_size, how = facts.arm64_translation()
    program = build_program(progress)
    ev = Arm64FaultEvidence(facts.kernel_release(), facts.kernel_version(), os.uname().machine, va_bits, page_size,
                            how, 0, 0, options.size, options.offset, " ".join(program.argv_prefix), program.how)
    target = ExerciseProcess(program, options)
    walk = perf = None
    try:
        target.release()
        ev.pid = target.pid
        target.wait_phase()                       # ready
        target.advance()
        mapped = target.wait_phase()              # mapped: the VMA exists, nothing touched yet
        ev.mapping_start = int(mapped.fields["vaddr"], 16)
        page = (ev.mapping_start + options.offset) & ~(page_size - 1)
        ev.lpa2 = lpa2_in_use(va_bits, page_size)
        page_offset = _page_offset()
        if progress:
            progress("loading the arm64 walk program")
        t0 = time.monotonic()
        walk = open_walk(walk_settings(ev.pid, va_bits, page_size, ev.lpa2, fault_page=page, page_offset=page_offset),
                         fault=True, pgd_alloc=page_offset is None)
        ev.hooks = walk.hooks + [f"loaded and attached in {(time.monotonic() - t0) * 1000:.0f} ms"]
        if page_offset is None and not walk.wait_for(EV_LINEAR, min(bound, 30.0), each_round=_fork_once):
            raise BpfError(PGD_ALLOC_MISSING)
        perf = _open_fault_event(ev)
        target.advance()                          # the write: the fault
        touched = target.wait_phase()             # its line is a write(2): the walk after ran at its entry
        symbols = KernelSymbols.load()            # while the program is loaded: its frames are named too
        if perf is not None:
            _read_fault_event(ev, perf, page_size, symbols)
        walk.wait_for(EV_AFTER, 10.0)
        walk.poll(0)
        apply_records(walk.records, ev, symbols)
        if walk.lost():
            ev.unavailable["records"] = f"{walk.lost()} records found the ring buffer full and were not kept"
        ev.readback = touched.fields.get("readback", "")
        address = ev.mapping_start + options.offset
        ev.pagemap = procfs.pagemap_entry(ev.pid, address)
        pfn = ev.pagemap & ((1 << 55) - 1)
        try:
            ev.kpageflags = procfs.read_kpageflags(pfn) if pfn else None
        except OSError as exc:
            ev.unavailable["kpageflags"] = str(exc)
        ev.maps = procfs.read_maps(ev.pid)
        if not ev.address:
            raise BpfError(f"arm64_walk saw no fault on the page 0x{page:x} ({len(walk.records)} records)")
        _read_instruction(ev)
        flag_table = facts.fault_flag_values()
        ev.fault_flag_table, ev.fault_flag_source = dict(flag_table.values), flag_table.source
        gfp = facts.gfp_bits()
        ev.gfp_table, ev.gfp_source = dict(gfp.values), gfp.source + " (bit positions are the same on arm64 while " \
            "CONFIG_KASAN_HW_TAGS is off, as in distribution kernels)"
        ev.kernel_enums, _ = facts.kernel_enums()
        ev.captured_at, ev.host = facts.capture_origin()
        ev.tool_version = __version__
        target.finish()
        return ev
    finally:
        if perf is not None:
            perf.close()             # closing twice is harmless: a closed session holds no descriptors
        if walk is not None:
            walk.close()
        if target.target.poll():
            target.kill()


def walk_at_syscall(pid: int, pages: list[int], linear_offset: int, syscall_nr: int, poke: Callable[[], None],
                    timeout: float = 120.0) -> dict[int, dict[str, int]]:
    """The descriptors of each of `pages` (at most WALK_PAGES) of `pid`, read when it next enters system call
    `syscall_nr`: page → level name → descriptor (down to the first that is not a valid table).

    linear_offset: the linear map's (an arm64 journey derives it; fixed for the boot). poke: makes the target
    enter that system call; it is called once the program is attached. Raises BpfError."""
    va_bits, page_size, _how = facts.arm64_translation()
    lpa2 = lpa2_in_use(va_bits, page_size)
    settings = walk_settings(pid, va_bits, page_size, lpa2, pages=tuple(pages[:WALK_PAGES]), syscall_nr=syscall_nr,
                             linear_offset=linear_offset)
    walk = open_walk(settings, fault=False, pgd_alloc=False)
    try:
        poke()
        if not walk.wait_for(EV_AFTER, timeout):
            raise BpfError(f"the target did not enter system call {syscall_nr} within {timeout:.0f} s")
        time.sleep(0.05)
        walk.poll(0)
    finally:
        walk.close()
    entries: dict[int, dict[str, int]] = {}
    for kind, r in walk.records:
        if kind != EV_AFTER:
            continue
        names = [i.level for i in split_arm64_address(int(r["page"]), va_bits, page_size).indices]
        entries[int(r["page"])] = {names[i]: int(r["value"][i]) for i in range(min(int(r["nreads"]), len(names)))}
    return entries


def _page_offset() -> int | None:
    """PAGE_OFFSET (−2^CONFIG_ARM64_VA_BITS, the configured size, whatever runs) when memstart_addr can be read
    through kallsyms; None otherwise (the program then derives the offset from a pgd_alloc)."""
    try:
        with open("/proc/kallsyms") as f:
            found = any(line.rstrip().endswith(" memstart_addr") for line in f)
    except OSError:
        return None
    configured = facts.kernel_config_value("CONFIG_ARM64_VA_BITS")
    if not found or not configured or not configured.isdigit():
        return None
    return (1 << 64) - (1 << int(configured))


def _open_fault_event(ev: Arm64FaultEvidence):
    """The perf software page-fault event on the target, with call chains; None (said) where it cannot open."""
    from .perf_event import (
        PERF_COUNT_SW_PAGE_FAULTS,
        PERF_TYPE_SOFTWARE,
        SAMPLE_ADDR,
        SAMPLE_CPU,
        SAMPLE_IP,
        SAMPLE_TID,
        SAMPLE_TIME,
        EventSpec,
        PerfError,
        PerfSession,
    )
    spec = EventSpec("page-faults", PERF_TYPE_SOFTWARE, PERF_COUNT_SW_PAGE_FAULTS,
                     SAMPLE_IP | SAMPLE_TID | SAMPLE_TIME | SAMPLE_ADDR | SAMPLE_CPU)
    try:
        session = PerfSession([spec], ev.pid, enable_on_exec=False, callchain=True, data_pages=16, monotonic_clock=True)
        session.enable()
        return session
    except PerfError as exc:
        ev.unavailable["perf"] = f"the software page-fault event could not be opened: {exc}"
        return None


def _read_fault_event(ev: Arm64FaultEvidence, session, page_size: int, symbols: KernelSymbols) -> None:
    """The sample of the fault on the written page: its address, IP and both call chains."""
    from .journey_capture import decode_trace_events
    from .perf_event import SAMPLE_ADDR, SAMPLE_CALLCHAIN, SAMPLE_CPU, SAMPLE_IP, SAMPLE_TID, SAMPLE_TIME
    try:
        session.disable()
        data = b"".join(session.drain())
    finally:
        session.close()
    sample_type = SAMPLE_IP | SAMPLE_TID | SAMPLE_TIME | SAMPLE_ADDR | SAMPLE_CPU | SAMPLE_CALLCHAIN
    events, _lost = decode_trace_events(data, sample_type, {}, symbols)
    page = (ev.mapping_start + ev.offset) & ~(page_size - 1)
    mine = [e for e in events if e.fields.get("address", 0) & ~(page_size - 1) == page]
    if not mine:
        ev.unavailable["perf"] = f"no page-fault sample on the page among {len(events)} samples"
        return
    ev.perf_address, ev.perf_ip = mine[0].fields["address"], mine[0].fields["ip"]
    ev.perf_kernel_chain = [name for _address, name in mine[0].kernel_chain]
    ev.perf_user_chain = list(mine[0].user_chain)


def _read_instruction(ev: Arm64FaultEvidence) -> None:
    """The 4 bytes at PC from /proc/PID/mem (the program is paused after the fault), and the mapping holding PC."""
    holder = next((m for m in ev.maps if m.start <= ev.pc < m.end), None)
    ev.instruction_path = (holder.path or "[anonymous]") if holder else ""
    try:
        fd = os.open(f"/proc/{ev.pid}/mem", os.O_RDONLY)
        try:
            ev.instruction = os.pread(fd, 4, ev.pc).hex()
        finally:
            os.close(fd)
    except OSError as exc:
        ev.unavailable["instruction"] = f"cannot read /proc/{ev.pid}/mem at 0x{ev.pc:x}: {exc.strerror}"
