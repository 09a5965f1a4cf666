"""The journey of one fault of any program (evidence from capture/program_fault.py), step by step.

Every step that applies to a fault the tool does not control; a step that does not apply says why.
Pure: evidence in, a Journey out.
"""

from __future__ import annotations

import re

import numpy as np

from ..decode.arch_interface import arch_interface
from ..decode.pagemap import decode_kpageflags, decode_pagemap_entry
from ..decode.pte import EntryKind, decode_pte
from ..decode.vm_flags import decode_vm_flags
from ..evidence import MapsLine, ProgramFaultEvidence, TraceEvent
from .build import _maple_values, _struct_page_values
from .catalogue import Filler, Missing, assemble
from .fault_classes import (
    ALLOC,
    CACHE_ADD,
    FAULT,
    GFP_MOVABLE,
    HOW,
    SIGNAL,
    SPECIAL_MAPPINGS,
    FaultClass,
    FaultEvents,
    MappingKind,
    classify_faults,
)
from .program_drawing import program_layout, program_timeline, program_walk
from .steps import Journey, Step, Value, derived, observed, unavailable
from .vocabulary import FaultKind, Source, Stage, StepKey
from .walk_source import evidence_walk_source

# Which class a --kind asks for (major is a file fault that read from disk).
KIND_CLASSES: dict[FaultKind, set[FaultClass]] = {
    FaultKind.ANON: {FaultClass.ANON_NEW}, FaultKind.ZERO: {FaultClass.ZERO_PAGE},
    FaultKind.COW: {FaultClass.COW_COPY, FaultClass.COW_REUSE},
    FaultKind.FILE: {FaultClass.FILE_HIT, FaultClass.FILE_MAJOR, FaultClass.FILE_READAHEAD},
    FaultKind.MAJOR: {FaultClass.FILE_MAJOR}, FaultKind.SWAP: {FaultClass.SWAP_IN}, FaultKind.THP: {FaultClass.THP},
    FaultKind.STACK: {FaultClass.STACK_GROWTH}, FaultKind.SEGV: {FaultClass.SIGSEGV, FaultClass.SIGBUS},
    # taken in kernel mode: whatever the fault then did (checked afterwards by its mode, not its class)
    FaultKind.KERNEL: set(FaultClass)}
FAULT_EVENTS = ("exceptions:page_fault_user", "exceptions:page_fault_kernel")
# a system call's function in a kernel call chain: the frame the system call dispatcher called (x86-64's
# do_syscall_64 / x64_sys_call, arm64's invoke_syscall): the entry (__x64_sys_read, __arm64_sys_read, the ia32
# ones), its __do_sys_/__se_sys_ body, or the helper the entry tail-called and left no frame of its own for
# (read's ksys_read, readv's do_readv)
_DISPATCHERS = ("do_syscall_64", "x64_sys_call", "do_int80_syscall_32", "invoke_syscall", "el0_svc_common")
_SYSCALL_FRAME = re.compile(r"^(?:__x64_sys|__ia32_sys|__arm64_sys|__do_sys|__se_sys|__x64_compat_sys|ksys|do)_"
                            r"(\w+?)(?:\.\w+)*(?:\+|$)")


def kind_classes(kind: str) -> set[FaultClass]:
    """The classes a --kind word may turn out to be (none for a word that is no FaultKind: a damaged file)."""
    return next((classes for k, classes in KIND_CLASSES.items() if k == kind), set())


def _window(ev: ProgramFaultEvidence) -> list[TraceEvent]:
    """The chosen thread's events from its fault to its next fault (what the fault did).

    The fault's own perf sample is stamped after the walk's program on the same tracepoint ran (tens of µs
    later here), so the window starts at the first sample of that thread and address from the walk's time on.
    """
    faults = sorted((e for e in ev.events if e.name in FAULT_EVENTS and e.pid == ev.tid), key=lambda e: e.time_ns)
    own = _own_sample(ev)
    start = own.time_ns if own is not None else ev.fault_ns
    end = next((e.time_ns for e in faults if e.time_ns > start), 1 << 63)
    window = [e for e in ev.events if e.pid == ev.tid and min(start, ev.fault_ns) <= e.time_ns < end]
    if ev.kernel_mode:
        # inside a system call the window holds the call's own work too (a read's readahead, its page-cache
        # hits): the fault's are those whose kernel call chain passes through the exception (or has none)
        window = [e for e in window if not e.kernel_chain or e is own
                  or any(fn.startswith(("asm_exc_page_fault", "exc_page_fault")) for _a, fn in e.kernel_chain)]
    return window


def syscall_of_chain(chain: list[tuple[int, str]]) -> str | None:
    """The system call a kernel call chain (leaf first: address, "function+offset") runs in: the frame the
    dispatcher called, read as __x64_sys_NAME, ksys_NAME or do_NAME; None when no frame names one."""
    names = [fn for _a, fn in chain]
    for i, fn in enumerate(names):
        if i and fn.split("+")[0] in _DISPATCHERS:
            m = _SYSCALL_FRAME.match(names[i - 1])
            if m:
                return m.group(1)
    return None


def _own_sample(ev: ProgramFaultEvidence) -> TraceEvent | None:
    """The perf sample of the chosen fault itself: its tracepoint's, the same thread and address, the nearest in
    time to the walk's read (perf's sample may be stamped before or after the walk's program on the same
    tracepoint ran, tens of µs apart)."""
    name = FAULT_EVENTS[1] if ev.kernel_mode else FAULT_EVENTS[0]
    same = [e for e in ev.events if e.name == name and e.pid == ev.tid and e.fields.get("address") == ev.address]
    return min(same, key=lambda e: abs(e.time_ns - ev.fault_ns), default=None)


def _mapping(maps: list[MapsLine], address: int) -> MapsLine | None:
    return next((m for m in maps if m.start <= address < m.end), None)


def classify_chosen(ev: ProgramFaultEvidence) -> tuple[FaultClass, str, list[TraceEvent]]:
    """The chosen fault's class from its window's events, how it was decided, and those events."""
    window = _window(ev)
    kinds = {"kmem:mm_page_alloc": ALLOC, "filemap:mm_filemap_add_to_page_cache": CACHE_ADD,
             "signal:signal_generate": SIGNAL}
    rows = [(FAULT, ev.tid, ev.fault_ns, ev.address, ev.error_code, 0)]
    for e in window:
        if e.name == "filemap:mm_filemap_add_to_page_cache":   # which file and page (and folio order) was added
            rows.append((CACHE_ADD, e.pid, e.time_ns, e.fields.get("index", -1), e.fields.get("order", 0),
                         e.fields.get("i_ino", 0)))
        elif e.name in kinds:
            first = e.fields.get("order", e.fields.get("sig", 0))
            second = e.fields.get("gfp_flags", e.fields.get("code", 0))
            rows.append((kinds[e.name], e.pid, e.time_ns, first, second, 0))
    kind, tid, time, a, b, inode = (np.array(c, dtype=np.int64) for c in zip(*rows))
    m = _mapping(ev.maps, ev.address)
    stack = [x.start for x in ev.maps if x.path == "[stack]"]
    mk = None if m is None else MappingKind(anonymous=not m.path.startswith("/"), private=m.perms[3:4] != "s",
                                            stack_start=None, special=m.path in SPECIAL_MAPPINGS,
                                            file_index=(m.offset + ev.address - m.start) >> 12 if m.path.startswith("/")
                                            else -1, inode=m.inode)
    result = classify_faults(FaultEvents(kind, tid, time.astype(np.uint64), a.astype(np.uint64), b.astype(np.uint64),
                                         inode=inode.astype(np.uint64)), [mk])
    cls = result.classes[0]
    if cls is FaultClass.ANON_NEW and m is not None and m.path == "[stack]" and stack and ev.bpf:
        before = ev.bpf.reads["before"].objects
        if "vma" not in before or not before.get("vm_start", 0) <= ev.address:
            cls = FaultClass.STACK_GROWTH   # at entry no VMA held the address; after, the stack's did
    how = HOW[cls] + (f" ({result.detail[0]})" if result.detail[0] else "")
    if ev.lost_events:
        # a class decided by what is absent from the window (no allocation, nothing read) rests on events
        # that may be among the dropped ones
        how += (f"; {ev.lost_events} events were lost while tracing, so what this fault did may be missing "
                "from its window")
    return cls, how, window


class _ProgramSteps:
    """The steps of one fault of any program, one filler each."""

    def __init__(self, ev: ProgramFaultEvidence):
        self.ev = ev
        self.arch = arch_interface(ev.arch, ev.paging_levels)
        self.cls, self.how, self.window = classify_chosen(ev)
        # the engine and hooks that read the walk, as the evidence records them (bpftrace in older captures)
        self.source = evidence_walk_source(ev)
        self.hook = "page_fault_kernel" if ev.kernel_mode else "page_fault_user"
        self.at_fault = self.source.at(self.hook) + " (the chosen fault)"
        self.after = (f"{self.source.at('sys_enter')} or {self.source.hook('page_fault_user')} (the thread's "
                      "next kernel entry after the fault)")

    def fillers(self) -> dict[StepKey, Filler | Missing]:
        return {StepKey.SELECTED: self.selected, StepKey.TRAP: self.trap, StepKey.RIP: self.rip,
                StepKey.FLAGS: self.flags, StepKey.VMA: self.vma, StepKey.ALLOC: self.alloc,
                StepKey.WALK: self.walk if self.ev.bpf else Missing(self.ev.unavailable.get("bpf", "the walk read nothing")),
                StepKey.CLASS: self.kind, StepKey.PTE: self.pte, StepKey.RETURN: self.result}

    def selected(self, s: Step) -> None:
        ev, cls = self.ev, self.cls
        s.values.append(observed("selector", ev.selector_words, f"pagefault journey's selector, applied by {self.source.engine}"))
        s.values.append(observed("fault number", ev.nth, self.at_fault + ": the program's faults counted in the kernel",
                                 display=str(ev.nth)))
        s.values.append(observed("thread", ev.tid, self.at_fault, display=str(ev.tid)))
        if ev.selector == "kind" and ev.selector_value == FaultKind.KERNEL:
            user_bit = bool(ev.error_code & 4)
            s.values.append(derived("kind checked afterwards", ev.kernel_mode and not user_bit, "the hook that met "
                                    "the fault and the error code's user bit (0x4: clear for a fault taken in kernel mode)",
                                    [f"met at exceptions:{self.hook}; error code 0x{ev.error_code:x}: user bit "
                                     f"{'set' if user_bit else 'clear'}"]))
        elif ev.selector == "kind":
            wanted = kind_classes(ev.selector_value)
            s.values.append(derived("kind checked afterwards", cls in wanted, "the class from the fault's events (below) "
                                    f"against --kind {ev.selector_value}",
                                    [f"the fault looked like {ev.selector_value} at entry; its events say {cls.value}"
                                     + ("" if cls in wanted else ": NOT the kind asked for (at entry a fault's outcome is "
                                        "only guessed from its PTE and VMA)")]))

    def trap(self, s: Step) -> None:
        ev, arch = self.ev, self.arch
        code = arch.decode_syndrome(ev.error_code)
        s.values += [observed(f"faulting address ({arch.address_register})", ev.address, self.at_fault + " args->address",
                              display=f"0x{ev.address:x}"),
                     observed(arch.pc_register, ev.ip, self.at_fault + " args->ip", display=f"0x{ev.ip:x}"),
                     observed(arch.syndrome_register, ev.error_code, self.at_fault + " args->error_code",
                              display=f"0x{ev.error_code:x}: {code.summary}", derivation=list(code.derivations))]
        s.values += self._mode_values()

    def _kernel_rip(self) -> Value:
        """A kernel-mode fault's RIP is the kernel's: the function the fault's own call chain has below the
        exception entry (asm_exc_page_fault), named by /proc/kallsyms."""
        own = _own_sample(self.ev)
        frames = [fn for _a, fn in own.kernel_chain] if own is not None else []
        below = next((frames[i + 1] for i, fn in enumerate(frames[:-1]) if fn.startswith("asm_exc_page_fault")), None)
        if below is None:
            return unavailable("where", "the RIP is the kernel's (a fault taken in kernel mode), and no call chain "
                               "of the fault's exceptions:page_fault_kernel sample names its function")
        return observed("where", f"in the kernel: {below}", "the kernel call chain of the fault's "
                        "exceptions:page_fault_kernel sample via perf, its frame below asm_exc_page_fault, named by "
                        "/proc/kallsyms", derivation=[" ← ".join(f.split("+")[0] for f in frames[:12])])

    def _mode_values(self) -> list[Value]:
        """User or kernel mode (the tracepoint that met the fault), and for kernel mode the system call."""
        ev = self.ev
        if not ev.kernel_mode:
            return [observed("taken in", "user mode (the program's own instruction)", f"{self.at_fault}: the kernel "
                             "traces page_fault_user for a fault whose saved registers are user mode (user_mode(regs))")]
        values = [observed("taken in", "kernel mode, on a user address (the kernel touching the program's memory "
                           "for it)", f"{self.at_fault}: the kernel traces page_fault_kernel for a fault whose saved "
                           "registers are not user mode (arch/x86/mm/fault.c); the RIP above is the kernel's")]
        own = _own_sample(ev)
        name = syscall_of_chain(own.kernel_chain) if own is not None else None
        nr = f"number {ev.syscall_nr}" if ev.syscall_nr >= 0 else "no number saved"
        frames = [fn.split("+")[0] for _a, fn in own.kernel_chain] if own is not None else []
        if name:
            values.append(observed("system call", f"{name} ({nr})", "the kernel call chain of the fault's "
                                   "exceptions:page_fault_kernel sample via perf (its system call's frame); the number: "
                                   f"the thread's saved user registers (orig_ax), read by {self.source.engine}",
                                   derivation=[" ← ".join(frames[:12])]))
        elif ev.syscall_nr >= 0:
            values.append(observed("system call", nr, f"the thread's saved user registers (orig_ax) at the fault, "
                                   f"read by {self.source.engine}; no call chain named it"))
        else:
            values.append(unavailable("system call", "the thread was in no system call (orig_ax -1) and no call "
                                      "chain names one"))
        return values

    def rip(self, s: Step) -> None:
        ev = self.ev
        if ev.kernel_mode:
            s.values.append(self._kernel_rip())
        elif ev.rip is not None:
            r = ev.rip
            s.values.append(derived("where", r.describe, "RIP − mapping start + file offset → ELF address → symbol",
                                    list(r.derivations)))
            if r.instruction:
                s.values.append(derived("instruction", f"{r.instruction[1]} {r.instruction[2]}",
                                        f"capstone at ELF 0x{r.instruction[0]:x}", [f"bytes {r.instruction[3]}"]))
            s.values.append(derived("source line", f"{r.source_line[0]}:{r.source_line[1]}", "DWARF line table")
                            if r.source_line else unavailable("source line", "no DWARF line information for this "
                                                              "address (a stripped file, or code built without -g): "
                                                              f"{r.describe} is the nearest name"))
        else:
            m = _mapping(ev.maps, ev.ip)
            s.values.append(unavailable("where", f"the RIP is in {m.path or 'anonymous memory' if m else 'no mapping'}: "
                                        "no ELF file to read it back in"))

    def flags(self, s: Step) -> None:
        ev, arch = self.ev, self.arch
        value, how = arch.fault_flags(ev.error_code, ev.fault_flag_table, ev.fault_flag_source, vma_lock=True)
        s.values.append(derived("flags", value, f"from the {arch.syndrome_noun} (observed) as {arch.fault_handler_source} "
                                "does; taken from the source: FAULT_FLAG_DEFAULT and the per-VMA lock path", how))

    def vma(self, s: Step) -> None:
        ev, window = self.ev, self.window
        before = ev.bpf.reads.get("before") if ev.bpf else None
        objs = before.objects if before else {}
        if "vma" in objs and objs["vm_start"] <= ev.address < objs["vm_end"]:
            word = decode_vm_flags(objs["vm_flags"], ev.kernel_version)
            s.values += [observed("VMA", f"[0x{objs['vm_start']:x}, 0x{objs['vm_end']:x})", self.at_fault + ": the maple-tree "
                                  "search's result, read through BTF"),
                         observed("vm_flags", objs["vm_flags"], self.at_fault, display=f"0x{objs['vm_flags']:x} = "
                                  f"{' | '.join(word.names)}"),
                         observed("backing", "a file" if objs["vm_file"] else "anonymous memory", self.at_fault + ": vm_file",
                                  display=f"vm_file 0x{objs['vm_file']:x}")]
        else:
            s.values.append(derived("VMA", "none held the address when the fault entered the kernel", self.at_fault +
                                    ": the maple-tree search ended in a gap",
                                    ["a fault below the stack grows it; anywhere else it is SIGSEGV (SEGV_MAPERR)"]))
        m = _mapping(ev.maps, ev.address)
        if m is not None:
            s.values.append(observed("mapping after the fault", f"{m.start:x}-{m.end:x} {m.perms} {m.offset:x} {m.path}",
                                     f"/proc/{ev.pid}/maps while {self.source.engine} held the program stopped after the fault"))
            if m.path.startswith("/"):
                page_index = (ev.address - m.start + m.offset) >> 12
                added = [e for e in window if e.name == "filemap:mm_filemap_add_to_page_cache"]
                s.values.append(derived("file page", f"{m.path} page {page_index}", "(address − mapping start + offset) >> 12",
                                        [f"(0x{ev.address:x} − 0x{m.start:x} + 0x{m.offset:x}) >> 12 = {page_index}",
                                         f"page cache before the fault: {'not there: read in' if added else 'there (nothing added)'}"]))
        s.values += _maple_values(ev, ev.address)  # type: ignore[arg-type]

    def walk(self, s: Step) -> None:
        ev, bpf = self.ev, self.ev.bpf
        assert bpf is not None              # fillers(): without the BPF reads the step says why
        for when, src in (("before", self.at_fault), ("after", self.after)):
            read = bpf.reads.get(when)
            for level, entry in (read.entries.items() if read else []):
                p = decode_pte(entry, level, kernel=ev.kernel_version, paging_levels=ev.paging_levels)
                s.values.append(observed(f"{level} entry {when}", entry, src, display=f"0x{entry:016x}: {p.points_to}"))
        s.values.append(derived("direct-map base", bpf.direct_map_base, ev.direct_map_how,
                                display=f"0x{bpf.direct_map_base:x}"))

    def alloc(self, s: Step) -> None:
        cls, window = self.cls, self.window
        allocs = [e for e in window if e.name == "kmem:mm_page_alloc"]
        for a in allocs:
            chain = " → ".join(fn.split("+")[0] for _x, fn in reversed(a.kernel_chain)) or "(no call chain)"
            what = "the fault's page" if a.fields.get("gfp_flags", 0) & GFP_MOVABLE else "a page-table page (not movable)"
            s.values.append(observed(f"allocation: {what}", f"PFN 0x{a.fields.get('pfn', 0):x}, order {a.fields.get('order', 0)}",
                                     f"tracepoint kmem:mm_page_alloc (thread {a.pid}, during the fault)", derivation=[chain]))
        if not allocs:
            s.values.append(derived("allocation", "none", "no mm_page_alloc by the thread during the fault",
                                    [{FaultClass.FILE_HIT: "a file page already in the page cache: no allocation",
                                      FaultClass.ZERO_PAGE: "a read of anonymous memory maps the shared zero page",
                                      FaultClass.COW_REUSE: "the page was exclusive: reused in place",
                                      FaultClass.SIGSEGV: "refused: no page",
                                      FaultClass.SPURIOUS: "nothing was missing"}.get(cls, "none seen")]))

    def kind(self, s: Step) -> None:
        cls = self.cls
        s.values.append(derived("class", cls.value, self.how))

    def pte(self, s: Step) -> None:
        ev = self.ev
        after = ev.bpf.reads.get("after") if ev.bpf else None
        leaf_level, leaf = (list(after.entries.items())[-1] if after and after.entries else (None, None))
        pm = decode_pagemap_entry(ev.pagemap, ev.kernel_version) if ev.pagemap is not None else None
        if leaf is not None and leaf_level is not None:
            p = decode_pte(leaf, leaf_level, kernel=ev.kernel_version, paging_levels=ev.paging_levels)
            what = "a huge page" if p.huge else "the walk stopped here"
            label = "PTE after" if leaf_level == "PTE" else f"{leaf_level} after (the leaf: {what})"
            s.values.append(observed(label, leaf, self.after, display=f"0x{leaf:016x}: {p.kind.value}", derivation=list(p.derivations)))
            if p.kind is EntryKind.PRESENT and p.leaf and p.pfn is not None and pm is not None and pm.pfn:
                pages = {"PTE": 1, "PMD": 512, "PUD": 512 * 512}[leaf_level]
                sub = (ev.address >> 12) & (pages - 1)
                pfn = p.pfn + sub
                s.values.append(derived("PTE's PFN is pagemap's", pfn == pm.pfn, "compare (a huge leaf: its first PFN + the "
                                        "4 KiB page's index inside it)" if pages > 1 else "compare",
                                        ([f"0x{p.pfn:x} + {sub} = 0x{pfn:x}"] if pages > 1 else [])
                                        + [f"0x{pfn:x} {'==' if pfn == pm.pfn else '!='} 0x{pm.pfn:x}"]))
            elif p.kind is EntryKind.PRESENT and p.leaf:
                why = ("/proc was not read while the program was stopped" if pm is None else
                       "pagemap showed no frame when /proc was read: the page was unmapped (or paged out) between the "
                       "walk after the fault and the program's stop")
                s.values.append(unavailable("PTE's PFN is pagemap's", why))
        else:
            s.values.append(unavailable("PTE after", "the thread did not enter the kernel again after the fault (it "
                                        "died of it?), so no walk was read after"))
        if pm is not None:
            s.values.append(observed("pagemap", ev.pagemap, f"/proc/{ev.pid}/pagemap, the program stopped",
                                     display=f"0x{ev.pagemap:016x}: {pm.summary}"))
        if ev.kpageflags is not None:
            kw = decode_kpageflags(ev.kpageflags, ev.kernel_version)
            s.values.append(observed("kpageflags", ev.kpageflags, "/proc/kpageflags", display=" | ".join(kw.names)))
        s.values += _struct_page_values(ev, pm.pfn if pm else None, ev.kpagecount, ev.kpageflags)

    def result(self, s: Step) -> None:
        ev = self.ev
        s.values.append(observed("stopped after the fault", ev.paused, f"{self.source.held} at the thread's next "
                                 "kernel entry; /proc read; SIGCONT"))
        if ev.exit:
            s.values.append(observed("program exit", ev.exit, "waitpid()"))


def build_program_journey(ev: ProgramFaultEvidence) -> Journey:
    j = Journey("bpf", ev.kernel_release, ev.pid, list(ev.argv), f"PID {ev.pid}: {' '.join(ev.argv)}")
    j.steps = assemble(_ProgramSteps(ev).fillers(), Source.PROGRAM, stage=Stage.DONE)
    j.notes += [f"{k}: {v}" for k, v in ev.unavailable.items()]
    # what the HTML view draws: the walk, the address space, the timeline
    j.walk, (j.layout, j.layout_source), j.timeline = program_walk(ev), program_layout(ev), program_timeline(ev, _window(ev))
    j.complete = True
    return j


def values_of(j: Journey) -> dict[str, Value]:
    return {v.label: v for s in j.steps for v in s.values}
