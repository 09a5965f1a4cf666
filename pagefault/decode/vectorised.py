"""numpy paths for whole arrays: pagemap entries read in bulk, and many addresses at once."""

from __future__ import annotations

import numpy as np

from .address import PAGE_SHIFT, level_shift, virtual_address_bits
from .pagemap import PM_PFN_MASK

_U64 = np.uint64


def decode_pagemap_array(entries: np.ndarray) -> dict[str, np.ndarray]:
    """Field arrays for an array of raw pagemap entries (any shape, any integer dtype viewable as uint64)."""
    e = np.asarray(entries)
    if e.dtype != np.uint64:
        if e.dtype.kind not in "iu":
            raise TypeError(f"pagemap entries must be integers, got dtype {e.dtype}")
        e = e.astype(np.uint64)
    present = (e >> _U64(63)).astype(bool)
    swapped = ((e >> _U64(62)) & _U64(1)).astype(bool)
    low = e & _U64(PM_PFN_MASK)
    return {
        "present": present,
        "swapped": swapped,
        "file_or_shared": ((e >> _U64(61)) & _U64(1)).astype(bool),
        "exclusive": ((e >> _U64(56)) & _U64(1)).astype(bool),
        "soft_dirty": ((e >> _U64(55)) & _U64(1)).astype(bool),
        "uffd_wp": ((e >> _U64(57)) & _U64(1)).astype(bool),
        "pfn": np.where(present, low, _U64(0)),
        "swap_type": np.where(swapped & ~present, low & _U64(0x1F), _U64(0)),
        "swap_offset": np.where(swapped & ~present, low >> _U64(5), _U64(0)),
    }


def split_addresses(addresses: np.ndarray, levels: int = 4) -> dict[str, np.ndarray]:
    """Per-level table indices and page offsets for an array of (canonical) addresses."""
    a = np.asarray(addresses).astype(np.uint64)
    names = ("PGD", "P4D", "PUD", "PMD", "PTE") if levels == 5 else ("PGD", "PUD", "PMD", "PTE")
    out = {name: ((a >> _U64(level_shift(levels, i))) & _U64(0x1FF)).astype(np.uint16)
           for i, name in enumerate(names)}
    out["offset"] = (a & _U64(0xFFF)).astype(np.uint16)
    width = virtual_address_bits(levels)
    out["vpn"] = (a & _U64((1 << width) - 1)) >> _U64(PAGE_SHIFT)
    return out
