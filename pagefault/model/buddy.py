"""A model of the buddy allocator (mm/page_alloc.c): free blocks of 2**order pages, split on demand.

An allocation of order n takes a free block of that order; when there is none, it takes the
smallest larger block and splits it, keeping the lower half and putting each upper half back on
the free list one order down (expand()). Freeing merges a block with its buddy (pfn ^ 2**order)
while the buddy is free too. The per-CPU page lists, zones, watermarks and migrate types of
the real allocator are left out: a modelled PFN is what this algorithm gives, never the machine's.
"""

from __future__ import annotations

MAX_ORDER = 10            # MAX_PAGE_ORDER in kernel 6.18: blocks of up to 4 MiB


class OutOfMemory(Exception):
    """No free block of the order asked for (the real kernel would reclaim, then OOM-kill)."""


class BuddyAllocator:
    def __init__(self, first_pfn: int, pages: int):
        if first_pfn % (1 << MAX_ORDER) or pages <= 0:
            raise ValueError("the model's memory must start on a 4 MiB boundary and hold at least one page")
        # one dict per order: insertion-ordered, so popitem() takes the block freed last (LIFO, like
        # the kernel's free lists) and a buddy's membership is one lookup
        self.free: list[dict[int, None]] = [{} for _ in range(MAX_ORDER + 1)]
        pfn, end = first_pfn, first_pfn + pages
        blocks: list[tuple[int, int]] = []
        while pfn < end:
            order = MAX_ORDER
            while pfn + (1 << order) > end:
                order -= 1
            blocks.append((pfn, order))
            pfn += 1 << order
        for pfn, order in reversed(blocks):    # the lowest block is taken first
            self.free[order][pfn] = None
        self.first_pfn, self.pages = first_pfn, pages
        self.allocated = 0

    def alloc(self, order: int = 0) -> int:
        free = self.free
        if free[order]:
            pfn = free[order].popitem()[0]
            self.allocated += 1 << order
            return pfn
        high = order + 1
        while high <= MAX_ORDER and not free[high]:
            high += 1
        if high > MAX_ORDER:
            raise OutOfMemory(f"no free block of order {order} ({4 << order} KiB) is left in the model's "
                              f"{self.pages * 4 // 1024} MiB")
        pfn = free[high].popitem()[0]
        while high > order:                    # expand(): the upper halves go back, one order down
            high -= 1
            free[high][pfn + (1 << high)] = None
        self.allocated += 1 << order
        return pfn

    def free_block(self, pfn: int, order: int = 0) -> None:
        self.allocated -= 1 << order
        free = self.free
        while order < MAX_ORDER:
            buddy = pfn ^ (1 << order)
            if buddy not in free[order]:
                break
            del free[order][buddy]
            pfn &= ~(1 << order)
            order += 1
        free[order][pfn] = None

    def free_pages(self) -> int:
        return sum(len(blocks) << order for order, blocks in enumerate(self.free))

    def describe(self) -> list[str]:
        return [f"order {o}: {len(b)} free block{'s' if len(b) != 1 else ''} of {4 << o} KiB"
                for o, b in enumerate(self.free) if b]
