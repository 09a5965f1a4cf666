"""The seed's exercises, set on the person's own fault: each gives the numbers a journey observed (or the
simulator modelled), asks for what follows from them, and holds the derivation to show after a wrong answer.

rip      prove RIP is the faulting instruction: its file offset and the instruction there
flags    derive handle_mm_fault()'s flags from the error code
indices  compute each level's index (and the page offset) from the faulting address
pfn      find the PFN in the pagemap entry
pte      build the PTE the fault installs, from the PFN and the VMA's flags
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..decode.address import split_virtual_address
from ..decode.arch import Arch
from ..decode.arm64_address import split_arm64_address
from ..decode.error_code import decode_error_code
from ..decode.pagemap import PM_PFN_MASK, decode_pagemap_entry
from ..decode.pte import decode_pte
from ..evidence import parse_maps
from .steps import Journey, Provenance, Value
from .vocabulary import StepKey

ORDER = ("rip", "flags", "indices", "pfn", "pte")
TITLES = {
    "rip": "Prove RIP is the faulting instruction",
    "flags": "Derive the fault flags from the error code",
    "indices": "Compute each level's index from the faulting address",
    "pfn": "Find the PFN in the pagemap entry",
    "pte": "Build the PTE that lets the retried instruction succeed",
}
KINDS = {"hex": "hex (0x optional)", "int": "decimal, or hex with 0x", "yesno": "y or n", "word": "one word"}


class AnswerError(ValueError):
    """The answer could not be read as the kind of answer asked for; the message says what is expected."""


def read_answer(text: str, kind: str) -> Any:
    t = text.strip().lower().replace("_", "")
    if not t:
        raise AnswerError("no answer given")
    if kind == "hex":
        t = t[2:] if t.startswith("0x") else t
        if not re.fullmatch(r"[0-9a-f]+", t):
            raise AnswerError(f"{text.strip()!r} is not a hex number")
        return int(t, 16)
    if kind == "int":
        try:
            return int(t, 16) if t.startswith("0x") else int(t, 10)
        except ValueError:
            raise AnswerError(f"{text.strip()!r} is not a number (decimal, or hex with 0x)") from None
    if kind == "yesno":
        if t in ("y", "yes", "true", "1"):
            return True
        if t in ("n", "no", "false", "0"):
            return False
        raise AnswerError("answer y or n")
    return t.split()[0]


@dataclass
class Question:
    prompt: str
    answer: Any
    kind: str                 # hex, int, yesno, word
    derivation: list[str] = field(default_factory=list)   # how this answer follows, shown after a wrong one

    def shown(self, value: Any) -> str:
        if self.kind == "hex":
            return f"0x{value:x}"
        if self.kind == "int":
            return str(value)
        if self.kind == "yesno":
            return "yes" if value else "no"
        return str(value)

    def check(self, text: str) -> bool:
        """True when right; raises AnswerError when the text is not an answer of this kind."""
        return read_answer(text, self.kind) == self.answer


@dataclass
class Exercise:
    key: str
    title: str
    givens: list[tuple[str, str, str]] = field(default_factory=list)   # (what, value, provenance: where from)
    questions: list[Question] = field(default_factory=list)
    confirmation: list[str] = field(default_factory=list)   # what the kernel (or the model) itself showed
    unavailable: str = ""


def _find(j: Journey, key: StepKey, label: str) -> Value | None:
    step = next((s for s in j.steps if s.key == key), None)
    if step is None:
        return None
    return next((v for v in step.values if v.label == label and v.provenance != Provenance.UNAVAILABLE), None)


def _given(v: Value, what: str | None = None) -> tuple[str, str, str]:
    return (what or v.label, v.display, f"{v.provenance}: {v.source}")


def _missing(key: str, what: str, j: Journey, model_why: str = "the simulator's journey does not give it") -> Exercise:
    fix = (f"{model_why}; sudo pagefault exercise runs it on a live fault"
           if j.tier == "model" else "this journey did not get it; pagefault doctor says what is missing")
    return Exercise(key, TITLES[key], unavailable=f"needs {what}: {fix}")


def exercise_rip_arm64(j: Journey) -> Exercise:
    return Exercise("rip", TITLES["rip"], unavailable="on arm64 the journey's PC step reads and disassembles the "
                    "instruction itself; the file-offset proof is written for x86-64 only so far")


def exercise_rip(j: Journey) -> Exercise:
    rip, mapping, offset = _find(j, StepKey.TRAP, "RIP"), _find(j, StepKey.RIP, "mapping holding RIP"), _find(j, StepKey.RIP, "file offset")
    insn = _find(j, StepKey.RIP, "instruction")
    if not (rip and mapping and offset and insn):
        return _missing("rip", "RIP, its mapping and the instruction there", j, "the simulator runs no machine code")
    m = parse_maps(mapping.value)[0]
    mnemonic = insn.value.split()[0]
    e = Exercise("rip", TITLES["rip"])
    e.givens = [_given(rip), _given(mapping, "the mapping holding RIP (start-end perms file-offset dev inode path)")]
    arithmetic = f"0x{rip.value:x} − 0x{m.start:x} + 0x{m.offset:x} = 0x{offset.value:x}"
    elf = _find(j, StepKey.RIP, "ELF address")
    e.questions = [
        Question("At which offset in the file is the instruction RIP points to? (RIP − mapping start + the "
                 "mapping's file offset)", offset.value, "hex", [arithmetic]),
        Question(f"Disassemble {m.path} at that offset (objdump -d, or pagefault's own capstone). Which "
                 "instruction is it? (its mnemonic)", mnemonic, "word",
                 [arithmetic, *(elf.derivation if elf else []), *insn.derivation]),
    ]
    e.confirmation = [f"instruction: {insn.display} ({insn.source})"]
    line = _find(j, StepKey.RIP, "source line")
    if line:
        e.confirmation.append(f"source line: {line.display}")
    e.confirmation.append("a store whose destination is memory: the write the CPU could not finish")
    return e


def exercise_flags_arm64(j: Journey) -> Exercise:
    return Exercise("flags", TITLES["flags"], unavailable="on arm64 the flags are observed at handle_mm_fault "
                    "and ESR_EL1 is derived from them (no probe reads it): there is no error code to start from")


def exercise_flags(j: Journey) -> Exercise:
    code, flags = _find(j, StepKey.TRAP, "error code"), _find(j, StepKey.FLAGS, "flags")
    if not (code and flags):
        return _missing("flags", "the error code and the flags derived from it", j)
    d = decode_error_code(code.value)
    e = Exercise("flags", TITLES["flags"])
    e.givens = [_given(code),
                ("x86 error-code bits", "P 0x1 (page present), W 0x2 (write), U 0x4 (user mode), I 0x10 (fetch)",
                 "modelled: arch/x86/include/asm/trap_pf.h"),
                ("enum fault_flag", ", ".join(f"{n.removeprefix('FAULT_FLAG_')} 0x{v:x}" for n, v in
                                              sorted(j.fault_flag_table.items(), key=lambda kv: kv[1])),
                 j.fault_flag_source),
                ("rules of do_user_addr_fault()", "flags start as FAULT_FLAG_DEFAULT (ALLOW_RETRY | KILLABLE | "
                 "INTERRUPTIBLE); | WRITE for a write, | INSTRUCTION for a fetch, | USER from user mode; the "
                 "per-VMA-lock path hands handle_mm_fault() flags | VMA_LOCK", "modelled: arch/x86/mm/fault.c")]
    bits = list(d.bit_meanings)
    e.questions = [Question("Was it a write? (is W set in the error code)", bool(code.value & 2), "yesno",
                            [f"0x{code.value:x} & 0x2 = 0x{code.value & 2:x}", *bits]),
                   Question("Did it come from user mode? (is U set)", bool(code.value & 4), "yesno",
                            [f"0x{code.value:x} & 0x4 = 0x{code.value & 4:x}", *bits]),
                   Question("Which flags value does handle_mm_fault() get? (hex)", flags.value, "hex",
                            list(flags.derivation))]
    e.confirmation = [f"flags: {flags.display} ({flags.provenance}: {flags.source})"]
    return e


def exercise_indices_arm64(j: Journey) -> Exercise:
    addr = _find(j, StepKey.TRAP, "faulting address (FAR_EL1)")
    if not addr or j.walk is None:
        return _missing("indices", "the faulting address", j)
    split = split_arm64_address(addr.value, j.walk.va_bits, j.walk.page_size)
    shift = split.indices[-1].shift
    e = Exercise("indices", TITLES["indices"])
    e.givens = [_given(addr), ("translation", f"{split.va_bits}-bit virtual addresses, {split.granule // 1024} KiB "
                               f"pages: {split.levels} levels", "observed: the kernel's configuration"),
                ("rule", f"each level's index is {shift - 3} bits of the address, the PTE's bits "
                 f"{shift + shift - 4}..{shift}, each level above the next {shift - 3} bits up; the page offset is bits "
                 f"{shift - 1}..0", "modelled: Arm ARM D8.2 (VMSAv8-64 translation)")]
    lines = split.derivations[1 + (1 if split.tag else 0):]
    e.questions = [Question(f"{i.level} index?", i.index, "int", [lines[n]]) for n, i in enumerate(split.indices)]
    e.questions.append(Question("page offset? (hex)", split.page_offset, "hex", [lines[len(split.indices)]]))
    if any(lv.entry is not None for lv in j.walk.levels):
        e.confirmation = ["the kernel's tables, read at these indices: " + ", ".join(
            f"{lv.level}[{lv.index}] = 0x{lv.entry:x}" for lv in j.walk.levels if lv.entry is not None)]
    return e


def exercise_pte_arm64(j: Journey) -> Exercise:
    pfn, vm_flags = _find(j, StepKey.ALLOC, "PFN"), _find(j, StepKey.MMAP, "vm_flags")
    built, read = _find(j, StepKey.PTE, "derived descriptor"), _find(j, StepKey.PTE, "page descriptor")
    if not (pfn and vm_flags and built) or not isinstance(pfn.value, int):
        return _missing("pte", "the PFN, the VMA's flags and the derived descriptor", j)
    e = Exercise("pte", TITLES["pte"])
    e.givens = [_given(pfn), _given(vm_flags),
                ("descriptor bits", "VALID|PAGE 0x3, USER (AP[1]) 0x40, RDONLY (AP[2]) 0x80, SH 0x300, AF 0x400, "
                 "nG 0x800, DBM = PTE_WRITE bit 51, PXN bit 53, UXN bit 54, PTE_DIRTY bit 55; the output address "
                 "is PFN << 12", "modelled: arch/arm64/include/asm/pgtable-hwdef.h, pgtable-prot.h"),
                ("rules", "a private writable VMA's vm_page_prot is PAGE_READONLY (VALID|PAGE|AF|SH|USER|RDONLY|nG|"
                 "PXN|UXN); do_anonymous_page() applies pte_mkdirty (DIRTY) then pte_mkwrite (DBM, and RDONLY "
                 "cleared)", "modelled: mm/memory.c, arch/arm64/mm/mmap.c, arch/arm64/include/asm/pgtable.h")]
    e.questions = [Question("Which descriptor does the fault install? (hex)", built.value, "hex", list(built.derivation))]
    if read:
        e.confirmation = [f"the descriptor read from the table ({read.source}): {read.display}"]
    return e


def exercise_indices(j: Journey) -> Exercise:
    addr, levels = _find(j, StepKey.TRAP, "faulting address (CR2)"), _find(j, StepKey.WALK, "paging levels")
    if not (addr and levels):
        return _missing("indices", "the faulting address and the paging mode", j)
    split = split_virtual_address(addr.value, levels.value)
    e = Exercise("indices", TITLES["indices"])
    e.givens = [_given(addr), _given(levels),
                ("rule", "each level's index is 9 bits of the address: PGD bits 47..39 (56..48 with 5 levels), "
                 "then 9 bits lower per level down to the PTE's bits 20..12; the page offset is bits 11..0",
                 "modelled: arch/x86 paging")]
    lines = split.derivations
    e.questions = [Question(f"{i.level} index? (0–511)", i.index, "int", [lines[n]]) for n, i in enumerate(split.indices)]
    e.questions.append(Question("page offset? (hex)", split.page_offset, "hex", [lines[len(split.indices)]]))
    if j.walk and any(lv.entry is not None for lv in j.walk.levels):
        e.confirmation = ["the kernel's tables, read at these indices: " + ", ".join(
            f"{lv.level}[{lv.index}] = 0x{lv.entry:x}" for lv in j.walk.levels if lv.entry is not None)]
    return e


def exercise_pfn(j: Journey) -> Exercise:
    pm = _find(j, StepKey.PAGEMAP, "pagemap entry")
    if not pm or not isinstance(pm.value, int) or not pm.value >> 63:
        return _missing("pfn", "a present pagemap entry (root reads PFNs; others see 0)", j)
    pfn = pm.value & PM_PFN_MASK
    e = Exercise("pfn", TITLES["pfn"])
    e.givens = [_given(pm, "the page's 64-bit entry in /proc/PID/pagemap"),
                ("format", "bit 63 present, bit 62 swapped, bit 61 file-page or shared-anon, bit 56 exclusively "
                 "mapped, bit 55 soft-dirty; bits 54..0 the PFN", "modelled: Documentation/admin-guide/mm/pagemap.rst")]
    decoded = list(decode_pagemap_entry(pm.value).derivations)
    page_shift = (j.walk.page_size if j.walk else 4096).bit_length() - 1
    shift = f"0x{pfn:x} << {page_shift} = 0x{pfn << page_shift:x}"
    e.questions = [Question("Is the page present?", True, "yesno",
                            [f"0x{pm.value:x} >> 63 = 1: bit 63 (present) is set"]),
                   Question("Which PFN? (hex)", pfn, "hex", [line for line in decoded if line.startswith("PFN")]),
                   Question("At which physical address does the page start? (hex)", pfn << page_shift, "hex", [shift])]
    alloc = _find(j, StepKey.ALLOC, "PFN")
    if alloc:
        e.confirmation = [f"mm_page_alloc handed out PFN {alloc.display} ({alloc.provenance}: {alloc.source})"]
    return e


def exercise_pte(j: Journey) -> Exercise:
    pfn = _find(j, StepKey.ALLOC, "PFN") or _find(j, StepKey.ALLOC, "data page: PFN")
    vm_flags = _find(j, StepKey.MMAP, "vm_flags")
    built = _find(j, StepKey.PTE, "PTE (derived)") or _find(j, StepKey.PTE, "PTE entry after")
    code = _find(j, StepKey.TRAP, "error code")
    if not (pfn and vm_flags and built and code) or not isinstance(pfn.value, int):
        return _missing("pte", "the PFN, the VMA's flags and the PTE", j)
    e = Exercise("pte", TITLES["pte"])
    e.givens = [_given(pfn), _given(vm_flags), _given(code),
                ("PTE bits", "P 0x1, RW 0x2, US 0x4, A 0x20, D 0x40, NX bit 63; the frame is PFN << 12",
                 "modelled: arch/x86/include/asm/pgtable_types.h"),
                ("rules", "a private writable VMA's vm_page_prot is P|US|A|NX (read-only, for COW); "
                 "do_anonymous_page() adds D and RW for a write fault to its new page",
                 "modelled: mm/memory.c, arch/x86/mm/pgprot.c")]
    e.questions = [Question("Which PTE does the fault install? (hex)", built.value, "hex", list(built.derivation))]
    read = _find(j, StepKey.PTE, "PTE (read)")
    if read:
        e.confirmation = [f"the PTE read from the table ({read.source}): {read.display}"]
        e.confirmation += [line for line in decode_pte(read.value, "PTE").derivations if "=" in line][:3]
    return e


# Each architecture's exercises, in the order they are set (the journey's walk says whose journey it is).
EXERCISES = {
    Arch.X86_64: (exercise_rip, exercise_flags, exercise_indices, exercise_pfn, exercise_pte),
    Arch.ARM64: (exercise_rip_arm64, exercise_flags_arm64, exercise_indices_arm64, exercise_pfn, exercise_pte_arm64),
}


def build_exercises(j: Journey) -> list[Exercise]:
    arch = Arch(j.walk.architecture) if j.walk is not None else Arch.X86_64
    return [exercise(j) for exercise in EXERCISES[arch]]
