"""arm64 virtual addresses: which translation table base they use, and the split into table indices.

Arm ARM D8.2 (VMSAv8-64 translation): with a translation granule of 2^g bytes (4, 16 or 64 KiB), every
table holds 2^(g-3) eight-byte descriptors, so each level resolves g-3 address bits; the last level
resolves bits g+(g-3)-1..g, and the walk starts as high as the VA size needs. Linux names the levels
PGD, (P4D), (PUD), (PMD), PTE from the top, folding the ones its CONFIG_PGTABLE_LEVELS lacks; the
architecture numbers them 3 (last) upwards, -1 being the extra level of 52-bit VAs with 4 KiB pages
(FEAT_LPA2).

Bit 55 picks the table: 0 → TTBR0_EL1 (user space), 1 → TTBR1_EL1 (the kernel). Bits 55..VA_BITS must
all equal bit 55. Linux turns on top-byte-ignore for user space (TCR_EL1.TBI0, the tagged-address
ABI), so bits 63..56 of a user address are a tag the MMU does not translate; kernel addresses carry
0xff there (unless the kernel is built with software-tag KASAN).
"""

from __future__ import annotations

from dataclasses import dataclass

from .bits import DecodeError, check_word

GRANULES = {4096: 12, 16384: 14, 65536: 16}
KERNEL_LEVEL_NAMES = ("PGD", "P4D", "PUD", "PMD", "PTE")


class AddressOutsideTranslation(DecodeError):
    """Bits 55..VA_BITS disagree with bit 55: no translation table maps this address."""


def granule_shift(granule: int) -> int:
    if granule not in GRANULES:
        raise DecodeError(f"arm64 translation granule must be 4096, 16384 or 65536 bytes, got {granule}")
    return GRANULES[granule]


def check_va_bits(va_bits: int, granule: int) -> int:
    """VA sizes Linux builds for: 36 (16 KiB), 39, 42 (64 KiB), 47 (16 KiB), 48, 52."""
    shift = granule_shift(granule)
    allowed = {12: (39, 48, 52), 14: (36, 47, 48, 52), 16: (42, 48, 52)}[shift]
    if va_bits not in allowed:
        raise DecodeError(f"a {granule // 1024} KiB granule takes VA_BITS {', '.join(map(str, allowed))}, got {va_bits}")
    return va_bits


def translation_levels(va_bits: int, granule: int = 4096) -> int:
    """How many table levels translate a VA_BITS-bit address: ceil((VA_BITS - g) / (g - 3))."""
    shift = granule_shift(granule)
    check_va_bits(va_bits, granule)
    per_level = shift - 3
    return -(-(va_bits - shift) // per_level)


def lpa2_in_use(va_bits: int, granule: int) -> bool:
    """Whether a kernel translating `va_bits`-bit addresses with this granule uses FEAT_LPA2's descriptors
    (52-bit output addresses, SH left to TCR_EL1): 52 bits with 4 or 16 KiB pages (64 KiB uses FEAT_LPA)."""
    return va_bits == 52 and granule != 65536


def kernel_level_names(levels: int) -> tuple[str, ...]:
    """Linux's names for a walk of `levels` levels: PGD first, PTE last, the middle ones folded away."""
    if not 2 <= levels <= 5:
        raise DecodeError(f"arm64 walks have 2 to 5 levels, got {levels}")
    return ("PGD",) + KERNEL_LEVEL_NAMES[5 - levels + 1:]


@dataclass(frozen=True)
class Arm64TableIndex:
    level: str            # Linux's name
    architectural_level: int  # -1..3, the Arm ARM's numbering
    index: int
    shift: int
    high_bit: int
    bits: str


@dataclass(frozen=True)
class Arm64AddressSplit:
    address: int
    va_bits: int
    granule: int
    levels: int
    table_base: str      # "TTBR0_EL1" or "TTBR1_EL1"
    half: str            # "user" or "kernel"
    tag: int             # bits 63..56 of a user address (top-byte-ignore); 0 for a kernel one
    indices: tuple[Arm64TableIndex, ...]
    page_offset: int
    page_base: int
    derivations: tuple[str, ...]
    arch: str = "arm64"

    def index(self, level: str) -> int:
        for entry in self.indices:
            if entry.level == level:
                return entry.index
        raise KeyError(level)


def split_arm64_address(address: int, va_bits: int = 48, granule: int = 4096) -> Arm64AddressSplit:
    """Split an arm64 virtual address into the table indices of a VA_BITS, granule-sized walk.

    Raises AddressOutsideTranslation when bits 55..VA_BITS do not all equal bit 55 (such an address
    faults with a translation fault at level 0 whatever the tables hold), and for a kernel address
    whose top byte is not 0xff.
    """
    address = check_word(address, 64, "address")
    shift = granule_shift(granule)
    levels = translation_levels(va_bits, granule)
    per_level = shift - 3
    select = address >> 55 & 1
    between = (address >> va_bits) & ((1 << (56 - va_bits)) - 1)
    expected = (1 << (56 - va_bits)) - 1 if select else 0
    if between != expected:
        raise AddressOutsideTranslation(
            f"0x{address:x} is outside arm64's {va_bits}-bit translation: bits 55..{va_bits} must all equal bit 55 "
            f"(= {select}), but they are 0x{between:x}")
    top_byte = address >> 56
    if select and top_byte != 0xFF:
        raise AddressOutsideTranslation(
            f"0x{address:x}: a kernel (TTBR1) address has 0xff in bits 63..56, this one 0x{top_byte:x} "
            "(only a kernel built with software-tag KASAN tags kernel pointers)")
    tag = 0 if select else top_byte
    names = kernel_level_names(levels)
    first_architectural = 4 - levels
    width = va_bits
    raw = format(address & ((1 << width) - 1), f"0{width}b")
    lines = [f"bit 55 = {select}: translated through {'TTBR1_EL1 (kernel)' if select else 'TTBR0_EL1 (user)'}; "
             f"bits 55..{va_bits} all {select}, as they must be"]
    if tag:
        lines.append(f"bits 63..56 = 0x{tag:x}: a pointer tag, ignored by the MMU (TBI0, the tagged-address ABI)")
    entries = []
    for position, name in enumerate(names):
        low = shift + per_level * (levels - 1 - position)
        high = min(low + per_level, va_bits) - 1
        idx = (address >> low) & ((1 << (high - low + 1)) - 1)
        field = raw[width - 1 - high: width - low]
        entries.append(Arm64TableIndex(name, first_architectural + position, idx, low, high, field))
        lines.append(f"{name} (level {first_architectural + position}): (0x{address:x} >> {low}) & 0x{(1 << (high - low + 1)) - 1:x} "
                     f"= {idx} (bits {high}..{low} = {field})")
    offset = address & ((1 << shift) - 1)
    lines.append(f"offset in the {granule // 1024} KiB page: 0x{address:x} & 0x{(1 << shift) - 1:x} = 0x{offset:x}")
    page_base = address & ~((1 << shift) - 1) & ((1 << 64) - 1)
    return Arm64AddressSplit(address, va_bits, granule, levels, "TTBR1_EL1" if select else "TTBR0_EL1",
                             "kernel" if select else "user", tag, tuple(entries), offset, page_base, tuple(lines))


def join_arm64_address(indices: list[int] | tuple[int, ...], offset: int, va_bits: int = 48, granule: int = 4096,
                       kernel: bool = False, tag: int = 0) -> int:
    """Inverse of split_arm64_address: indices top-down, page offset, half and tag → the address."""
    shift = granule_shift(granule)
    levels = translation_levels(va_bits, granule)
    per_level = shift - 3
    if len(indices) != levels:
        raise DecodeError(f"a {va_bits}-bit, {granule // 1024} KiB-granule walk has {levels} indices, got {len(indices)}")
    if not 0 <= offset < 1 << shift:
        raise DecodeError(f"page offset must be 0..{(1 << shift) - 1}, got {offset}")
    if not 0 <= tag < 256 or (kernel and tag):
        raise DecodeError(f"a tag is 0..255 and only on user addresses, got {tag}")
    address = offset
    for position, idx in enumerate(indices):
        low = shift + per_level * (levels - 1 - position)
        width = min(low + per_level, va_bits) - low
        if not 0 <= idx < 1 << width:
            raise DecodeError(f"index {position} must be 0..{(1 << width) - 1}, got {idx}")
        address |= idx << low
    if kernel:
        address |= ((1 << 64) - 1) ^ ((1 << va_bits) - 1)
    return address | tag << 56
