"""x86-64 page-table entries at every level (arch/x86/include/asm/pgtable_types.h)."""

from __future__ import annotations

from dataclasses import dataclass

from .bits import DecodeError, Flag, FlagWord, bit, check_word, decode_flag_word

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
_LEAF_EXTRA = (
    Flag(_PAGE_GLOBAL, "G", "global (kept across CR3 switches)"),
    Flag(_PAGE_SPECIAL, "SPECIAL", "software bit 9: special mapping (e.g. the zero page)"),
    Flag(_PAGE_UFFD_WP, "UFFD_WP", "software bit 10: userfaultfd write-protected"),
    Flag(_PAGE_SOFT_DIRTY, "SOFT_DIRTY", "software bit 11: soft-dirty"),
    Flag(_PAGE_SOFTW4, "SOFTW4", "software bit 57"),
    Flag(_PAGE_SAVED_DIRTY, "SAVED_DIRTY", "software bit 58: dirty, saved while the entry is read-only"),
    Flag(_PAGE_NX, "NX", "no-execute"),
)


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
    pfn: int
    physical_address: int
    protection_key: int
    flags: FlagWord
    points_to: str
    derivations: tuple[str, ...]


def _table_for(level: str, huge_capable: bool) -> tuple[Flag, ...]:
    table = list(COMMON_BITS)
    if level == "PTE":
        table.append(Flag(bit(7), "PAT", "page attribute table index bit"))
    elif huge_capable:
        table.append(Flag(_PAGE_PSE, "PS", "page size: this entry maps a huge page"))
    return tuple(table) + _LEAF_EXTRA


def decode_pte(value: int, level: str = "PTE") -> PageTableEntry:
    level = level.upper()
    if level not in LEVELS:
        raise DecodeError(f"unknown page-table level {level!r} (accepted: {', '.join(LEVELS)})")
    value = check_word(value, 64, "page-table entry")
    huge_capable = level in ("PUD", "PMD")
    huge = huge_capable and bool(value & _PAGE_PSE)
    leaf = level == "PTE" or huge
    table = list(_table_for(level, huge_capable))
    if huge:
        table.append(Flag(_PAGE_PAT_LARGE, "PAT", "page attribute table index bit (huge page)"))
    word = decode_flag_word(value, table, what="page-table entry", field_mask=PFN_MASK | PKEY_MASK)
    frame_mask = PFN_MASK
    if huge:
        frame_mask &= ~((1 << (30 if level == "PUD" else 21)) - 1)
    phys = value & frame_mask
    pfn = phys >> 12
    pkey = (value & PKEY_MASK) >> PKEY_SHIFT
    lines = list(word.derivations)
    lines.append(f"frame: 0x{value:x} & 0x{frame_mask:x} = 0x{phys:x}; PFN = 0x{phys:x} >> 12 = 0x{pfn:x}")
    if pkey:
        lines.append(f"protection key: (0x{value:x} >> 59) & 0xf = {pkey}")
    if not value & _PAGE_PRESENT:
        points_to = "nothing: the entry is not present" if value == 0 else "nothing the MMU will use (not present)"
    elif leaf:
        size = {"PTE": "4 KiB", "PMD": "2 MiB", "PUD": "1 GiB"}[level]
        points_to = f"a {size} page frame at physical 0x{phys:x}"
    else:
        points_to = f"the next level's table at physical 0x{phys:x}"
    return PageTableEntry(value, level, bool(value & _PAGE_PRESENT), bool(value & _PAGE_RW),
                          bool(value & _PAGE_USER), bool(value & _PAGE_ACCESSED), bool(value & _PAGE_DIRTY),
                          bool(value & _PAGE_NX), huge, leaf, pfn, phys, pkey, word, points_to, tuple(lines))


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


def derive_anonymous_pte(pfn: int, vm_flags: int, write_fault: bool = True, soft_dirty: bool = False) -> DerivedPTE:
    """The PTE do_anonymous_page() (mm/memory.c) installs, for a CPU without user shadow stacks.

    soft_dirty: the kernel has CONFIG_MEM_SOFT_DIRTY, so x86's pte_mkdirty() sets bit 11 with D.
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
        dirty = _PAGE_DIRTY | (_PAGE_SOFT_DIRTY if soft_dirty else 0)
        entry |= dirty
        lines.append(f"pte_mkdirty: | {'D|SOFT_DIRTY' if soft_dirty else 'D'} 0x{dirty:x} = 0x{entry:x}"
                     + ("" if soft_dirty else " (no soft-dirty bit: the kernel lacks CONFIG_MEM_SOFT_DIRTY)"))
        entry |= _PAGE_RW
        lines.append(f"pte_mkwrite (VM_WRITE is set): | RW 0x{_PAGE_RW:x} = 0x{entry:x}")
    return DerivedPTE(entry, pfn, vm_flags, write_fault, tuple(lines))
