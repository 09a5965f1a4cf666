"""arm64 stage-1 translation descriptors, as the MMU reads them and as Linux reads them.

Sources: arch/arm64/include/asm/pgtable-hwdef.h, pgtable-prot.h and pgtable.h of Debian's 6.1.192 and
6.12.117 headers (checked by hand), and the Arm ARM D8.3 (descriptor formats).

A descriptor is, by bits 1..0 and its level:
- invalid (bit 0 clear): the MMU faults. Linux still reads some as present (PROT_NONE: bit 58 before
  6.10, nG with bit 0 clear from 6.10, "present-invalid") and the rest as swap-format entries;
- a table descriptor (0b11 above the last level): the next table's address, with hierarchical
  permission limits (PXNTable, UXNTable, APTable, NSTable);
- a block (0b01 above the last level: 1 GiB or 2 MiB with 4 KiB pages) or a page (0b11 at the last
  level): an output address and its attributes. 0b01 at the last level is reserved and faults.

Attributes of a block or page: AttrIndx (bits 4..2, the MAIR_EL1 slot), NS (5), AP[2:1] (7..6: AP[1] is
user access, AP[2] read-only), SH (9..8; the output address bits 51..50 instead under FEAT_LPA2), AF
(10), nG (11), GP (50, BTI), DBM (51, which Linux also uses as its "writable" bit PTE_WRITE),
Contiguous (52), PXN (53), UXN (54), and Linux's software bits 55.. (PTE_DIRTY, PTE_SPECIAL, …).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .arm64_address import granule_shift, kernel_level_names, translation_levels
from .bits import DecodeError, Flag, FlagWord, bit, check_word, decode_flag_word
from .pte import DEVMAP_REMOVED_IN  # the generic pte_devmap removal (6.17), the same on arm64; not checked in a header
from .swap_entry import SwapConfig, SwapEntry, SwapEntryKind, pte_marker_bits, special_swap_types

Version = tuple[int, int]

PTE_VALID, PTE_TABLE_BIT = bit(0), bit(1)
PTE_NS, PTE_USER, PTE_RDONLY = bit(5), bit(6), bit(7)
PTE_SHARED = 3 << 8
PTE_AF, PTE_NG = bit(10), bit(11)
PTE_GP, PTE_DBM, PTE_CONT, PTE_PXN, PTE_UXN = bit(50), bit(51), bit(52), bit(53), bit(54)
PTE_WRITE = PTE_DBM
PTE_DIRTY, PTE_SPECIAL, PTE_DEVMAP = bit(55), bit(56), bit(57)
PTE_ATTRINDX_MASK = 7 << 2
PTE_SWP_EXCLUSIVE = bit(2)

# Linux's PROT_NONE encoding moved: before 6.10 a software bit 58 (PTE_PROT_NONE) with bit 0 clear;
# from 6.10 ("arm64/mm: Remove PTE_PROT_NONE bit") nG with bit 0 clear (PTE_PRESENT_INVALID), freeing
# bit 58 for PTE_UFFD_WP, and the swap layout moved up to make room. The 6.10 boundary comes from that
# series; the two layouts were checked in Debian's 6.1.192 and 6.12.117 headers.
PRESENT_INVALID_SINCE = (6, 10)
POE_SINCE = (6, 12)           # permission overlays (FEAT_S1POE): index bits 62..60, and vm_flags' POE keys
CHECKED = "Debian's 6.1.192 and 6.12.117 arm64 headers"

MEMORY_TYPES = {0: "MT_NORMAL (write-back cacheable)", 1: "MT_NORMAL_TAGGED (normal, MTE tags)",
                2: "MT_NORMAL_NC (non-cacheable)", 3: "MT_DEVICE_nGnRnE", 4: "MT_DEVICE_nGnRE"}
AP_MEANINGS = {0b00: "kernel read/write, user no access", 0b01: "kernel and user read/write",
               0b10: "kernel read-only, user no access", 0b11: "kernel and user read-only"}
SHAREABILITY = {0b00: "non-shareable", 0b01: "reserved", 0b10: "outer shareable", 0b11: "inner shareable"}


class DescriptorKind(enum.Enum):
    """What an arm64 descriptor is, to the MMU and then to Linux."""

    EMPTY = "empty"
    TABLE = "table"
    BLOCK = "block"
    PAGE = "page"
    RESERVED = "reserved (0b01 at the last level)"
    PROT_NONE = "PROT_NONE (present to Linux, invalid to the MMU)"
    SWAP_FORMAT = "swap-format entry"
    INVALID = "invalid"


@dataclass(frozen=True)
class Arm64Descriptor:
    value: int
    level: str                 # Linux's name: PGD, P4D, PUD, PMD, PTE
    architectural_level: int
    kind: DescriptorKind
    valid: bool
    present: bool              # pte_present(): what Linux counts present
    output_address: int | None  # the next table's or the frame's physical address
    pfn: int | None
    attr_index: int | None
    memory_type: str
    access_permissions: int | None  # AP[2:1]
    access: str
    shareability: str
    accessed: bool             # AF
    not_global: bool           # nG
    writable: bool             # pte_write(): PTE_WRITE (= DBM)
    dirty: bool                # pte_dirty(): PTE_DIRTY, or DBM with AP[2] clear (hardware dirty)
    user_execute_never: bool
    privileged_execute_never: bool
    contiguous: bool
    block_size: int | None     # bytes mapped by a block or page
    flags: FlagWord
    swap: SwapEntry | None
    suspicions: tuple[str, ...]
    derivations: tuple[str, ...]
    table_source: str
    arch: str = "arm64"


def _software_bits(version: Version | None) -> tuple[tuple[Flag, ...], str]:
    v = version or (99, 0)
    which = f"kernel {v[0]}.{v[1]}" if version else "no kernel version given: the newest names"
    table = [Flag(PTE_DIRTY, "DIRTY", "software bit 55: dirty (PTE_DIRTY)"),
             Flag(PTE_SPECIAL, "SPECIAL", "software bit 56: special mapping, no struct page refcounting")]
    if v < DEVMAP_REMOVED_IN:
        table.append(Flag(PTE_DEVMAP, "DEVMAP", "software bit 57: a ZONE_DEVICE page"))
    if v >= PRESENT_INVALID_SINCE:
        table.append(Flag(bit(58), "UFFD_WP", "software bit 58: userfaultfd write-protected"))
    layout = ("from 6.10 (PROT_NONE = nG with bit 0 clear)" if v >= PRESENT_INVALID_SINCE
              else "before 6.10 (PROT_NONE = bit 58)")
    source = f"pgtable-prot.h {layout}, for {which}; checked against {CHECKED}"
    return tuple(table), source


_LEAF_HARDWARE = (
    Flag(PTE_VALID, "VALID", "valid: the MMU uses this descriptor"),
    Flag(PTE_NS, "NS", "non-secure (ignored at non-secure EL1)"),
    Flag(PTE_USER, "USER", "AP[1]: user (EL0) access"),
    Flag(PTE_RDONLY, "RDONLY", "AP[2]: read-only"),
    Flag(PTE_AF, "AF", "access flag: accessed since last cleared"),
    Flag(PTE_NG, "nG", "not global: tagged with the ASID"),
    Flag(PTE_GP, "GP", "guarded page (BTI)"),
    Flag(PTE_DBM, "DBM", "dirty bit modifier; Linux's PTE_WRITE"),
    Flag(PTE_CONT, "CONT", "contiguous: one of 16 adjacent entries the TLB may hold as one"),
    Flag(PTE_PXN, "PXN", "privileged execute-never"),
    Flag(PTE_UXN, "UXN", "user execute-never"),
)
_TABLE_BITS = (
    Flag(PTE_VALID, "VALID", "valid"),
    Flag(PTE_TABLE_BIT, "TABLE", "points to a next-level table"),
    Flag(bit(59), "PXNTable", "no privileged execution anywhere below"),
    Flag(bit(60), "UXNTable", "no user execution anywhere below"),
    Flag(bit(61), "APTable[0]", "no user access anywhere below"),
    Flag(bit(62), "APTable[1]", "no writes anywhere below"),
    Flag(bit(63), "NSTable", "the tables below are non-secure"),
)


def _output_address_mask(granule: int, pa_bits: int, lpa2: bool) -> tuple[int, int, int]:
    """(mask of bits holding OA bits below 48 or 50, mask of the high OA bits, how far to shift them)."""
    shift = granule_shift(granule)
    if pa_bits == 48:
        return ((1 << 48) - 1) & ~((1 << shift) - 1), 0, 0
    if granule == 65536 and not lpa2:  # FEAT_LPA: OA[51:48] in bits 15..12
        return ((1 << 48) - 1) & ~((1 << 16) - 1), 0xF << 12, 36
    # FEAT_LPA2: OA[49:shift] in place, OA[51:50] in bits 9..8 (where SH was)
    return ((1 << 50) - 1) & ~((1 << shift) - 1), 3 << 8, 42


def _block_size(level: int, granule: int) -> int:
    shift = granule_shift(granule)
    return 1 << (shift + (shift - 3) * (3 - level))


def decode_arm64_descriptor(value: int, level: str = "PTE", kernel: Version | None = None, va_bits: int = 48,
                            granule: int = 4096, pa_bits: int = 48, swap_config: SwapConfig = SwapConfig(),
                            mainline_user: bool = True) -> Arm64Descriptor:
    """Decode one arm64 stage-1 descriptor found at Linux level ``level`` of a ``va_bits`` walk.

    kernel: (major, minor) whose software bits, PROT_NONE encoding and swap layout apply; None means
    the newest, and ``table_source`` says which was used. pa_bits 52 selects FEAT_LPA (64 KiB pages)
    or FEAT_LPA2 (4 and 16 KiB pages) output addresses. ``suspicions`` lists what Linux never writes
    into a descriptor of its own (with mainline_user, of a user mapping): signs that the value is
    not an arm64 descriptor, e.g. an x86 PTE.
    """
    value = check_word(value, 64, "descriptor")
    levels = translation_levels(va_bits, granule)
    names = kernel_level_names(levels)
    level = level.upper()
    if level not in names:
        raise DecodeError(f"a {levels}-level arm64 walk ({va_bits}-bit VA, {granule // 1024} KiB pages) has levels "
                          f"{', '.join(names)}, not {level!r}")
    if pa_bits not in (48, 52):
        raise DecodeError(f"arm64 output addresses are 48 or 52 bits, got {pa_bits}")
    arch_level = 4 - levels + names.index(level)
    last = arch_level == 3
    v = kernel or (99, 0)
    lpa2 = pa_bits == 52 and granule != 65536
    low_mask, high_mask, high_shift = _output_address_mask(granule, pa_bits, lpa2)
    shift = granule_shift(granule)
    if value & PTE_VALID:
        return _decode_valid(value, level, arch_level, last, granule, kernel, low_mask, high_mask, high_shift,
                             lpa2, shift, mainline_user)
    present_invalid = (value & PTE_NG) if v >= PRESENT_INVALID_SINCE else (value & bit(58))
    if value == 0:
        kind, lines = DescriptorKind.EMPTY, ["0: an empty descriptor (pte_none)"]
        word = decode_flag_word(value, (), what="descriptor")
        return _plain(value, level, arch_level, kind, word, lines, _software_bits(kernel)[1])
    if present_invalid and (last or level == "PMD"):
        return _decode_prot_none(value, level, arch_level, granule, kernel, low_mask, high_mask, high_shift, shift)
    if last:
        return _decode_swap(value, level, arch_level, kernel, swap_config, pa_bits, shift)
    word = decode_flag_word(value, (Flag(PTE_VALID, "VALID", "valid"),), what="descriptor", field_mask=~1 & ((1 << 64) - 1))
    lines = [f"bit 0 = 0: invalid, and Linux keeps no swap entry at {level}: the MMU faults at level {arch_level}"]
    return _plain(value, level, arch_level, DescriptorKind.INVALID, word, lines, _software_bits(kernel)[1])


def _plain(value: int, level: str, arch_level: int, kind: DescriptorKind, word: FlagWord, lines: list[str],
           source: str) -> Arm64Descriptor:
    return Arm64Descriptor(value, level, arch_level, kind, False, False, None, None, None, "", None, "", "",
                           False, False, False, False, False, False, False, None, word, None, (), tuple(lines), source)


def _output_address(value: int, low_mask: int, high_mask: int, high_shift: int, lines: list[str]) -> int:
    address = value & low_mask
    text = f"0x{value:x} & 0x{low_mask:x} = 0x{address:x}"
    if high_mask:
        high = (value & high_mask) << high_shift
        address |= high
        text += f"; | (0x{value:x} & 0x{high_mask:x}) << {high_shift} = 0x{address:x}"
    lines.append("output address: " + text)
    return address


def _decode_valid(value: int, level: str, arch_level: int, last: bool, granule: int, kernel: Version | None,
                  low_mask: int, high_mask: int, high_shift: int, lpa2: bool, shift: int,
                  mainline_user: bool) -> Arm64Descriptor:
    table_bit = bool(value & PTE_TABLE_BIT)
    software, source = _software_bits(kernel)
    suspicions: list[str] = []
    lines: list[str] = []
    if table_bit and not last:
        word = decode_flag_word(value, _TABLE_BITS, what="descriptor", field_mask=low_mask | high_mask,
                                table_source="pgtable-hwdef.h table descriptor bits")
        lines += list(word.derivations)
        lines.append(f"bits 1..0 = 0b11 above the last level: a table descriptor (level {arch_level})")
        address = _output_address(value, low_mask, high_mask, high_shift, lines)
        lines.append(f"the next level's table is at physical 0x{address:x}")
        stray = value & ~(low_mask | high_mask | (0x1F << 59) | 3) & ((1 << 64) - 1)
        if stray & ((1 << 59) - 1) & ~0xFFF:
            suspicions.append(f"bits 0x{stray:x} are set in a table descriptor, where Linux writes only the table "
                              "address and bits 1..0 (and the hierarchical limits): this is not an arm64 table entry")
        return Arm64Descriptor(value, level, arch_level, DescriptorKind.TABLE, True, True, address, address >> shift,
                               None, "", None, "", "", False, False, False, False, bool(value & bit(60)),
                               bool(value & bit(59)), False, None, word, None, tuple(suspicions), tuple(lines),
                               "pgtable-hwdef.h table descriptor (Arm ARM D8.3.1)")
    if not table_bit and last:
        word = decode_flag_word(value, (Flag(PTE_VALID, "VALID", "valid"),), what="descriptor",
                                field_mask=~1 & ((1 << 64) - 1))
        lines.append("bits 1..0 = 0b01 at the last level: reserved; the MMU treats it as invalid and faults")
        return _plain(value, level, arch_level, DescriptorKind.RESERVED, word, lines, source)
    kind = DescriptorKind.PAGE if last else DescriptorKind.BLOCK
    table = _LEAF_HARDWARE + software + ((Flag(PTE_TABLE_BIT, "PAGE", "bits 1..0 = 0b11 at the last level: a page"),)
                                         if last else ())
    field_mask = low_mask | high_mask | PTE_ATTRINDX_MASK | (0 if lpa2 else PTE_SHARED)
    if kernel is None or kernel >= POE_SINCE:
        field_mask |= 7 << 60
    word = decode_flag_word(value, table, what="descriptor", field_mask=field_mask, table_source=source)
    lines += list(word.derivations)
    size = _block_size(arch_level, granule)
    lines.append(f"bits 1..0 = {'0b11 at the last level: a page' if last else '0b01 above the last level: a block'} "
                 f"of {_size_text(size)}")
    address = _output_address(value, low_mask, high_mask, high_shift, lines)
    address &= ~(size - 1)
    pfn = address >> shift
    lines.append(f"PFN = 0x{address:x} >> {shift} = 0x{pfn:x}")
    attr = (value & PTE_ATTRINDX_MASK) >> 2
    lines.append(f"AttrIndx = (0x{value:x} >> 2) & 7 = {attr}: {MEMORY_TYPES.get(attr, 'a MAIR slot Linux leaves unused')}")
    ap = (value >> 6) & 3
    lines.append(f"AP[2:1] = {ap:02b}: {AP_MEANINGS[ap]}")
    sh = (value >> 8) & 3
    share = "from TCR_EL1 (bits 9..8 are output address bits 51..50 with LPA2)" if lpa2 else SHAREABILITY[sh]
    if not lpa2:
        lines.append(f"SH = {sh:02b}: {share}")
    writable = bool(value & PTE_WRITE)
    hw_dirty = writable and not value & PTE_RDONLY
    dirty = bool(value & PTE_DIRTY) or hw_dirty
    lines.append(f"pte_write = DBM (bit 51) = {int(writable)}; pte_dirty = DIRTY (bit 55) {int(bool(value & PTE_DIRTY))} "
                 f"or (DBM and not RDONLY) {int(hw_dirty)} = {int(dirty)}")
    if not lpa2 and sh != 0b11 and mainline_user:
        suspicions.append(f"SH = {sh:02b}: Linux maps all normal memory inner shareable (0b11); an x86 PTE, whose bits "
                          "8..9 are G and a software bit, often looks like this")
    if value & bit(63):
        suspicions.append("bit 63 is set: Linux never sets it in a block or page descriptor (it is x86's NX bit)")
    if mainline_user and last and value & PTE_USER and not value & PTE_NG:
        suspicions.append("USER without nG: Linux makes every user mapping not-global")
    if attr > 4:
        suspicions.append(f"AttrIndx {attr}: Linux fills only MAIR slots 0-4")
    return Arm64Descriptor(value, level, arch_level, kind, True, True, address, pfn, attr,
                           MEMORY_TYPES.get(attr, "unused MAIR slot"), ap, AP_MEANINGS[ap], share,
                           bool(value & PTE_AF), bool(value & PTE_NG), writable, dirty, bool(value & PTE_UXN),
                           bool(value & PTE_PXN), bool(value & PTE_CONT), size, word, None, tuple(suspicions),
                           tuple(lines), source)


def _size_text(size: int) -> str:
    for unit, name in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if size >= unit:
            return f"{size // unit} {name}"
    return f"{size} bytes"


def _decode_prot_none(value: int, level: str, arch_level: int, granule: int, kernel: Version | None,
                      low_mask: int, high_mask: int, high_shift: int, shift: int) -> Arm64Descriptor:
    v = kernel or (99, 0)
    software, source = _software_bits(kernel)
    marker = (Flag(PTE_NG, "PRESENT_INVALID", "nG with bit 0 clear: present to Linux, invalid to the MMU")
              if v >= PRESENT_INVALID_SINCE else Flag(bit(58), "PROT_NONE", "software bit 58 with bit 0 clear"))
    table = tuple(f for f in _LEAF_HARDWARE if f.mask != PTE_NG or v < PRESENT_INVALID_SINCE) + software + (marker,)
    word = decode_flag_word(value, table, what="descriptor",
                            field_mask=low_mask | high_mask | PTE_ATTRINDX_MASK | PTE_SHARED | PTE_TABLE_BIT,
                            table_source=source)
    lines = list(word.derivations)
    lines.append(f"bit 0 = 0 and {marker.name} = 1: PROT_NONE (or NUMA hinting); the MMU faults on it, pte_present() "
                 "counts it present")
    address = _output_address(value, low_mask, high_mask, high_shift, lines)
    pfn = address >> shift
    lines.append(f"PFN = 0x{address:x} >> {shift} = 0x{pfn:x} (stored as is: arm64 does not invert it)")
    return Arm64Descriptor(value, level, arch_level, DescriptorKind.PROT_NONE, False, True, address, pfn,
                           (value & PTE_ATTRINDX_MASK) >> 2, "", (value >> 6) & 3, AP_MEANINGS[(value >> 6) & 3], "",
                           bool(value & PTE_AF), True, bool(value & PTE_WRITE), bool(value & PTE_DIRTY),
                           bool(value & PTE_UXN), bool(value & PTE_PXN), False, _block_size(arch_level, granule), word,
                           None, (), tuple(lines), source)


def swap_layout(kernel: Version | None) -> tuple[int, int, str]:
    """(type shift, offset shift, source) of arm64's swap PTE: 5 type bits, 50 offset bits."""
    v = kernel or (99, 0)
    if v >= PRESENT_INVALID_SINCE:
        return 6, 12, "arm64 pgtable.h from 6.10: type bits 10..6, offset bits 61..12"
    return 3, 8, "arm64 pgtable.h before 6.10: type bits 7..3, offset bits 57..8"


def _decode_swap(value: int, level: str, arch_level: int, kernel: Version | None, config: SwapConfig,
                 pa_bits: int, shift: int) -> Arm64Descriptor:
    v = kernel or (99, 0)
    type_shift, offset_shift, layout = swap_layout(kernel)
    swap_type = value >> type_shift & 0x1F
    offset = value >> offset_shift & ((1 << 50) - 1)
    bits = [Flag(PTE_SWP_EXCLUSIVE, "SWP_EXCLUSIVE", "the anonymous page was exclusive (PG_anon_exclusive)")]
    if v >= PRESENT_INVALID_SINCE:
        bits.append(Flag(bit(3), "SWP_UFFD_WP", "userfaultfd write-protected, kept while away"))
    field = (0x1F << type_shift) | (((1 << 50) - 1) << offset_shift)
    flags = decode_flag_word(value, bits, what="swap entry", field_mask=field, table_source=layout)
    table = special_swap_types(kernel, config)
    kind = table.kind(swap_type)
    lines = [f"bit 0 = 0 and not PROT_NONE: a swap entry ({layout})",
             f"type = (0x{value:x} >> {type_shift}) & 0x1f = {swap_type}",
             f"offset = (0x{value:x} >> {offset_shift}) & (2^50 - 1) = 0x{offset:x} (not inverted on arm64)"]
    summary = (f"swapped out: swap area {swap_type}, slot 0x{offset:x}" if kind is SwapEntryKind.SWAP else kind.value)
    lines.append(f"type {swap_type} {'<' if kind is SwapEntryKind.SWAP else '≥'} MAX_SWAPFILES {table.max_swapfiles}: "
                 f"{kind.value}")
    pfn = None
    marker = None
    if kind.holds_pfn:
        pfn_bits = pa_bits - shift
        pfn = offset & ((1 << pfn_bits) - 1)
        lines.append(f"PFN = offset & (2^{pfn_bits} - 1) = 0x{pfn:x} (SWP_PFN_BITS = MAX_PHYSMEM_BITS {pa_bits} - {shift})")
        summary += f", PFN 0x{pfn:x}"
    elif kind is SwapEntryKind.PTE_MARKER:
        marker_table, marker_source = pte_marker_bits(kernel)
        marker = decode_flag_word(offset, marker_table, what="PTE marker", table_source=marker_source)
        summary += ": " + (", ".join(marker.names) or "none")
    lines += list(flags.derivations)
    source = f"{layout}; {table.source}"
    swap = SwapEntry(value, swap_type, offset, kind, pfn, flags, marker, summary, source, tuple(lines))
    return Arm64Descriptor(value, level, arch_level, DescriptorKind.SWAP_FORMAT, False, False, None, pfn, None, "",
                           None, "", "", False, False, False, False, False, False, False, None, flags, swap, (),
                           tuple(lines), source)


def encode_arm64_swap_pte(swap_type: int, offset: int, kernel: Version | None = None, exclusive: bool = False) -> int:
    """The swap PTE Linux writes for (type, offset): the inverse of the swap branch of decode_arm64_descriptor."""
    if not 0 <= swap_type < 32 or not 0 <= offset < 1 << 50:
        raise DecodeError(f"swap type must be 0..31 and offset below 2^50, got {swap_type}, 0x{offset:x}")
    type_shift, offset_shift, _ = swap_layout(kernel)
    value = swap_type << type_shift | offset << offset_shift | (PTE_SWP_EXCLUSIVE if exclusive else 0)
    if not value:
        raise DecodeError("swap type 0, offset 0 would be stored as 0, an empty entry (pte_none): the kernel never "
                          "makes it (slot 0 of a swap area holds its header)")
    return value


# --- the PTE do_anonymous_page() installs ------------------------------------------------------------

_PAGE_DEFAULT = 0b11 | PTE_AF | PTE_SHARED        # _PROT_DEFAULT | PTE_ATTRINDX(MT_NORMAL = 0)
PAGE_NONE_BEFORE_6_10 = (_PAGE_DEFAULT & ~PTE_VALID) | bit(58) | PTE_RDONLY | PTE_NG | PTE_PXN | PTE_UXN
PAGE_NONE_FROM_6_10 = (_PAGE_DEFAULT & ~PTE_VALID) | PTE_NG | PTE_RDONLY | PTE_PXN | PTE_UXN
PAGE_READONLY = _PAGE_DEFAULT | PTE_USER | PTE_RDONLY | PTE_NG | PTE_PXN | PTE_UXN
PAGE_SHARED = _PAGE_DEFAULT | PTE_USER | PTE_RDONLY | PTE_NG | PTE_PXN | PTE_UXN | PTE_WRITE
VM_READ, VM_WRITE, VM_EXEC, VM_SHARED = 1, 2, 4, 8


def arm64_vm_page_prot(vm_flags: int, kernel: Version | None = None, lpa2: bool = False) -> tuple[int, str]:
    """arm64's protection_map[] (arch/arm64/mm/mmap.c) for non-executable vm_flags, and how it was chosen.

    Executable mappings are refused: PAGE_EXECONLY or PAGE_READONLY_EXEC depends on the CPU (Enhanced
    PAN) and kernel version, which a pure decoder cannot know. lpa2: SH is left to TCR_EL1
    (PTE_MAYBE_SHARED is 0).
    """
    if vm_flags & VM_EXEC:
        raise DecodeError("an executable mapping's protection depends on the CPU (Enhanced PAN) and is not derived")
    v = kernel or (99, 0)
    key = vm_flags & (VM_READ | VM_WRITE | VM_SHARED)
    if key & (VM_READ | VM_WRITE) == 0:
        prot, name = (PAGE_NONE_FROM_6_10 if v >= PRESENT_INVALID_SINCE else PAGE_NONE_BEFORE_6_10), "PAGE_NONE"
    elif key & VM_SHARED and key & VM_WRITE:
        prot, name = PAGE_SHARED, "PAGE_SHARED"
    else:
        prot, name = PAGE_READONLY, "PAGE_READONLY"
    if lpa2:
        prot &= ~PTE_SHARED
    return prot, name


@dataclass(frozen=True)
class DerivedArm64PTE:
    value: int
    pfn: int
    vm_flags: int
    write_fault: bool
    derivations: tuple[str, ...]
    arch: str = "arm64"


def derive_arm64_anonymous_pte(pfn: int, vm_flags: int, write_fault: bool = True, kernel: Version | None = None,
                               granule: int = 4096, pa_bits: int = 48) -> DerivedArm64PTE:
    """The PTE do_anonymous_page() (mm/memory.c) installs on arm64 for a write fault on anonymous memory.

    mk_pte(page, vm_page_prot), then, for VM_WRITE, pte_mkwrite(pte_mkdirty(pte)): pte_mkdirty sets
    PTE_DIRTY (and clears RDONLY only if already writable); pte_mkwrite sets PTE_WRITE (DBM) and,
    the entry being software-dirty, clears PTE_RDONLY. The same in 6.1 and 6.12 (pgtable.h checked).
    """
    shift = granule_shift(granule)
    if not 0 <= pfn < 1 << (pa_bits - shift):
        raise DecodeError(f"PFN 0x{pfn:x} does not fit in {pa_bits - shift} bits")
    lpa2 = pa_bits == 52 and granule != 65536
    prot, name = arm64_vm_page_prot(vm_flags, kernel, lpa2)
    lines = [f"vm_page_prot = protection_map[vm_flags 0x{vm_flags:x}] = {name} = 0x{prot:x} (arm64 mmap.c, "
             "pgtable-prot.h; modelled from Debian's 6.1 and 6.12 headers)"]
    phys = pfn << shift
    if pa_bits == 52:
        low_mask, high_mask, high_shift = _output_address_mask(granule, pa_bits, lpa2)
        stored = (phys & low_mask) | ((phys >> high_shift) & high_mask)
    else:
        stored = phys
    entry = stored | prot
    lines.append(f"mk_pte: __phys_to_pte_val(PFN 0x{pfn:x} << {shift}) | 0x{prot:x} = 0x{entry:x}")
    if not write_fault:
        lines.append("a read fault maps the shared zero page read-only instead (pte_mkspecial)")
        entry |= PTE_SPECIAL
        lines.append(f"| SPECIAL 0x{PTE_SPECIAL:x} = 0x{entry:x}")
    elif vm_flags & VM_WRITE:
        entry |= PTE_DIRTY
        if entry & PTE_WRITE:
            entry &= ~PTE_RDONLY
        lines.append(f"pte_mkdirty: | DIRTY 0x{PTE_DIRTY:x}{', and RDONLY cleared (already writable)' if prot & PTE_WRITE else ''}"
                     f" = 0x{entry:x}")
        entry = (entry | PTE_WRITE) & ~PTE_RDONLY
        lines.append(f"pte_mkwrite: | WRITE (DBM) 0x{PTE_WRITE:x}, and RDONLY 0x{PTE_RDONLY:x} cleared (software-dirty)"
                     f" = 0x{entry:x}")
    return DerivedArm64PTE(entry, pfn, vm_flags, write_fault, tuple(lines))
