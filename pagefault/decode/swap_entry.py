"""x86-64 page-table entries that are not present: swap, migration, hwpoison, device and marker entries.

A PTE whose present bit is clear is not a frame address. Linux stores in it a *swap entry*
(arch/x86/include/asm/pgtable_64.h, the same in 6.1 and 6.12):

    | TYPE (59-63) | ~OFFSET (9-58) | 0 | 0 | X | X | X | E | F | SD | 0 |

- the type is the top 5 bits;
- the offset is stored inverted (L1TF: a stray speculative load then points at
  non-existent high physical memory); ``__swp_offset(x) = ~x << 5 >> 14``;
- bit 1 remembers soft-dirty, bit 2 the userfaultfd write-protect, bit 3 PG_anon_exclusive.

Which *type* means what is not fixed: the last types of the 32 are taken for migration,
hwpoison, device-private memory and PTE markers, and how many of each depends on the kernel
version and on its configuration (include/linux/swap.h). The tables here are keyed to the
versions they were checked against and name their source; see ``special_swap_types``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .bits import DecodeError, Flag, FlagWord, bit, check_word, decode_flag_word

Version = tuple[int, int]

SWP_TYPE_BITS = 5
SWP_OFFSET_SHIFT = 9 + SWP_TYPE_BITS  # SWP_OFFSET_FIRST_BIT (_PAGE_BIT_PROTNONE + 1) + SWP_TYPE_BITS
SWP_OFFSET_BITS = 64 - SWP_OFFSET_SHIFT  # 50
MAX_SWAPFILES_SHIFT = 5
_WORD = (1 << 64) - 1

SWAP_PTE_BITS = (
    Flag(bit(1), "SWP_SOFT_DIRTY", "soft-dirty, kept while the page is away (_PAGE_SWP_SOFT_DIRTY = _PAGE_RW)"),
    Flag(bit(2), "SWP_UFFD_WP", "userfaultfd write-protected, kept while away (_PAGE_SWP_UFFD_WP = _PAGE_USER)"),
    Flag(bit(3), "SWP_EXCLUSIVE", "the anonymous page was exclusive to this process (PG_anon_exclusive)"),
)
_FIELD_MASK = ~(bit(1) | bit(2) | bit(3)) & _WORD


class SwapEntryKind(enum.Enum):
    """What a swap entry's type number stands for (include/linux/swap.h)."""

    SWAP = "swapped out"
    HWPOISON = "hardware-poisoned page"
    MIGRATION_READ = "migration entry (read)"
    MIGRATION_READ_EXCLUSIVE = "migration entry (read, anon exclusive)"
    MIGRATION_WRITE = "migration entry (write)"
    DEVICE_PRIVATE_WRITE = "device-private page (write)"
    DEVICE_PRIVATE_READ = "device-private page (read)"
    DEVICE_EXCLUSIVE_WRITE = "device-exclusive entry (write)"
    DEVICE_EXCLUSIVE_READ = "device-exclusive entry (read)"
    PTE_MARKER = "PTE marker"
    SWAPIN_ERROR = "swap-in error"

    @property
    def holds_pfn(self) -> bool:
        """is_pfn_swap_entry(): the offset is a page frame number, not a slot in a swap area."""
        return self in _PFN_KINDS


_PFN_KINDS = {SwapEntryKind.HWPOISON, SwapEntryKind.MIGRATION_READ, SwapEntryKind.MIGRATION_READ_EXCLUSIVE,
              SwapEntryKind.MIGRATION_WRITE, SwapEntryKind.DEVICE_PRIVATE_WRITE, SwapEntryKind.DEVICE_PRIVATE_READ,
              SwapEntryKind.DEVICE_EXCLUSIVE_WRITE, SwapEntryKind.DEVICE_EXCLUSIVE_READ}


@dataclass(frozen=True)
class SwapConfig:
    """The kernel configuration options that decide how many swap types are taken for special entries.

    None means the option could not be read; ``special_swap_types`` then assumes Debian's choice
    and says so.
    """

    migration: bool | None = None  # CONFIG_MIGRATION
    memory_failure: bool | None = None  # CONFIG_MEMORY_FAILURE
    device_private: bool | None = None  # CONFIG_DEVICE_PRIVATE
    pte_marker: bool | None = None  # CONFIG_PTE_MARKER (only asked before 6.5, where it was optional)
    source: str = "no kernel configuration given"


# What Debian's amd64 kernels (6.1 and 6.12) choose; used, and said, when an option is unknown.
_DEBIAN_CHOICE = {"migration": True, "memory_failure": True, "device_private": False, "pte_marker": True}

# Versions the tables were checked against, and where the version boundaries come from.
_CHECKED = ("include/linux/swap.h and swapops.h of Debian's linux-headers 6.1.0-56 (6.1.192) and "
            "6.12.117+deb12, and the PTE-marker guard type seen live on 6.18")
SWAPIN_ERROR_TYPE_UNTIL = (6, 2)  # "mm: swap: convert SWP_SWAPIN_ERROR to PTE_MARKER_SWAPIN_ERROR"
MARKER_POISONED_SINCE = (6, 5)  # PTE_MARKER_SWAPIN_ERROR renamed PTE_MARKER_POISONED; markers always built
MARKER_GUARD_SINCE = (6, 13)  # MADV_GUARD_INSTALL
DEVICE_ENTRIES_CHECKED_UNTIL = (6, 12)


@dataclass(frozen=True)
class SwapTypeTable:
    """Type number → kind for one kernel; types below ``max_swapfiles`` are swap areas."""

    kinds: dict[int, SwapEntryKind]
    max_swapfiles: int
    source: str

    def kind(self, swap_type: int) -> SwapEntryKind:
        return SwapEntryKind.SWAP if swap_type < self.max_swapfiles else self.kinds[swap_type]


def special_swap_types(version: Version | None, config: SwapConfig = SwapConfig()) -> SwapTypeTable:
    """The special swap types of kernel ``version`` built with ``config``, as include/linux/swap.h lays them out.

    From the top of the 32 types down: [swap-in error (before 6.2)], PTE marker, device entries
    (CONFIG_DEVICE_PRIVATE: 4), migration (CONFIG_MIGRATION: 3), hwpoison (CONFIG_MEMORY_FAILURE: 1);
    MAX_SWAPFILES is what is left. None for the version means the newest layout, said so.
    """
    assumed = []
    chosen = {}
    for name in ("migration", "memory_failure", "device_private", "pte_marker"):
        value = getattr(config, name)
        if value is None:
            value = _DEBIAN_CHOICE[name]
            assumed.append(f"CONFIG_{name.upper()}={'y' if value else 'n'}")
        chosen[name] = value
    newest = version is None
    v = version or (99, 0)
    swapin_error_num = 1 if v < SWAPIN_ERROR_TYPE_UNTIL else 0
    marker_num = 1 if (v >= MARKER_POISONED_SINCE or chosen["pte_marker"]) else 0
    device_num = 4 if chosen["device_private"] else 0
    migration_num = 3 if chosen["migration"] else 0
    hwpoison_num = 1 if chosen["memory_failure"] else 0
    max_swapfiles = 32 - device_num - migration_num - hwpoison_num - marker_num - swapin_error_num
    kinds: dict[int, SwapEntryKind] = {}
    t = max_swapfiles
    if hwpoison_num:
        kinds[t] = SwapEntryKind.HWPOISON
    t += hwpoison_num
    for i, kind in enumerate((SwapEntryKind.MIGRATION_READ, SwapEntryKind.MIGRATION_READ_EXCLUSIVE,
                              SwapEntryKind.MIGRATION_WRITE)[:migration_num]):
        kinds[t + i] = kind
    t += migration_num
    for i, kind in enumerate((SwapEntryKind.DEVICE_PRIVATE_WRITE, SwapEntryKind.DEVICE_PRIVATE_READ,
                              SwapEntryKind.DEVICE_EXCLUSIVE_WRITE, SwapEntryKind.DEVICE_EXCLUSIVE_READ)[:device_num]):
        kinds[t + i] = kind
    t += device_num
    if marker_num:
        kinds[t] = SwapEntryKind.PTE_MARKER
    t += marker_num
    if swapin_error_num:
        kinds[t] = SwapEntryKind.SWAPIN_ERROR
    which = "no kernel version given: the newest layout" if newest else f"kernel {v[0]}.{v[1]}"
    source = (f"modelled: include/linux/swap.h special types for {which} ({config.source}"
              + (f"; assumed as Debian builds it: {', '.join(assumed)}" if assumed else "") + f"); checked against {_CHECKED}")
    if device_num and v > DEVICE_ENTRIES_CHECKED_UNTIL:
        source += (f"; the device-entry types are as in 6.12 and were not checked for {v[0]}.{v[1]}, where the "
                   "device-exclusive entries were reworked")
    return SwapTypeTable(kinds, max_swapfiles, source)


def pte_marker_bits(version: Version | None) -> tuple[tuple[Flag, ...], str]:
    """The PTE_MARKER_* bits of the marker entry's offset (include/linux/swapops.h) for ``version``."""
    v = version or (99, 0)
    bits = [Flag(bit(0), "PTE_MARKER_UFFD_WP", "userfaultfd write-protect kept on an empty PTE")]
    if v >= MARKER_POISONED_SINCE:
        bits.append(Flag(bit(1), "PTE_MARKER_POISONED", "future accesses fail (a swap-in error or a poisoned page)"))
    elif v >= SWAPIN_ERROR_TYPE_UNTIL:
        bits.append(Flag(bit(1), "PTE_MARKER_SWAPIN_ERROR", "the page could not be read back from swap"))
    if v >= MARKER_GUARD_SINCE:
        bits.append(Flag(bit(2), "PTE_MARKER_GUARD", "a guard region (MADV_GUARD_INSTALL): access raises SIGSEGV"))
    which = f"kernel {v[0]}.{v[1]}" if version else "no kernel version given: the newest names"
    return tuple(bits), f"include/linux/swapops.h PTE_MARKER_* for {which}"


def swp_pfn_bits(paging_levels: int) -> int:
    """SWP_PFN_BITS = MAX_PHYSMEM_BITS - PAGE_SHIFT; x86-64's MAX_PHYSMEM_BITS is 52 with 5-level paging, else 46."""
    return (52 if paging_levels == 5 else 46) - 12


@dataclass(frozen=True)
class SwapEntry:
    """A non-present, non-PROT_NONE page-table entry read as the kernel reads it."""

    value: int
    swap_type: int
    offset: int
    kind: SwapEntryKind
    pfn: int | None  # for migration, hwpoison and device entries
    flags: FlagWord  # the SWP_* bits kept beside the entry
    marker: FlagWord | None  # for PTE markers: PTE_MARKER_* of the offset
    summary: str
    table_source: str
    derivations: tuple[str, ...]


def decode_swap_pte(value: int, version: Version | None = None, config: SwapConfig = SwapConfig(),
                    paging_levels: int = 4) -> SwapEntry:
    """Decode a PTE that is not present and not PROT_NONE as the swap entry the kernel stored in it.

    The caller checks that the entry is one: not 0, _PAGE_PRESENT (bit 0) and _PAGE_PROTNONE (bit 8) clear.
    """
    value = check_word(value, 64, "page-table entry")
    if value == 0 or value & (bit(0) | bit(8)):
        raise DecodeError(f"0x{value:x} is not a swap entry: it is empty, present or PROT_NONE")
    swap_type = value >> (64 - SWP_TYPE_BITS)
    offset = ((~value << SWP_TYPE_BITS) & _WORD) >> SWP_OFFSET_SHIFT
    table = special_swap_types(version, config)
    kind = table.kind(swap_type)
    flags = decode_flag_word(value, SWAP_PTE_BITS, what="swap entry", field_mask=_FIELD_MASK,
                             table_source="arch/x86/include/asm/pgtable_types.h _PAGE_SWP_*")
    lines = ["not present (bit 0 = 0) and not PROT_NONE (bit 8 = 0): a swap entry",
             f"type = 0x{value:x} >> 59 = {swap_type}",
             f"offset = (~0x{value:x} << 5 & 0xffffffffffffffff) >> 14 = 0x{offset:x} (stored inverted)"]
    if kind is SwapEntryKind.SWAP:
        lines.append(f"type {swap_type} < MAX_SWAPFILES {table.max_swapfiles}: swap area {swap_type}")
        summary = f"swapped out: swap area {swap_type}, slot 0x{offset:x}"
    else:
        lines.append(f"type {swap_type} ≥ MAX_SWAPFILES {table.max_swapfiles}: {kind.value}")
        summary = kind.value
    pfn = marker = None
    if kind.holds_pfn:
        pfn_bits = swp_pfn_bits(paging_levels)
        pfn = offset & ((1 << pfn_bits) - 1)
        lines.append(f"PFN = offset 0x{offset:x} & (2^{pfn_bits} - 1) = 0x{pfn:x} "
                     f"(SWP_PFN_BITS {pfn_bits} with {paging_levels}-level paging)")
        summary += f", PFN 0x{pfn:x}"
        if kind.name.startswith("MIGRATION"):
            young, dirty = offset >> pfn_bits & 1, offset >> (pfn_bits + 1) & 1
            lines.append(f"offset bit {pfn_bits} = {young} (young), bit {pfn_bits + 1} = {dirty} (dirty): the "
                         "accessed and dirty bits the PTE had, where the kernel keeps them "
                         "(migration_entry_supports_ad(), decided at boot)")
    elif kind is SwapEntryKind.PTE_MARKER:
        marker_table, marker_source = pte_marker_bits(version)
        marker = decode_flag_word(offset, marker_table, what="PTE marker", table_source=marker_source)
        names = ", ".join(marker.names) or "none"
        lines.append(f"marker bits of offset 0x{offset:x}: {names} ({marker_source})")
        summary += f": {names}"
    lines += list(flags.derivations)
    return SwapEntry(value, swap_type, offset, kind, pfn, flags, marker, summary, table.source, tuple(lines))


def encode_swap_pte(swap_type: int, offset: int, soft_dirty: bool = False, uffd_wp: bool = False,
                    exclusive: bool = False) -> int:
    """__swp_entry() and __swp_entry_to_pte(): the inverse of decode_swap_pte's type and offset."""
    if not 0 <= swap_type < 1 << SWP_TYPE_BITS:
        raise DecodeError(f"swap type must be 0..31, got {swap_type}")
    if not 0 <= offset < 1 << SWP_OFFSET_BITS:
        raise DecodeError(f"swap offset 0x{offset:x} does not fit in {SWP_OFFSET_BITS} bits")
    value = ((~offset << SWP_OFFSET_SHIFT) & _WORD) >> SWP_TYPE_BITS | swap_type << (64 - SWP_TYPE_BITS)
    value |= (bit(1) if soft_dirty else 0) | (bit(2) if uffd_wp else 0) | (bit(3) if exclusive else 0)
    if not value:
        raise DecodeError(f"swap type {swap_type}, offset 0x{offset:x} would be stored as 0, an empty entry "
                          "(pte_none): the kernel keeps offsets below max_swapfile_size, where they round-trip")
    return value
