"""From live evidence to the journey's steps: every value observed, derived or modelled, and labelled."""

from __future__ import annotations

from functools import partial

from ..decode.address import split_virtual_address
from ..decode.error_code import decode_error_code
from ..decode.fault_flags import decode_fault_flags, derive_fault_flags
from ..decode.gfp import decode_gfp
from ..decode.pagemap import PM_PFN_MASK, decode_kpageflags, decode_pagemap_entry
from ..decode.pte import decode_pte, derive_anonymous_pte, vm_page_prot
from ..decode.vm_flags import decode_vm_flags, vm_flags_from_smaps
from ..evidence import JourneyEvidence, MapsLine, ProgramFaultEvidence, TraceEvent
from ..model.maple_tree import search as maple_search
from .catalogue import STEP_DEFS, Filler, Missing, assemble
from .folio import folio_values
from .steps import (
    Area,
    Journey,
    PageWalk,
    Provenance,
    Step,
    TimelineEntry,
    Value,
    WalkLevel,
    derived,
    modelled,
    observed,
    timeline_from,
    unavailable,
)
from .vocabulary import Source, Stage, StepKey, seven_ws
from .walk_source import evidence_walk_source

GATE_AREA = "[vsyscall]"    # get_gate_vma(): shown in maps, not in the mm's VMA tree
MMAP_LOCK_EVENT = "mmap_lock:mmap_lock_acquire_returned"
FIX_ROOT = "fix: run as root (sudo) for tracepoints, PFNs and kpageflags"
FIX_BPF = "fix: as root, bash scripts/setup.sh installs libbpf and builds the compiled walk (the bpf tier)"
PROT_NAMES = ((1, "PROT_READ"), (2, "PROT_WRITE"), (4, "PROT_EXEC"))
MAP_NAMES = ((0x01, "MAP_SHARED"), (0x02, "MAP_PRIVATE"), (0x10, "MAP_FIXED"), (0x20, "MAP_ANONYMOUS"),
             (0x100, "MAP_GROWSDOWN"), (0x2000, "MAP_LOCKED"), (0x4000, "MAP_NORESERVE"), (0x8000, "MAP_POPULATE"))
DATA_PAGE_FUNCS = ("do_anonymous_page", "vma_alloc_folio", "alloc_anon_folio")
TABLE_FUNCS = {"__pte_alloc": "PTE table", "pte_alloc_one": "PTE table", "__pmd_alloc": "PMD table",
               "__pud_alloc": "PUD table", "__p4d_alloc": "P4D table"}


def _names(value: int, table) -> str:
    parts = [name for bit, name in table if value & bit]
    return "|".join(parts) or "0"


def _funcs(e: TraceEvent) -> list[str]:
    """The chain's function names, innermost first, for matching: since Linux 6.10 the allocators are
    renamed *_noprof behind the alloc_hooks() macros (vma_alloc_folio_noprof), so that suffix is dropped
    here; the chain shown keeps the names as the kernel has them."""
    return [f.split("+")[0].removesuffix("_noprof") for _a, f in e.kernel_chain]


def _chain_text(e: TraceEvent) -> str:
    return " → ".join(f.split("+")[0] for _a, f in reversed(e.kernel_chain))


def _between(ev: JourneyEvidence, name: str, start: str | None, end: str | None) -> list[TraceEvent]:
    lo = ev.snapshots[start].time_ns if start and start in ev.snapshots else 0
    hi = ev.snapshots[end].time_ns if end and end in ev.snapshots else 1 << 63
    return [e for e in ev.events if e.name == name and lo <= e.time_ns <= hi and e.pid == ev.pid]


def _src(ev: JourneyEvidence, name: str) -> str:
    return ev.event_sources.get(name, name)


def _vma_at(maps: list[MapsLine], address: int) -> MapsLine | None:
    return next((m for m in maps if m.start <= address < m.end), None)


def _maps_line(m: MapsLine) -> str:
    return f"{m.start:x}-{m.end:x} {m.perms} {m.offset:08x} {m.dev} {m.inode} {m.path}".rstrip()


def _vaddr(ev: JourneyEvidence) -> int:
    """The mapping's address; every stage from 'mapped' on has it (a saved file without it is inconsistent)."""
    if ev.vaddr is None:
        raise ValueError(f"the evidence reached phase {ev.stage!r} without the mapping's address")
    return ev.vaddr


def _fault_address(ev: JourneyEvidence) -> int:
    return _vaddr(ev) + ev.options.offset


def _us(ev: JourneyEvidence, t_ns: int) -> str:
    return f"{(t_ns - ev.spawned_ns) / 1000:.1f} µs after the spawn"


def _time_since_spawn(label: str, ev: JourneyEvidence, t_ns: int, src: str):
    """A time relative to the spawn: the event's CLOCK_MONOTONIC stamp (observed) less pagefault's own
    clock read at fork (observed): derived, with both inputs named."""
    return derived(label, _us(ev, t_ns), f"{src} timestamp − pagefault's CLOCK_MONOTONIC at the spawn",
                   [f"{t_ns} ns (the event, observed) − {ev.spawned_ns} ns (the spawn, pagefault's clock, observed) "
                    f"= {t_ns - ev.spawned_ns} ns"])


# --- the facts several steps share -------------------------------------------------------------------------

class Facts:
    """The events and readings the steps refer to, picked once."""

    def allocs_of(self, fault: TraceEvent, allocs: list[TraceEvent]) -> list[TraceEvent]:
        """The allocations after this fault and before the write's next fault (or the end of the phase)."""
        later = sorted(e.time_ns for e in [self.fault, *self.later_faults] if e is not None and e.time_ns > fault.time_ns)
        end = later[0] if later else 1 << 63
        return [a for a in allocs if fault.time_ns <= a.time_ns < end]

    def _mmap_lock_during_fault(self, write_faults: list[TraceEvent]) -> tuple[tuple[int, int] | None, list[TraceEvent]]:
        """mmap_lock acquisitions by the target from the fault's entry to its next fault (or the touched phase)."""
        touched = self.ev.snapshots.get(Stage.TOUCHED)
        if self.fault is None or touched is None:
            return None, []
        later = [e.time_ns for e in write_faults if e.time_ns > self.fault.time_ns]
        end = min(later) if later else touched.time_ns
        return (self.fault.time_ns, end), [e for e in self.ev.events if e.name == MMAP_LOCK_EVENT
                                           and e.pid == self.ev.pid and self.fault.time_ns <= e.time_ns < end]

    def __init__(self, ev: JourneyEvidence):
        self.ev = ev
        page = (ev.fault_address or 0) & ~0xFFF
        fault_name = "exceptions:page_fault_user" if ev.tier in ("bpf", "perf") else "page-faults"
        self.fault_event_name = fault_name
        write_faults = _between(ev, fault_name, Stage.MAPPED, Stage.TOUCHED)
        faults = [e for e in write_faults if page <= e.fields.get("address", -1) < page + 4096]
        self.fault = faults[0] if faults else None
        self.fault_count_on_page = len(faults)
        # A write that straddles a page boundary takes one fault per page; each fault's allocations are
        # those between it and the next one (a fault's allocations all happen inside it).
        self.later_faults = [next(e for e in write_faults if p <= e.fields.get("address", -1) < p + 4096)
                             for p in ev.written_pages()[1:]
                             if any(p <= e.fields.get("address", -1) < p + 4096 for e in write_faults)]
        self.lock_window, self.locks_during_fault = self._mmap_lock_during_fault(write_faults)
        all_allocs = _between(ev, "kmem:mm_page_alloc", Stage.MAPPED, Stage.TOUCHED)
        self.allocs = self.allocs_of(self.fault, all_allocs) if self.fault and self.later_faults else all_allocs
        self.later_allocs = {id(e): self.allocs_of(e, all_allocs) for e in self.later_faults}
        touched = ev.snapshots.get(Stage.TOUCHED)
        entry = touched.pagemap if touched else None
        self.pagemap_pfn = entry & PM_PFN_MASK if entry and entry >> 63 else None
        self.data_alloc = next((a for a in self.allocs if set(_funcs(a)) & set(DATA_PAGE_FUNCS)), None)
        if self.data_alloc is None and self.pagemap_pfn:
            self.data_alloc = next((a for a in self.allocs if a.fields.get("pfn") == self.pagemap_pfn), None)
        self.table_allocs = [a for a in self.allocs if a is not self.data_alloc]
        vma = _vma_at(touched.maps, ev.fault_address) if touched and ev.fault_address else None
        self.vma = vma
        snap = ev.snapshots.get(Stage.TOUCHED) or ev.snapshots.get(Stage.MAPPED)
        self.vm_flags_mnemonics: list[str] = (snap.vm_flags_mnemonics or []) if snap else []
        self.vm_flags: int | None = None
        self.vm_flags_lines: list[str] = []
        self.vm_flags_unknown: list[str] = []
        if self.vm_flags_mnemonics:
            self.vm_flags, self.vm_flags_lines, self.vm_flags_unknown = vm_flags_from_smaps(
                self.vm_flags_mnemonics, ev.kernel_version)
        self.pgd_alloc = next((e for e in ev.events if e.name == "kmem:mm_page_alloc"
                               and "pgd_alloc" in _funcs(e) and e.pid == ev.pid), None)


# --- steps -----------------------------------------------------------------------------------------------------

def step_process(s: Step, ev: JourneyEvidence, f: Facts) -> None:
    snap = ev.snapshots[Stage.READY]
    s.values.append(observed("PID", ev.pid, "the return value of fork() in pagefault, which started the program",
                             display=str(ev.pid)))
    execs = [e for e in ev.events if e.name == "sched:sched_process_exec" and e.pid == ev.pid]
    if execs:
        s.values.append(_time_since_spawn("exec", ev, execs[0].time_ns, _src(ev, "sched:sched_process_exec")))
    else:
        s.values.append(unavailable("exec", ev.unavailable.get("sched:sched_process_exec",
                                                               "the exec tracepoint was not seen; " + FIX_ROOT)))
    if f.pgd_alloc:
        pfn = f.pgd_alloc.fields["pfn"]
        s.values.append(observed("PGD page (PFN)", pfn, _src(ev, "kmem:mm_page_alloc") + ", the allocation whose "
                                 "call chain holds pgd_alloc", display=f"0x{pfn:x}"))
        s.values.append(derived("PGD physical address (CR3 while it runs)", pfn << 12, "PFN << 12",
                                [f"0x{pfn:x} << 12 = 0x{pfn << 12:x}",
                                 "CR3 holds this address in bits 12 and up; on a CPU with PCID (the pcid flag of "
                                 "/proc/cpuinfo) bits 0-11 of CR3 also hold the address space's PCID, and with page-"
                                 "table isolation the user half uses the next page: CR3 equals this value only with "
                                 "those bits clear"]))
        s.evidence.append("PGD allocation: " + _chain_text(f.pgd_alloc))
    else:
        s.values.append(unavailable("PGD page (PFN)", "no pgd_alloc allocation seen during exec; " + FIX_ROOT))
    exec_t = execs[0].time_ns if execs else 0
    before_main = [e for e in ev.events if e.name == f.fault_event_name and e.pid == ev.pid
                   and exec_t <= e.time_ns <= snap.time_ns]
    label = ("page faults from exec to the first phase" if execs else
             "page faults before the first phase (exec not seen: the forked child's own faults included)")
    s.values.append(observed(label, len(before_main), _src(ev, f.fault_event_name), display=str(len(before_main))))
    vmas = [m for m in snap.maps if m.path != GATE_AREA]
    gate = len(snap.maps) - len(vmas)
    s.values.append(derived("VMAs at the first phase (mm->map_count)", len(vmas),
                            f"the lines of /proc/{ev.pid}/maps (observed)" + (f", less the gate area {GATE_AREA}" if gate else ""),
                            [f"{len(snap.maps)} lines − {gate} ({GATE_AREA}: the vsyscall page, shown by /proc/PID/maps but "
                             f"not a VMA of the mm, so not counted in mm->map_count) = {len(vmas)}" if gate else
                             f"{len(snap.maps)} lines, each a VMA"], display=str(len(vmas))))
    s.values.append(observed("minor faults so far", snap.minor_faults, f"/proc/{ev.pid}/stat field 10",
                             display=str(snap.minor_faults)))
    s.evidence += [_maps_line(m) for m in snap.maps]
    s.ws = seven_ws(
        what=f"PID {ev.pid} runs {ev.argv[0].rsplit('/', 1)[-1]}; exec gave it a fresh mm_struct with its own PGD page.",
        which=f"the PGD page is PFN 0x{f.pgd_alloc.fields['pfn']:x}" if f.pgd_alloc else "the PGD page was not seen",
    )


def _kprobe_mmap_values(ev: JourneyEvidence) -> list[Value]:
    """The VMA-making call as kprobes saw it (its arguments, result and merges), or why it was not seen."""
    out: list[Value] = []
    km = ev.kprobe_mmap
    entry, exit_ = evidence_walk_source(ev).probes
    if km is not None and km.retval is not None:
        merges = [(fn, r) for fn, r in km.merges if r]
        out.append(observed(f"{km.function}()", f"file 0x{km.file or 0:x}, addr 0x{km.addr or 0:x}, len 0x{km.length or 0:x}, "
                                 f"vm_flags 0x{km.vm_flags or 0:x}, pgoff 0x{km.pgoff or 0:x} → 0x{km.retval:x}",
                                 f"{entry} and {exit_} {km.function} (the function that makes the VMA on this kernel)",
                                 derivation=[f"{fn} returned 0x{r:x}: the new range was merged into (or expanded) an "
                                             "existing VMA" for fn, r in merges] or
                                 ["no merge function returned a VMA: a new VMA was made"
                                  + ("" if km.merges else " (no merge function was called)")]))
        probed = ", ".join(sorted({fn for fn, _ in km.merges})) or "on the merge functions"
        blind = {fn: why for fn, why in km.not_probeable.items() if fn != km.function and not why.startswith("not a function")}
        if merges or not blind:
            out.append(observed("merged", bool(merges), f"{exit_}s {probed} during {km.function}"))
        else:
            out.append(unavailable("merged", "no probed merge function returned a VMA, but "
                                        + "; ".join(f"{fn} cannot be probed here ({why})" for fn, why in blind.items())
                                        + ": a merge through it would not be seen (the maps diff above decides)"))
    elif ev.tier == "bpf":
        out.append(unavailable(f"{'the VMA-making call'} (kprobe)", ev.unavailable.get("kprobe mmap") or
                                    ev.unavailable.get("kprobes", "the kprobe tier was not used")))
    return out


def step_mmap(s: Step, ev: JourneyEvidence, f: Facts) -> None:
    enter = _between(ev, "syscalls:sys_enter_mmap", Stage.READY, Stage.MAPPED)
    exit_ = _between(ev, "syscalls:sys_exit_mmap", Stage.READY, Stage.MAPPED)
    area = _between(ev, "mmap:vm_unmapped_area", Stage.READY, Stage.MAPPED)
    if enter:
        a = enter[-1].fields
        fd = ((a.get("fd", 0) & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000  # ksys_mmap_pgoff takes it as an int
        src = _src(ev, "syscalls:sys_enter_mmap")
        s.values += [observed("addr argument", a.get("addr"), src), observed("length", a.get("len"), src),
                     observed("prot", a.get("prot"), src, display=f"0x{a.get('prot', 0):x} = {_names(a.get('prot', 0), PROT_NAMES)}"),
                     observed("flags", a.get("flags"), src, display=f"0x{a.get('flags', 0):x} = {_names(a.get('flags', 0), MAP_NAMES)}"),
                     observed("fd", fd, src, display=str(fd))]
    else:
        s.values.append(unavailable("mmap arguments", ev.unavailable.get("syscalls:sys_enter_mmap", "not seen; " + FIX_ROOT)))
    if exit_:
        ret = exit_[-1].fields.get("ret")
        s.values.append(observed("return value", ret, _src(ev, "syscalls:sys_exit_mmap")))
        same = ret == _vaddr(ev)
        s.derivations.append(f"sys_exit_mmap ret 0x{ret:x} {'=' if same else '≠'} the address the program printed "
                             f"0x{_vaddr(ev):x}")
    else:
        s.values.append(observed("return value", _vaddr(ev), "the program's own report of what mmap() returned"))
    if area:
        u = area[-1].fields
        src = _src(ev, "mmap:vm_unmapped_area")
        s.values += [observed("address chosen by vm_unmapped_area", u.get("addr"), src),
                     observed("search low limit", u.get("low_limit"), src),
                     observed("search high limit", u.get("high_limit"), src)]
        s.derivations.append(f"top-down search: the highest free gap of 0x{u.get('length', 0):x} bytes below "
                             f"0x{u.get('high_limit', 0):x} starts at 0x{u.get('addr', 0):x}")
        s.evidence.append("vm_unmapped_area call chain: " + _chain_text(area[-1]))
    else:
        s.values.append(unavailable("address choice", ev.unavailable.get("mmap:vm_unmapped_area", "not seen; " + FIX_ROOT)))
    before = {(m.start, m.end) for m in ev.snapshots[Stage.READY].maps}
    mapped = ev.snapshots[Stage.MAPPED]
    new = [m for m in mapped.maps if (m.start, m.end) not in before]
    vma = _vma_at(mapped.maps, _vaddr(ev))
    if vma:
        merged = (vma.start, vma.end) != (_vaddr(ev), _vaddr(ev) + ev.options.size)
        s.values.append(derived("new VMA", f"[0x{vma.start:x}, 0x{vma.end:x}) {vma.perms}",
                                f"/proc/{ev.pid}/maps after mmap minus before" +
                                (": merged with a neighbouring VMA of the same flags" if merged else "")))
        s.evidence += ["new in maps: " + _maps_line(m) for m in new]
    s.values += _kprobe_mmap_values(ev)
    if f.vm_flags is not None:
        word = decode_vm_flags(f.vm_flags, ev.kernel_version)
        s.values.append(derived("vm_flags", f.vm_flags, f"VmFlags {' '.join(f.vm_flags_mnemonics)} in /proc/{ev.pid}/smaps "
                                "(observed), as bits of this kernel's vm_flags", f.vm_flags_lines,
                                display=f"0x{f.vm_flags:x} = {' | '.join(word.names)}"))
    if mapped.pagemap is not None:
        pm = decode_pagemap_entry(mapped.pagemap)
        s.values.append(observed("pagemap of the page now", mapped.pagemap, f"/proc/{ev.pid}/pagemap",
                                 display=f"0x{mapped.pagemap:x}: {pm.summary}"))
    s.ws = seven_ws(
        what=f"a {ev.options.size}-byte private anonymous read-write mapping at 0x{_vaddr(ev):x}.",
        which=f"VMA [0x{vma.start:x}, 0x{vma.end:x})" if vma else "the VMA was not found in maps",
    )


def step_trap(s: Step, ev: JourneyEvidence, f: Facts) -> None:
    e = f.fault
    assert e is not None                # _lacking(): without it the step is the catalogue's unavailable value
    src = _src(ev, f.fault_event_name)
    addr = e.fields["address"]
    s.values.append(observed("faulting address (CR2)", addr, src))
    s.values.append(derived("mapping start + offset written", _vaddr(ev) + ev.options.offset,
                            "the mmap return value plus --offset",
                            [f"0x{_vaddr(ev):x} + 0x{ev.options.offset:x} = 0x{_vaddr(ev) + ev.options.offset:x}"
                             + (" = the faulting address" if addr == _vaddr(ev) + ev.options.offset else
                                f" ≠ 0x{addr:x}: the first store landed elsewhere in the page")]))
    s.values.append(observed("RIP", e.fields["ip"], src))
    if "error_code" in e.fields:
        code = e.fields["error_code"]
        d = decode_error_code(code)
        s.values.append(observed("error code", code, src, display=f"0x{code:x}"))
        s.values.append(derived("error code meaning", d.summary, "the x86 #PF error-code bits "
                                "(arch/x86/include/asm/trap_pf.h)", list(d.bit_meanings)))
    else:
        s.values.append(unavailable("error code", "the software page-fault event has no error code; " + FIX_ROOT))
    s.values.append(observed("CPU", e.cpu, src, display=str(e.cpu)))
    s.values.append(_time_since_spawn("time", ev, e.time_ns, src))
    split = split_virtual_address(addr, ev.paging_levels)
    s.values.append(derived("page base", split.page_base, "address & ~0xfff (PAGE_MASK)",
                            [f"0x{addr:x} & ~0xfff = 0x{split.page_base:x}"]))
    if e.kernel_chain:
        s.evidence.append("kernel stack at the tracepoint: " + _chain_text(e))
    s.ws = seven_ws(
        when=f"{_us(ev, e.time_ns)}, on CPU {e.cpu}.",
        which=f"address 0x{addr:x}, RIP 0x{e.fields['ip']:x}",
    )


def step_rip(s: Step, ev: JourneyEvidence, f: Facts) -> None:
    if f.fault is None:
        s.values.append(unavailable("RIP", "no fault was seen"))
        return
    ip = f.fault.fields["ip"]
    m = _vma_at(ev.snapshots[Stage.TOUCHED].maps, ip)
    if m is None or not m.path.startswith("/"):
        s.values.append(unavailable("mapping of RIP", f"RIP 0x{ip:x} is not in a file mapping of /proc/{ev.pid}/maps"))
        return
    s.values.append(observed("mapping holding RIP", _maps_line(m), f"/proc/{ev.pid}/maps"))
    r = ev.rip
    if r is None or r.ip != ip:
        s.values.append(unavailable("file offset", f"the ELF file {m.path} was not read for this RIP"))
        return
    s.values.append(derived("file offset", r.file_offset, "RIP − mapping start + mapping file offset", [r.derivations[0]]))
    if r.elf_vaddr is not None:
        s.values.append(derived("ELF address", r.elf_vaddr, "the PT_LOAD segment holding that file offset",
                                list(r.derivations[1:2])))
    if r.symbol:
        s.values.append(derived("function", f"{r.symbol}+0x{r.symbol_offset:x}", f"the ELF symbol table of {m.path}",
                                list(r.derivations[2:3])))
    if r.instruction:
        a, mnem, ops, raw = r.instruction
        s.values.append(derived("instruction", f"{mnem} {ops}", f"capstone on the bytes of {m.path} at that offset",
                                [f"bytes {raw} at ELF address 0x{a:x} → {mnem} {ops}"]))
        destination = ops.split(",", 1)[0]
        if "[" in destination:
            s.derivations.append(f"its destination operand {destination} is memory: the instruction stores, "
                                 "as a write fault needs")
    if r.source_line:
        s.values.append(derived("source line", f"{r.source_line[0]}:{r.source_line[1]}",
                                f"the DWARF line table of {m.path}"))
    elif r.elf_vaddr is not None and ev.program.compiled and m.path == str(ev.program.path):
        s.values.append(unavailable("source line", "the binary has no line for this address"))
    s.ws = seven_ws(where=m.path, which=r.describe)


def _vma_lock_path(ev: JourneyEvidence, f: Facts) -> tuple[bool, Value]:
    """Whether the fault ran under the per-VMA lock, and the value that says how that is known.

    The mmap_lock tracepoint fires whenever the target takes mmap_lock; the per-VMA path does not take
    it. So with the tracepoint recorded and live (it saw the exec and the mmap take the lock), no
    acquisition between the fault's entry and its end is evidence of the per-VMA path, and one is
    evidence that the fault took (or fell back to) mmap_lock.
    """
    has_vma_lock = "FAULT_FLAG_VMA_LOCK" in ev.fault_flag_table
    if MMAP_LOCK_EVENT not in ev.event_sources or f.lock_window is None:
        why = ev.unavailable.get(MMAP_LOCK_EVENT, f"{MMAP_LOCK_EVENT} was not recorded")
        return has_vma_lock, modelled(
            "per-VMA lock path", has_vma_lock,
            f"taken from arch/x86/mm/fault.c, not observed ({why}): "
            + ("a user fault is first tried under lock_vma_under_rcu()" if has_vma_lock
               else "this kernel's enum fault_flag has no FAULT_FLAG_VMA_LOCK: faults take mmap_lock"))
    seen = [e for e in ev.events if e.name == MMAP_LOCK_EVENT and e.pid == ev.pid]
    start, end = f.lock_window
    until = "the next fault" if end != ev.snapshots[Stage.TOUCHED].time_ns else "the touched phase"
    window = f"from the fault's entry to {until} ({(end - start) / 1000:.0f} µs)"
    if f.locks_during_fault:
        first = f.locks_during_fault[0]
        return False, observed(
            "per-VMA lock path", False,
            f"tracepoint {MMAP_LOCK_EVENT}: the target took mmap_lock {len(f.locks_during_fault)} time(s) {window}, "
            f"first {(first.time_ns - start) / 1000:.1f} µs after the entry: the fault ran under mmap_lock"
            + ("" if not has_vma_lock else " (it fell back from the per-VMA lock)"))
    if not seen:
        return has_vma_lock, modelled(
            "per-VMA lock path", has_vma_lock,
            f"taken from the source: {MMAP_LOCK_EVENT} was recorded but saw the target take mmap_lock not even "
            "once (not for exec or mmap either), so its silence during the fault proves nothing")
    # Inferred from an absence: the per-VMA lock itself has no tracepoint, so this is derived, not observed.
    return True, derived(
        "per-VMA lock path", True,
        f"inferred from tracepoint {MMAP_LOCK_EVENT}: no mmap_lock acquisition by the target {window}, while the "
        f"same tracepoint saw it take mmap_lock {len(seen)} time(s) elsewhere (exec, mmap); the per-VMA lock has "
        "no tracepoint of its own, so its use is not seen, only mmap_lock's absence"
        + ("" if has_vma_lock else "; but this kernel's enum fault_flag has no FAULT_FLAG_VMA_LOCK, which "
           "contradicts it"))


def _flag_difference(seen: int, derived_value: int, ev: JourneyEvidence) -> str:
    names = decode_fault_flags(seen ^ derived_value, ev.fault_flag_table).names
    return (f"DIFFERENT: bits 0x{seen ^ derived_value:x} ({' | '.join(names)}) are where the derivation's "
            "assumptions do not hold for this fault")


def step_flags(s: Step, ev: JourneyEvidence, f: Facts) -> None:
    assert f.fault is not None          # _lacking()
    code = f.fault.fields["error_code"]
    vma_lock, lock_value = _vma_lock_path(ev, f)
    d = derive_fault_flags(code, ev.fault_flag_table, vma_lock=vma_lock, source=ev.fault_flag_source)
    s.values.append(observed("enum fault_flag table", ev.fault_flag_source.split(": ", 1)[-1],
                             ev.fault_flag_source) if ev.fault_flag_source.startswith("observed")
                    else modelled("enum fault_flag table", ev.fault_flag_source, ev.fault_flag_source))
    s.values.append(lock_value)
    lock_basis = ("observed (the mmap_lock tracepoint, above)" if lock_value.provenance == Provenance.OBSERVED
                  else "taken from the source (above)")
    s.values.append(derived("flags", d.value, "from the error code (observed) as arch/x86/mm/fault.c does; "
                            "taken from the kernel source, not observed: FAULT_FLAG_DEFAULT's makeup; "
                            f"the per-VMA lock path: {lock_basis}", list(d.derivations)))
    kp = ev.kprobe_fault
    if kp is not None and kp.flags is not None:
        seen = decode_fault_flags(kp.flags, ev.fault_flag_table, ev.fault_flag_source)
        agree = kp.flags == d.value
        s.values.append(observed("flags (kprobe)", kp.flags, f"{evidence_walk_source(ev).probes[0]} handle_mm_fault arg2",
                                 display=f"0x{kp.flags:x} = {' | '.join(seen.names)}",
                                 derivation=[f"derived from the error code: 0x{d.value:x}: " + (
                                     "the same" if agree else _flag_difference(kp.flags, d.value, ev))]))
    else:
        s.values.append(unavailable("flags (kprobe)", ev.unavailable.get("kprobes", "the kprobe tier was not used")))
    word = decode_fault_flags(d.value, ev.fault_flag_table, ev.fault_flag_source)
    for flag in word.set_flags:
        step = next((st for st in d.steps if st.name == flag.name), None)
        s.values.append(derived(flag.name, flag.mask, step.reason if step else flag.meaning))
    s.derivations += list(word.derivations)
    s.ws = seven_ws(
        what=f"error code 0x{code:x} becomes flags 0x{d.value:x} for handle_mm_fault().",
        which=" | ".join(word.names),
    )


def _at_fault(ev: JourneyEvidence) -> str:
    """The source of a value read at the fault: the engine and hook the evidence records."""
    return evidence_walk_source(ev).at("page_fault_user") + ", through BTF types"


def _after(ev: JourneyEvidence | ProgramFaultEvidence) -> str:
    """The source of a value read after the fault: at the exercise's next system call; a program's thread is
    read at its next kernel entry, a system call or its next fault, whichever comes first."""
    source = evidence_walk_source(ev)
    if isinstance(ev, ProgramFaultEvidence):
        return (f"{source.at('sys_enter')} or {source.hook('page_fault_user')} (the thread's next kernel entry "
                "after the fault), through BTF types")
    return source.at("sys_enter") + " (the target's next system call after the fault), through BTF types"


def _bpf_read(ev: JourneyEvidence | ProgramFaultEvidence, when: str):
    """The bpf tier's read at `when` ("before": at the fault, "after": after it), or None."""
    return ev.bpf.reads.get(when) if ev.bpf else None


def _vma_struct_values(ev: JourneyEvidence, f: Facts, vma: MapsLine) -> list[Value]:
    """The VMA and mm->map_count as the kernel holds them, checked against /proc."""
    read = _bpf_read(ev, "before")
    objs = read.objects if read else {}
    at_fault = _at_fault(ev)
    if "vma" not in objs:
        why = ev.unavailable.get("bpf", "the struct reads need the bpf tier; " + FIX_BPF) if not read else \
            "the maple-tree search read no VMA"
        return [unavailable("struct vm_area_struct", why)]
    values = [observed("struct vm_area_struct", f"0x{objs['vma']:x}", at_fault + ": the entry the maple-tree "
                       "search for the address ended at")]
    same = (objs["vm_start"], objs["vm_end"]) == (vma.start, vma.end)
    values.append(observed("vm_start, vm_end", f"[0x{objs['vm_start']:x}, 0x{objs['vm_end']:x})", at_fault,
                           derivation=[f"/proc/{ev.pid}/maps says [0x{vma.start:x}, 0x{vma.end:x}): "
                                       + ("the same" if same else "DIFFERENT")]))
    word = decode_vm_flags(objs["vm_flags"], ev.kernel_version)
    check = [] if f.vm_flags is None else [
        f"from smaps VmFlags: 0x{f.vm_flags:x}: " + ("the same" if f.vm_flags == objs["vm_flags"] else "DIFFERENT")]
    values.append(observed("vm_flags (struct)", objs["vm_flags"], at_fault + f"; names from {word.table_source}",
                           display=f"0x{objs['vm_flags']:x} = {' | '.join(word.names)}", derivation=check))
    expected = vm_page_prot(objs["vm_flags"])
    values.append(observed("vm_page_prot", objs["vm_page_prot"], at_fault, display=f"0x{objs['vm_page_prot']:x}",
                           derivation=[f"x86 protection_map[vm_flags & 0xf = 0x{objs['vm_flags'] & 0xF:x}] = 0x{expected:x}: "
                                       + ("the same" if expected == objs["vm_page_prot"] else
                                          "DIFFERENT (the mapping's protection was changed after mmap, or the "
                                          "built-in protection_map does not hold for this kernel)")]))
    mapped = ev.snapshots.get(Stage.MAPPED)
    vmas = [m for m in mapped.maps if m.path != GATE_AREA] if mapped else []
    values.append(observed("mm->map_count", objs["map_count"], at_fault, display=str(objs["map_count"]),
                           derivation=[f"/proc/{ev.pid}/maps at the mapped phase: {len(vmas)} VMAs without the gate "
                                       f"area: " + ("the same" if len(vmas) == objs["map_count"] else "DIFFERENT")]))
    return values


def _maple_values(ev: JourneyEvidence, addr: int) -> list[Value]:
    """The maple-tree search as the walk read it: each node, the slot taken, and the leaf's pivots."""
    read = _bpf_read(ev, "before")
    if not read or not read.maple_path:
        return []
    if read.objects.get("maple_layout_ok") == 0:
        return [unavailable("maple tree search (read)", "the node layout the script assumes (pivots at +8, slots at "
                            "+80 / +128) disagrees with this kernel's BTF")]
    names = ev.kernel_enums.get("maple_type", {})
    lines = [f"mm->mm_mt.ma_root = 0x{read.objects.get('maple_root', 0):x}"]
    for depth, step in enumerate(read.maple_path):
        lines.append(f"level {depth}: node 0x{step.node:x}, {names.get(step.node_type, f'type {step.node_type}')}, "
                     f"slot {step.slot} → 0x{step.slot_entry:x}")
    leaf = read.maple_path[-1]
    pivots = read.maple_leaf_pivots
    low = pivots[leaf.slot - 1] + 1 if 0 < leaf.slot <= len(pivots) else None
    high = pivots[leaf.slot] if leaf.slot < len(pivots) and pivots[leaf.slot] else None
    inside = (low is None or low <= addr) and (high is None or addr <= high)
    lines.append("leaf pivots: " + " ".join(f"0x{p:x}" for p in pivots if p))
    lines.append(f"slot {leaf.slot} covers [{'the node minimum' if low is None else f'0x{low:x}'}, "
                 f"{'the node maximum' if high is None else f'0x{high:x}'}]: "
                 + (f"0x{addr:x} is inside" if inside else f"0x{addr:x} is NOT inside"))
    return [observed("maple tree search (read)", f"{len(read.maple_path)} levels, leaf slot {leaf.slot}",
                     _at_fault(ev) + "; node types named by " + (ev.kernel_enums_source or "their numbers"), derivation=lines)]


def step_vma(s: Step, ev: JourneyEvidence, f: Facts) -> None:
    assert f.vma is not None            # _lacking(): without it the step is the catalogue's unavailable value
    addr = _fault_address(ev)
    s.values.append(observed("VMA holding the address", _maps_line(f.vma), f"/proc/{ev.pid}/maps"))
    if f.vm_flags is not None:
        write = bool(f.vm_flags & 2)
        s.values.append(derived("write permitted", write, "vm_flags & VM_WRITE",
                                [f"0x{f.vm_flags:x} & 0x2 = 0x{f.vm_flags & 2:x} → {'allowed' if write else 'refused: SIGSEGV'}"]))
    s.values += _vma_struct_values(ev, f, f.vma)
    kp = ev.kprobe_fault
    if kp is not None and kp.vma:
        v = kp.vma
        s.values.append(observed("VMA argument (kprobe)", f"[0x{v['vm_start']:x}, 0x{v['vm_end']:x}) vm_flags 0x{v['vm_flags']:x} "
                                 f"vm_page_prot 0x{v['vm_page_prot']:x}",
                                 f"{evidence_walk_source(ev).probes[0]} handle_mm_fault arg0 (struct vm_area_struct *)",
                                 derivation=[f"vm_file 0x{v['vm_file']:x} ({'a file' if v['vm_file'] else 'anonymous'}), "
                                             f"anon_vma 0x{v['anon_vma']:x} "
                                             f"({'set' if v['anon_vma'] else 'none yet: the first fault makes it'})",
                                             f"/proc/{ev.pid}/maps says [0x{f.vma.start:x}, 0x{f.vma.end:x}): " +
                                             ("the same" if (v['vm_start'], v['vm_end']) == (f.vma.start, f.vma.end) else "DIFFERENT")]))
    s.values += _maple_values(ev, addr)
    search = maple_search([(m.start, m.end) for m in ev.snapshots[Stage.TOUCHED].maps if m.path != "[vsyscall]"], addr)
    s.values.append(modelled("maple tree search (model)", f"leaf {search.leaf_index}, slot {search.slot_index}",
                             f"a maple tree of kernel 6.{ev.kernel_version[1]} packed from these VMAs "
                             "(node boundaries modelled, ranges observed); a cross-check of the read above",
                             list(search.derivations)))
    s.ws = seven_ws(which=f"[0x{f.vma.start:x}, 0x{f.vma.end:x}) {f.vma.perms}")


def step_walk(s: Step, ev: JourneyEvidence, f: Facts) -> None:
    addr = _fault_address(ev)
    split = split_virtual_address(addr, ev.paging_levels)
    s.values.append(observed("paging levels", ev.paging_levels, ev.paging_why, display=str(ev.paging_levels)))
    for i in split.indices:
        s.values.append(derived(f"{i.level} index", i.index, f"(address >> {i.shift}) & 0x1ff",
                                [f"(0x{addr:x} >> {i.shift}) & 0x1ff = {i.index} (bits {i.high_bit}..{i.shift} = {i.bits})"],
                                display=str(i.index)))
    s.values.append(derived("page offset", split.page_offset, "address & 0xfff",
                            [f"0x{addr:x} & 0xfff = 0x{split.page_offset:x}"]))
    bpf = ev.bpf
    if bpf and "before" in bpf.reads:
        before = bpf.reads["before"]
        s.values.append(derived("direct-map base (page_offset_base)", bpf.direct_map_base,
                                f"mm->pgd (observed by {evidence_walk_source(ev).engine}) − PGD physical address "
                                "(observed PFN << 12)",
                                [f"0x{before.pgd_virtual:x} − 0x{bpf.pgd_physical:x} = 0x{bpf.direct_map_base:x}"]))
        for level in [i.level for i in split.indices]:
            if level not in before.entries:
                s.values.append(unavailable(f"{level} entry before", "the walk stopped above this level (not present)"))
                continue
            entry = before.entries[level]
            table = before.table_physical.get(level)
            idx = split.index(level)
            pte = decode_pte(entry, level, kernel=ev.kernel_version, paging_levels=ev.paging_levels)
            s.values.append(observed(f"{level} entry before", entry, evidence_walk_source(ev).at("page_fault_user")
                                     + f" (table at physical 0x{table:x}, entry {idx} at +0x{idx * 8:x})",
                                     display=f"0x{entry:016x}: {pte.points_to}",
                                     derivation=[d for d in pte.derivations if d.startswith("frame")]))
    else:
        s.values.append(unavailable("raw entries", ev.unavailable.get("bpf", "the raw entries need the bpf tier; " + FIX_BPF)))
    if ev.paging_levels == 4:
        s.derivations.append("4-level paging: the P4D level is folded into the PGD (it has one entry, the PGD's)")
    s.ws = seven_ws(which=" → ".join(f"{i.level}[{i.index}]" for i in split.indices) + f" + 0x{split.page_offset:x}")


def step_alloc(s: Step, ev: JourneyEvidence, f: Facts) -> None:
    a = f.data_alloc
    assert a is not None                # _lacking()
    src = _src(ev, "kmem:mm_page_alloc")
    pfn, order, gfp = a.fields["pfn"], a.fields["order"], a.fields["gfp_flags"]
    g = decode_gfp(gfp, ev.gfp_table, ev.gfp_source)
    s.values += [observed("PFN", pfn, src), derived("physical address", pfn << 12, "PFN << 12", [f"0x{pfn:x} << 12 = 0x{pfn << 12:x}"]),
                 observed("order", order, src, display=f"{order} ({4096 << order} bytes)"),
                 observed("GFP flags", gfp, src, display=f"0x{gfp:x}"),
                 derived("GFP flags decoded", g.symbolic, f"bit table: {ev.gfp_source}", list(g.derivations)),
                 observed("migratetype", a.fields.get("migratetype"),
                          f"{src}; its name from {ev.migratetype_source or 'no table'}",
                          display=_migratetype(ev, a.fields.get("migratetype")))]
    if f.fault:
        s.values.append(derived("time after the trap", f"{(a.time_ns - f.fault.time_ns) / 1000:.1f} µs",
                                "allocation time − fault time (both CLOCK_MONOTONIC)"))
    s.values.append(observed("kernel call chain", _chain_text(a), src + " with PERF_SAMPLE_CALLCHAIN, /proc/kallsyms"))
    for t in f.table_allocs:
        what = next((v for k, v in TABLE_FUNCS.items() if k in _funcs(t)), "other page")
        s.values.append(observed(f"also allocated: {what}", t.fields["pfn"], src + " in the same fault: " + _chain_text(t)))
    s.ws = seven_ws(
        what=f"an order-{order} page, PFN 0x{pfn:x}, zeroed ({'__GFP_ZERO' if 'ZERO' in g.symbolic else 'see flags'}).",
        which=f"PFN 0x{pfn:x} = physical 0x{pfn << 12:x}",
    )


def _migratetype(ev: JourneyEvidence, value) -> str:
    return f"{value} ({ev.migratetypes.get(value, '?')})"


# vmemmap's base when KASLR does not move it (arch/x86/include/asm/pgtable_64_types.h, 4.x to 6.18)
VMEMMAP_UNRANDOMISED = {4: 0xFFFFEA0000000000, 5: 0xFFD4000000000000}


def _vmemmap_alignment(base: int, levels: int, kaslr_on: bool | None = None, kaslr_how: str = "") -> str:
    """What a 1 GiB aligned vmemmap base says of KASLR: from the KASLR setting the capture read (observed), checked
    against the value; from the value alone only where nothing could be read (older evidence, or no source)."""
    plain = VMEMMAP_UNRANDOMISED.get(levels)
    if kaslr_on is not None:
        state = f"KASLR on (observed: {kaslr_how})" if kaslr_on else f"KASLR off (observed: {kaslr_how})"
        if plain is None:
            return f"1 GiB aligned; {state}"
        agrees = (base != plain) == kaslr_on
        where = (f"not the unrandomised {levels}-level base 0x{plain:x}: KASLR placed it" if base != plain else
                 f"the unrandomised {levels}-level base 0x{plain:x}: not moved")
        return f"1 GiB aligned, {where}; {state}" + ("" if agrees else
                                                     " — the base and the setting disagree: one of them is misread")
    if base == plain:
        return (f"1 GiB aligned, and the unrandomised {levels}-level base 0x{base:x}: KASLR did not move it "
                "(off, or nokaslr; from the value alone: no KASLR setting could be read)")
    return ("1 GiB aligned, and not the unrandomised base: KASLR placed it (memory randomisation is on; from the "
            "value alone: no KASLR setting could be read)")


def _struct_page_values(ev: JourneyEvidence | ProgramFaultEvidence, pfn: int | None, kpagecount: int | None,
                        kpageflags: int | None = None) -> list[Value]:
    """The new frame's struct page read at vmemmap_base + PFN × sizeof(struct page), checked against /proc."""
    read = _bpf_read(ev, "after")
    bpf = ev.bpf
    if read is None or bpf is None:
        return [unavailable("struct page", ev.unavailable.get("bpf", "the struct reads need the bpf tier; " + FIX_BPF))]
    if bpf.vmemmap_base is None or "refcount" not in read.objects:
        return [unavailable("struct page", f"no pagemap:mm_lru_insertion event was seen while "
                            f"{evidence_walk_source(ev).engine} was armed, so "
                            "vmemmap's base could not be derived")]
    size = bpf.struct_page_size or 64
    aligned = bpf.vmemmap_base % (1 << 30) == 0
    values = [derived("vmemmap_base", bpf.vmemmap_base,
                      "folio − PFN × sizeof(struct page), both from one pagemap:mm_lru_insertion event "
                      f"({evidence_walk_source(ev).at('mm_lru_insertion')})",
                      [f"0x{bpf.vmemmap_folio or 0:x} − 0x{bpf.vmemmap_pfn or 0:x} × {size} = 0x{bpf.vmemmap_base:x}",
                       _vmemmap_alignment(bpf.vmemmap_base, ev.paging_levels, bpf.kaslr_on, bpf.kaslr_how) if aligned
                       else "NOT 1 GiB aligned: not vmemmap's base"],
                      display=f"0x{bpf.vmemmap_base:x}")]
    objs = read.objects
    page = bpf.vmemmap_base + objs["folio_pfn"] * size
    where = f"{_after(ev)}: struct page at 0x{bpf.vmemmap_base:x} + 0x{objs['folio_pfn']:x} × {size} = 0x{page:x}"
    # The struct page is found from the PTE's PFN, so its PFN is that one by construction: derived. Only the
    # comparison with pagemap (the kernel's own answer, read apart) checks anything.
    values.append(derived("struct page's PFN", objs["folio_pfn"], "the PFN in the PTE just read, which places the "
                          f"struct page: {where}", display=f"0x{objs['folio_pfn']:x}", derivation=[] if pfn is None else [
                              f"/proc/PID/pagemap, read apart, says PFN 0x{pfn:x}: "
                              + ("the same" if pfn == objs["folio_pfn"] else "DIFFERENT")]))
    values += folio_values(objs, ev.kernel_enums.get("pageflags", {}), where, ev.kernel_enums_source, kpageflags,
                           kpagecount, (ev.kernel_version[0], ev.kernel_version[1]))
    return values


def step_pagemap(s: Step, ev: JourneyEvidence, f: Facts) -> None:
    snap = ev.snapshots[Stage.TOUCHED]
    assert snap.pagemap is not None     # _lacking()
    pm = decode_pagemap_entry(snap.pagemap)
    s.values.append(observed("pagemap entry", snap.pagemap, f"/proc/{ev.pid}/pagemap at offset (0x{_fault_address(ev):x} >> 12) * 8",
                             display=f"0x{snap.pagemap:016x}"))
    s.values.append(derived("decoded", pm.summary, "Documentation/admin-guide/mm/pagemap.rst bits", list(pm.derivations)))
    if pm.pfn_hidden:
        s.values.append(unavailable("PFN", "pagemap shows PFN 0 to non-root readers; " + FIX_ROOT))
    elif f.data_alloc:
        same = pm.pfn == f.data_alloc.fields["pfn"]
        s.values.append(derived("same PFN as mm_page_alloc", same, "pagemap PFN == allocation PFN",
                                [f"0x{pm.pfn:x} {'==' if same else '!='} 0x{f.data_alloc.fields['pfn']:x}"]))
    if snap.kpageflags is not None:
        kw = decode_kpageflags(snap.kpageflags, ev.kernel_version)
        s.values.append(observed("kpageflags", snap.kpageflags,
                                 f"/proc/kpageflags at PFN 0x{pm.pfn:x}; names from {kw.table_source}",
                                 display=f"0x{snap.kpageflags:x} = {' | '.join(kw.names)}", derivation=list(kw.derivations)))
        s.values.append(observed("kpagecount (mappings)", snap.kpagecount, f"/proc/kpagecount at PFN 0x{pm.pfn:x}",
                                 display=str(snap.kpagecount)))
    else:
        s.values.append(unavailable("kpageflags", "; ".join(snap.errors) or FIX_ROOT))
    s.values += _struct_page_values(ev, pm.pfn, snap.kpagecount, snap.kpageflags)
    s.ws = seven_ws(
        where=f"/proc/{ev.pid}/pagemap (fs/proc/task_mmu.c) and /proc/kpageflags (fs/proc/page.c).",
        which=f"PFN 0x{pm.pfn:x}" if pm.pfn else "PFN hidden",
    )


def step_pte(s: Step, ev: JourneyEvidence, f: Facts) -> None:
    a = f.data_alloc
    pfn = a.fields["pfn"] if a else f.pagemap_pfn
    assert pfn is not None and f.vm_flags is not None      # _lacking()
    write = bool(f.fault and f.fault.fields.get("error_code", 2) & 2)
    d = derive_anonymous_pte(pfn, f.vm_flags, write, soft_dirty=bool(ev.soft_dirty_config),
                             kernel=(ev.kernel_version[0], ev.kernel_version[1]))
    s.values.append(derived("PTE (derived)", d.value, f"mk_pte(PFN, vm_page_prot) as do_anonymous_page() builds it; "
                            f"CONFIG_MEM_SOFT_DIRTY={'y' if ev.soft_dirty_config else 'n' if ev.soft_dirty_config is False else '?'}"
                            " (/proc/config.gz)", list(d.derivations), display=f"0x{d.value:016x}"))
    bpf = ev.bpf
    after = bpf.reads.get("after") if bpf else None
    if after and "PTE" in after.entries:
        raw = after.entries["PTE"]
        p = decode_pte(raw, "PTE")
        s.values.append(observed("PTE (read)", raw, _after(ev),
                                 display=f"0x{raw:016x}", derivation=list(p.derivations)))
        s.values.append(derived("derived == read", raw == d.value, "compare",
                                [f"0x{d.value:016x} {'==' if raw == d.value else '!='} 0x{raw:016x}"]))
        s.values.append(derived("PFN in the PTE", p.pfn, "(PTE & 0x000ffffffffff000) >> 12",
                                [f"(0x{raw:x} & 0xffffffffff000) >> 12 = 0x{p.pfn:x}"]))
        for name, bitval in (("present", p.present), ("writable", p.writable), ("user", p.user),
                             ("no-execute", p.no_execute), ("dirty", p.dirty), ("accessed", p.accessed)):
            s.values.append(derived(f"PTE {name}", bitval, "a bit of the PTE read"))
    else:
        s.values.append(unavailable("PTE (read)", ev.unavailable.get("bpf", "reading the PTE needs the bpf tier; " + FIX_BPF)))
    s.ws = seven_ws(which=f"0x{d.value:016x}")


def decode_vm_fault(value: int, names: dict[int, str]) -> list[str]:
    """VM_FAULT_* bits of a vm_fault_t, named with the kernel's enum vm_fault_reason (0 reads "0: done")."""
    if value == 0:
        return ["0 (the fault was handled: no VM_FAULT bit set)"]
    out = [names.get(1 << b, f"bit {b}") for b in range(32) if value >> b & 1 and (1 << b) in names]
    rest = value & ~sum(1 << b for b in range(32) if (1 << b) in names)
    return out + ([f"0x{rest:x} (not named by the enum)"] if rest else [])


def _kprobe_return_values(ev: JourneyEvidence) -> list[Value]:
    kp = ev.kprobe_fault
    if kp is None:
        return [unavailable("handlers and return value", ev.unavailable.get("kprobes", "the kprobe tier was not used"))]
    probes = evidence_walk_source(ev).probes
    values = [observed("handler path", " → ".join(fn for fn, _ns in kp.handlers) or "none of the probed handlers",
                       f"{probes[0]} programs on the handlers, while handle_mm_fault ran for this fault",
                       derivation=[f"{fn} at +{ns / 1000:.1f} µs" for fn, ns in kp.handlers]
                       + [f"not probed: {fn} ({why})" for fn, why in sorted(kp.not_probeable.items())])]
    if kp.retval is not None:
        names = ev.kernel_enums.get("vm_fault_reason", {})
        bits = decode_vm_fault(kp.retval, names)
        values.append(observed("handle_mm_fault return value", kp.retval, f"{probes[1]} handle_mm_fault retval",
                               display=f"0x{kp.retval:x} = {' | '.join(bits)}",
                               derivation=[f"names from {ev.kernel_enums_source}" if names else
                                           "no enum vm_fault_reason in BTF: bits unnamed"]))
    if kp.duration_ns is not None:
        values.append(observed("fault duration", kp.duration_ns, f"{probes[1]} time − {probes[0]} time of handle_mm_fault "
                               f"({evidence_walk_source(ev).clock})",
                               display=f"{kp.duration_ns / 1000:.1f} µs"))
    return values


def step_return(s: Step, ev: JourneyEvidence, f: Facts) -> None:
    mapped, touched = ev.snapshots[Stage.MAPPED], ev.snapshots[Stage.TOUCHED]
    s.values.append(observed("string read back", ev.readback, "the program read it from the page after the write"))
    s.values.append(derived("equals the text written", ev.readback == ev.options.written, "compare",
                            [f"{ev.readback!r} {'==' if ev.readback == ev.options.written else '!='} {ev.options.written!r}"]))
    s.values += [observed("minor faults before the write", mapped.minor_faults, f"/proc/{ev.pid}/stat field 10 at phase mapped",
                          display=str(mapped.minor_faults)),
                 observed("minor faults after the write", touched.minor_faults, f"/proc/{ev.pid}/stat field 10 at phase touched",
                          display=str(touched.minor_faults)),
                 derived("faults taken by the write", touched.minor_faults - mapped.minor_faults, "after − before",
                         [f"{touched.minor_faults} − {mapped.minor_faults} = {touched.minor_faults - mapped.minor_faults}"],
                         display=str(touched.minor_faults - mapped.minor_faults))]
    if f.fault_count_on_page:
        s.values.append(observed("faults on the page", f.fault_count_on_page, _src(ev, f.fault_event_name),
                                 display=str(f.fault_count_on_page)))
    for n, e in enumerate(f.later_faults, 2):
        s.values += _later_fault_values(ev, f, e, n)
    s.values += _kprobe_return_values(ev)
    if ev.exit:
        s.values.append(observed("program exit", ev.exit, "waitpid()"))
    s.ws = seven_ws(
        which=f"{1 + len(f.later_faults)} faults, one per page the write covers "
                  f"({len(ev.written_pages())} pages); {touched.minor_faults - mapped.minor_faults} counted by the kernel",
    )


def _later_fault_values(ev: JourneyEvidence, f: Facts, e: TraceEvent, n: int) -> list:
    """Another fault of the same write (it crossed into the next page): its own address, indices, frame and PTE.

    The raw entries are read for the first page only (the walk follows one address), so this page's walk
    gives its indices and the PTE derived from its frame, and says so."""
    src = _src(ev, f.fault_event_name)
    addr = e.fields["address"]
    page = addr & ~0xFFF
    out: list = [observed(f"fault {n} of the write: address", addr, src),
                 derived(f"fault {n}: its page", page, "the write's next page: a store crossed the boundary",
                         [f"0x{addr:x} & ~0xfff = 0x{page:x} = first page 0x{_fault_address(ev) & ~0xFFF:x} + "
                          f"0x{page - (_fault_address(ev) & ~0xFFF):x}"])]
    if "error_code" in e.fields:
        out.append(observed(f"fault {n}: error code", e.fields["error_code"], src, display=f"0x{e.fields['error_code']:x}"))
    split = split_virtual_address(addr, ev.paging_levels)
    out.append(derived(f"fault {n}: walk indices", " ".join(f"{i.level} {i.index}" for i in split.indices),
                       "9 bits of the address per level", list(split.derivations)))
    out.append(unavailable(f"fault {n}: raw entries", f"{evidence_walk_source(ev).engine} reads the entries of the "
                           "write's first page only"))
    allocs = f.later_allocs.get(id(e), [])
    data = next((a for a in allocs if set(_funcs(a)) & set(DATA_PAGE_FUNCS)), None)
    entry = ev.snapshots[Stage.TOUCHED].more_pagemaps.get(page)
    pagemap_pfn = entry & PM_PFN_MASK if entry and entry >> 63 else None
    if data is not None:
        out.append(observed(f"fault {n}: PFN allocated", data.fields["pfn"], _src(ev, "kmem:mm_page_alloc") +
                            " in this fault: " + _chain_text(data), display=f"0x{data.fields['pfn']:x}"))
    else:
        out.append(unavailable(f"fault {n}: PFN allocated", "no data-page allocation seen in this fault; " + FIX_ROOT))
    if entry is not None:
        out.append(observed(f"fault {n}: pagemap entry", entry, f"/proc/{ev.pid}/pagemap at 0x{page:x}",
                            display=f"0x{entry:016x}"))
    if data is not None and pagemap_pfn:
        same = data.fields["pfn"] == pagemap_pfn
        out.append(derived(f"fault {n}: same PFN in pagemap", same, "pagemap PFN == allocation PFN",
                           [f"0x{pagemap_pfn:x} {'==' if same else '!='} 0x{data.fields['pfn']:x}"]))
    if pagemap_pfn and f.vm_flags is not None:
        pte = derive_anonymous_pte(pagemap_pfn, f.vm_flags, True, soft_dirty=bool(ev.soft_dirty_config),
                                   kernel=(ev.kernel_version[0], ev.kernel_version[1]))
        out.append(derived(f"fault {n}: PTE (derived)", pte.value, "mk_pte(PFN, vm_page_prot) from this page's "
                           "pagemap PFN, as for the first page", list(pte.derivations), display=f"0x{pte.value:016x}"))
    return out


def timeline(ev: JourneyEvidence, f: Facts) -> list[TimelineEntry]:
    items: list[tuple[int, str, str]] = []
    for name, snap in ev.snapshots.items():
        items.append((snap.time_ns, f"program paused at phase {name}", "pagefault's clock (CLOCK_MONOTONIC)"))
    interesting = {"sched:sched_process_exec": "exec", "syscalls:sys_enter_mmap": "mmap() entered",
                   "mmap:vm_unmapped_area": "address chosen (vm_unmapped_area)", "syscalls:sys_exit_mmap": "mmap() returned"}
    for e in ev.events:
        if e.pid != ev.pid:
            continue
        before_write = ev.snapshots.get(Stage.MAPPED, ev.snapshots[Stage.READY]).time_ns
        if e.name in interesting and (e.name == "sched:sched_process_exec" or
                                      ev.snapshots[Stage.READY].time_ns <= e.time_ns <= before_write):
            items.append((e.time_ns, interesting[e.name], _src(ev, e.name)))
    if f.pgd_alloc:
        items.append((f.pgd_alloc.time_ns, f"PGD page allocated, PFN 0x{f.pgd_alloc.fields['pfn']:x}", _src(ev, "kmem:mm_page_alloc")))
    if f.fault:
        items.append((f.fault.time_ns, f"page fault at 0x{f.fault.fields['address']:x}", _src(ev, f.fault_event_name)))
    for a in f.allocs:
        label = "data page" if a is f.data_alloc else next((v for k, v in TABLE_FUNCS.items() if k in _funcs(a)), "page")
        items.append((a.time_ns, f"{label} allocated, PFN 0x{a.fields['pfn']:x}", _src(ev, "kmem:mm_page_alloc")))
    return timeline_from(items, ev.spawned_ns)


def page_walk(ev: JourneyEvidence, f: Facts) -> PageWalk | None:
    """The walk for the drawing: entries as the walk read them after the fault (and at the trap)."""
    addr = _fault_address(ev)
    if addr is None:
        return None
    split = split_virtual_address(addr, ev.paging_levels)
    bpf = ev.bpf
    after = bpf.reads.get("after") if bpf else None
    before = bpf.reads.get("before") if bpf else None
    cr3 = f.pgd_alloc.fields["pfn"] << 12 if f.pgd_alloc else None
    walk = PageWalk(addr, cr3, "derived: the PGD page's PFN (mm_page_alloc in pgd_alloc during exec) << 12"
                    if cr3 is not None else "unavailable: no pgd_alloc allocation seen; " + FIX_ROOT)
    for i in split.indices:
        read = after if after and i.level in after.entries else None
        table = (read.table_physical.get(i.level) if read else None)
        if table is None and i.level == split.indices[0].level:
            table = cr3
        walk.levels.append(WalkLevel(
            i.level, i.index, table,
            read.entries[i.level] if read else None,
            before.entries.get(i.level) if before else None,
            Provenance.OBSERVED if read else Provenance.UNAVAILABLE,
            _after(ev) if read
            else ev.unavailable.get("bpf", "the raw entries need the bpf tier; " + FIX_BPF)))
    walk.set_frame()
    if walk.frame_pfn is None and not any(lv.entry is not None for lv in walk.levels) and f.pagemap_pfn:
        walk.frame_pfn = f.pagemap_pfn
        walk.frame_source = f"observed: /proc/{ev.pid}/pagemap after the write"
    return walk


def layout(maps: list[MapsLine], address: int | None) -> list[Area]:
    return [Area(m.start, m.end, m.perms, m.path, address is not None and m.start <= address < m.end) for m in maps]


# The contract of every step builder step_<key>(ev, f):
#   takes   the catalogue's Step to fill, the evidence (whatever phase it reached, as long as its catalogue
#           stage is in ev.snapshots) and the Facts picked from it once;
#   fills   the step with values, each observed (with its source), derived (with its arithmetic),
#           modelled (with the kernel version) or unavailable (with the reason and the fix): evidence that
#           a tier could not gather (no root, no BPF objects, another kernel's tracepoints) never raises;
#   raises  ValueError only for evidence that contradicts itself (a phase reached without the mapping's
#           address), which a replay reports as an inconsistent file;
#   reads   nothing of the machine: no /proc, no tracefs, no ELF file (the RIP's ELF facts come in
#           ev.rip), so every journey can be rebuilt from a saved file as any user, anywhere.
STEP_BUILDERS = {StepKey.PROCESS: step_process, StepKey.MMAP: step_mmap, StepKey.TRAP: step_trap, StepKey.RIP: step_rip,
                 StepKey.FLAGS: step_flags, StepKey.VMA: step_vma, StepKey.WALK: step_walk, StepKey.ALLOC: step_alloc,
                 StepKey.PAGEMAP: step_pagemap, StepKey.PTE: step_pte, StepKey.RETURN: step_return}


def _lacking(ev: JourneyEvidence, f: Facts, key: StepKey) -> str | None:
    """Why this evidence cannot fill the step at all (the step then holds the catalogue's unavailable
    value with this reason), or None."""
    if key is StepKey.TRAP and f.fault is None:
        return "no fault on the page was seen; " + FIX_ROOT
    if key is StepKey.FLAGS and (f.fault is None or "error_code" not in f.fault.fields):
        return "needs the error code; " + FIX_ROOT
    if key is StepKey.VMA and f.vma is None:
        return f"no VMA holds 0x{_fault_address(ev):x} in /proc/{ev.pid}/maps"
    if key is StepKey.ALLOC and f.data_alloc is None:
        return ev.unavailable.get("kmem:mm_page_alloc", "no allocation seen in the fault; " + FIX_ROOT)
    if key is StepKey.PAGEMAP and ev.snapshots[Stage.TOUCHED].pagemap is None:
        return "; ".join(ev.snapshots[Stage.TOUCHED].errors) or "not read"
    if key is StepKey.PTE and ((f.data_alloc is None and f.pagemap_pfn is None) or f.vm_flags is None):
        return "needs the PFN and the VMA's flags; " + FIX_ROOT
    return None


def fault_event(ev: JourneyEvidence) -> TraceEvent | None:
    """The fault the journey follows: the first one on the written page between mmap and the write."""
    return Facts(ev).fault


def observation_means(ev: JourneyEvidence) -> list[str]:
    """Which of tracepoints, BPF reads, kprobes and fentry this evidence was observed with, or why not."""
    tracepoints = sorted(n for n, src in ev.event_sources.items() if src.startswith("tracepoint"))
    out = [f"tracepoints: {', '.join(tracepoints)}" if tracepoints else "tracepoints: none ("
           + ev.unavailable.get("tracepoints", "not this tier") + ")"]
    reads = ev.bpf.reads.get("before") if ev.bpf else None
    after = ev.bpf.reads.get("after") if ev.bpf else None
    if reads and reads.objects:
        out.append("BPF reads: page-table entries, mm->map_count, the maple tree, the VMA"
                   + (", the struct page" if after and "refcount" in after.objects else ""))
    elif ev.bpf:
        out.append("BPF reads: page-table entries")
    elif ev.tier == "bpf" and ev.stage != "done" and "bpf" not in ev.unavailable:   # the stepper's header: not yet
        out.append("BPF reads: not yet (the compiled walk reads the page-table entries, the maple tree, the VMA "
                   "and the struct page when the fault is taken)")
    else:
        out.append("BPF reads: none (" + ev.unavailable.get("bpf", "the bpf tier was not used") + ")")
    if ev.kprobe_fault or ev.kprobe_mmap:
        used = (["handle_mm_fault and its handlers"] if ev.kprobe_fault else []) + \
            ([ev.kprobe_mmap.function] if ev.kprobe_mmap else [])
        source = evidence_walk_source(ev)
        out.append(f"{source.probes[0]}: " + ", ".join(used) + f" ({source.engine})")
    else:
        out.append("kprobes: none (" + ev.unavailable.get("kprobes", "the bpf tier was not used") + ")")
    if not (ev.kprobe_fault or ev.kprobe_mmap) or evidence_walk_source(ev).probes[0] != "fentry":
        out.append("fentry: not used" + (" (bpftrace's kprobes observe the same calls)" if not
                                          evidence_walk_source(ev).compiled else ""))
    return out


def build_journey(ev: JourneyEvidence) -> Journey:
    """The steps the evidence so far supports (the target may still be paused at a phase)."""
    j = Journey(ev.tier, ev.kernel_release, ev.pid, list(ev.argv), ev.program.how,
                fault_flag_table=dict(ev.fault_flag_table), fault_flag_source=ev.fault_flag_source)
    f = Facts(ev)
    j.observed_with = observation_means(ev)
    reached: dict[StepKey, Filler | Missing] = {}
    for key, builder in STEP_BUILDERS.items():
        if STEP_DEFS[key].stage in ev.snapshots:
            why = _lacking(ev, f, key)
            reached[key] = partial(builder, ev=ev, f=f) if why is None else Missing(why)
    j.steps = assemble(reached, Source.EXERCISE)
    if Stage.TOUCHED in ev.snapshots:
        j.timeline = timeline(ev, f)
        j.walk = page_walk(ev, f)
        j.layout = layout(ev.snapshots[Stage.TOUCHED].maps, _fault_address(ev))
        j.layout_source = f"/proc/{ev.pid}/maps after the write (observed)"
    if ev.lost_events:
        j.notes.append(f"LOST {ev.lost_events} events: some values may be missing")
    j.notes += [f"{k}: {v}" for k, v in ev.unavailable.items()]
    j.complete = ev.stage == Stage.DONE
    return j
