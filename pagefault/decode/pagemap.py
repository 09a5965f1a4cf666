"""/proc/PID/pagemap entries (Documentation/admin-guide/mm/pagemap.rst) and /proc/kpageflags."""

from __future__ import annotations

from dataclasses import dataclass

from .bits import Flag, FlagWord, bit, check_word, decode_flag_word
from .swap_entry import SwapConfig, SwapEntryKind, pte_marker_bits, special_swap_types

PM_PFN_MASK = (1 << 55) - 1
PM_SWAP_TYPE_MASK = 0x1F
PM_SOFT_DIRTY, PM_MMAP_EXCLUSIVE, PM_UFFD_WP, PM_GUARD_REGION = bit(55), bit(56), bit(57), bit(58)
PM_FILE, PM_SWAP, PM_PRESENT = bit(61), bit(62), bit(63)

PAGEMAP_BITS = (
    Flag(PM_SOFT_DIRTY, "SOFT_DIRTY", "the PTE is soft-dirty"),
    Flag(PM_MMAP_EXCLUSIVE, "EXCLUSIVE", "the page is mapped exclusively (only here)"),
    Flag(PM_UFFD_WP, "UFFD_WP", "userfaultfd write-protected"),
    Flag(PM_GUARD_REGION, "GUARD", "a guard region (MADV_GUARD_INSTALL)"),
    Flag(PM_FILE, "FILE", "a file page or shared anonymous page"),
    Flag(PM_SWAP, "SWAPPED", "the page is in swap"),
    Flag(PM_PRESENT, "PRESENT", "the page is present in RAM"),
)


@dataclass(frozen=True)
class PagemapEntry:
    value: int
    present: bool
    swapped: bool
    file_or_shared: bool
    exclusive: bool
    soft_dirty: bool
    uffd_wp: bool
    pfn: int | None
    swap_type: int | None
    swap_offset: int | None
    pfn_hidden: bool
    flags: FlagWord
    summary: str
    derivations: tuple[str, ...]
    swap_kind: SwapEntryKind | None = None
    table_source: str = ""


def decode_pagemap_entry(value: int, kernel: tuple[int, int] | None = None,
                         swap_config: SwapConfig = SwapConfig()) -> PagemapEntry:
    """One /proc/PID/pagemap entry; a swapped (bit 62) entry's type is named with ``kernel``'s swap types.

    The kernel writes swp_type | swp_offset << 5 into bits 0-54 of a swap-format entry, the offset
    being the PFN for migration, hwpoison and device entries; a reader without CAP_SYS_ADMIN gets 0.
    """
    value = check_word(value, 64, "pagemap entry")
    word = decode_flag_word(value, PAGEMAP_BITS, what="pagemap entry", field_mask=PM_PFN_MASK)
    present, swapped = bool(value & PM_PRESENT), bool(value & PM_SWAP)
    lines = list(word.derivations)
    pfn = swap_type = swap_offset = None
    hidden = False
    if present:
        pfn = value & PM_PFN_MASK
        lines.append(f"PFN: 0x{value:x} & 0x{PM_PFN_MASK:x} = 0x{pfn:x}")
        hidden = pfn == 0
        summary = f"present, PFN 0x{pfn:x}" if not hidden else "present, PFN hidden (reads 0: not root)"
    elif swapped:
        swap_type = value & PM_SWAP_TYPE_MASK
        swap_offset = (value & PM_PFN_MASK) >> 5
        lines.append(f"swap type: 0x{value:x} & 0x1f = {swap_type}")
        lines.append(f"swap offset: (0x{value:x} & 0x{PM_PFN_MASK:x}) >> 5 = 0x{swap_offset:x}")
        table = special_swap_types(kernel, swap_config)
        source = table.source
        kind = table.kind(swap_type)
        if value & PM_PFN_MASK == 0 and not value & PM_GUARD_REGION:
            summary = "a swap-format entry; type and offset hidden (read 0: not root)"
        elif kind is SwapEntryKind.SWAP:
            lines.append(f"type {swap_type} < MAX_SWAPFILES {table.max_swapfiles}: a swap area")
            summary = f"swapped out (swap area {swap_type}, slot 0x{swap_offset:x})"
        else:
            lines.append(f"type {swap_type} ≥ MAX_SWAPFILES {table.max_swapfiles}: {kind.value}")
            summary = kind.value + (f", PFN 0x{swap_offset:x}" if kind.holds_pfn else "")
            if kind is SwapEntryKind.PTE_MARKER:
                marker_table, marker_source = pte_marker_bits(kernel)
                marker = decode_flag_word(swap_offset, marker_table, what="PTE marker", table_source=marker_source)
                summary += ": " + (", ".join(marker.names) or "no marker bit")
                lines.append(f"marker bits of offset 0x{swap_offset:x}: {', '.join(marker.names) or 'none'} "
                             f"({marker_source})")
        return PagemapEntry(value, present, swapped, bool(value & PM_FILE), bool(value & PM_MMAP_EXCLUSIVE),
                            bool(value & PM_SOFT_DIRTY), bool(value & PM_UFFD_WP), pfn, swap_type, swap_offset,
                            hidden, word, summary, tuple(lines), kind, source)
    elif value & PM_GUARD_REGION:
        summary = "a guard region (MADV_GUARD_INSTALL): access raises SIGSEGV"
    else:
        summary = "not present: no page has been faulted in here"
    return PagemapEntry(value, present, swapped, bool(value & PM_FILE), bool(value & PM_MMAP_EXCLUSIVE),
                        bool(value & PM_SOFT_DIRTY), bool(value & PM_UFFD_WP), pfn, swap_type, swap_offset,
                        hidden, word, summary, tuple(lines))


# include/uapi/linux/kernel-page-flags.h, and the kernel-hacking ones of include/linux/kernel-page-flags.h
KPF_NAMES = {
    0: ("LOCKED", "locked for I/O"), 1: ("ERROR", "an I/O error occurred"), 2: ("REFERENCED", "referenced recently"),
    3: ("UPTODATE", "contents are valid"), 4: ("DIRTY", "modified since last written back"),
    5: ("LRU", "on an LRU list"), 6: ("ACTIVE", "on the active LRU list"), 7: ("SLAB", "owned by the slab allocator"),
    8: ("WRITEBACK", "being written back"), 9: ("RECLAIM", "to be reclaimed soon"), 10: ("BUDDY", "free, in the buddy allocator"),
    11: ("MMAP", "mapped into some page table"), 12: ("ANON", "anonymous memory"),
    13: ("SWAPCACHE", "in the swap cache"), 14: ("SWAPBACKED", "backed by swap or RAM"),
    15: ("COMPOUND_HEAD", "head of a compound page (a large folio)"), 16: ("COMPOUND_TAIL", "tail of a compound page"),
    17: ("HUGE", "a hugetlbfs page"), 18: ("UNEVICTABLE", "on the unevictable list"),
    19: ("HWPOISON", "hardware memory error"), 20: ("NOPAGE", "no struct page at this PFN"),
    21: ("KSM", "shared by KSM"), 22: ("THP", "part of a transparent huge page"),
    23: ("OFFLINE", "logically offline"), 24: ("ZERO_PAGE", "the shared zero page"),
    25: ("IDLE", "not accessed since marked idle"), 26: ("PGTABLE", "a page-table page"),
    32: ("RESERVED", "reserved (kernel hacking)"), 33: ("MLOCKED", "mlocked (kernel hacking)"),
    34: ("OWNER_2", "owner's flag 2: PG_mappedtodisk on a file page, PG_anon_exclusive on an anonymous page "
                    "(kernel hacking)"),
    35: ("PRIVATE", "has private data (kernel hacking)"),
    36: ("PRIVATE_2", "private flag 2 (kernel hacking)"), 37: ("OWNER_PRIVATE", "owner's flag (kernel hacking)"),
    38: ("ARCH", "architecture flag (kernel hacking)"), 39: ("UNCACHED", "uncached (kernel hacking)"),
    40: ("SOFTDIRTY", "soft-dirty (kernel hacking)"), 41: ("ARCH_2", "architecture flag 2 (kernel hacking)"),
    42: ("ARCH_3", "architecture flag 3 (kernel hacking)"),
}
KPAGEFLAGS_BITS = tuple(Flag(bit(b), "KPF_" + n, m) for b, (n, m) in sorted(KPF_NAMES.items()))
# Bit 34 was KPF_MAPPEDTODISK until "mm: Rename PG_mappedtodisk to PG_owner_2" (merged for Linux 6.12).
KPF_OWNER_2_SINCE = (6, 12)
KPAGEFLAGS_BITS_BEFORE_6_12 = tuple(
    Flag(f.mask, "KPF_MAPPEDTODISK", "has disk blocks; on an anonymous page the same bit is PG_anon_exclusive "
         "(kernel hacking)") if f.mask == bit(34) else f for f in KPAGEFLAGS_BITS)


def kpageflags_table(version: tuple[int, int] | None) -> tuple[tuple[Flag, ...], str]:
    """The KPF_* names for a kernel version, and which table that is (None: the newest, said so)."""
    if version is not None and version < KPF_OWNER_2_SINCE:
        return (KPAGEFLAGS_BITS_BEFORE_6_12, f"include/uapi/linux/kernel-page-flags.h as before Linux 6.12 "
                f"(bit 34 KPF_MAPPEDTODISK), for kernel {version[0]}.{version[1]}")
    which = f"for kernel {version[0]}.{version[1]}" if version else "no kernel version given: the newest names"
    return KPAGEFLAGS_BITS, f"include/uapi/linux/kernel-page-flags.h as from Linux 6.12 (bit 34 KPF_OWNER_2), {which}"


def decode_kpageflags(value: int, version: tuple[int, int] | None = None) -> FlagWord:
    """/proc/kpageflags bits by name, as the kernel of ``version`` names them."""
    table, source = kpageflags_table(version)
    return decode_flag_word(value, table, what="kpageflags", table_source=source)


PAGE_STATES = ("not present", "zero page", "huge zero page", "huge page", "file", "anon", "anon, shared")


def page_state(pagemap: int, kpageflags: int | None) -> str:
    """One word for what backs a virtual page, from its pagemap entry and its frame's kpageflags.

    The zero page and transparent huge pages are told apart only by kpageflags; pagemap alone
    gives present, file-or-shared-anon (bit 61) and exclusively mapped (bit 56).
    """
    if not pagemap >> 63 & 1:
        return "not present"
    if kpageflags is not None:
        if kpageflags >> 24 & 1:
            return "huge zero page" if kpageflags >> 22 & 1 else "zero page"
        if kpageflags >> 22 & 1:
            return "huge page"
    if pagemap >> 61 & 1:
        return "file"
    return "anon" if pagemap >> 56 & 1 else "anon, shared"


def summarise_states(states: list[str]) -> str:
    """'anon ×1, not present ×15': runs of equal page states, in order."""
    runs: list[list] = []
    for s in states:
        if runs and runs[-1][0] == s:
            runs[-1][1] += 1
        else:
            runs.append([s, 1])
    return ", ".join(f"{s} ×{n}" for s, n in runs) or "no pages"
