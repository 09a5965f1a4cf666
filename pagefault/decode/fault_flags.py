"""FAULT_FLAG_* (enum fault_flag, include/linux/mm_types.h) and how x86 derives them.

The running kernel's values come from BTF (pagefault.kernel); the tables here are
the fallback, keyed by the first kernel version that has them, checked against
the kernel sources and, for 6.18, against this project's machines' BTF.
"""

from __future__ import annotations

from dataclasses import dataclass

from .bits import Flag, FlagWord, decode_flag_word
from .error_code import (
    X86_PF_INSTR,
    X86_PF_PK,
    X86_PF_PROT,
    X86_PF_RSVD,
    X86_PF_SGX,
    X86_PF_SHSTK,
    X86_PF_USER,
    X86_PF_WRITE,
    impossible_combinations,
)

MEANINGS = {
    "FAULT_FLAG_WRITE": "the fault is a write",
    "FAULT_FLAG_MKWRITE": "the fault is a write upgrade of an existing read-only PTE",
    "FAULT_FLAG_ALLOW_RETRY": "the handler may drop the lock and return VM_FAULT_RETRY",
    "FAULT_FLAG_RETRY_NOWAIT": "retry without waiting (do not sleep on I/O)",
    "FAULT_FLAG_KILLABLE": "a fatal signal may interrupt the fault",
    "FAULT_FLAG_TRIED": "this is a second attempt after a retry",
    "FAULT_FLAG_USER": "the fault came from user space",
    "FAULT_FLAG_REMOTE": "the fault is for another process's mm (e.g. GUP, ptrace)",
    "FAULT_FLAG_INSTRUCTION": "the fault is an instruction fetch",
    "FAULT_FLAG_INTERRUPTIBLE": "any signal may interrupt the fault",
    "FAULT_FLAG_UNSHARE": "unshare (break COW) without writing",
    "FAULT_FLAG_ORIG_PTE_VALID": "vmf->orig_pte holds a valid snapshot",
    "FAULT_FLAG_VMA_LOCK": "handled under the per-VMA lock, not mmap_lock",
}

_ORDER = ("FAULT_FLAG_WRITE", "FAULT_FLAG_MKWRITE", "FAULT_FLAG_ALLOW_RETRY", "FAULT_FLAG_RETRY_NOWAIT",
          "FAULT_FLAG_KILLABLE", "FAULT_FLAG_TRIED", "FAULT_FLAG_USER", "FAULT_FLAG_REMOTE",
          "FAULT_FLAG_INSTRUCTION", "FAULT_FLAG_INTERRUPTIBLE", "FAULT_FLAG_UNSHARE",
          "FAULT_FLAG_ORIG_PTE_VALID", "FAULT_FLAG_VMA_LOCK")

# (first version, names present in bit order 0..n): the enum only ever grew at the end.
_VERSIONS = (
    ((6, 4), _ORDER),          # FAULT_FLAG_VMA_LOCK added in 6.4
    ((5, 19), _ORDER[:12]),    # FAULT_FLAG_ORIG_PTE_VALID (5.19), UNSHARE (5.18)
    ((5, 18), _ORDER[:11]),
    ((5, 11), _ORDER[:10]),    # enum fault_flag introduced with INTERRUPTIBLE in 5.11
)


def fallback_fault_flag_values(version: tuple[int, int]) -> tuple[dict[str, int], str]:
    for first, names in _VERSIONS:
        if tuple(version[:2]) >= first:
            return {n: 1 << i for i, n in enumerate(names)}, f"built-in table for kernel ≥ {first[0]}.{first[1]}"
    first, names = _VERSIONS[-1]
    return ({n: 1 << i for i, n in enumerate(names)},
            f"built-in table for {first[0]}.{first[1]} (kernel {version[0]}.{version[1]} is older; values may differ)")


def fault_flag_table(values: dict[str, int]) -> tuple[Flag, ...]:
    return tuple(Flag(v, n, MEANINGS.get(n, "")) for n, v in sorted(values.items(), key=lambda kv: kv[1]))


def decode_fault_flags(value: int, values: dict[str, int], source: str = "") -> FlagWord:
    return decode_flag_word(value, fault_flag_table(values), width=32, what="fault flags", table_source=source)


@dataclass(frozen=True)
class FlagStep:
    name: str
    value: int
    reason: str


@dataclass(frozen=True)
class DerivedFaultFlags:
    error_code: int
    user_mode: bool
    vma_lock: bool
    value: int
    steps: tuple[FlagStep, ...]
    derivations: tuple[str, ...]
    table_source: str
    impossible: tuple[str, ...] = ()
    rejected: tuple[str, ...] = ()      # why do_user_addr_fault() never calls handle_mm_fault() for this code


def rejections(error_code: int) -> list[str]:
    """What arch/x86/mm/fault.c does instead of calling handle_mm_fault() for a fault with this error code on a
    user address, whatever the VMA (the checks of do_user_addr_fault() and access_error() that depend on the
    code alone; 6.1 to 6.18 agree on them). Empty when the code can reach handle_mm_fault()."""
    why = []
    if error_code & (X86_PF_USER | X86_PF_INSTR) == X86_PF_INSTR:
        why.append("kernel-mode code fetching an instruction from user memory: page_fault_oops(), no VMA is looked up")
    if error_code & X86_PF_RSVD:
        why.append("a reserved bit set in a user page-table entry: pgtable_bad() reports a corrupted page table and "
                   "kills the task (an oops in kernel mode)")
    if error_code & X86_PF_PK:
        why.append("a protection key refused the access: access_error() is true whatever the VMA, so the fault ends "
                   "in bad_area_access_error(): SIGSEGV with si_code SEGV_PKUERR")
    if error_code & X86_PF_SGX:
        why.append("an SGX EPCM violation: access_error() is true whatever the VMA: SIGSEGV (SEGV_ACCERR)")
    if error_code & X86_PF_PROT and not error_code & (X86_PF_WRITE | X86_PF_SHSTK):
        access = "an instruction fetch" if error_code & X86_PF_INSTR else "a read"
        why.append(f"{access} of a present page: no fault handling can allow it (the page is mapped and still "
                   "refused: NX, or a protection the PTE keeps), so access_error() sends SIGSEGV (SEGV_ACCERR)")
    return why


def derive_fault_flags(error_code: int, values: dict[str, int], *, user_mode: bool | None = None,
                       vma_lock: bool = True, source: str = "") -> DerivedFaultFlags:
    """The flags do_user_addr_fault() (arch/x86/mm/fault.c) passes to handle_mm_fault().

    user_mode: whether the trapped CS was a user segment; None takes it from the error code's USER bit
    (the access's privilege, which is the same for the faults a user program takes). A kernel-mode
    fault gets neither FAULT_FLAG_USER nor the per-VMA-lock path (fault.c sends it to mmap_lock), and
    a kernel-mode fault on a kernel address never reaches handle_mm_fault() at all (do_kern_addr_fault).
    vma_lock: the kernel has the per-VMA lock path and the lockless VMA lookup succeeded (an assumption:
    the lookup can fall back to mmap_lock); only the enum's FAULT_FLAG_VMA_LOCK, if it has one, is used.
    """
    steps: list[FlagStep] = []
    user_from_code = user_mode is None
    if user_mode is None:
        user_mode = bool(error_code & X86_PF_USER)

    def add(name: str, reason: str) -> None:
        if name in values:
            steps.append(FlagStep(name, values[name], reason))

    for name in ("FAULT_FLAG_ALLOW_RETRY", "FAULT_FLAG_KILLABLE", "FAULT_FLAG_INTERRUPTIBLE"):
        add(name, "part of FAULT_FLAG_DEFAULT, the starting value of flags")
    if error_code & X86_PF_SHSTK:
        add("FAULT_FLAG_WRITE", f"error_code & X86_PF_SHSTK (0x{X86_PF_SHSTK:x}): shadow-stack accesses count as writes")
    elif error_code & X86_PF_WRITE:
        add("FAULT_FLAG_WRITE", f"error_code 0x{error_code:x} & X86_PF_WRITE (0x{X86_PF_WRITE:x}) is set")
    if error_code & X86_PF_INSTR:
        add("FAULT_FLAG_INSTRUCTION", f"error_code 0x{error_code:x} & X86_PF_INSTR (0x{X86_PF_INSTR:x}) is set")
    how = (f"error_code 0x{error_code:x} & X86_PF_USER (0x{X86_PF_USER:x}) is {'set' if user_mode else 'clear'}"
           if user_from_code else "given")
    if user_mode:
        add("FAULT_FLAG_USER", f"user_mode(regs): the trapped CS was a user segment ({how})")
    if user_mode and vma_lock:
        add("FAULT_FLAG_VMA_LOCK", "user fault found its VMA with lock_vma_under_rcu(); "
                                   "handle_mm_fault() is called with flags | FAULT_FLAG_VMA_LOCK")
    notes = []
    if not user_mode:
        notes.append(f"kernel mode ({how}): no FAULT_FLAG_USER, and no per-VMA lock: fault.c takes mmap_lock "
                     "for a kernel-mode fault on a user address (on a kernel address it never calls handle_mm_fault)")
    impossible = impossible_combinations(error_code)
    notes += [f"the CPU never reports this code: {why}" for why in impossible]
    rejected = rejections(error_code)
    if rejected:
        notes.insert(0, "handle_mm_fault() never gets these flags: the kernel refuses this error code before it "
                        "(arch/x86/mm/fault.c): " + "; ".join(rejected))
    elif not user_mode:
        notes.append("in kernel mode with SMAP on, an access outside a user-access section (EFLAGS.AC clear, which "
                     "the error code does not show) is a kernel bug: page_fault_oops()")
    value = 0
    for s in steps:
        value |= s.value
    lines = [f"{s.name} = 0x{s.value:x}: {s.reason}" for s in steps]
    lines.append(" | ".join(f"0x{s.value:x}" for s in steps) + f" = 0x{value:x}")
    lines += notes
    return DerivedFaultFlags(error_code, user_mode, vma_lock and user_mode, value, tuple(steps), tuple(lines), source,
                             tuple(impossible), tuple(rejected))
