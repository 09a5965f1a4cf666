"""x86-64 virtual addresses: canonical check and the split into page-table indices."""

from __future__ import annotations

from dataclasses import dataclass

from .bits import DecodeError, check_word

PAGE_SHIFT = 12
INDEX_BITS = 9
LEVEL_NAMES = {4: ("PGD", "PUD", "PMD", "PTE"), 5: ("PGD", "P4D", "PUD", "PMD", "PTE")}


class NonCanonicalAddress(DecodeError):
    pass


def level_shift(levels: int, position: int) -> int:
    """Shift of the index at `position` (0 = top level) for a `levels`-level walk."""
    return PAGE_SHIFT + INDEX_BITS * (levels - 1 - position)


def virtual_address_bits(levels: int) -> int:
    return PAGE_SHIFT + INDEX_BITS * levels


def _check_levels(levels: int) -> None:
    if levels not in LEVEL_NAMES:
        raise DecodeError(f"paging levels must be 4 or 5, got {levels}")


def check_canonical(address: int, levels: int = 4) -> int:
    """Return the address if canonical, else raise saying which bits disagree."""
    _check_levels(levels)
    address = check_word(address, 64, "address")
    top = virtual_address_bits(levels) - 1
    sign = address >> top & 1
    upper = address >> (top + 1)
    expected = (1 << (64 - top - 1)) - 1 if sign else 0
    if upper != expected:
        raise NonCanonicalAddress(
            f"0x{address:x} is not canonical for {levels}-level paging: bits 63..{top + 1} must all "
            f"equal bit {top} (= {sign}), but they are 0x{upper:x}")
    return address


@dataclass(frozen=True)
class TableIndex:
    level: str
    index: int
    shift: int
    high_bit: int
    bits: str


@dataclass(frozen=True)
class AddressSplit:
    address: int
    levels: int
    half: str
    indices: tuple[TableIndex, ...]
    page_offset: int
    virtual_page_number: int
    page_base: int
    offset_in_2m: int
    offset_in_1g: int
    binary: str
    derivations: tuple[str, ...]

    def index(self, level: str) -> int:
        for entry in self.indices:
            if entry.level == level:
                return entry.index
        raise KeyError(level)


def split_virtual_address(address: int, levels: int = 4) -> AddressSplit:
    address = check_canonical(address, levels)
    names = LEVEL_NAMES[levels]
    width = virtual_address_bits(levels)
    raw = format(address & ((1 << width) - 1), f"0{width}b")
    entries = []
    lines = []
    for pos, name in enumerate(names):
        shift = level_shift(levels, pos)
        idx = (address >> shift) & 0x1FF
        field_bits = raw[width - shift - INDEX_BITS: width - shift]
        entries.append(TableIndex(name, idx, shift, shift + INDEX_BITS - 1, field_bits))
        lines.append(f"{name}: (0x{address:x} >> {shift}) & 0x1ff = {idx} (bits {shift + 8}..{shift} = {field_bits})")
    offset = address & 0xFFF
    lines.append(f"offset: 0x{address:x} & 0xfff = {offset} (0x{offset:x}, bits 11..0 = {raw[-12:]})")
    vpn = (address & ((1 << width) - 1)) >> PAGE_SHIFT
    lines.append(f"virtual page number: 0x{address & ((1 << width) - 1):x} >> 12 = 0x{vpn:x}")
    page_base = address & ~0xFFF & (1 << 64) - 1
    lines.append(f"page base: 0x{address:x} & ~0xfff = 0x{page_base:x}")
    off2m, off1g = address & ((1 << 21) - 1), address & ((1 << 30) - 1)
    lines.append(f"offset in a 2 MiB page: 0x{address:x} & 0x1fffff = 0x{off2m:x}")
    lines.append(f"offset in a 1 GiB page: 0x{address:x} & 0x3fffffff = 0x{off1g:x}")
    grouped = " ".join([raw[: width - PAGE_SHIFT - INDEX_BITS * (levels - 1)]]
                       + [e.bits for e in entries[1:]] + [raw[-12:]])
    half = "kernel" if address >> (width - 1) & 1 else "user"
    return AddressSplit(address, levels, half, tuple(entries), offset, vpn, page_base, off2m, off1g,
                        grouped, tuple(lines))


def join_virtual_address(indices: list[int] | tuple[int, ...], offset: int, levels: int = 4) -> int:
    """Inverse of split_virtual_address: indices top-down and page offset → canonical address."""
    _check_levels(levels)
    if len(indices) != levels:
        raise DecodeError(f"{levels}-level paging needs {levels} indices, got {len(indices)}")
    if not 0 <= offset < 4096:
        raise DecodeError(f"page offset must be 0..4095, got {offset}")
    address = offset
    for pos, idx in enumerate(indices):
        if not 0 <= idx < 512:
            raise DecodeError(f"table index must be 0..511, got {idx}")
        address |= idx << level_shift(levels, pos)
    width = virtual_address_bits(levels)
    if address >> (width - 1) & 1:
        address |= ((1 << 64) - 1) ^ ((1 << width) - 1)
    return address
