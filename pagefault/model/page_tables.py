"""The architecture half of the simulator: page-table entry formats, the MMU's check, and the trap.

Linux's generic fault code (mm/memory.c) never touches a bit of a page-table entry itself: it calls
the architecture's helpers (pte_present, pte_write, pte_mkwrite, pte_wrprotect, pte_modify, …) and
the architecture's trap handler decides what the fault was. The simulator is split the same way:
model/kernel.py is the generic part, and an ``EntryFormat`` here is one architecture's helpers.

  X86Format    x86-64 with 4 KiB pages (arch/x86/include/asm/pgtable_types.h, pgtable.h); the trap
               code is the #PF error code, and do_user_addr_fault() is the front end.
  Arm64Format  arm64 with the 4 KiB granule (arch/arm64/include/asm/pgtable-hwdef.h, pgtable-prot.h,
               pgtable.h; the PTE bits come from decode/arm64_descriptor.py, hand-checked there in
               Debian's 6.1 and 6.12 headers); the trap code is ESR_EL1, and do_page_fault() in
               arch/arm64/mm/fault.c is the front end.

Assumptions of the arm64 half, each modelled and not observed:
  - the CPU manages the access flag and the dirty state in hardware (FEAT_HAFDBS, as on Graviton,
    Apple M-series and QEMU's "max" CPU): a clear AF is set by the walk, and a write through an
    entry with DBM set clears AP[2] instead of faulting;
  - the CPU lacks Enhanced PAN, so an executable mapping is readable (protection_map's
    PAGE_READONLY_EXEC) and a read fault is allowed by VM_READ, VM_WRITE or VM_EXEC;
  - a user table descriptor is the next table's address | PXNTable | table | valid, as read live in
    every walk of Debian's 6.1 and 6.12 arm64 kernels (0x0800…003);
  - physical addresses stay below 2^48 (the model's RAM does), so LPA2's bits 51..50 are never set.
Nothing in this module touches the machine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

from ..decode import arm64_descriptor as a64
from ..decode.arch import Arch
from ..decode.arm64_address import kernel_level_names
from ..decode.esr import ExceptionClass, encode_esr
from ..decode.pte import vm_page_prot as x86_vm_page_prot

VM_READ, VM_WRITE, VM_EXEC = 1, 2, 4


class Trap(NamedTuple):
    """What the MMU found when it refused an access, before the architecture encodes it."""

    write: bool
    execute: bool
    present: bool          # the leaf entry was valid: a protection (permission) fault, not a translation fault
    depth: int             # 0-based position in the walk of the entry that stopped it


class FaultKind(NamedTuple):
    """What the architecture's trap handler reads out of the trap code."""

    write: bool
    execute: bool
    present: bool


class EntryFormat(ABC):
    """One architecture's page-table helpers, as the generic fault code calls them."""

    arch: Arch
    trap_code_is_esr: bool                        # the trap code is arm64's ESR_EL1 (else x86's error code)
    frame_mask: int
    present_bit: int       # the MMU's valid bit (bit 0 on both): what access() and write_loop's fast path test

    def __init__(self, paging_levels: int, soft_dirty: bool = False):
        self.paging_levels = paging_levels
        self.soft_dirty = soft_dirty

    # -- the walk's shape ----------------------------------------------------------------------------
    @abstractmethod
    def level_names(self) -> tuple[str, ...]:
        """Linux's names of the walk's levels, PGD first, PTE last."""

    def shifts(self) -> tuple[int, ...]:
        return tuple(12 + 9 * i for i in range(self.paging_levels - 1, -1, -1))

    # -- entries -------------------------------------------------------------------------------------
    @abstractmethod
    def present(self, entry: int) -> bool:
        """pte_present(): mapped, as Linux counts it: valid to the MMU, or a PROT_NONE entry (invalid to the
        MMU, still holding its frame: mprotect back restores it, pagemap reports it present)."""

    def frame(self, entry: int) -> int:
        return (entry & self.frame_mask) >> 12

    @abstractmethod
    def table_entry(self, pfn: int) -> int:
        """The entry pointing at a new user table of PFN pfn (pmd_populate() and its kin)."""

    @abstractmethod
    def is_huge(self, entry: int) -> bool:
        """A present entry above the PTE level that maps memory itself (pmd_leaf)."""

    @abstractmethod
    def page_prot(self, vm_flags: int) -> int:
        """vm_get_page_prot(): the architecture's protection_map for these vm_flags."""

    def mk_pte(self, pfn: int, prot: int) -> int:
        return pfn << 12 | prot

    @abstractmethod
    def write(self, entry: int) -> bool:
        """pte_write()."""

    @abstractmethod
    def dirty(self, entry: int) -> bool:
        """pte_dirty()."""

    @abstractmethod
    def special(self, entry: int) -> bool:
        """pte_special(): the zero page's entries, which no folio owns."""

    @abstractmethod
    def mkwrite(self, entry: int) -> int:
        """pte_mkwrite()."""

    @abstractmethod
    def mkdirty(self, entry: int) -> int:
        """pte_mkdirty()."""

    @abstractmethod
    def mkyoung(self, entry: int) -> int:
        """pte_mkyoung()."""

    @abstractmethod
    def mkold(self, entry: int) -> int:
        """pte_mkold()."""

    @abstractmethod
    def wrprotect(self, entry: int) -> int:
        """pte_wrprotect()."""

    @abstractmethod
    def mkspecial(self, entry: int) -> int:
        """pte_mkspecial()."""

    @abstractmethod
    def mkhuge(self, entry: int) -> int:
        """pmd_mkhuge(): the entry made a PMD leaf."""

    @abstractmethod
    def modify(self, entry: int, prot: int, huge: bool) -> int:
        """pte_modify(): the entry's protection replaced by prot, its frame and state kept."""

    # -- the MMU and the trap --------------------------------------------------------------------------
    @abstractmethod
    def allows(self, leaf: int, write: bool, execute: bool) -> bool:
        """Whether the MMU lets a user access through this leaf without trapping."""

    def on_access(self, leaf: int, write: bool) -> int:
        """The leaf after an allowed access (hardware-managed AF and dirty state); the same by default."""
        return leaf

    @abstractmethod
    def trap_code(self, trap: Trap) -> int:
        """The trap code the CPU reports for an access the MMU refused."""

    @abstractmethod
    def fault_kind(self, code: int) -> FaultKind:
        """What the architecture's trap handler reads out of its trap code."""

    @abstractmethod
    def access_error(self, kind: FaultKind, vm_flags: int) -> bool:
        """Whether the VMA's flags refuse the access (the handler then sends SIGSEGV, SEGV_ACCERR)."""

    @abstractmethod
    def entry_path(self, kind: FaultKind) -> tuple[str, ...]:
        """The call chain from the trap to __handle_mm_fault."""

    @abstractmethod
    def segv_path(self, kind: FaultKind, mapped: bool) -> tuple[str, ...]:
        """The call chain of a fault that ends in SIGSEGV (mapped: a VMA was found, the access refused)."""


class X86Format(EntryFormat):
    """x86-64, 4 KiB pages, 4- or 5-level paging."""

    trap_code_is_esr = False                      # the trap code is the #PF error code
    arch = Arch.X86_64
    P, RW, US, A, D, PSE, SPECIAL, SOFT_DIRTY, NX = 1, 2, 4, 0x20, 0x40, 0x80, 0x200, 0x800, 1 << 63
    frame_mask = ((1 << 52) - 1) & ~0xFFF
    present_bit = 1
    TABLE = P | RW | US | A | D                   # _PAGE_TABLE: what a user table's parent entry holds
    PF_PROT, PF_WRITE, PF_USER, PF_INSTR = 1, 2, 4, 0x10

    def __init__(self, paging_levels: int, soft_dirty: bool = False, lpa2: bool = False):
        if paging_levels not in (4, 5):
            raise ValueError(f"x86-64 paging levels must be 4 or 5, not {paging_levels}")
        if lpa2:
            raise ValueError("LPA2 is arm64's (52-bit tables); x86-64 has no such shape")
        super().__init__(paging_levels, soft_dirty)

    PROTNONE = 0x100                              # _PAGE_PROTNONE (the GLOBAL bit, with P clear)

    def level_names(self) -> tuple[str, ...]:
        return ("PGD", "PUD", "PMD", "PTE") if self.paging_levels == 4 else ("PGD", "P4D", "PUD", "PMD", "PTE")

    def present(self, entry: int) -> bool:
        return bool(entry & (self.P | self.PROTNONE))

    def table_entry(self, pfn: int) -> int:
        return pfn << 12 | self.TABLE

    def is_huge(self, entry: int) -> bool:
        return bool(entry & self.PSE)

    def page_prot(self, vm_flags: int) -> int:
        return x86_vm_page_prot(vm_flags)

    def write(self, entry: int) -> bool:
        return bool(entry & self.RW)

    def dirty(self, entry: int) -> bool:
        return bool(entry & self.D)

    def special(self, entry: int) -> bool:
        return bool(entry & self.SPECIAL)

    def mkwrite(self, entry: int) -> int:
        return entry | self.RW

    def mkdirty(self, entry: int) -> int:
        return entry | self.D | (self.SOFT_DIRTY if self.soft_dirty else 0)

    def mkyoung(self, entry: int) -> int:
        return entry | self.A

    def mkold(self, entry: int) -> int:
        return entry & ~self.A

    def wrprotect(self, entry: int) -> int:
        return entry & ~self.RW

    def mkspecial(self, entry: int) -> int:
        return entry | self.SPECIAL

    def mkhuge(self, entry: int) -> int:
        return entry | self.PSE

    def modify(self, entry: int, prot: int, huge: bool) -> int:
        keep = entry & (self.frame_mask | self.A | self.D | self.SPECIAL | self.SOFT_DIRTY | (self.PSE if huge else 0))
        return keep | (prot & ~self.A)

    def allows(self, leaf: int, write: bool, execute: bool) -> bool:
        return bool(leaf & self.P and leaf & self.US and (leaf & self.RW or not write)
                    and not (execute and leaf & self.NX))

    def trap_code(self, trap: Trap) -> int:
        return self.PF_USER | (self.PF_WRITE if trap.write else 0) | (self.PF_PROT if trap.present else 0) | \
            (self.PF_INSTR if trap.execute else 0)

    def fault_kind(self, code: int) -> FaultKind:
        return FaultKind(bool(code & self.PF_WRITE), bool(code & self.PF_INSTR), bool(code & self.PF_PROT))

    def access_error(self, kind: FaultKind, vm_flags: int) -> bool:
        """access_error() in arch/x86/mm/fault.c."""
        if kind.write:
            return not vm_flags & VM_WRITE
        if kind.present:                   # a read of a present page that still faulted
            return True
        return not vm_flags & (VM_READ | VM_WRITE | VM_EXEC)

    def entry_path(self, kind: FaultKind) -> tuple[str, ...]:
        return ("asm_exc_page_fault", "exc_page_fault", "do_user_addr_fault", "handle_mm_fault", "__handle_mm_fault")

    def segv_path(self, kind: FaultKind, mapped: bool) -> tuple[str, ...]:
        tail = ("bad_area_access_error",) if mapped else ("lock_mm_and_find_vma", "bad_area_nosemaphore")
        return ("asm_exc_page_fault", "exc_page_fault", "do_user_addr_fault") + tail + ("force_sig_fault",)


class Arm64Format(EntryFormat):
    """arm64, 4 KiB granule, 3 to 5 table levels (39-, 48- or 52-bit VAs). See the module's assumptions."""

    trap_code_is_esr = True                       # the trap code is ESR_EL1
    arch = Arch.ARM64
    PXN_TABLE = 1 << 59
    VA_BITS = {3: 39, 4: 48, 5: 52}       # the VA size each number of levels translates with 4 KiB pages
    present_bit = a64.PTE_VALID
    KERNEL = (6, 18)                      # the version whose bits the model follows (as on x86)

    def __init__(self, paging_levels: int, soft_dirty: bool = False, lpa2: bool = False):
        if paging_levels not in (3, 4, 5):
            raise ValueError(f"arm64 with 4 KiB pages walks 3, 4 or 5 levels, not {paging_levels}")
        super().__init__(paging_levels, soft_dirty)
        self.lpa2 = lpa2
        self.frame_mask = ((1 << 50) - 1 if lpa2 else (1 << 48) - 1) & ~0xFFF

    def level_names(self) -> tuple[str, ...]:
        return kernel_level_names(self.paging_levels)

    def present(self, entry: int) -> bool:
        # from 6.10 a PROT_NONE entry is nG with VALID clear (PTE_PRESENT_INVALID); the model follows 6.18
        return bool(entry & a64.PTE_VALID) or entry & (a64.PTE_VALID | a64.PTE_NG) == a64.PTE_NG

    def arch_level(self, depth: int) -> int:
        """The architectural lookup level of the walk's depth-th table (level 3 is the PTE's; −1 with LPA2)."""
        return depth + 4 - self.paging_levels

    def table_entry(self, pfn: int) -> int:
        return pfn << 12 | self.PXN_TABLE | a64.PTE_TABLE_BIT | a64.PTE_VALID

    def is_huge(self, entry: int) -> bool:
        return self.present(entry) and not entry & a64.PTE_TABLE_BIT      # pmd_leaf(): a block (or PROT_NONE one)

    def page_prot(self, vm_flags: int) -> int:
        prot, _name = a64.arm64_vm_page_prot(vm_flags & ~VM_EXEC, self.KERNEL, self.lpa2)
        if vm_flags & VM_EXEC:             # PAGE_READONLY_EXEC / PAGE_SHARED_EXEC without Enhanced PAN
            prot = (prot | a64.PTE_USER | a64.PTE_VALID) & ~a64.PTE_UXN
        return prot

    def write(self, entry: int) -> bool:
        return bool(entry & a64.PTE_WRITE)

    def _hw_dirty(self, entry: int) -> bool:
        return bool(entry & a64.PTE_DBM and not entry & a64.PTE_RDONLY)

    def dirty(self, entry: int) -> bool:
        return bool(entry & a64.PTE_DIRTY) or self._hw_dirty(entry)

    def special(self, entry: int) -> bool:
        return bool(entry & a64.PTE_SPECIAL)

    def mkwrite(self, entry: int) -> int:
        """pte_mkwrite_novma(): WRITE (DBM) set; RDONLY cleared when the entry is software-dirty."""
        entry |= a64.PTE_WRITE
        return entry & ~a64.PTE_RDONLY if entry & a64.PTE_DIRTY else entry

    def mkdirty(self, entry: int) -> int:
        """pte_mkdirty(): DIRTY set; RDONLY cleared when the entry is writable."""
        entry |= a64.PTE_DIRTY
        return entry & ~a64.PTE_RDONLY if entry & a64.PTE_WRITE else entry

    def mkyoung(self, entry: int) -> int:
        return entry | a64.PTE_AF

    def mkold(self, entry: int) -> int:
        return entry & ~a64.PTE_AF

    def wrprotect(self, entry: int) -> int:
        """pte_wrprotect(): hardware-dirty becomes software-dirty, then WRITE cleared and RDONLY set."""
        if self._hw_dirty(entry):
            entry |= a64.PTE_DIRTY
        return (entry & ~a64.PTE_WRITE) | a64.PTE_RDONLY

    def mkspecial(self, entry: int) -> int:
        return entry | a64.PTE_SPECIAL

    def mkhuge(self, entry: int) -> int:
        return entry & ~a64.PTE_TABLE_BIT     # pmd_mkhuge(): a block descriptor

    def modify(self, entry: int, prot: int, huge: bool) -> int:
        """pte_modify() (6.12's mask: USER, PXN, UXN, RDONLY, PRESENT_INVALID (nG), VALID, WRITE, GP, AttrIndx,
        the POE index); hardware-dirty is kept as software-dirty first."""
        mask = (a64.PTE_USER | a64.PTE_PXN | a64.PTE_UXN | a64.PTE_RDONLY | a64.PTE_NG | a64.PTE_VALID
                | a64.PTE_WRITE | a64.PTE_GP | a64.PTE_ATTRINDX_MASK | 7 << 60)
        if self._hw_dirty(entry):
            entry |= a64.PTE_DIRTY
        entry = (entry & ~mask) | (prot & mask)
        return self.mkhuge(entry) if huge else entry

    def allows(self, leaf: int, write: bool, execute: bool) -> bool:
        if not leaf & a64.PTE_VALID or not leaf & a64.PTE_USER:
            return False
        if execute:
            return not leaf & a64.PTE_UXN
        return not write or not leaf & a64.PTE_RDONLY or bool(leaf & a64.PTE_DBM)

    def on_access(self, leaf: int, write: bool) -> int:
        """FEAT_HAFDBS: the walk sets AF; a write through a DBM entry clears AP[2] (RDONLY)."""
        leaf |= a64.PTE_AF
        return leaf & ~a64.PTE_RDONLY if write else leaf

    def trap_code(self, trap: Trap) -> int:
        """The ESR_EL1 of the abort: EC 0x24 (0x20 for a fetch) from EL0, IL 1, WnR, and a translation or
        permission fault at the level where the walk stopped."""
        level = self.arch_level(trap.depth)
        if trap.present:
            status = 0x0C | level
        else:
            status = 0x2B if level == -1 else 0x04 | level
        ec = ExceptionClass.IABT_LOW if trap.execute else ExceptionClass.DABT_LOW
        return encode_esr(int(ec), status, write=trap.write and not trap.execute)

    def fault_kind(self, code: int) -> FaultKind:
        ec, status = code >> 26 & 0x3F, code & 0x3F
        execute = ec == ExceptionClass.IABT_LOW
        write = not execute and bool(code >> 6 & 1) and not code >> 8 & 1     # WnR, and not a cache maintenance
        return FaultKind(write, execute, status & 0x3C == 0x0C)

    def access_error(self, kind: FaultKind, vm_flags: int) -> bool:
        """do_page_fault(): a write needs VM_WRITE, a fetch VM_EXEC, a read any of READ, WRITE, EXEC (no EPAN)."""
        need = VM_EXEC if kind.execute else VM_WRITE if kind.write else VM_READ | VM_WRITE | VM_EXEC
        return not vm_flags & need

    def entry_path(self, kind: FaultKind) -> tuple[str, ...]:
        # fault_info[]: translation faults go through do_translation_fault, permission faults straight on
        head = ("el0t_64_sync", "el0t_64_sync_handler", "el0_ia" if kind.execute else "el0_da", "do_mem_abort")
        return head + (() if kind.present else ("do_translation_fault",)) + \
            ("do_page_fault", "handle_mm_fault", "__handle_mm_fault")

    def segv_path(self, kind: FaultKind, mapped: bool) -> tuple[str, ...]:
        # do_page_fault() sends the signal itself, SEGV_ACCERR for VM_FAULT_BADACCESS, else SEGV_MAPERR
        return self.entry_path(kind)[:-2] + ("arm64_force_sig_fault",)


FORMATS: dict[Arch, type[X86Format] | type[Arm64Format]] = {Arch.X86_64: X86Format, Arch.ARM64: Arm64Format}


def entry_format(arch: Arch, paging_levels: int, soft_dirty: bool = False, lpa2: bool = False) -> EntryFormat:
    """The helpers of an architecture; ValueError for a shape it does not have."""
    return FORMATS[arch](paging_levels, soft_dirty, lpa2)
