"""A model of how the maple tree (lib/maple_tree.c) finds the VMA holding an address.

mm->mm_mt maps ranges of addresses to VMAs. Its leaves (maple_range_64 nodes) hold up to 16 slots
and 15 pivots: slot i covers (pivot[i-1], pivot[i]], and a gap between VMAs is a slot holding
NULL. A search walks down comparing the address with the pivots, then takes the first slot whose
pivot is ≥ the address. The nodes built here are packed in one pass from the VMAs; the kernel's
own layout depends on the order of the inserts and splits, so the node boundaries are modelled,
while the ranges themselves are the VMAs /proc/PID/maps shows.
"""

from __future__ import annotations

from dataclasses import dataclass

SLOTS = 16            # MAPLE_RANGE64_SLOTS (kernel 6.18, 64-bit)
PIVOTS = SLOTS - 1    # a maple_range_64 node stores pivot[0..14]; slot 15 ends at the node's maximum
MAX_ADDRESS = (1 << 64) - 1


@dataclass(frozen=True)
class Slot:
    first: int
    last: int            # the pivot: the last address this slot covers
    vma: tuple[int, int] | None   # (vm_start, vm_end) or None for a gap


@dataclass(frozen=True)
class MapleSearch:
    leaves: tuple[tuple[Slot, ...], ...]
    leaf_index: int
    slot_index: int
    found: Slot
    derivations: tuple[str, ...]


def slots_for(vmas: list[tuple[int, int]]) -> list[Slot]:
    """Every range from 0 to the top of the address space: a VMA's slot, or a gap's NULL slot."""
    out, cursor = [], 0
    for start, end in sorted(vmas):
        if start > cursor:
            out.append(Slot(cursor, start - 1, None))
        out.append(Slot(start, end - 1, (start, end)))
        cursor = end
    out.append(Slot(cursor, MAX_ADDRESS, None))
    return out


def search(vmas: list[tuple[int, int]], address: int) -> MapleSearch:
    slots = slots_for(vmas)
    leaves = tuple(tuple(slots[i:i + SLOTS]) for i in range(0, len(slots), SLOTS))
    lines = [f"{len(slots)} ranges (VMAs and the gaps between them) in {len(leaves)} leaves of up to {SLOTS} slots"]
    if len(leaves) > 1:
        pivots = [leaf[-1].last for leaf in leaves]
        leaf_index = next(i for i, p in enumerate(pivots) if p >= address)
        lines.append(f"root: first child pivot ≥ 0x{address:x} is 0x{pivots[leaf_index]:x} → leaf {leaf_index}")
    else:
        leaf_index = 0
    leaf = leaves[leaf_index]
    for i, slot in enumerate(leaf):
        verdict = "≥" if slot.last >= address else "<"
        if i < PIVOTS:
            lines.append(f"leaf {leaf_index} pivot[{i}] = 0x{slot.last:x} {verdict} 0x{address:x}")
        else:   # the 16th slot has no pivot of its own: it ends where its node ends
            lines.append(f"leaf {leaf_index} slot {i} is the last of the node, which has {PIVOTS} pivots for {SLOTS} "
                         f"slots: it runs to the node's maximum 0x{slot.last:x} {verdict} 0x{address:x}")
        if slot.last >= address:
            what = (f"slot {i} → VMA [0x{slot.vma[0]:x}, 0x{slot.vma[1]:x})" if slot.vma else
                    f"slot {i} is a gap (NULL): no VMA holds this address → SIGSEGV (SEGV_MAPERR)")
            lines.append(what)
            return MapleSearch(leaves, leaf_index, i, slot, tuple(lines))
    raise AssertionError("the last slot always reaches the top of the address space")
