"""The simulator: hand-checked fault paths, allocator properties, and the scenarios' expected outcomes.

The expected values here come from the kernel's source (mm/memory.c, arch/x86/mm/fault.c), not from
running the model; tests/test_live_scenarios.py checks the same scenarios against the real kernel.
"""

import ast
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pagefault.decode.pagemap import page_state, summarise_states
from pagefault.decode.pte import decode_pte, derive_anonymous_pte
from pagefault.journey.model_journey import build_model_journey
from pagefault.journey.scenario_check import FaultRow, ScenarioOutcome, compare, from_model
from pagefault.model import kernel as mk
from pagefault.model.buddy import MAX_ORDER, BuddyAllocator, OutOfMemory
from pagefault.model.scenarios import SCENARIOS, ScenarioError, find_scenario, parse_op, run_in_model

PACKAGE = Path(__file__).parent.parent / "pagefault"


# --- the buddy allocator ----------------------------------------------------------------------------

def test_buddy_splits_the_lowest_block_and_hands_out_consecutive_pages():
    b = BuddyAllocator(0x100000, 1024)
    assert [b.alloc(0) for _ in range(4)] == [0x100000, 0x100001, 0x100002, 0x100003]
    # after four order-0 pages the order-2 … order-9 upper halves are free: 1024 - 4 pages left
    assert b.free_pages() == 1020
    assert sorted(b.free[9]) == [0x100200] and sorted(b.free[2]) == [0x100004]


def test_buddy_merges_back_to_one_block():
    b = BuddyAllocator(0x100000, 1024)
    pfns = [b.alloc(0) for _ in range(3)] + [b.alloc(1)]
    for p in pfns[:3]:
        b.free_block(p, 0)
    b.free_block(pfns[3], 1)
    assert b.free[MAX_ORDER] == {0x100000: None} and b.free_pages() == 1024 and b.allocated == 0


def test_buddy_out_of_memory_is_a_clear_error():
    b = BuddyAllocator(0x100000, 1024)
    b.alloc(MAX_ORDER)
    with pytest.raises(OutOfMemory, match="no free block of order 0"):
        b.alloc(0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=1, max_size=80))
def test_buddy_never_hands_out_a_page_twice_and_frees_back_to_the_start(ops):
    b = BuddyAllocator(0x100000, 2048)
    start = [dict(f) for f in b.free]
    held: list[tuple[int, int]] = []
    for order, free_one in ops:
        if free_one and held:
            b.free_block(*held.pop(0))
        else:
            pfn = b.alloc(order)
            assert pfn % (1 << order) == 0                      # blocks are naturally aligned
            held.append((pfn, order))
        pages = [p for pfn, o in held for p in range(pfn, pfn + (1 << o))]
        assert len(pages) == len(set(pages)) == b.allocated
        assert b.allocated + b.free_pages() == 2048
    for pfn, order in held:
        b.free_block(pfn, order)
    assert [set(f) for f in b.free] == [set(f) for f in start]


# --- fault paths, hand-checked ------------------------------------------------------------------------

def _fresh(levels=4, **cfg):
    k = mk.SimulatedKernel(mk.ModelConfig(paging_levels=levels, **cfg))
    return k, k.exec("t")


def test_first_write_builds_every_table_and_the_pte_do_anonymous_page_would():
    k, p = _fresh()
    addr = k.mmap(p, 4096, mk.PROT_READ | mk.PROT_WRITE, mk.MAP_PRIVATE | mk.MAP_ANONYMOUS)
    f = k.access(p, addr + 0x100, write=True)
    assert (f.error_code, f.outcome) == (0x6, mk.NEW_PAGE)
    assert [a.what for a in f.allocs] == ["PUD table", "PMD table", "PTE table", "data page"]
    levels = [w[0] for w in f.walk_after]
    assert levels == ["PGD", "PUD", "PMD", "PTE"]
    assert all(e & 0xFFF == 0x067 for _l, _t, _i, e in f.walk_after[:3])     # _PAGE_TABLE
    pte = f.walk_after[-1][3]
    assert pte == (1 << 63) | f.pfn << 12 | 0x67                                # NX | D A U RW P
    assert pte == derive_anonymous_pte(f.pfn, f.vma.flags, True).value
    assert k.access(p, addr + 0x200, write=True) is None                       # the retry and later stores hit
    assert k.pagemap(p, addr) == 1 << 63 | 1 << 56 | f.pfn


def test_five_level_paging_walks_through_a_p4d():
    k, p = _fresh(levels=5)
    addr = k.mmap(p, 4096, 3, mk.MAP_PRIVATE | mk.MAP_ANONYMOUS)
    f = k.access(p, addr, write=True)
    assert [w[0] for w in f.walk_after] == ["PGD", "P4D", "PUD", "PMD", "PTE"]
    assert [a.what for a in f.allocs] == ["P4D table", "PUD table", "PMD table", "PTE table", "data page"]


def test_read_maps_the_zero_page_special_and_read_only_then_write_copies():
    k, p = _fresh()
    addr = k.mmap(p, 4096, 3, mk.MAP_PRIVATE | mk.MAP_ANONYMOUS)
    r = k.access(p, addr)
    pte = decode_pte(r.entry)
    assert (r.error_code, r.outcome, pte.pfn) == (0x4, mk.ZERO_PAGE, k.zero_pfn)
    assert not pte.writable and "SPECIAL" in pte.flags.names
    assert [a.what for a in r.allocs] == ["PUD table", "PMD table", "PTE table"]     # tables, no data page
    w = k.access(p, addr, write=True)
    assert (w.error_code, w.outcome) == (0x7, mk.COPY) and w.pfn != k.zero_pfn
    assert page_state(k.pagemap(p, addr), k.kpageflags(w.pfn)) == "anon"


def test_fork_write_protects_both_and_the_last_mapper_reuses():
    k, p = _fresh()
    addr = k.mmap(p, 4096, 3, mk.MAP_PRIVATE | mk.MAP_ANONYMOUS)
    first = k.access(p, addr, write=True).pfn
    c = k.fork(p)
    assert not k._leaf(p, addr)[0] & mk.RW and not k._leaf(c, addr)[0] & mk.RW
    assert k.pagemap(p, addr) & (1 << 56) == 0                                   # shared: not exclusive
    child = k.access(c, addr, write=True)
    assert child.outcome == mk.COPY and child.pfn != first
    parent = k.access(p, addr, write=True)
    assert parent.outcome == mk.REUSE and parent.pfn == first and not parent.allocs


def test_fault_around_maps_the_aligned_window_of_cached_pages():
    k, p = _fresh()
    f = k.create_file("f", 40)
    addr = k.mmap(p, 40 * 4096, mk.PROT_READ, mk.MAP_PRIVATE, file=f)
    page = ((addr >> 12) & 511)
    fault = k.access(p, addr + 20 * 4096)
    mapped = [i for i in range(40) if k.pagemap(p, addr + i * 4096) >> 63]
    # the 16-page window holding PTE index page+20, aligned down to 16, clipped to the VMA
    lo = max((page + 20) // 16 * 16, page) - page
    assert mapped == list(range(lo, min(lo + 16, 40)))
    assert fault.outcome == mk.PAGE_CACHE and fault.also_mapped == len(mapped) - 1
    assert all(a.what.endswith("table") for a in fault.allocs)              # the page was cached: no data page


def test_huge_page_needs_madvise_under_thp_madvise():
    for advise, expected in ((False, mk.NEW_PAGE), (True, mk.HUGE_PAGE)):
        k, p = _fresh(thp_enabled="madvise")
        addr = k.mmap(p, 2 << 20, 3, mk.MAP_PRIVATE | mk.MAP_ANONYMOUS)
        assert addr % (2 << 20) == 0
        if advise:
            k.madvise_hugepage(p, addr, 2 << 20)
        f = k.access(p, addr + 0x1234, write=True)
        assert f.outcome == expected
    pmd = f.walk_after[-1]
    assert pmd[0] == "PMD" and decode_pte(pmd[3], "PMD").huge
    assert [a.order for a in f.allocs if a.what == "huge page"] == [9]
    states = {page_state(k.pagemap(p, addr + i * 4096), k.kpageflags(f.pfn - 1 + i)) for i in range(512)}
    assert states == {"huge page"}


def test_sigsegv_codes_and_stack_growth_limits():
    k, p = _fresh()
    addr = k.mmap(p, 4096, mk.PROT_READ, mk.MAP_PRIVATE | mk.MAP_ANONYMOUS)
    assert k.access(p, addr, write=True).outcome == mk.ACCERR
    assert k.access(p, 0x1000, write=True).outcome == mk.MAPERR
    stack = next(v for v in p.vmas if v.name == "[stack]")
    grow = k.access(p, stack.start - 8 * 4096, write=True)
    assert grow.outcome == mk.NEW_PAGE and grow.stack_grown_pages == 8
    too_far = k.access(p, stack.end - (9 << 20), write=True)                  # beyond RLIMIT_STACK (8 MiB)
    assert too_far.outcome == mk.MAPERR
    assert p.signals == [(mk.SEGV_ACCERR, addr), (mk.SEGV_MAPERR, 0x1000), (mk.SEGV_MAPERR, stack.end - (9 << 20))]


# --- the scenarios -------------------------------------------------------------------------------

EXPECTED = {   # (op, who, page, error code, outcome, stack pages), final states — from the kernel source
    "first-touch": ([(1, "parent", 0, 0x6, "new page", 0)], "anon ×1"),
    "read-then-write": ([(1, "parent", 0, 0x4, "zero page", 0), (2, "parent", 0, 0x7, "copy", 0)], "anon ×1"),
    "fork-then-write": ([(1, "parent", 0, 0x6, "new page", 0), (2, "parent", 1, 0x6, "new page", 0),
                         (4, "child", 0, 0x7, "copy", 0), (5, "parent", 0, 0x7, "reuse", 0)], "anon ×1, anon, shared ×1"),
    "file-read": ([(1, "parent", 1, 0x4, "page cache", 0)], "file ×4"),
    "huge-page": ([(2, "parent", 0, 0x6, "huge page", 0)], "huge page ×512"),
    "mprotect-violation": ([(1, "parent", 0, 0x6, "new page", 0), (3, "parent", 0, 0x7, "SIGSEGV (SEGV_ACCERR)", 0)],
                           "anon ×1"),
    "unmapped-access": ([(2, "parent", 1, 0x6, "SIGSEGV (SEGV_MAPERR)", 0)], "not present ×2"),
    "map-populate": ([], "anon ×4"),
    "stack-growth": ([(1, "parent", 0, 0x6, "new page", 16)], "anon ×1, not present ×15"),
}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_each_scenario_in_the_model(scenario):
    out = from_model(run_in_model(scenario))
    rows, final = EXPECTED[scenario.name]
    assert [r.key() for r in out.rows] == rows
    assert summarise_states(out.final_states) == final


def test_the_library_has_the_issue_s_scenarios_and_they_parse():
    names = {s.name for s in SCENARIOS}
    assert {"first-touch", "read-then-write", "fork-then-write", "file-read", "huge-page", "mprotect-violation",
            "unmapped-access", "map-populate"} <= names
    for s in SCENARIOS:
        for op in s.ops:
            parse_op(op)
        assert 0 <= s.featured < len(s.ops)
    with pytest.raises(ScenarioError, match="the scenarios are: first-touch"):
        find_scenario("nope")
    with pytest.raises(ScenarioError, match="malformed operation"):
        parse_op("write")


def test_thp_never_turns_the_huge_page_scenario_into_a_small_page():
    out = from_model(run_in_model(find_scenario("huge-page"), mk.ModelConfig(thp_enabled="never")))
    assert [r.outcome for r in out.rows] == ["new page"]
    assert summarise_states(out.final_states) == "anon ×1, not present ×511"


def test_compare_reports_the_first_difference():
    a = ScenarioOutcome([FaultRow(1, "parent", 0, 6, "new page")], ["anon"])
    b = ScenarioOutcome([FaultRow(1, "parent", 0, 4, "zero page")], ["zero page"])
    verdict = compare(a, b)
    assert not verdict.agree
    assert any("differs" in line for line in verdict.lines) and any("final pagemap differs" in line for line in verdict.lines)
    assert compare(a, a).agree


def test_model_journey_labels_every_value_and_follows_the_live_steps():
    j = build_model_journey(run_in_model(find_scenario("first-touch")))
    keys = [s.key for s in j.steps]
    assert keys[:11] == ["process", "mmap", "trap", "rip", "flags", "vma", "walk", "alloc", "pagemap", "pte", "return"]
    provenances = {v.provenance for s in j.steps for v in s.values}
    assert provenances == {"modelled", "unavailable"}          # derived is kept for values from observed ones
    rip = next(v for v in j.steps[2].values if v.label == "RIP")
    assert rip.provenance == "unavailable" and "sudo pagefault journey" in rip.source
    pte = next(v for v in j.steps[9].values if v.label.startswith("derive_anonymous_pte"))
    assert pte.value is True


def test_model_and_decode_never_import_the_machine_layers():
    for folder in ("model", "decode"):
        for path in (PACKAGE / folder).glob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level >= 2:
                    assert node.module.split(".")[0] in ("decode", "model"), f"{path.name} imports ..{node.module}"
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        assert alias.name.split(".")[0] not in ("subprocess", "ctypes", "mmap"), path.name


def test_cli_lists_scenarios_and_refuses_an_unknown_one():
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "pagefault", "scenarios"], capture_output=True, text=True, timeout=60)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == len(SCENARIOS)
    assert [line.split()[0] for line in lines] == [s.name for s in SCENARIOS]
    bad = subprocess.run([sys.executable, "-m", "pagefault", "journey", "--model", "--scenario", "nope"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "the scenarios are:" in bad.stderr


def _loop_kernel(fast: bool):
    k, p = _fresh()
    start = k.mmap(p, 3 << 20, 3, mk.MAP_PRIVATE | mk.MAP_ANONYMOUS)
    k.access(p, start + 5 * 4096, write=True)                # already present: the loop's store just hits
    k.access(p, start + 9 * 4096)                            # the zero page: the loop's store copies
    k.munmap(p, start + 700 * 4096, 4096)                    # a hole: SEGV_MAPERR
    k.mprotect(p, start + 600 * 4096, 2 * 4096, mk.PROT_READ)   # read-only: SEGV_ACCERR
    pages = 3 << 8
    if fast:
        run = k.write_loop(p, start, pages)
        by_address = dict(zip(run.addresses, run.pfns)) | {f.address: f.pfn for f in run.full if f.pfn}
    else:
        faults = [k.access(p, start + i * 4096, write=True) for i in range(pages)]
        by_address = {f.address: f.pfn for f in faults if f is not None and f.pfn}
    return k, p, by_address


def test_the_write_loop_fast_path_leaves_the_same_state_as_access_one_by_one():
    fast_k, fast_p, fast_pfns = _loop_kernel(True)
    slow_k, slow_p, slow_pfns = _loop_kernel(False)
    assert fast_pfns == slow_pfns and len(fast_pfns) == 3 * 256 - 1 - 3          # all but the present, hole, 2 RO
    assert fast_k.tables == slow_k.tables
    assert [dict(f) for f in fast_k.buddy.free] == [dict(f) for f in slow_k.buddy.free]
    assert fast_k.buddy.allocated == slow_k.buddy.allocated
    assert (fast_k.mapcount, fast_k.kind, fast_k.exclusive) == (slow_k.mapcount, slow_k.kind, slow_k.exclusive)
    assert fast_p.signals == slow_p.signals and len(fast_p.signals) == 3
    assert fast_p.minor_faults == slow_p.minor_faults


def test_fault_around_window_is_aligned_in_virtual_addresses_not_file_offsets():
    """do_fault_around(): from_pte = max(ALIGN_DOWN(pte_index, 16), …). A 4-page file mapped where its page 0
    is the last PTE of a 16-page window: a read of page 1 maps pages 1-3, never page 0 (seen live, 6.18)."""
    scenario = find_scenario("file-read")
    window = 16 * 4096
    hint = 0x7F0000000000 + window - 4096          # page 0 at PTE index 15 (mod 16)
    run = run_in_model(scenario, region_hint=hint)
    assert run.region == hint
    states = run.final_states()
    assert states[0] == "not present" and states[1:] == ["file", "file", "file"]
    aligned = run_in_model(scenario, region_hint=0x7F0000000000)
    assert aligned.final_states() == ["file"] * 4


def test_a_copy_the_kernel_chose_is_told_apart_from_a_model_error():
    """fork-then-write: the model reuses the parent's sole frame; the kernel copies it when the folio was
    allocated on another CPU (it may still be in that CPU's LRU-add batch). Seen live, 7 copies in 40 runs,
    every one with the allocation and the fault on different CPUs."""
    model = ScenarioOutcome([FaultRow(5, "parent", 0, 0x7, mk.REUSE)], ["anon"])
    choice = "kernel choice: frame 0x1234 was allocated on CPU 0 and written again on CPU 1, …"
    explained = ScenarioOutcome([FaultRow(5, "parent", 0, 0x7, mk.COPY, kernel_choice=choice)], ["anon"])
    unexplained = ScenarioOutcome([FaultRow(5, "parent", 0, 0x7, mk.COPY)], ["anon"])
    a = compare(model, explained)
    assert a.agree and any(choice in line for line in a.lines)
    assert not compare(model, unexplained).agree
    wrong_page = ScenarioOutcome([FaultRow(5, "parent", 1, 0x7, mk.COPY, kernel_choice=choice)], ["anon"])
    assert not compare(model, wrong_page).agree


def test_maple_derivation_never_names_a_sixteenth_pivot():
    """maple_range_64: 16 slots, 15 pivots (pivot[0..14]); the 16th slot ends at the node's maximum."""
    from pagefault.model.maple_tree import search
    vmas = [(0x10000 * (2 * i + 1), 0x10000 * (2 * i + 2)) for i in range(8)]   # 8 VMAs, 8 gaps, then the top
    r = search(vmas, 0xFFFF_FFFF_F000)                     # far above: in the 16th slot of the first leaf? or beyond
    text = "\n".join(r.derivations)
    assert "pivot[15]" not in text and "pivot[16]" not in text
    full = search(vmas[:7] + [(0x7F0000000000, 0x7F0000001000)], 0x7F0000000800)
    assert all("pivot[15]" not in line for line in full.derivations)
    assert any("15 pivots for 16 slots" in line for line in r.derivations + full.derivations)


def test_the_cross_check_holds_the_model_to_the_pages_gfp_and_kpageflags():
    """Seen live on 6.18: a fresh anonymous page is allocated with 0x140dca and reads kpageflags 0x400005808
    (UPTODATE|MMAP|ANON|SWAPBACKED|OWNER_2); a madvised THP with 0x3d24ca. The model must say the same."""
    from pagefault.decode.gfp import gfp_value
    out = from_model(run_in_model(find_scenario("first-touch")))
    assert (out.rows[0].gfp, out.rows[0].kpageflags) == (0x140DCA, 0x400005808)
    huge = from_model(run_in_model(find_scenario("huge-page")))
    assert huge.rows[0].gfp == 0x3D24CA == gfp_value(mk.GFP_THP)
    live = ScenarioOutcome([FaultRow(1, "parent", 0, 0x6, mk.NEW_PAGE, gfp=0x140DCA, kpageflags=0x400205848)],
                           out.final_states)
    assert not compare(out, live).agree
    other_kernel = compare(out, live, page_fields=False)
    assert other_kernel.agree and any("shown, not compared" in line for line in other_kernel.lines)


def test_thp_gfp_follows_the_defrag_setting():
    """vma_thp_gfp_mask() by /sys/kernel/mm/transparent_hugepage/defrag, plus alloc_pages_mpol()'s first try
    (__GFP_THISNODE | __GFP_NORETRY = 0x200000 | 0x10000). GFP_TRANSHUGE_LIGHT = 0x1c20ca here; DIRECT_RECLAIM 0x400,
    KSWAPD_RECLAIM 0x800."""
    from pagefault.decode.gfp import gfp_value
    first_try = 0x200000 | 0x10000
    light = gfp_value(("GFP_TRANSHUGE_LIGHT",))
    assert light == 0x1C20CA
    assert gfp_value(mk.thp_gfp("madvise", True)) == light | 0x400 | first_try == 0x3D24CA   # seen live
    assert gfp_value(mk.thp_gfp("madvise", False)) == light | first_try
    assert gfp_value(mk.thp_gfp("defer", True)) == light | 0x800 | first_try
    assert gfp_value(mk.thp_gfp("defer+madvise", False)) == light | 0x800 | first_try
    assert gfp_value(mk.thp_gfp("never", True)) == light | first_try
    run = run_in_model(find_scenario("huge-page"), mk.ModelConfig(thp_enabled="always", thp_defrag="defer"))
    assert from_model(run).rows[0].gfp == light | 0x800 | first_try
