"""Unwinding a user stack from a copy of its top, with the call-frame information of `.eh_frame` (pyelftools'
CFI decoder), as `perf --call-graph dwarf` does: for code built without frame pointers, whose frames a
frame-pointer walk skips or reads as garbage.

Input: the registers at the moment of the sample (RIP, RSP, RBP; PERF_SAMPLE_REGS_USER, or ptrace), a copy of
the user stack from RSP up (PERF_SAMPLE_STACK_USER), and a way to place an address in an executable mapping
(its file and ELF address). Each step: the FDE covering the PC (a caller's PC is looked up less one: its
return address may be the first byte of the next function), the CFI row for it gives the CFA (a register
plus an offset), the return address at CFA + its offset, RBP restored if the row saved it; then PC = the
return address, RSP = the CFA. The walk ends, and says why, where the stack copy ends, a PC has no FDE, a
rule is an expression (not evaluated here), or a return address does not point into executable code
(then the stack is truncated: that address is never shown as a frame).
"""

from __future__ import annotations

import bisect
import io
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

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
    """One ELF file's FDEs from .eh_frame, sorted by start address; each decoded on first use."""

    def __init__(self, path: str, inode: int | None = None):
        from elftools.common.exceptions import DWARFError, ELFError
        from elftools.dwarf.callframe import FDE
        from elftools.elf.elffile import ELFFile
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.fdes: list = []
        self.decoded: dict[int, list] = {}
        self.row_pcs: dict[int, list[int]] = {}
        self.error = ""
        try:
            with open_mapped_file(path, inode) as f:
                data = f.read()      # parsed from memory: the FDEs are decoded on first use, after the file closes
            elf = ELFFile(io.BytesIO(data))
            dwarf = elf.get_dwarf_info(relocate_dwarf_sections=False)
            if not dwarf.has_EH_CFI():
                self.error = f"{path} has no .eh_frame"
                return
            entries = sorted((e for e in dwarf.EH_CFI_entries() if isinstance(e, FDE)),
                             key=lambda e: e.header["initial_location"])
            for e in entries:
                start = e.header["initial_location"]
                self.starts.append(start)
                self.ends.append(start + e.header["address_range"])
                self.fdes.append(e)
        except (OSError, ELFError, DWARFError, ValueError, KeyError, AssertionError) as exc:
            self.error = f"{path}: .eh_frame could not be read ({exc})"

    def row(self, vaddr: int) -> dict | None:
        """The CFI row in force at ELF address `vaddr`, or None (no FDE covers it)."""
        i = bisect.bisect_right(self.starts, vaddr) - 1
        if i < 0 or vaddr >= self.ends[i]:
            return None
        if i not in self.decoded:
            table = self.fdes[i].get_decoded().table
            self.decoded[i] = table
            self.row_pcs[i] = [r["pc"] for r in table]
        table, pcs = self.decoded[i], self.row_pcs[i]
        j = bisect.bisect_right(pcs, vaddr) - 1
        return table[j] if j >= 0 else None


@lru_cache(maxsize=32)
def cfi_table(path: str, inode: int | None = None) -> CfiTable:
    return CfiTable(path, inode)


# place(pc) → (path, inode, ELF address) of executable code holding pc, or None
Placer = Callable[[int], "tuple[str, int | None, int] | None"]


def unwind(ip: int, sp: int, bp: int, stack: bytes, place: Placer, tables: Callable[[str, int | None], CfiTable]
           = cfi_table) -> Unwound:
    """The call chain from the registers and the stack copy (`stack` holds the bytes from `sp` up)."""
    out = Unwound([ip])
    regs = {DW_RSP: sp, DW_RBP: bp}
    pc, caller = ip, False

    def word(addr: int) -> int | None:
        off = addr - sp
        return struct.unpack_from("<Q", stack, off)[0] if 0 <= off and off + 8 <= len(stack) else None

    while len(out.frames) < MAX_FRAMES:
        where = place(pc - 1 if caller else pc)
        if where is None:
            break   # checked below for the return addresses; the sampled RIP is always placed by the caller
        path, inode, vaddr = where
        table = tables(path, inode)
        row = table.row(vaddr)
        if row is None:
            out.ended, out.truncated = (table.error or f"no FDE in {path} covers 0x{vaddr:x}"), True
            break
        cfa_rule = row["cfa"]
        if cfa_rule.expr is not None or cfa_rule.reg not in regs:
            out.ended, out.truncated = f"the CFA at {path} 0x{vaddr:x} is an expression or another register", True
            break
        cfa = regs[cfa_rule.reg] + cfa_rule.offset
        ra_rule = row.get(DW_RA)
        if ra_rule is None or ra_rule.type != "OFFSET":
            out.ended = f"no return address rule at {path} 0x{vaddr:x} (the outermost frame)"
            break
        ra = word(cfa + ra_rule.arg)
        if ra is None:
            out.ended, out.truncated = f"the stack copy ({len(stack)} bytes) ends before the return address", True
            break
        bp_rule = row.get(DW_RBP)
        if bp_rule is not None and bp_rule.type == "OFFSET":
            saved = word(cfa + bp_rule.arg)
            if saved is None:
                out.ended, out.truncated = "the stack copy ends before the saved RBP", True
                break
            regs[DW_RBP] = saved
        out.steps.append(f"0x{pc:x} ({path.rsplit('/', 1)[-1]} 0x{vaddr:x}): CFA = {_reg(cfa_rule.reg)} + "
                         f"{cfa_rule.offset} = 0x{cfa:x}; return address at CFA{ra_rule.arg:+d} = 0x{ra:x}")
        if ra == 0:
            break   # the outermost frame's return address
        if place(ra - 1) is None:
            out.ended, out.truncated = f"0x{ra:x} does not point into executable code", True
            break
        regs[DW_RSP] = cfa
        out.frames.append(ra)
        pc, caller = ra, True
    return out


def _reg(n: int) -> str:
    return {DW_RSP: "RSP", DW_RBP: "RBP"}.get(n, f"r{n}")
