"""The journey of one arm64 write fault (evidence from capture/arm64_fault.py), step by step.

Pure: evidence in, a Journey out (and the checks the kernel matrix and the tests assert). The steps are
the catalogue's, told in arm64's words: the trap is a data abort taken from EL0, its syndrome (ESR_EL1)
is derived from the fault flags and the walk because no probe can read it for a handled fault; the
PC step disassembles the faulting instruction with capstone's arm64 mode.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..decode.arch_interface import arch_interface
from ..decode.arm64_address import split_arm64_address, translation_levels
from ..decode.arm64_descriptor import DerivedArm64PTE, decode_arm64_descriptor, derive_arm64_anonymous_pte
from ..decode.esr import derive_esr
from ..decode.fault_flags import decode_fault_flags
from ..decode.gfp import builtin_gfp_bits, decode_gfp
from ..decode.pagemap import decode_kpageflags, decode_pagemap_entry
from ..decode.vm_flags import decode_vm_flags
from ..evidence import Arm64FaultEvidence
from .build import decode_vm_fault
from .catalogue import Filler, Missing, assemble
from .steps import Journey, PageWalk, Provenance, Step, WalkLevel, derived, modelled, observed, unavailable
from .vocabulary import Source, Stage, StepKey, seven_ws
from .walk_source import evidence_walk_source


def _at_fault(ev: Arm64FaultEvidence) -> str:
    """Where the values at the fault were read: the engine and handle_mm_fault's probe the evidence records."""
    return evidence_walk_source(ev).at("handle_mm_fault") + " (the fault on the written page)"


def _after(ev: Arm64FaultEvidence) -> str:
    """Where the values after the fault were read: at the program's next system call."""
    return evidence_walk_source(ev).at("sys_enter") + " (the program's next system call: the fault handled, the write retried)"
ARM64_PATH = ("el0_da", "do_mem_abort", "do_translation_fault", "do_page_fault", "handle_mm_fault")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _version(ev: Arm64FaultEvidence) -> tuple[int, int]:
    return (int(ev.kernel_version[0]), int(ev.kernel_version[1]))


def _pa_bits(ev: Arm64FaultEvidence) -> int:
    return 52 if ev.lpa2 else 48


def _pfn_of_pagemap(ev: Arm64FaultEvidence) -> int | None:
    if ev.pagemap is None:
        return None
    entry = decode_pagemap_entry(ev.pagemap, _version(ev))
    return entry.pfn if entry.present else None


def _leaf(reads, level: str = "PTE"):
    return next((r for r in reads if r.level == level), None)


def first_invalid_level(ev: Arm64FaultEvidence) -> int | None:
    """The architectural level of the first invalid descriptor at the trap: where the MMU's walk stopped."""
    split = split_arm64_address(ev.address, ev.va_bits, ev.page_size)
    by_name = {i.level: i.architectural_level for i in split.indices}
    for read in ev.walk_before:
        if not read.value & 1:
            return by_name.get(read.level)
    return None


def derivation(ev: Arm64FaultEvidence) -> DerivedArm64PTE | None:
    """The page descriptor do_anonymous_page() installs for pagemap's frame and the VMA's flags, with its steps."""
    pfn = _pfn_of_pagemap(ev)
    if pfn is None or "vm_flags" not in ev.vma:
        return None
    return derive_arm64_anonymous_pte(pfn, ev.vma["vm_flags"], kernel=_version(ev), granule=ev.page_size,
                                      pa_bits=_pa_bits(ev))


def derived_pte(ev: Arm64FaultEvidence) -> int | None:
    found = derivation(ev)
    return None if found is None else found.value


def arm64_checks(ev: Arm64FaultEvidence) -> list[Check]:
    """What must hold between the sources, each a check that can fail."""
    out = []
    want = ev.mapping_start + ev.offset
    out.append(Check("fault address", ev.address == want,
                     f"handle_mm_fault address 0x{ev.address:x}, mapping 0x{ev.mapping_start:x} + offset 0x{ev.offset:x}"))
    write, user = ev.fault_flag_table.get("FAULT_FLAG_WRITE", 1), ev.fault_flag_table.get("FAULT_FLAG_USER", 0x40)
    out.append(Check("fault flags", bool(ev.flags & write and ev.flags & user),
                     f"flags 0x{ev.flags:x} carry WRITE (0x{write:x}) and USER (0x{user:x})"))
    pfn = _pfn_of_pagemap(ev)
    out.append(Check("alloc = pagemap", pfn is not None and ev.alloc_pfn == pfn,
                     f"mm_page_alloc PFN {_hex(ev.alloc_pfn)}, pagemap PFN {_hex(pfn)}"))
    leaf = _leaf(ev.walk_after)
    read_pfn = None
    if leaf is not None:
        read_pfn = decode_arm64_descriptor(leaf.value, "PTE", _version(ev), ev.va_bits, ev.page_size,
                                           _pa_bits(ev)).pfn
    out.append(Check("descriptor = pagemap", pfn is not None and read_pfn == pfn,
                     f"PTE read {_hex(leaf.value if leaf else None)} → PFN {_hex(read_pfn)}, pagemap PFN {_hex(pfn)}"))
    want_pte = derived_pte(ev)
    out.append(Check("derived = read", want_pte is not None and leaf is not None and want_pte == leaf.value,
                     f"derived {_hex(want_pte)}, read {_hex(leaf.value if leaf else None)}"))
    if ev.perf_address is not None:     # captured since the perf event joined the arm64 capture
        out.append(Check("perf = kprobe", ev.perf_address == ev.address and ev.perf_ip == ev.pc,
                         f"perf sample address {_hex(ev.perf_address)} ip {_hex(ev.perf_ip)}; kprobe address "
                         f"{_hex(ev.address)} PC {_hex(ev.pc)}"))
    path = [f for f in ARM64_PATH if any(line.startswith(f + "+") for line in ev.kernel_stack)]
    out.append(Check("arm64 path", "do_mem_abort" in path and "el0_da" in path,
                     "kernel stack at handle_mm_fault: " + " → ".join(path or ["none of " + ", ".join(ARM64_PATH)])))
    return out


def _hex(value: int | None) -> str:
    return "none" if value is None else f"0x{value:x}"


class _Arm64Steps:
    """The arm64 exercise's steps, one filler each (the catalogue titles them in arm64's words)."""

    def __init__(self, ev: Arm64FaultEvidence, j: Journey):
        self.ev, self.j, self.version = ev, j, _version(ev)
        self.arch = arch_interface(ev.arch, translation_levels(ev.va_bits, ev.page_size), va_bits=ev.va_bits,
                                   granule=ev.page_size, pa_bits=_pa_bits(ev))
        self.esr_level = first_invalid_level(ev)
        self.after = {r.level: r for r in ev.walk_after}
        self.at_fault_src, self.after_src = _at_fault(ev), _after(ev)

    def fillers(self) -> dict[StepKey, Filler | Missing]:
        ev = self.ev
        rip = self.rip if ev.instruction else Missing(ev.unavailable.get("instruction", "not read"))
        return {StepKey.MMAP: self.mmap, StepKey.TRAP: self.trap, StepKey.RIP: rip, StepKey.FLAGS: self.flags,
                StepKey.WALK: self.walk, StepKey.ALLOC: self.alloc, StepKey.PAGEMAP: self.pagemap,
                StepKey.PTE: self.pte, StepKey.RETURN: self.result}

    def _descriptor(self, value: int, level: str):
        ev = self.ev
        return decode_arm64_descriptor(value, level, self.version, ev.va_bits, ev.page_size, _pa_bits(ev))

    def mmap(self, s: Step) -> None:
        ev, version = self.ev, self.version
        s.values += [observed("mapping start", ev.mapping_start, "the exercise program's mapped line (its mmap's return)"),
                     observed("VMA", f"0x{ev.vma.get('vm_start', 0):x}-0x{ev.vma.get('vm_end', 0):x}",
                              self.at_fault_src + ": vma->vm_start, vm_end")]
        if "vm_flags" in ev.vma:
            word = decode_vm_flags(ev.vma["vm_flags"], version, ev.arch)
            s.values.append(observed("vm_flags", ev.vma["vm_flags"], self.at_fault_src + "; " + word.table_source,
                                     display=f"0x{ev.vma['vm_flags']:x} = " + " | ".join(word.names)))

    def trap(self, s: Step) -> None:
        ev = self.ev
        s.values.append(observed("faulting address (FAR_EL1)", ev.address, self.at_fault_src + ": handle_mm_fault's address"))
        s.values.append(observed("PC (ELR_EL1)", ev.pc, self.at_fault_src + ": the saved user registers (struct user_pt_regs)"))
        if ev.perf_address is not None:
            s.values.append(observed("perf sample: address, IP", f"0x{ev.perf_address:x}, 0x{ev.perf_ip or 0:x}",
                                     "the software page-fault event (PERF_SAMPLE_ADDR, PERF_SAMPLE_IP), recorded by "
                                     "do_page_fault: the same fault seen a second way"))
            if ev.perf_kernel_chain:
                s.evidence += ["perf call chain (kernel):"] + ev.perf_kernel_chain
            # the event is raised with the user's registers, so its chain is the program's own: PC first
            s.evidence += ["perf call chain (user):"] + [f"0x{a:x}" for a in ev.perf_user_chain]
        else:
            s.values.append(unavailable("perf sample: address, IP", ev.unavailable.get("perf", "not captured")))
        write = bool(ev.flags & ev.fault_flag_table.get("FAULT_FLAG_WRITE", 1))
        instruction = bool(ev.flags & ev.fault_flag_table.get("FAULT_FLAG_INSTRUCTION", 0x100))
        user = bool(ev.flags & ev.fault_flag_table.get("FAULT_FLAG_USER", 0x40))
        syndrome = derive_esr(write, instruction, user, self.esr_level)
        s.values.append(derived("ESR_EL1", syndrome.value, "derived from the fault flags (EC, WnR) and the walk at the trap "
                                "(the level of the first invalid descriptor): no probe can read ESR_EL1 for a handled fault",
                                list(syndrome.derivations) + [f"assumed: {a}" for a in syndrome.assumed],
                                display=f"0x{syndrome.value:x} ({syndrome.syndrome.summary.split(' = ', 1)[-1]})"))
        # At handle_mm_fault's first instruction its caller's return address is still in the link register, so
        # that stack lacks do_page_fault; the allocation's stack, deeper in, shows the whole path.
        fullest = ev.alloc_stack if any(line.startswith("do_page_fault+") for line in ev.alloc_stack) else ev.kernel_stack
        path = [line for line in fullest if line.split("+")[0] in ARM64_PATH]
        s.evidence += ["kernel stack at handle_mm_fault (innermost first):"] + ev.kernel_stack
        s.ws = seven_ws(
            which="seen" + (" (in the allocation's stack)" if fullest is ev.alloc_stack else "") + ": "
                         + (" ← ".join(p.split("+")[0] for p in path) or "no stack was printed"),
        )

    def rip(self, s: Step) -> None:
        ev = self.ev
        text = _disassemble(bytes.fromhex(ev.instruction), ev.pc)
        s.values.append(observed("instruction bytes", ev.instruction, f"/proc/{ev.pid}/mem at PC",
                                 display=" ".join(ev.instruction[i:i + 2] for i in range(0, 8, 2))))
        s.values.append(derived("instruction", text, "capstone, arm64 mode (AArch64: 4-byte instructions)"))
        s.values.append(observed("mapping of PC", ev.instruction_path, "/proc/PID/maps") if ev.instruction_path else
                        unavailable("mapping of PC", "no line of /proc/PID/maps held the PC"))

    def flags(self, s: Step) -> None:
        ev = self.ev
        word = decode_fault_flags(ev.flags, ev.fault_flag_table, ev.fault_flag_source)
        s.values.append(observed("flags", ev.flags, self.at_fault_src + ": handle_mm_fault's flags; " + ev.fault_flag_source,
                                 display=f"0x{ev.flags:x} = " + " | ".join(word.names)))

    def walk(self, s: Step) -> None:
        ev = self.ev
        split = split_arm64_address(ev.address, ev.va_bits, ev.page_size)
        pgd_physical = ev.pgd_virtual - ev.linear_offset if ev.linear_offset is not None and ev.pgd_virtual else None
        walk = PageWalk(ev.address, pgd_physical,
                        f"derived: mm->pgd 0x{ev.pgd_virtual:x} − the linear-map offset (TTBR0_EL1 holds this address, "
                        "with the ASID in its bits 63..48; no probe reads the register)" if pgd_physical is not None
                        else "unavailable: the linear-map offset was not derived",
                        page_size=ev.page_size, **self.arch.walk_shape())  # type: ignore[arg-type]
        before, after = {r.level: r for r in ev.walk_before}, self.after
        for index in split.indices:
            b, a = before.get(index.level), after.get(index.level)
            seen = a or b
            table = seen.table_physical if seen is not None else None
            walk.levels.append(WalkLevel(index.level, index.index, table, a.value if a else None, b.value if b else None,
                                         Provenance.OBSERVED, self.at_fault_src + " and " + self.after_src))
            if a is not None:
                d = self._descriptor(a.value, index.level)
                s.values.append(observed(f"{index.level} (level {index.architectural_level}) [{index.index}]", a.value,
                                         self.after_src + f"; table at physical 0x{a.table_physical:x}",
                                         display=f"0x{a.value:016x}: {d.kind.value}"))
            if b is not None and (a is None or b.value != a.value):
                d = self._descriptor(b.value, index.level)
                s.values.append(observed(f"{index.level} at the trap", b.value, self.at_fault_src,
                                         display=f"0x{b.value:016x}: {d.kind.value}"))
        leaf = after.get("PTE")
        if leaf is not None:
            d = self._descriptor(leaf.value, "PTE")
            if d.pfn is not None:
                walk.frame_pfn, walk.frame_source = d.pfn, "derived: the output address of the page descriptor"
        self.j.walk = walk
        if ev.linear_offset is not None:
            s.values.append(derived("linear-map offset", ev.linear_offset, ev.linear_how))
        s.derivations += list(split.derivations)

    def alloc(self, s: Step) -> None:
        ev, version = self.ev, self.version
        if ev.alloc_pfn is not None:
            if ev.gfp_table:
                gfp_bits, source = ev.gfp_table, ev.gfp_source
            else:   # an older capture: the built-in table keyed to its version, said so
                gfp_bits, what, holds = builtin_gfp_bits(version)
                source = (f"modelled: built-in table of {what}, for kernel {version[0]}.{version[1]}"
                          + ("" if holds else ", the nearest: it may not hold") + "; the capture kept no GFP table")
            gfp = decode_gfp(ev.alloc_gfp or 0, gfp_bits, source)
            s.values += [observed("PFN", ev.alloc_pfn, "tracepoint kmem:mm_page_alloc in the fault"),
                         observed("order", ev.alloc_order, "tracepoint kmem:mm_page_alloc"),
                         observed("GFP flags", ev.alloc_gfp, "tracepoint kmem:mm_page_alloc; " + gfp.flags.table_source,
                                  display=f"0x{ev.alloc_gfp:x} = {gfp.symbolic}")]
            s.evidence += ["allocation stack:"] + ev.alloc_stack
        else:
            s.values.append(unavailable("PFN", "no movable allocation was seen in the fault"))

    def pagemap(self, s: Step) -> None:
        ev, version = self.ev, self.version
        pfn = _pfn_of_pagemap(ev)
        if ev.pagemap is not None:
            s.values.append(observed("pagemap entry", ev.pagemap, f"/proc/{ev.pid}/pagemap, the entry of the written page",
                                     display=f"0x{ev.pagemap:016x}"))
        s.values.append(observed("PFN", pfn, f"/proc/{ev.pid}/pagemap") if pfn is not None else
                        unavailable("PFN", "the page was not present in pagemap"))
        if ev.kpageflags is not None:
            flags = decode_kpageflags(ev.kpageflags, version)
            s.values.append(observed("kpageflags", ev.kpageflags, "/proc/kpageflags", display=" | ".join(flags.names)))

    def pte(self, s: Step) -> None:
        ev, version = self.ev, self.version
        proof = derivation(ev)
        leaf = self.after.get("PTE")
        if leaf is not None:
            d = self._descriptor(leaf.value, "PTE")
            s.values.append(observed("page descriptor", leaf.value, self.after_src, display=f"0x{leaf.value:016x}"))
            s.derivations += list(d.derivations)
        if proof is not None:
            s.values.append(modelled("derived descriptor", proof.value, "arm64 protection_map and do_anonymous_page() for "
                                     f"kernel {version[0]}.{version[1]}", list(proof.derivations),
                                     display=f"0x{proof.value:016x}"))

    def result(self, s: Step) -> None:
        ev, source = self.ev, evidence_walk_source(self.ev)
        if ev.retval is not None:
            s.values.append(observed("handle_mm_fault returned", ev.retval,
                                     f"{source.engine} at {source.probes[1]} handle_mm_fault",
                                     display="; ".join(decode_vm_fault(ev.retval, ev.kernel_enums.get("vm_fault_reason", {})))))
            s.values.append(observed("time in handle_mm_fault", ev.duration_ns, f"{source.clock} at entry and return",
                                     display=f"{(ev.duration_ns or 0) / 1000:.1f} µs"))


def build_arm64_journey(ev: Arm64FaultEvidence) -> Journey:
    j = Journey("bpf", ev.kernel_release, ev.pid, ev.program.split(), ev.program)
    j.notes.append(f"arm64 ({ev.machine}), {ev.va_bits}-bit virtual addresses, {ev.page_size // 1024} KiB pages: "
                   f"{ev.translation_source}")
    j.notes.append("observed through kprobes and tracepoints: arm64 kernels of this age have no "
                   "exceptions:page_fault_user tracepoint, and do_mem_abort refuses kprobes")
    j.observed_with = [_at_fault(ev), _after(ev), "tracepoint kmem:mm_page_alloc", "/proc/PID/pagemap, /proc/kpageflags"]
    steps = _Arm64Steps(ev, j)
    j.steps = assemble(steps.fillers(), Source.ARM64_EXERCISE, ev.arch, Stage.DONE)
    esr_level = steps.esr_level
    checks = arm64_checks(ev)
    j.notes += [f"{'✓' if c.ok else '✗'} {c.name}: {c.detail}" for c in checks]
    j.complete = all(c.ok for c in checks)
    if esr_level is not None and esr_level < 3:
        j.notes.append(f"the walk stopped at level {esr_level} at the trap: the tables below did not exist yet")
    if ev.retval is None:
        j.notes.append("no return from handle_mm_fault was seen")
    return j


def _disassemble(code: bytes, address: int) -> str:
    import capstone
    md = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    for insn in md.disasm(code, address):
        return f"{insn.mnemonic} {insn.op_str}".strip()
    return f"(capstone does not decode {code.hex()})"
