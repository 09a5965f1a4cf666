"""arm64's ESR_EL1 (Exception Syndrome Register) for data and instruction aborts.

Source: arch/arm64/include/asm/esr.h (Debian's 6.1.192 and 6.12.117, checked by hand), the fault-status
names of arch/arm64/mm/fault.c's fault_info[] and the Arm ARM D24.2.40.

    | ISS2 (55..32) | EC (31..26) | IL (25) | ISS (24..0) |

EC says which exception: 0x24 a data abort from EL0 (user space), 0x25 from EL1, 0x20 and 0x21 the
instruction aborts. For an abort, ISS holds the fault status code (DFSC / IFSC, bits 5..0: what failed and
at which table level), WnR (6: a write), S1PTW (7: the fault was on the table walk itself), CM (8: a
cache-maintenance instruction, reported as a write but not one), EA (9), FnV (10: FAR is not valid), and,
when ISV (24) is set, the load or store itself (SAS, SSE, SRT, SF, AR).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .bits import DecodeError, check_word


class ExceptionClass(enum.IntEnum):
    """The EC values of a fault on memory (the rest are named only by number here)."""

    UNKNOWN = 0x00
    IABT_LOW = 0x20
    IABT_CUR = 0x21
    PC_ALIGN = 0x22
    DABT_LOW = 0x24
    DABT_CUR = 0x25
    SP_ALIGN = 0x26


EC_MEANINGS = {
    0x00: "unknown reason", 0x01: "WFI/WFE", 0x07: "FP/SIMD access", 0x0D: "branch target exception (BTI)",
    0x0E: "illegal execution state", 0x15: "SVC (a system call) from AArch64", 0x18: "MSR/MRS/system instruction",
    0x19: "SVE access", 0x1C: "pointer authentication failure", 0x1D: "SME access",
    0x20: "instruction abort from a lower EL (user space)", 0x21: "instruction abort from the same EL (the kernel)",
    0x22: "PC alignment fault", 0x24: "data abort from a lower EL (user space)",
    0x25: "data abort from the same EL (the kernel)", 0x26: "SP alignment fault", 0x27: "memory copy/set instruction",
    0x2C: "floating-point exception", 0x2F: "SError", 0x30: "breakpoint from a lower EL",
    0x31: "breakpoint from the same EL", 0x32: "software step from a lower EL", 0x33: "software step from the same EL",
    0x34: "watchpoint from a lower EL", 0x35: "watchpoint from the same EL", 0x3C: "BRK instruction",
}
ABORT_CLASSES = (ExceptionClass.IABT_LOW, ExceptionClass.IABT_CUR, ExceptionClass.DABT_LOW, ExceptionClass.DABT_CUR)


def fault_status_name(code: int) -> tuple[str, int | None]:
    """(meaning, table level or None) of a DFSC/IFSC value, as fault_info[] in arch/arm64/mm/fault.c names it."""
    groups = {0x00: "address size fault", 0x04: "translation fault", 0x08: "access flag fault",
              0x0C: "permission fault", 0x14: "synchronous external abort on a table walk",
              0x1C: "synchronous parity/ECC error on a table walk"}
    if code & 0x3C in groups:
        return f"level {code & 3} {groups[code & 0x3C]}", code & 3
    singles = {0x10: ("synchronous external abort", None), 0x11: ("synchronous tag check fault (MTE)", None),
               0x13: ("synchronous external abort on a table walk, level -1", -1),
               0x18: ("synchronous parity or ECC error", None), 0x1B: ("synchronous parity/ECC error on a table walk, level -1", -1),
               0x21: ("alignment fault", None), 0x22: ("granule protection fault, not on a table walk", None),
               0x23: ("granule protection fault on a table walk, level -1", -1),
               0x29: ("level -1 address size fault", -1), 0x2B: ("level -1 translation fault", -1),
               0x30: ("TLB conflict abort", None), 0x31: ("unsupported atomic hardware update", None),
               0x34: ("implementation-defined fault (lockdown)", None),
               0x35: ("implementation-defined fault (unsupported exclusive)", None)}
    if 0x24 <= code <= 0x27:
        return f"granule protection fault on a table walk, level {code & 3}", code & 3
    return singles.get(code, ("a fault status code Linux names 'unknown'", None))


class FaultStatusKind(enum.Enum):
    TRANSLATION = "translation"
    ACCESS_FLAG = "access flag"
    PERMISSION = "permission"
    ADDRESS_SIZE = "address size"
    OTHER = "other"


def fault_status_kind(code: int) -> FaultStatusKind:
    if code in (0x2B,) or code & 0x3C == 0x04:
        return FaultStatusKind.TRANSLATION
    if code & 0x3C == 0x08:
        return FaultStatusKind.ACCESS_FLAG
    if code & 0x3C == 0x0C:
        return FaultStatusKind.PERMISSION
    if code in (0x29,) or code & 0x3C == 0x00:
        return FaultStatusKind.ADDRESS_SIZE
    return FaultStatusKind.OTHER


@dataclass(frozen=True)
class Syndrome:
    value: int
    exception_class: int
    class_meaning: str
    instruction_length_32: bool  # IL
    iss: int
    iss2: int
    is_abort: bool
    from_user: bool | None       # a lower EL (EL0) for aborts; None for other classes
    instruction_fetch: bool
    write: bool                  # WnR and not CM: what is_write_abort() says
    cache_maintenance: bool
    stage1_walk: bool            # S1PTW
    far_valid: bool | None       # not FnV
    fault_status: int | None     # DFSC/IFSC
    fault_status_meaning: str
    fault_status_kind: FaultStatusKind | None
    fault_level: int | None
    access_size: int | None      # bytes, when ISV
    register: int | None         # SRT, when ISV
    summary: str
    suspicions: tuple[str, ...]
    derivations: tuple[str, ...]
    arch: str = "arm64"


def decode_esr(value: int) -> Syndrome:
    """Decode an ESR_EL1 value. Every exception class is named; only aborts are split further."""
    value = check_word(value, 64, "ESR")
    if value >> 56:
        raise DecodeError(f"ESR 0x{value:x} has bits above 55 set: ESR_EL1 is RES0 there (accepted: 0 to 0xffffffffffffff)")
    ec = value >> 26 & 0x3F
    il = bool(value >> 25 & 1)
    iss = value & 0x1FFFFFF
    iss2 = value >> 32
    meaning = EC_MEANINGS.get(ec, "an exception class pagefault does not name")
    lines = [f"EC = (0x{value:x} >> 26) & 0x3f = 0x{ec:02x}: {meaning}",
             f"IL = bit 25 = {int(il)}: {'a 32-bit instruction' if il else 'a 16-bit instruction, or IL not meaningful'}",
             f"ISS = 0x{value:x} & 0x1ffffff = 0x{iss:x}"]
    suspicions = []
    if ec == 0 and value and value < 1 << 16:
        suspicions.append(f"EC 0 with a small value: 0x{value:x} looks like an x86 page-fault error code "
                          "(decode error-code --arch x86_64)")
    is_abort = ec in ABORT_CLASSES
    if not is_abort:
        summary = f"0x{value:x}: EC 0x{ec:02x}, {meaning}: not a page fault"
        return Syndrome(value, ec, meaning, il, iss, iss2, False, None, False, False, False, False, None, None, "",
                        None, None, None, None, summary, tuple(suspicions), tuple(lines))
    instruction = ec in (ExceptionClass.IABT_LOW, ExceptionClass.IABT_CUR)
    from_user = ec in (ExceptionClass.IABT_LOW, ExceptionClass.DABT_LOW)
    status = iss & 0x3F
    status_meaning, level = fault_status_name(status)
    kind = fault_status_kind(status)
    wnr, s1ptw, cm = bool(iss >> 6 & 1), bool(iss >> 7 & 1), bool(iss >> 8 & 1)
    fnv = bool(iss >> 10 & 1)
    name = "IFSC" if instruction else "DFSC"
    lines.append(f"{name} = ISS & 0x3f = 0x{status:02x}: {status_meaning}")
    write = False
    size = register = None
    if not instruction:
        write = wnr and not cm
        lines.append(f"WnR = bit 6 = {int(wnr)}, CM = bit 8 = {int(cm)}: "
                     + ("a cache-maintenance instruction (reported as a write, handled as a read)" if cm and wnr
                        else "a write" if wnr else "a read"))
        if iss >> 24 & 1:
            size = 1 << (iss >> 22 & 3)
            register = iss >> 16 & 0x1F
            lines.append(f"ISV = 1: a {size}-byte {'store' if wnr else 'load'} with register {'x' if iss >> 15 & 1 else 'w'}{register}")
    lines.append(f"S1PTW = bit 7 = {int(s1ptw)}: " + ("the fault was on the stage-1 table walk" if s1ptw else "not on the table walk"))
    lines.append(f"FnV = bit 10 = {int(fnv)}: FAR_EL1 {'is not' if fnv else 'holds'} the faulting address")
    if instruction and wnr:
        suspicions.append("WnR is set on an instruction abort, where the architecture keeps it 0")
    access = "instruction fetch" if instruction else ("write" if write else "read")
    summary = (f"0x{value:x} = a {'user-mode' if from_user else 'kernel-mode'} {access} that took a {status_meaning}")
    return Syndrome(value, ec, meaning, il, iss, iss2, True, from_user, instruction, write, cm, s1ptw, not fnv, status,
                    status_meaning, kind, level, size, register, summary, tuple(suspicions), tuple(lines))


def encode_esr(exception_class: int, fault_status: int, write: bool = False, il: bool = True,
               cache_maintenance: bool = False, stage1_walk: bool = False) -> int:
    """An abort's ESR value from its fields (the inverse of decode_esr for the fields it sets)."""
    if not 0 <= exception_class < 64 or not 0 <= fault_status < 64:
        raise DecodeError("EC and the fault status code are 6-bit fields")
    return (exception_class << 26 | int(il) << 25 | int(cache_maintenance) << 8 | int(stage1_walk) << 7
            | int(write) << 6 | fault_status)


@dataclass(frozen=True)
class DerivedSyndrome:
    """An ESR reconstructed from what handle_mm_fault was told, when the register itself was not read."""

    value: int
    syndrome: Syndrome
    assumed: tuple[str, ...]
    derivations: tuple[str, ...]


def derive_esr(write: bool, instruction: bool, user: bool, fault_level: int | None) -> DerivedSyndrome:
    """The ESR that made arm64's do_page_fault() pass these fault flags.

    do_page_fault (arch/arm64/mm/fault.c) sets FAULT_FLAG_INSTRUCTION for an EL0 instruction abort and
    FAULT_FLAG_WRITE when WnR is set and CM is not; FAULT_FLAG_USER for a fault from EL0. So the flags
    give EC and WnR. The fault status is a translation fault at ``fault_level`` (the first level whose
    descriptor was invalid, from the walk) when given, else unknown; IL is assumed 1 (AArch64 code).
    """
    if write and instruction:
        raise DecodeError("a fault is never both a write and an instruction fetch")
    ec = (ExceptionClass.IABT_LOW if user else ExceptionClass.IABT_CUR) if instruction else (
        ExceptionClass.DABT_LOW if user else ExceptionClass.DABT_CUR)
    assumed = ["IL = 1: AArch64 instructions are 32 bits"]
    if fault_level is None:
        status = 0x04
        assumed.append("DFSC: a translation fault at level 0 stands for 'some level'; the walk was not read")
    else:
        if not -1 <= fault_level <= 3:
            raise DecodeError(f"a table level is -1..3, got {fault_level}")
        status = 0x2B if fault_level == -1 else 0x04 | fault_level
    value = encode_esr(int(ec), status, write=write and not instruction)
    lines = [f"FAULT_FLAG_{'INSTRUCTION' if instruction else 'WRITE' if write else '(no WRITE)'}, "
             f"{'FAULT_FLAG_USER' if user else 'no FAULT_FLAG_USER'} → EC 0x{int(ec):02x}, WnR {int(write)}",
             f"fault status 0x{status:02x}: {fault_status_name(status)[0]}"
             + ("" if fault_level is None else f" (the walk found level {fault_level} invalid)"),
             f"ESR = 0x{value:x}"]
    return DerivedSyndrome(value, decode_esr(value), tuple(assumed), tuple(lines))


def fault_flags_from_esr(syndrome: Syndrome) -> tuple[str, ...]:
    """The FAULT_FLAG_* names do_page_fault() derives from an abort's ESR (besides the ALLOW_RETRY family)."""
    if not syndrome.is_abort:
        raise DecodeError(f"ESR 0x{syndrome.value:x} is not an abort (EC 0x{syndrome.exception_class:02x})")
    names = []
    if syndrome.from_user:
        names.append("USER")
    if syndrome.instruction_fetch and syndrome.from_user:
        names.append("INSTRUCTION")
    elif syndrome.write:
        names.append("WRITE")
    return tuple(names)
