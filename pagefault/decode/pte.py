"""x86-64 page-table entries at every level (arch/x86/include/asm/pgtable_types.h).

An entry is one of four things, and is decoded as what it is (``EntryKind``):
present (the MMU uses it), PROT_NONE (not present to the MMU, present to the kernel, its
frame stored inverted), a swap-format entry (swap, migration, hwpoison, device, marker: see
``swap_entry``) or empty.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .bits import DecodeError, Flag, FlagWord, bit, check_word, decode_flag_word
from .swap_entry import SwapConfig, SwapEntry, decode_swap_pte

_PAGE_PRESENT, _PAGE_RW, _PAGE_USER, _PAGE_PWT, _PAGE_PCD = bit(0), bit(1), bit(2), bit(3), bit(4)
_PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PSE, _PAGE_GLOBAL = bit(5), bit(6), bit(7), bit(8)
_PAGE_SPECIAL, _PAGE_UFFD_WP, _PAGE_SOFT_DIRTY, _PAGE_PAT_LARGE = bit(9), bit(10), bit(11), bit(12)
_PAGE_SOFTW4, _PAGE_SAVED_DIRTY, _PAGE_NX = bit(57), bit(58), bit(63)
PKEY_SHIFT, PKEY_MASK = 59, 0xF << 59
PHYSICAL_MASK_SHIFT = 52
PFN_MASK = ((1 << PHYSICAL_MASK_SHIFT) - 1) & ~0xFFF

LEVELS = ("PGD", "P4D", "PUD", "PMD", "PTE")

COMMON_BITS = (
    Flag(_PAGE_PRESENT, "P", "present"), Flag(_PAGE_RW, "RW", "writable"),
    Flag(_PAGE_USER, "US", "user-accessible"), Flag(_PAGE_PWT, "PWT", "write-through"),
    Flag(_PAGE_PCD, "PCD", "cache disabled"), Flag(_PAGE_ACCESSED, "A", "accessed"),
    Flag(_PAGE_DIRTY, "D", "dirty"),
)
_PAGE_PROTNONE = bit(8)  # _PAGE_BIT_PROTNONE = _PAGE_BIT_GLOBAL: only meaningful when P is clear
_LOW_SOFTWARE = (
    Flag(_PAGE_SPECIAL, "SPECIAL", "software bit 9: special mapping (e.g. the zero page)"),
    Flag(_PAGE_UFFD_WP, "UFFD_WP", "software bit 10: userfaultfd write-protected"),
    Flag(_PAGE_SOFT_DIRTY, "SOFT_DIRTY", "software bit 11: soft-dirty"),
)
# The high software bits moved: 6.6 (user shadow stacks) put DEVMAP at 57 and SAVED_DIRTY at 58;
# 6.17 removed DEVMAP. Checked against Debian's 6.1.192 and 6.12.117 headers; the 6.17 boundary
# comes from the devmap-removal series, not from a header of that version.
SAVED_DIRTY_SINCE = (6, 6)
DEVMAP_REMOVED_IN = (6, 17)
_HIGH_SOFTWARE_BEFORE_6_6 = (Flag(bit(58), "DEVMAP", "software bit 58: a ZONE_DEVICE (devmap) page"),)
_HIGH_SOFTWARE_6_6 = (Flag(_PAGE_SOFTW4, "DEVMAP", "software bit 57: a ZONE_DEVICE (devmap) page"),
                      Flag(_PAGE_SAVED_DIRTY, "SAVED_DIRTY", "software bit 58: dirty, saved while the entry is "
                           "read-only"))
_HIGH_SOFTWARE_6_17 = (Flag(_PAGE_SOFTW4, "SOFTW4", "software bit 57 (unused)"), _HIGH_SOFTWARE_6_6[1])
_NX_FLAG = Flag(_PAGE_NX, "NX", "no-execute")
_GLOBAL_FLAG = Flag(_PAGE_GLOBAL, "G", "global (kept across CR3 switches)")
_LEAF_EXTRA = (_GLOBAL_FLAG,) + _LOW_SOFTWARE + _HIGH_SOFTWARE_6_17 + (_NX_FLAG,)


def software_bits(version: tuple[int, int] | None) -> tuple[tuple[Flag, ...], str]:
    """The software-defined leaf bits (9-11, 57-58) of kernel ``version``, and which table that is."""
    v = version or (99, 0)
    which = f"kernel {v[0]}.{v[1]}" if version else "no kernel version given: the newest names"
    if v < SAVED_DIRTY_SINCE:
        return _LOW_SOFTWARE + _HIGH_SOFTWARE_BEFORE_6_6, f"pgtable_types.h before 6.6 (DEVMAP at 58), for {which}"
    if v < DEVMAP_REMOVED_IN:
        return _LOW_SOFTWARE + _HIGH_SOFTWARE_6_6, f"pgtable_types.h 6.6-6.16 (DEVMAP 57, SAVED_DIRTY 58), for {which}"
    return _LOW_SOFTWARE + _HIGH_SOFTWARE_6_17, f"pgtable_types.h from 6.17 (SAVED_DIRTY 58), for {which}"


class EntryKind(enum.Enum):
    """What a page-table entry holds, as the kernel reads it."""

    EMPTY = "empty"
    PRESENT = "present"
    PROT_NONE = "PROT_NONE"
    SWAP_FORMAT = "swap-format entry"
    NOT_PRESENT = "not present"


@dataclass(frozen=True)
class PageTableEntry:
    value: int
    level: str
    present: bool
    writable: bool
    user: bool
    accessed: bool
    dirty: bool
    no_execute: bool
    huge: bool
    leaf: bool
    pfn: int | None  # None: the entry holds no frame (empty, swapped, a marker)
    physical_address: int | None
    protection_key: int
    flags: FlagWord
    points_to: str
    derivations: tuple[str, ...]
    kind: EntryKind = EntryKind.PRESENT
    swap: SwapEntry | None = None  # for a swap-format entry
    table_source: str = ""
    suspicions: tuple[str, ...] = ()  # what Linux never writes in an x86-64 entry: signs of another format
    arch: str = "x86_64"


def _table_for(level: str, huge_capable: bool, version: tuple[int, int] | None,
               prot_none: bool = False) -> tuple[tuple[Flag, ...], str]:
    table = list(COMMON_BITS)
    if level == "PTE":
        table.append(Flag(bit(7), "PAT", "page attribute table index bit"))
    elif huge_capable:
        table.append(Flag(_PAGE_PSE, "PS", "page size: this entry maps a huge page"))
    software, source = software_bits(version)
    bit8 = (Flag(_PAGE_PROTNONE, "PROTNONE", "bit 8 with P clear: PROT_NONE or NUMA hinting (_PAGE_PROTNONE)")
            if prot_none else _GLOBAL_FLAG)
    return tuple(table) + (bit8,) + software + (_NX_FLAG,), source


_LEAF_SIZE = {"PTE": "4 KiB", "PMD": "2 MiB", "PUD": "1 GiB"}


def decode_pte(value: int, level: str = "PTE", kernel: tuple[int, int] | None = None,
               swap_config: SwapConfig = SwapConfig(), paging_levels: int = 4) -> PageTableEntry:
    """Decode one x86-64 page-table entry at ``level`` as the kernel ``kernel`` reads it.

    kernel: (major, minor) of the kernel whose software bits and swap types to use; None means the
    newest names, and the result's ``table_source`` says which table was used. swap_config and
    paging_levels matter only for swap-format entries (see ``swap_entry.decode_swap_pte``).
    A present entry's PFN is its frame field; a PROT_NONE entry's is stored inverted (L1TF) and
    un-inverted here as pte_pfn() does; a swap-format or empty entry has no PFN (None) unless it
    is a migration, hwpoison or device entry, whose offset is one.
    """
    level = level.upper()
    if level not in LEVELS:
        raise DecodeError(f"unknown page-table level {level!r} (accepted: {', '.join(LEVELS)})")
    value = check_word(value, 64, "page-table entry")
    huge_capable = level in ("PUD", "PMD")
    huge = huge_capable and bool(value & _PAGE_PSE)
    may_hold_swap = level in ("PTE", "PMD")  # swap entries are stored in PTEs, and PMDs (THP migration)
    if value and not value & _PAGE_PRESENT and may_hold_swap and not (level == "PMD" and value & _PAGE_PSE):
        if value & _PAGE_PROTNONE:
            return _decode_prot_none(value, level, kernel)
        return _decode_swap_format(value, level, kernel, swap_config, paging_levels)
    leaf = level == "PTE" or huge
    table, source = _table_for(level, huge_capable, kernel)
    if huge:
        table += (Flag(_PAGE_PAT_LARGE, "PAT", "page attribute table index bit (huge page)"),)
    word = decode_flag_word(value, table, what="page-table entry", field_mask=PFN_MASK | PKEY_MASK,
                            table_source=source)
    frame_mask = PFN_MASK
    if huge:
        frame_mask &= ~((1 << (30 if level == "PUD" else 21)) - 1)
    phys = value & frame_mask
    pfn = phys >> 12
    pkey = (value & PKEY_MASK) >> PKEY_SHIFT
    lines = list(word.derivations)
    if value & _PAGE_PRESENT:
        kind = EntryKind.PRESENT
        lines.append(f"frame: 0x{value:x} & 0x{frame_mask:x} = 0x{phys:x}; PFN = 0x{phys:x} >> 12 = 0x{pfn:x}")
        if pkey:
            lines.append(f"protection key: (0x{value:x} >> 59) & 0xf = {pkey}")
        points_to = (f"a {_LEAF_SIZE[level]} page frame at physical 0x{phys:x}" if leaf
                     else f"the next level's table at physical 0x{phys:x}")
    elif value == 0:
        kind, points_to = EntryKind.EMPTY, "nothing: the entry is empty (pte_none)"
    else:
        kind = EntryKind.NOT_PRESENT
        why = ("the kernel stores no swap entries at this level" if not may_hold_swap
               else "PSE set without P: a huge PMD being split or invalidated (pmd_present() still counts it)")
        points_to = f"nothing the MMU will use (not present; {why})"
        lines.append(f"P = 0 and the value is not 0: {why}")
    return PageTableEntry(value, level, bool(value & _PAGE_PRESENT), bool(value & _PAGE_RW),
                          bool(value & _PAGE_USER), bool(value & _PAGE_ACCESSED), bool(value & _PAGE_DIRTY),
                          bool(value & _PAGE_NX), huge, leaf, pfn if kind is EntryKind.PRESENT else None,
                          phys if kind is EntryKind.PRESENT else None, pkey, word, points_to, tuple(lines),
                          kind, None, source, _foreign_signs(value, phys, paging_levels) if kind is EntryKind.PRESENT else ())


_IGNORED_HIGH = sum(bit(b) for b in range(52, 57))  # bits 52..56: ignored by the MMU, never set by Linux


def _foreign_signs(value: int, phys: int, paging_levels: int) -> tuple[str, ...]:
    """What Linux never writes into a present x86-64 entry, and which an arm64 descriptor often has."""
    out = []
    max_physical = 52 if paging_levels == 5 else 46  # MAX_PHYSMEM_BITS
    if phys >> max_physical:
        out.append(f"the frame 0x{phys:x} lies beyond x86-64's {max_physical}-bit physical addresses "
                   f"(MAX_PHYSMEM_BITS with {paging_levels}-level paging)")
    if value & _IGNORED_HIGH:
        out.append(f"bits 0x{value & _IGNORED_HIGH:x} (of 52..56) are set, which Linux never sets on x86-64")
    if out and value & 0b11 == 0b11 and value & bit(10):
        out.append("bits 1..0 = 0b11 with bit 10 set reads as an arm64 page descriptor (AF at bit 10; "
                   "DBM, PXN, UXN, DIRTY at 51..55): decode pte --arch arm64")
    return tuple(out)


def _decode_prot_none(value: int, level: str, kernel: tuple[int, int] | None) -> PageTableEntry:
    """P clear and _PAGE_PROTNONE set: mprotect(PROT_NONE) or a NUMA-hinting entry; pte_present() is true."""
    table, source = _table_for(level, level == "PMD", kernel, prot_none=True)
    word = decode_flag_word(value, table, what="page-table entry", field_mask=PFN_MASK | PKEY_MASK,
                            table_source=source)
    inverted = ~value & PFN_MASK
    pfn = inverted >> 12
    lines = list(word.derivations)
    lines.append("P = 0 and PROTNONE (bit 8) = 1: a PROT_NONE or NUMA-hinting entry; the MMU faults on it, "
                 "but pte_present() counts it present")
    lines.append(f"the frame is stored inverted (L1TF: protnone_mask): ~0x{value:x} & 0x{PFN_MASK:x} = 0x{inverted:x}; "
                 f"PFN = 0x{inverted:x} >> 12 = 0x{pfn:x}")
    return PageTableEntry(value, level, False, bool(value & _PAGE_RW), bool(value & _PAGE_USER),
                          bool(value & _PAGE_ACCESSED), bool(value & _PAGE_DIRTY), bool(value & _PAGE_NX),
                          False, True, pfn, inverted, (value & PKEY_MASK) >> PKEY_SHIFT, word,
                          f"a page frame at physical 0x{inverted:x}, inaccessible (PROT_NONE / NUMA hinting)",
                          tuple(lines), EntryKind.PROT_NONE, None, source)


def _decode_swap_format(value: int, level: str, kernel: tuple[int, int] | None, config: SwapConfig,
                        paging_levels: int) -> PageTableEntry:
    swap = decode_swap_pte(value, kernel, config, paging_levels)
    return PageTableEntry(value, level, False, False, False, False, False, False, False, True, swap.pfn,
                          None if swap.pfn is None else swap.pfn << 12, 0, swap.flags,
                          f"nothing the MMU will use: {swap.summary}", swap.derivations, EntryKind.SWAP_FORMAT, swap,
                          swap.table_source)


FLAG_BY_NAME = {f.name: f.mask for f in COMMON_BITS + _LEAF_EXTRA} | {"PS": _PAGE_PSE}


def encode_pte(pfn: int, flags: list[str] | tuple[str, ...], protection_key: int = 0) -> int:
    """Build an entry from a PFN and named flag bits (the inverse of decode_pte for 4 KiB entries)."""
    if not 0 <= pfn < 1 << (PHYSICAL_MASK_SHIFT - 12):
        raise DecodeError(f"PFN 0x{pfn:x} does not fit in {PHYSICAL_MASK_SHIFT - 12} bits")
    if not 0 <= protection_key < 16:
        raise DecodeError(f"protection key must be 0..15, got {protection_key}")
    value = pfn << 12 | protection_key << PKEY_SHIFT
    for name in flags:
        if name not in FLAG_BY_NAME:
            raise DecodeError(f"unknown PTE flag {name!r} (accepted: {', '.join(FLAG_BY_NAME)})")
        value |= FLAG_BY_NAME[name]
    return value


# x86 protection_map[] (arch/x86/mm/pgprot.c): vm_flags & (READ|WRITE|EXEC|SHARED) → page protection.
_P, _RW, _US, _A, _NX = _PAGE_PRESENT, _PAGE_RW, _PAGE_USER, _PAGE_ACCESSED, _PAGE_NX
_PAGE_NONE_PROT = _A | bit(8)  # PAGE_NONE: _PAGE_PROTNONE (the global bit) | accessed, not present
_PROTECTION_MAP = {
    0b0000: _PAGE_NONE_PROT, 0b0001: _P | _US | _A | _NX, 0b0010: _P | _US | _A | _NX,
    0b0011: _P | _US | _A | _NX, 0b0100: _P | _US | _A, 0b0101: _P | _US | _A,
    0b0110: _P | _US | _A, 0b0111: _P | _US | _A,
    0b1000: _PAGE_NONE_PROT, 0b1001: _P | _US | _A | _NX, 0b1010: _P | _RW | _US | _A | _NX,
    0b1011: _P | _RW | _US | _A | _NX, 0b1100: _P | _US | _A, 0b1101: _P | _US | _A,
    0b1110: _P | _RW | _US | _A, 0b1111: _P | _RW | _US | _A,
}


def vm_page_prot(vm_flags: int) -> int:
    """vma->vm_page_prot for these vm_flags (private writable mappings start read-only: COW)."""
    return _PROTECTION_MAP[vm_flags & 0xF]


@dataclass(frozen=True)
class DerivedPTE:
    value: int
    pfn: int
    vm_flags: int
    write_fault: bool
    derivations: tuple[str, ...]


def derive_anonymous_pte(pfn: int, vm_flags: int, write_fault: bool = True, soft_dirty: bool = False,
                         kernel: tuple[int, int] | None = None) -> DerivedPTE:
    """The PTE do_anonymous_page() (mm/memory.c) installs, for a CPU without user shadow stacks.

    soft_dirty: the kernel has CONFIG_MEM_SOFT_DIRTY, so x86's pte_mkdirty() sets bit 11 with D.
    kernel: the kernel's (major, minor), None for the newest. From 6.6 (user shadow stacks),
    pte_mkdirty() of an entry that is not yet writable (a private mapping's vm_page_prot has no RW:
    copy-on-write) sets SAVED_DIRTY (bit 58) instead of D, since Dirty=1 with Write=0 means shadow
    stack to the CPU; pte_mkwrite() then sets RW and moves SAVED_DIRTY back to D
    (mksaveddirty_shift / clear_saveddirty_shift, arch/x86/include/asm/pgtable.h, unconditional: done
    whether or not the CPU has shadow stacks). The entry installed is the same; the middle step is not.
    """
    if not 0 <= pfn < 1 << (PHYSICAL_MASK_SHIFT - 12):
        raise DecodeError(f"PFN 0x{pfn:x} does not fit in {PHYSICAL_MASK_SHIFT - 12} bits")
    prot = vm_page_prot(vm_flags)
    lines = [f"vm_page_prot = protection_map[vm_flags 0x{vm_flags:x} & 0xf = 0x{vm_flags & 0xf:x}] = 0x{prot:x} "
             "(x86-64 protection_map of arch/x86/mm/pgprot.c, the same in Linux 6.1 to 6.18: the derived PTE "
             "equalled the PTE read on 6.1, 6.12 and 6.18 in the kernel matrix)"]
    entry = pfn << 12 | prot
    lines.append(f"mk_pte: (PFN 0x{pfn:x} << 12) | 0x{prot:x} = 0x{entry:x}")
    if not write_fault:
        lines.append("a read fault maps the shared zero page read-only instead (pte_mkspecial)")
        entry |= _PAGE_SPECIAL
        lines.append(f"| SPECIAL 0x{_PAGE_SPECIAL:x} = 0x{entry:x}")
    elif vm_flags & bit(1):
        which = f"kernel {kernel[0]}.{kernel[1]}" if kernel else "no kernel version given: the newest"
        saved = (kernel or (99, 0)) >= SAVED_DIRTY_SINCE and not entry & _PAGE_RW
        dirty = _PAGE_DIRTY | (_PAGE_SOFT_DIRTY if soft_dirty else 0)
        entry |= dirty
        no_soft = "" if soft_dirty else " (no soft-dirty bit: the kernel lacks CONFIG_MEM_SOFT_DIRTY)"
        if saved:
            entry = entry & ~_PAGE_DIRTY | _PAGE_SAVED_DIRTY
            lines.append(f"pte_mkdirty: | {'D|SOFT_DIRTY' if soft_dirty else 'D'} 0x{dirty:x}, then, the entry "
                         f"not being writable, D moved to SAVED_DIRTY 0x{_PAGE_SAVED_DIRTY:x} (from 6.6; {which}) "
                         f"= 0x{entry:x}{no_soft}")
            entry = (entry | _PAGE_RW | _PAGE_DIRTY) & ~_PAGE_SAVED_DIRTY
            lines.append(f"pte_mkwrite (VM_WRITE is set): | RW 0x{_PAGE_RW:x}, and SAVED_DIRTY moved back to "
                         f"D 0x{_PAGE_DIRTY:x} = 0x{entry:x}")
        else:
            lines.append(f"pte_mkdirty: | {'D|SOFT_DIRTY' if soft_dirty else 'D'} 0x{dirty:x} = 0x{entry:x}"
                         + no_soft + (f" (before 6.6 there is no SAVED_DIRTY; {which})"
                                      if not entry & _PAGE_RW and kernel else ""))
            entry |= _PAGE_RW
            lines.append(f"pte_mkwrite (VM_WRITE is set): | RW 0x{_PAGE_RW:x} = 0x{entry:x}")
    return DerivedPTE(entry, pfn, vm_flags, write_fault, tuple(lines))
