"""The x86 page-fault error code pushed by the CPU (arch/x86/include/asm/trap_pf.h)."""

from __future__ import annotations

from dataclasses import dataclass

from .bits import Flag, FlagWord, bit, decode_flag_word

X86_PF_PROT, X86_PF_WRITE, X86_PF_USER, X86_PF_RSVD = bit(0), bit(1), bit(2), bit(3)
X86_PF_INSTR, X86_PF_PK, X86_PF_SHSTK, X86_PF_SGX, X86_PF_RMP = bit(4), bit(5), bit(6), bit(15), bit(31)

ERROR_CODE_BITS = (
    Flag(X86_PF_PROT, "PROT", "the page was present: a protection violation"),
    Flag(X86_PF_WRITE, "WRITE", "the access was a write"),
    Flag(X86_PF_USER, "USER", "the access came from user mode (CPL 3)"),
    Flag(X86_PF_RSVD, "RSVD", "a reserved bit was set in a paging-structure entry"),
    Flag(X86_PF_INSTR, "INSTR", "the access was an instruction fetch"),
    Flag(X86_PF_PK, "PK", "a protection-key (PKRU) check refused the access"),
    Flag(X86_PF_SHSTK, "SHSTK", "the access was a shadow-stack access"),
    Flag(X86_PF_SGX, "SGX", "an SGX-specific access-control violation"),
    Flag(X86_PF_RMP, "RMP", "an SEV-SNP RMP violation"),
)


# What each bit says when it is clear (a cleared bit is described by its own meaning, not the set one's).
CLEAR_MEANINGS = {
    X86_PF_PROT: "the page was not present",
    X86_PF_WRITE: "the access was a read (or an instruction fetch, with INSTR)",
    X86_PF_USER: "the access came from kernel mode (CPL 0-2)",
    X86_PF_RSVD: "no reserved bit was set in the entries walked",
    X86_PF_INSTR: "the access was not an instruction fetch",
    X86_PF_PK: "no protection-key check was involved",
    X86_PF_SHSTK: "not a shadow-stack access",
    X86_PF_SGX: "not an SGX violation",
    X86_PF_RMP: "not an RMP violation",
}
# Combinations the CPU never reports (Intel SDM vol. 3, 4.7): PK, RSVD and SGX faults are on present
# pages; an instruction fetch is never a write.
IMPOSSIBLE = (
    (X86_PF_PK, X86_PF_PROT, "PK is set without P: protection keys are checked only on present pages"),
    (X86_PF_RSVD, X86_PF_PROT, "RSVD is set without P: a reserved bit is found only in a present entry"),
    (X86_PF_SGX, X86_PF_PROT, "SGX is set without P: an SGX violation is on a present page"),
)


_DEFINED_BITS = sum(flag.mask for flag in ERROR_CODE_BITS)


def impossible_combinations(value: int) -> list[str]:
    """Why the CPU cannot have pushed this error code, if it cannot."""
    out = [why for needs, missing, why in IMPOSSIBLE if value & needs and not value & missing]
    if value & X86_PF_INSTR and value & X86_PF_WRITE:
        out.append("INSTR and WRITE are both set: an instruction fetch is never a write")
    stray = value & ~_DEFINED_BITS
    if stray:
        text = f"bits 0x{stray:x} are set, and the CPU defines no such error-code bits"
        if (value >> 26) & 0x3F in (0x20, 0x21, 0x24, 0x25):
            text += (f"; 0x{value:x} reads as an arm64 ESR (EC 0x{(value >> 26) & 0x3f:02x}, an abort): "
                     "decode esr --arch arm64")
        out.append(text)
    return out


@dataclass(frozen=True)
class ErrorCode:
    value: int
    flags: FlagWord
    present: bool
    write: bool
    user: bool
    instruction: bool
    summary: str
    bit_meanings: tuple[str, ...]
    derivations: tuple[str, ...]
    impossible: tuple[str, ...] = ()


def decode_error_code(value: int) -> ErrorCode:
    word = decode_flag_word(value, ERROR_CODE_BITS, width=64, what="error code")
    present, write = bool(value & X86_PF_PROT), bool(value & X86_PF_WRITE)
    user, instr = bool(value & X86_PF_USER), bool(value & X86_PF_INSTR)
    access = "instruction fetch" if instr else ("write" if write else "read")
    if value & X86_PF_SHSTK:
        access = "shadow-stack " + access
    mode = "user-mode" if user else "kernel-mode"
    page = "a present page (protection violation)" if present else "a not-present page"
    summary = f"0x{value:x} = a {mode} {access} to {page}"
    extras = [f.name for f in word.set_flags if f.mask in (X86_PF_RSVD, X86_PF_PK, X86_PF_SGX, X86_PF_RMP)]
    if extras:
        summary += ", with " + ", ".join(extras)
    meanings = []
    for f in ERROR_CODE_BITS:
        is_set = bool(value & f.mask)
        meanings.append(f"bit {f.mask.bit_length() - 1} {f.name} = {int(is_set)}: "
                        f"{f.meaning if is_set else CLEAR_MEANINGS[f.mask]}")
    impossible = impossible_combinations(value)
    if impossible:
        summary += "; the CPU never reports this code: " + "; ".join(impossible)
    return ErrorCode(value, word, present, write, user, instr, summary, tuple(meanings), word.derivations,
                     tuple(impossible))
