"""Unwinding a user stack from a copy of its top, with the call-frame information of `.eh_frame` (pyelftools'
CFI decoder), as `perf --call-graph dwarf` does: for code built without frame pointers, whose frames a
frame-pointer walk skips or reads as garbage.

Input: the registers at the moment of the sample (RIP, RSP, RBP; PERF_SAMPLE_REGS_USER, or ptrace), a copy of
the user stack from RSP up (PERF_SAMPLE_STACK_USER), and a way to place an address in an executable mapping
(its file and ELF address). Each step: the FDE covering the PC (a caller's PC is looked up less one: its
return address may be the first byte of the next function), the CFI row for it gives the CFA (a register
plus an offset), the return address at CFA + its offset, RBP restored if the row saved it; then PC = the
return address, RSP = the CFA. A CFA given as a DWARF expression (the linkers' PLT rule) is evaluated when
made of the usual operations (evaluate). The walk ends, and says why, where the stack copy ends, a PC has
no FDE, an expression uses an operation not evaluated here ("truncated: CFA expression"), or a return
address does not point into executable code (then the stack is truncated: that address is never shown as
a frame).
"""

from __future__ import annotations

import bisect
import io
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

import numpy as np

from .elf import open_mapped_file

# x86-64 DWARF register numbers (System V psABI, figure 3.36)
DW_RBP, DW_RSP, DW_RA = 6, 7, 16
MAX_FRAMES = 128


@dataclass
class Unwound:
    frames: list[int]                        # PCs, leaf first (the first is the sampled RIP)
    unwinder: str = "eh_frame"
    ended: str = ""                          # why the walk stopped ("" : the outermost frame was reached)
    truncated: bool = False                  # stopped before the outermost frame
    steps: list[str] = field(default_factory=list)   # each step's rule, for a derivation


class CfiTable:
    """One ELF file's FDEs, found by address through .eh_frame_hdr's sorted table (what the binary-search table
    is for: the linker wrote it so an unwinder finds an FDE without reading the others); only the FDEs a walk
    reaches are parsed, each once. A file without that table (or with an encoding other than the linkers'
    usual one) has all its FDEs parsed once and sorted instead."""

    def __init__(self, path: str, inode: int | None = None):
        from elftools.common.exceptions import DWARFError, ELFError
        self.starts: np.ndarray = np.zeros(0, np.int64)
        self.offsets: np.ndarray = np.zeros(0, np.int64)   # each FDE's offset in .eh_frame
        self.fdes: dict[int, Any] = {}                      # by index into starts: parsed FDEs (None: unreadable)
        self.decoded: dict[int, tuple[list, list[int]]] = {}
        self.cfi: Any = None                               # pyelftools' CallFrameInfo over .eh_frame
        self.error = ""
        try:
            with open_mapped_file(path, inode) as f:
                self._index(f, path)
        except (OSError, ELFError, DWARFError, ValueError, KeyError, AssertionError, struct.error) as exc:
            self.error = f"{path}: .eh_frame could not be read ({exc})"

    @classmethod
    def refused(cls, error: str) -> CfiTable:
        """A table for a file that may not be read: every lookup misses, and the walk ends with `error`."""
        table = cls.__new__(cls)
        table.starts, table.offsets = np.zeros(0, np.int64), np.zeros(0, np.int64)
        table.fdes, table.decoded, table.cfi, table.error = {}, {}, None, error
        return table

    def _index(self, f, path: str) -> None:
        from elftools.dwarf.callframe import FDE, CallFrameInfo
        from elftools.dwarf.structs import DWARFStructs
        from elftools.elf.elffile import ELFFile
        elf = ELFFile(f)
        eh = elf.get_section_by_name(".eh_frame")
        if eh is None or eh["sh_type"] == "SHT_NOBITS":
            self.error = f"{path} has no .eh_frame"
            return
        # parsed from memory: the FDEs are decoded on first use, after the file closes
        structs = DWARFStructs(little_endian=elf.little_endian, dwarf_format=32, address_size=elf.elfclass // 8)
        self.cfi = CallFrameInfo(io.BytesIO(eh.data()), eh["sh_size"], eh["sh_addr"], structs, for_eh_frame=True)
        hdr = elf.get_section_by_name(".eh_frame_hdr")
        table = _hdr_table(hdr.data(), hdr["sh_addr"]) if hdr is not None else None
        if table is not None:
            starts, fde_addrs = table
            self.starts, self.offsets = starts, fde_addrs - eh["sh_addr"]
            return
        found = sorted((e.header["initial_location"], e.offset) for e in self.cfi.get_entries() if isinstance(e, FDE))
        self.starts = np.array([s for s, _ in found], np.int64)
        self.offsets = np.array([o for _, o in found], np.int64)

    def fde(self, vaddr: int):
        """The FDE covering ELF address `vaddr`, or None."""
        i = int(np.searchsorted(self.starts, vaddr, side="right")) - 1
        if i < 0 or self.cfi is None:
            return None, -1
        if i not in self.fdes:
            from elftools.common.exceptions import DWARFError
            try:
                self.fdes[i] = self.cfi._parse_entry_at(int(self.offsets[i]))   # pyelftools' parse of one entry
            except (DWARFError, ValueError, KeyError, AssertionError, struct.error):
                self.fdes[i] = None
        e = self.fdes[i]
        if e is None or not e.header["initial_location"] <= vaddr < e.header["initial_location"] + \
                e.header["address_range"]:
            return None, -1
        return e, i

    def row(self, vaddr: int) -> dict | None:
        """The CFI row in force at ELF address `vaddr`, or None (no FDE covers it)."""
        e, i = self.fde(vaddr)
        if e is None:
            return None
        if i not in self.decoded:
            table = e.get_decoded().table
            self.decoded[i] = (table, [r["pc"] for r in table])
        table, pcs = self.decoded[i]
        j = bisect.bisect_right(pcs, vaddr) - 1
        return table[j] if j >= 0 else None


# .eh_frame_hdr (LSB, "Exception Frame Header"): version 1, then the encodings of eh_frame_ptr, fde_count and the
# table. The linkers (ld, gold, lld, mold) write pcrel|sdata4, udata4 and datarel|sdata4: a table of signed 32-bit
# (initial location, FDE address) pairs relative to the header's own address, sorted by initial location.
HDR_USUAL_ENCODINGS = (0x1B, 0x03, 0x3B)


def _hdr_table(data: bytes, hdr_addr: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(sorted FDE start addresses, FDE addresses) from .eh_frame_hdr, or None where it is not the usual form."""
    if len(data) < 12 or data[0] != 1 or tuple(data[1:4]) != HDR_USUAL_ENCODINGS:
        return None
    count = struct.unpack_from("<I", data, 8)[0]
    if 12 + 8 * count > len(data):
        return None
    pairs = np.frombuffer(data, "<i4", 2 * count, 12).astype(np.int64).reshape(count, 2) + hdr_addr
    return pairs[:, 0].copy(), pairs[:, 1].copy()


@lru_cache(maxsize=32)
def cfi_table(path: str, inode: int | None = None) -> CfiTable:
    return CfiTable(path, inode)


# place(pc) → (path, inode, ELF address) of executable code holding pc, or None
Placer = Callable[[int], "tuple[str, int | None, int] | None"]


@dataclass(frozen=True)
class Rule:
    """What the CFI says at one code address: where the caller's CFA, return address and RBP are; or, with
    `end` set, why the walk cannot go on from there (`truncated`: before the outermost frame)."""

    where: str = ""            # "file 0xELF-address", for the walk's messages
    cfa: Any = None            # pyelftools' CFARule
    ra_offset: int = 0
    bp_offset: int | None = None
    end: str = ""
    truncated: bool = False


def rule_at(address: int, place: Placer, tables: Callable[[str, int | None], CfiTable]) -> Rule | None:
    """The rule in force at `address` (None: not in executable code the placer knows)."""
    where = place(address)
    if where is None:
        return None
    path, inode, vaddr = where
    table = tables(path, inode)
    row = table.row(vaddr)
    if row is None:
        return Rule(end=table.error or f"no FDE in {path} covers 0x{vaddr:x}", truncated=True)
    text = f"{path.rsplit('/', 1)[-1]} 0x{vaddr:x}"
    ra = row.get(DW_RA)
    if ra is None or ra.type != "OFFSET":
        return Rule(text, end=f"no return address rule at {path} 0x{vaddr:x} (the outermost frame)")
    bp = row.get(DW_RBP)
    return Rule(text, row["cfa"], ra.arg, bp.arg if bp is not None and bp.type == "OFFSET" else None)


def unwind(ip: int, sp: int, bp: int, stack: bytes, place: Placer, tables: Callable[[str, int | None], CfiTable]
           = cfi_table, rules: dict[int, Rule | None] | None = None, explain: bool = True) -> Unwound:
    """The call chain from the registers and the stack copy (`stack` holds the bytes from `sp` up). `rules`
    keeps each code address's rule across walks (a recording's faults pass the same PCs again and again);
    `explain` writes each step's arithmetic into the result's steps."""
    rules = {} if rules is None else rules
    out = Unwound([ip])
    regs = {DW_RSP: sp, DW_RBP: bp}
    pc, caller = ip, False

    def word(addr: int) -> int | None:
        off = addr - sp
        return struct.unpack_from("<Q", stack, off)[0] if 0 <= off and off + 8 <= len(stack) else None

    while len(out.frames) < MAX_FRAMES:
        # a caller's PC is looked up less one: its return address may be the first byte of the next function
        address = pc - 1 if caller else pc
        if address not in rules:
            rules[address] = rule_at(address, place, tables)
        rule = rules[address]
        if rule is None:
            break   # the sampled RIP is always placed by the caller; return addresses are checked below
        if rule.end:
            out.ended, out.truncated = rule.end, rule.truncated
            break
        regs[DW_RA] = pc      # the frame's own PC, which a CFA expression may read (DW_OP_breg16)
        cfa_rule = rule.cfa
        if cfa_rule.expr is not None:
            cfa, why = evaluate(cfa_rule.expr, regs, word)
            if cfa is None:
                out.ended, out.truncated = f"truncated: CFA expression at {rule.where} ({why})", True
                break
            cfa_text = why
        elif cfa_rule.reg not in regs:
            out.ended, out.truncated = (f"truncated: the CFA at {rule.where} is based on {_reg(cfa_rule.reg)}, "
                                        "whose value the sample does not have"), True
            break
        else:
            cfa, cfa_text = regs[cfa_rule.reg] + cfa_rule.offset, ""
        ra = word(cfa + rule.ra_offset)
        if ra is None:
            out.ended, out.truncated = f"the stack copy ({len(stack)} bytes) ends before the return address", True
            break
        if rule.bp_offset is not None:
            saved = word(cfa + rule.bp_offset)
            if saved is None:
                out.ended, out.truncated = "the stack copy ends before the saved RBP", True
                break
            regs[DW_RBP] = saved
        if explain:
            cfa_text = cfa_text or f"{_reg(cfa_rule.reg)} + {cfa_rule.offset}"
            out.steps.append(f"0x{pc:x} ({rule.where}): CFA = {cfa_text} = 0x{cfa:x}; "
                             f"return address at CFA{rule.ra_offset:+d} = 0x{ra:x}")
        if ra == 0:
            break   # the outermost frame's return address
        if ra - 1 not in rules:
            rules[ra - 1] = rule_at(ra - 1, place, tables)
        if rules[ra - 1] is None:
            out.ended, out.truncated = f"0x{ra:x} does not point into executable code", True
            break
        regs[DW_RSP] = cfa
        out.frames.append(ra)
        pc, caller = ra, True
    return out


def _reg(n: int) -> str:
    return {DW_RSP: "RSP", DW_RBP: "RBP", DW_RA: "RIP"}.get(n, f"DWARF register {n}")


# The DWARF operations a CFA expression is made of in practice (DWARF 5, section 2.5): the linkers' PLT rule is
# RSP + 8 + ((RIP & 15) >= 11) << 3 (breg7 8; breg16 0; lit15; and; lit11; ge; lit3; shl; plus). Binary operators
# by opcode, applied to (second from top, top):
_BINARY = {0x1A: lambda a, b: a & b, 0x1B: lambda a, b: a // b if b else None, 0x1C: lambda a, b: a - b,
           0x1E: lambda a, b: a * b, 0x21: lambda a, b: a | b, 0x22: lambda a, b: a + b,
           0x24: lambda a, b: a << b, 0x25: lambda a, b: a >> b, 0x27: lambda a, b: a ^ b,
           0x29: lambda a, b: int(a == b), 0x2A: lambda a, b: int(a >= b), 0x2B: lambda a, b: int(a > b),
           0x2C: lambda a, b: int(a <= b), 0x2D: lambda a, b: int(a < b), 0x2E: lambda a, b: int(a != b)}
_BINARY_NAMES = {0x1A: "and", 0x1B: "div", 0x1C: "minus", 0x1E: "mul", 0x21: "or", 0x22: "plus", 0x24: "shl",
                 0x25: "shr", 0x27: "xor", 0x29: "eq", 0x2A: "ge", 0x2B: "gt", 0x2C: "le", 0x2D: "lt", 0x2E: "ne"}
_CONSTANTS = {0x08: "<B", 0x09: "<b", 0x0A: "<H", 0x0B: "<h", 0x0C: "<I", 0x0D: "<i", 0x0E: "<Q", 0x0F: "<q"}
MASK64 = (1 << 64) - 1


def evaluate(expr: list[int], regs: dict[int, int], word: Callable[[int], int | None]) -> tuple[int | None, str]:
    """(the value of a DWARF expression, its operations as text) or (None, why it was not evaluated): registers
    from `regs`, memory (DW_OP_deref) only from the stack copy through `word`."""
    try:
        return _evaluate(bytes(expr), regs, word)
    except (IndexError, struct.error):
        return None, "the expression ends inside an operation"


def _evaluate(code: bytes, regs: dict[int, int], word: Callable[[int], int | None]) -> tuple[int | None, str]:
    stack: list[int] = []
    pos, text = 0, []
    while pos < len(code):
        op = code[pos]
        pos += 1
        if 0x30 <= op <= 0x4F:                       # DW_OP_lit0..31
            stack.append(op - 0x30)
            text.append(f"lit{op - 0x30}")
        elif 0x70 <= op <= 0x8F:                     # DW_OP_breg0..31 SLEB128
            offset, pos = _leb(code, pos, signed=True)
            if op - 0x70 not in regs:
                return None, f"DW_OP_breg{op - 0x70}: the sample has no {_reg(op - 0x70)}"
            stack.append(regs[op - 0x70] + offset)
            text.append(f"{_reg(op - 0x70)}{offset:+d}")
        elif op in _CONSTANTS:
            stack.append(struct.unpack_from(_CONSTANTS[op], code, pos)[0])
            pos += struct.calcsize(_CONSTANTS[op])
            text.append(str(stack[-1]))
        elif op == 0x23:                             # DW_OP_plus_uconst ULEB128
            value, pos = _leb(code, pos, signed=False)
            if not stack:
                return None, "stack underflow"
            stack[-1] += value
            text.append(f"+{value}")
        elif op == 0x06:                             # DW_OP_deref
            loaded = word(stack.pop()) if stack else None
            if loaded is None:
                return None, "DW_OP_deref outside the stack copy"
            stack.append(loaded)
            text.append("deref")
        elif op in _BINARY:
            if len(stack) < 2:
                return None, "stack underflow"
            b, a = stack.pop(), stack.pop()
            value = _BINARY[op](a, b)
            if value is None:
                return None, "division by zero"
            stack.append(value & MASK64)
            text.append(_BINARY_NAMES[op])
        else:
            return None, f"operation 0x{op:02x} not evaluated here"
    if not stack:
        return None, "empty expression"
    return stack[-1] & MASK64, " ".join(text)


def _leb(code: bytes, pos: int, signed: bool) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = code[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    if signed and byte & 0x40:
        value -= 1 << shift
    return value, pos
