"""The struct page of a mapped frame read as its folio: flags, refcount and mapcount from the folio's head,
the folio's order and the page's index in it, checked against /proc/kpageflags's head/tail bits.

Why the head: a tail page's own words are not its folio's state. Its `flags` word carries no PG_ bits that
describe the folio (the folio's second page even keeps the order in `_flags_1`'s low byte, 6.6 on), and its
`_refcount` is always 0, the folio's references being counted on the head (page_ref_* on a tail is a bug).
The per-page `_mapcount` is the page's own: PTE mappings of this page. A PMD (whole-folio) mapping is counted
once in the folio's `_entire_mapcount` (include/linux/mm_types.h, struct folio; compound_mapcount before 6.2),
and /proc/kpagecount reports the page's PTE mappings plus the folio's entire mappings
(fs/proc/page.c: folio_precise_page_mapcount(), page_mapcount() before 6.11): the difference of the two is
the whole-folio mapping count, derived.
"""

from __future__ import annotations

from ..decode.pagemap import decode_kpageflags
from .steps import Value, derived, observed, unavailable

KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL, KPF_THP = 15, 16, 22


def _flag_names(flags: int, names: dict[int, str]) -> str:
    limit = next((v for v, n in names.items() if n == "__NR_PAGEFLAGS"), 0)
    set_names = [names[b] for b in range(limit) if flags >> b & 1 and b in names]
    return " | ".join(set_names) or "(no names: no BTF)"


def _bit_of(names: dict[int, str], name: str) -> int | None:
    return next((b for b, n in names.items() if n == name), None)


def why_refs(refcount: int, flags: int, names: dict[int, str], pages: int | None = 1) -> str:
    """Whose references the folio's refcount counts. An anonymous (swap-backed) folio's are its mappings' and
    the per-CPU LRU batch's; a page-cache folio adds the page cache's own, one per page of the folio
    (__filemap_add_folio: folio_ref_add(folio, nr)). `pages`: the folio's size, None for a large folio whose
    order was not read."""
    swapbacked = _bit_of(names, "PG_swapbacked")
    if swapbacked is None:
        return "the mapping's reference and others held elsewhere in the kernel (no page-flag names from BTF to " \
               "tell an anonymous page from a page-cache one)"
    if flags >> swapbacked & 1:
        if pages != 1:
            return (f"an anonymous folio of {pages or 'several'} pages: one reference per page-table entry that maps a page of it "
                    "(one for a PMD mapping of the whole folio), and more while it waits in a per-CPU LRU batch")
        return {1: "one reference, the page-table mapping's: the folio is already on an LRU list",
                2: "one reference for the page-table mapping, one more while the new folio waits in a per-CPU LRU "
                   "batch (folio_add_lru_vma) to be put on an LRU list"}.get(
                       refcount, "the mappings' references and others held elsewhere in the kernel")
    if pages is None:
        return ("the page cache holds one per page of the folio (its order was not read, so how many is not "
                "known); the others are mappings (one per page-table entry) and transient holders")
    if pages > 1:
        rest = refcount - pages
        return (f"the page cache holds one per page of the folio ({pages}); the other {rest} are mappings (one per "
                "page-table entry mapping a page of it) and transient holders (readahead, LRU batches)"
                if rest >= 0 else f"fewer than the page cache's {pages}: the folio is being freed or split")
    return {1: "one reference, the page cache's: no mapping holds one (not yet mapped, or mapped by a PFN map)",
            2: "one reference for the page cache, one for this page-table mapping",
            3: "one for the page cache, one for this mapping, and one more: a folio just read in waits in a "
               "per-CPU LRU batch (folio_add_lru) until the batch is drained, or another mapping holds one"}.get(
                refcount, "the page cache's reference, one per mapping, and others held elsewhere (readahead, "
                          "LRU batches, other processes' mappings)")


def _kpageflags_check(kpageflags: int | None, tail: bool, large: bool, kernel: tuple[int, int]) -> list[str]:
    if kpageflags is None:
        return []
    kw = decode_kpageflags(kpageflags, kernel)
    head_bit, tail_bit = kpageflags >> KPF_COMPOUND_HEAD & 1, kpageflags >> KPF_COMPOUND_TAIL & 1
    says = "COMPOUND_TAIL" if tail_bit else "COMPOUND_HEAD" if head_bit else "neither head nor tail (an order-0 page)"
    want = "COMPOUND_TAIL" if tail else "COMPOUND_HEAD" if large else "neither head nor tail (an order-0 page)"
    return [f"/proc/kpageflags ({' | '.join(kw.names)}) says {says}: " + ("the same" if says == want else "DIFFERENT")
            + (" (KPF_THP: a transparent huge page)" if kpageflags >> KPF_THP & 1 else "")]


def folio_values(objs: dict[str, int], names: dict[int, str], where: str, names_source: str,
                 kpageflags: int | None, kpagecount: int | None, kernel: tuple[int, int]) -> list[Value]:
    """The folio's flags, refcount, order, the page's index in it and its mapcounts, from the walk's read of the
    page (`objs`: folio_pfn, page_flags, refcount, mapcount; folio_head_* for a tail page; folio_order)."""
    tail = "folio_head_pfn" in objs
    head_pfn = objs["folio_head_pfn"] if tail else objs["folio_pfn"]
    flags = objs["folio_head_flags"] if tail else objs["page_flags"]
    refcount = objs["folio_head_refcount"] if tail else objs["refcount"]
    head_bit = _bit_of(names, "PG_head")
    large = tail or "folio_order" in objs or (head_bit is not None and bool(flags >> head_bit & 1))
    head_where = (f"{where}; its head, from compound_head − 1: PFN 0x{head_pfn:x}" if tail else where)
    values: list[Value] = []
    order = objs.get("folio_order")
    pages = 1 << order if order is not None else None if large else 1
    if large:
        index = objs["folio_pfn"] - head_pfn
        values.append(observed("folio order", order, head_where + " (_flags_1's low byte from 6.6, _folio_order "
                               "before)", display=f"{order} ({pages} pages)") if order is not None else
                      unavailable("folio order", "this capture's walk did not read the folio's order (older captures)"))
        values.append(derived("page's index in the folio", index, "PFN − the head's PFN",
                              [f"0x{objs['folio_pfn']:x} − 0x{head_pfn:x} = {index}"
                               + ("" if pages is None else f" (< {pages}: " + ("inside" if index < pages else
                                                                               "NOT inside") + " the folio)")],
                              display=str(index)))
    label = "folio" if large else "page"
    values.append(observed(f"{label} refcount", refcount, head_where if tail else where,
                           derivation=[why_refs(refcount, flags, names, pages)]
                           + ([f"the tail page's own _refcount is {objs['refcount']}: a tail page's is always 0, "
                               "the folio's references being counted on its head"] if tail else [])))
    values += _mapcount_values(objs, where, kpagecount, large)
    limit = next((v for v, n in names.items() if n == "__NR_PAGEFLAGS"), 0)
    values.append(observed(f"{label} flags", flags, head_where + ("; names from " + names_source if names else ""),
                           display=f"0x{flags:x} = {_flag_names(flags, names)}",
                           derivation=([f"bits below __NR_PAGEFLAGS ({limit}) are PG_ flags; the bits above hold the "
                                        "page's node, zone and section"] if limit else [])
                           + ([f"the tail page's own flags word 0x{objs['page_flags']:x} is not the folio's: its PG_ "
                               "bits are not decoded"] if tail else [])
                           + _kpageflags_check(kpageflags, tail, large, kernel)))
    return values


def _mapcount_values(objs: dict[str, int], where: str, kpagecount: int | None, large: bool) -> list[Value]:
    """The page's own mapcount (PTE mappings of it) and, for a large folio, the whole-folio mappings that
    /proc/kpagecount adds to it."""
    mapcount = objs["mapcount"] + 1
    check = [] if kpagecount is None else [f"/proc/kpagecount says {kpagecount}: "
                                           + ("the same" if kpagecount == mapcount else "DIFFERENT")]
    if large and kpagecount is not None and kpagecount != mapcount:
        check = [f"/proc/kpagecount says {kpagecount}: the page's PTE mappings plus the folio's whole-folio (PMD) "
                 "mappings"]
    values = [observed("page mapcount" + (" (this page's PTE mappings)" if large else ""), mapcount,
                       where + "; _mapcount starts at −1", derivation=[f"_mapcount {objs['mapcount']} + 1 = {mapcount}"]
                       + check)]
    if large and kpagecount is not None:
        entire = kpagecount - mapcount
        values.append(derived("whole-folio mappings (_entire_mapcount)", entire,
                              "/proc/kpagecount − the page's own mapcount: a PMD mapping counts once for the whole "
                              "folio in struct folio's _entire_mapcount, not in each page's _mapcount",
                              [f"{kpagecount} − {mapcount} = {entire}" + (": mapped by a PMD" if entire > 0 else
                                                                           ": mapped by PTEs only")],
                              display=str(entire)))
    return values
