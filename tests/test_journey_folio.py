"""The struct page step reads a large folio's state from its head (issue 26, class 5): flags, refcount and
mapcount, the folio's order and the page's index in it, checked against kpageflags's head/tail bits; a
PMD-mapped THP's kpagecount is explained by the whole-folio mapcount.

The numbers are hand-made from the kernel's layout: on 6.6 and later a folio's first tail page keeps the
order in the low byte of its flags word (_flags_1), and a tail page's _refcount is always 0."""

from __future__ import annotations

import copy
from pathlib import Path

from pagefault.core import journey_from_evidence
from pagefault.evidence.file import load_evidence

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "evidence"
KPF_LRU, KPF_MMAP, KPF_UPTODATE, KPF_HEAD, KPF_TAIL = 1 << 5, 1 << 11, 1 << 3, 1 << 15, 1 << 16


def _pagemap_values(ev) -> dict[str, object]:
    j = journey_from_evidence(ev)
    step = next(s for s in j.steps if s.key in ("pagemap", "pte") and any(v.label.endswith("flags") for v in s.values
                                                                           if "folio" in v.label or "page" in v.label))
    return {v.label: v for v in step.values}


def _program_major_as_tail(order: int = 3, index: int = 1):
    """program-major (a file page, bpftrace capture of 6.18) with its read made that of a tail page of an
    order-`order` page-cache folio: what the compiled walk reads for such a page."""
    ev = copy.deepcopy(load_evidence(FIXTURES / "6.18.44-fc-v669/program-major.json.gz").evidence)
    names = {n: b for b, n in ev.kernel_enums["pageflags"].items()}
    objs = ev.bpf.reads["after"].objects
    pfn = objs["folio_pfn"]
    head_flags = (1 << names["PG_head"]) | (1 << names["PG_uptodate"]) | (1 << names["PG_lru"]) | (3 << 54)
    objs.update(page_flags=order, refcount=0, mapcount=0, folio_head_pfn=pfn - index, folio_head_flags=head_flags,
                folio_head_refcount=(1 << order) + 2, folio_head_mapcount=0, folio_order=order)
    ev.kpageflags = KPF_TAIL | KPF_MMAP | KPF_UPTODATE | KPF_LRU
    ev.kpagecount = 1
    return ev, head_flags


def test_a_tail_page_shows_its_folios_head_flags_refcount_order_and_index() -> None:
    ev, head_flags = _program_major_as_tail(order=3, index=1)
    v = _pagemap_values(ev)
    assert v["folio order"].value == 3 and v["folio order"].provenance == "observed"
    assert v["page's index in the folio"].value == 1
    assert "inside the folio" in v["page's index in the folio"].derivation[0]
    flags = v["folio flags"]
    assert flags.value == head_flags
    assert "PG_head" in flags.display and "PG_locked" not in flags.display and "PG_writeback" not in flags.display
    assert any("says COMPOUND_TAIL: the same" in d for d in flags.derivation)
    ref = v["folio refcount"]
    assert ref.value == 10                       # the head's: 8 for the page cache's pages, 2 more
    assert "page cache holds one per page of the folio (8)" in ref.derivation[0]
    assert "other 2" in ref.derivation[0]
    assert "page flags" not in v and "page refcount" not in v


def test_kpageflags_that_disagree_with_the_read_say_different() -> None:
    ev, _ = _program_major_as_tail()
    ev.kpageflags = KPF_HEAD | KPF_MMAP
    flags = _pagemap_values(ev)["folio flags"]
    assert any("says COMPOUND_HEAD: DIFFERENT" in d for d in flags.derivation)


def test_a_pmd_mapped_thp_explains_kpagecount_by_the_whole_folio_mapcount() -> None:
    ev = load_evidence(FIXTURES / "6.18.44-fc-v669/program-thp.json.gz").evidence
    v = _pagemap_values(ev)
    per_page = v["page mapcount (this page's PTE mappings)"]
    assert per_page.value == 0                   # _mapcount −1: no PTE maps this page
    assert not any("DIFFERENT" in d for d in per_page.derivation)
    entire = v["whole-folio mappings (_entire_mapcount)"]
    assert entire.provenance == "derived" and entire.value == 1
    assert entire.derivation == ["1 − 0 = 1: mapped by a PMD"]
    assert any("COMPOUND_HEAD: the same" in d for d in v["folio flags"].derivation)


def test_an_order_0_page_keeps_the_pages_own_words() -> None:
    ev = load_evidence(FIXTURES / "6.18.44-fc-v669/journey-bpf.json.gz").evidence
    v = _pagemap_values(ev)
    assert "folio order" not in v and "page's index in the folio" not in v
    assert v["page refcount"].value == ev.bpf.reads["after"].objects["refcount"]
    assert any("neither head nor tail (an order-0 page): the same" in d for d in v["page flags"].derivation)
