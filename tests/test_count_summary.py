"""The summary of faults counted in the kernel (journey/count_summary.py) classes each counted kind of fault by
fault_classes' rules without numpy: held here to fault_classes.class_columns over every input a count can give,
and it imports no numpy (the summary-only command's start-up)."""

import itertools
import subprocess
import sys

import numpy as np
import pytest

from pagefault.evidence import MapsLine
from pagefault.journey.count_summary import SUMMARY_TOP, counted_class, summarize_counts
from pagefault.journey.fault_classes import CLASS_LIST, MappingColumns, class_columns


def test_the_counted_class_is_class_columns_for_every_input_a_count_can_give():
    # error code (the 6 bits a count keeps), allocated, order, page-cache adds, signal, and the VMA: none, none
    # below the stack (growth), anonymous/file × private/shared, special
    vmas = [(False, True, True, False, False), (True, True, True, True, False)] + [
        (True, anon, private, False, special) for anon in (True, False) for private in (True, False)
        for special in (False, True)]
    inputs = list(itertools.product(range(64), (0, 1), (0, 1, 9), (0, 1), (0, 7, 11), vmas))
    code, alloc, order, cache, sig = (np.array([i[k] for i in inputs], dtype=np.int64) for k in range(5))
    known, anon, private, growth, special = (np.array([i[5][k] for i in inputs], dtype=bool) for k in range(5))
    maps = MappingColumns(known, anon, private, np.where(growth, (1 << 63) - 1, -1), special)
    index, _detail = class_columns(code, sig, np.zeros(len(inputs), dtype=np.int64), None,
                                   np.where(alloc > 0, order, -1), cache, alloc, maps,
                                   np.zeros(len(inputs), dtype=np.int64))
    for (c, a, o, ca, sg, (kn, an, pr, gr, sp)), want in zip(inputs, index.tolist()):
        got = counted_class(c, a > 0, o, ca, sg, known=kn, anonymous=an, private=pr, growth=gr, special=sp)
        assert got == CLASS_LIST[want], (c, a, o, ca, sg, kn, an, pr, gr, sp)


def test_kernel_mode_faults_are_told_by_the_error_codes_user_bit():
    heap = MapsLine(0x10000, 0x20000, "rw-p", 0, "00:00", 0, "[heap]")
    # (error code, allocated, order, cache add, signal, si_code, vm_start << 3 | kind, faults)
    rows = [(0x6, 1, 0, 0, 0, 0, 0x10000 << 3, 5),    # user-mode write, not present: a new page
            (0x2, 1, 0, 0, 0, 0, 0x10000 << 3, 64)]   # the same in kernel mode (copy_to_user)
    s = summarize_counts(rows, [heap], ["p"], 1, "exited", 0.1)
    assert (s.faults, s.kernel_mode_faults) == (69, 64)
    assert s.by_class[0][:2] == ("anonymous new page", 69) and s.by_mapping == [("[heap]", 69)]
    assert s.by_kind == {"write, not-present page, in kernel mode": 64, "write, not-present page": 5}


def test_the_breakdown_by_call_site_comes_from_the_sited_rows_or_says_why_there_is_none():
    heap = MapsLine(0x10000, 0x20000, "rw-p", 0, "00:00", 0, "[heap]")
    lib = MapsLine(0x10000, 0x20000, "r--p", 0, "08:01", 5, "/usr/lib/libx.so")   # another process, same start
    # without stacks: every (class, mapping) row is kept, with no site, whatever their number
    files = [MapsLine(0x100000 + i * 0x1000, 0x101000 + i * 0x1000, "r--p", 0, "08:01", 10 + i, f"/lib/f{i}.so")
             for i in range(12)]
    rows = [(0x6, 1, 0, 0, 0, 0, 0x10000 << 3, 7, 40)] + [
        (0x4, 0, 0, 0, 0, 0, f.start << 3 | 1, 1, 40) for f in files]
    s = summarize_counts(rows, [heap, *files], ["p"], 40, "exited", 0.1)
    assert len(s.class_breakdown) == 13 and {site for _c, _l, site, _n in s.class_breakdown} == {
        "(not counted: trace -g names it)"}
    assert s.class_breakdown[0] == ("anonymous new page", "[heap]", "(not counted: trace -g names it)", 7)
    # trace -g: the same faults split by stack, each with its site's key; the most common SUMMARY_TOP rows are
    # kept (ties in key order), and only those are named
    sited = [((0x6, 1, 0, 0, 0, 0, 0x10000 << 3, 4, 40), ("user", 0x10)),
             ((0x6, 1, 0, 0, 0, 0, 0x10000 << 3, 3, 40), ("user", 0x20))] + [
        ((0x4, 0, 0, 0, 0, 0, f.start << 3 | 1, 1, 40), ("user", 0x100 + i)) for i, f in enumerate(files)]
    named = []

    def name(key):
        named.append(key)
        return f"site {key[1]:#x}"
    s = summarize_counts(rows, [heap, *files], ["p"], 40, "exited", 0.1, sited_rows=sited, name_site=name)
    assert len(s.class_breakdown) == SUMMARY_TOP == len(named)
    assert s.class_breakdown[:3] == [("anonymous new page", "[heap]", "site 0x10", 4),
                                     ("anonymous new page", "[heap]", "site 0x20", 3),
                                     ("file page-cache hit", "f0.so", "site 0x100", 1)]
    # the ties at one fault each, in the order of their class, mapping and key: f0.so, f1.so, f10.so, f11.so, f2.so...
    kept = sorted(range(12), key=lambda i: f"f{i}.so")[:SUMMARY_TOP - 2]
    assert [site for _c, _l, site, _n in s.class_breakdown[2:]] == [f"site {0x100 + i:#x}" for i in kept]
    assert (s.faults, s.by_class[0][:2]) == (19, ("file page-cache hit", 12))
    # a sited row is labelled from its own process's VMAs, as its count row is
    two = [((0x4, 0, 0, 0, 0, 0, 0x10000 << 3 | 1, 2, 41), ("user", 0x30)),
           ((0x6, 1, 0, 0, 0, 0, 0x10000 << 3, 1, 40), ("user", 0x10))]
    s = summarize_counts([(0x4, 0, 0, 0, 0, 0, 0x10000 << 3 | 1, 2, 41), (0x6, 1, 0, 0, 0, 0, 0x10000 << 3, 1, 40)],
                         [heap], ["p"], 40, "exited", 0.1, maps_by_process={40: [heap], 41: [lib]}, sited_rows=two,
                         name_site=name)
    assert [(label, site) for _c, label, site, _n in s.class_breakdown] == [("libx.so", "site 0x30"),
                                                                            ("[heap]", "site 0x10")]


def test_the_summary_only_path_imports_no_numpy_and_no_rich():
    code = ("import sys\nfrom pagefault import cli\nfrom pagefault.capture import kernel_counts\n"
            "from pagefault.journey import count_summary\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'rich')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_counted_stacks_name_kernel_frames_as_a_full_kallsyms_lookup_does(tmp_path):
    # trace -g names the kernel frames counted in the kernel from a one-pass parse of kallsyms (capture/
    # kernel_counts.py), a recording's from kernel.kallsyms.KernelSymbols: both must give the same name, aliases
    # (two names at one address, the later line first in sorted order), data symbols, module lines (a tab, then
    # [module]) and lines out of address order included
    from pagefault.capture.kernel_counts import kernel_symbols_for
    from pagefault.kernel.kallsyms import KernelSymbols
    text = ("ffffffff81000000 T _text\n"
            "ffffffff81000100 T do_one\n"
            "ffffffff81000200 t memmove\n"
            "ffffffff81000200 T __memmove\n"
            "ffffffff81000300 D some_data\n"
            "ffffffff81000400 W weak_one\n"
            "ffffffffc0002000 t mod_func\t[somemod]\n"
            "ffffffffc0001000 t mod_early\t[somemod]\n"
            "ffffffffc0003000 b mod_bss\t[somemod]\n")
    path = tmp_path / "kallsyms"
    path.write_text(text)
    addresses = {0xffffffff80000000, 0xffffffff81000000, 0xffffffff81000105, 0xffffffff81000210,
                 0xffffffff81000305, 0xffffffff81000400, 0xffffffffc0001008, 0xffffffffc0002fff, 0xffffffffc0003008}
    counted = kernel_symbols_for(addresses, str(path))
    full = KernelSymbols.parse(text)
    assert {a: counted.lookup(a) for a in addresses} == {a: full.lookup(a) for a in addresses}
    # hand-checked: the alias is memmove, the data symbol is skipped, the later module line sorts first
    assert counted.lookup(0xffffffff81000210) == ("memmove", 0x10)
    assert counted.lookup(0xffffffff81000305) == ("memmove", 0x105)
    assert counted.lookup(0xffffffffc0001008) == ("mod_early", 8)
    assert counted.lookup(0xffffffffc0003008) == ("mod_func", 0x1008)
    assert counted.lookup(0xffffffff80000000) is None
    # and the prefetched table (read while the program runs) gives the same
    from pagefault.kernel.kallsyms import prefetch_text_symbols
    prefetch_text_symbols(str(path))
    assert {a: kernel_symbols_for(addresses, str(path)).lookup(a) for a in addresses} == \
        {a: full.lookup(a) for a in addresses}


# a kallsyms of five lines, checked by hand: two names at one address (the later in sorted order names it) and a
# data symbol (never a frame's)
KALLSYMS = ("ffffffff81000000 T _text\n"
            "ffffffff81000100 T copy_to_user\n"
            "ffffffff81000180 t memmove\n"
            "ffffffff81000180 T __memmove\n"
            "ffffffff81000200 D jiffies\n")


def test_a_recordings_summary_names_kernel_addresses_and_the_boot_as_a_full_kallsyms_parse_does(tmp_path):
    # a recording's summary reads only the kernel addresses it names (kernel.kallsyms.TextSymbols) where it parsed
    # every symbol: the names, and _text (how a recording of another boot is told apart), must be the full parse's
    from pagefault.kernel.kallsyms import KernelSymbols, TextSymbols
    text = KALLSYMS
    path = tmp_path / "kallsyms"
    path.write_text(text)
    wanted = {0xffffffff81000104, 0xffffffff81000190, 0xffffffff81000208}
    named, full = TextSymbols(path).kernel_symbols(wanted), KernelSymbols.parse(text)
    assert named.text_base() == full.text_base() == 0xffffffff81000000
    assert {a: named.lookup(a) for a in wanted} == {a: full.lookup(a) for a in wanted} == {
        0xffffffff81000104: ("copy_to_user", 4), 0xffffffff81000190: ("memmove", 0x10),
        0xffffffff81000208: ("memmove", 0x88)}
    # without root kallsyms shows zeros: nothing is named, as the full parse names nothing
    path.write_text("".join("0" * 16 + line[16:] + "\n" for line in text.splitlines()))
    assert not TextSymbols(path).kernel_symbols(wanted).usable and not KernelSymbols.parse(path.read_text()).usable


def test_the_journeys_kernel_symbols_look_up_as_a_full_kallsyms_parse_does(tmp_path):
    # the journey names its kernel addresses straight from TextSymbols (lookup, describe, text_base, usable), where
    # it parsed every symbol in a thread that held the GIL against the journey for ~0.2 s
    from pagefault.kernel.kallsyms import KernelSymbols, TextSymbols
    text = KALLSYMS
    path = tmp_path / "kallsyms"
    path.write_text(text)
    table, full = TextSymbols(path), KernelSymbols.parse(text)
    addresses = [0xffffffff80ffffff, 0xffffffff81000000, 0xffffffff81000104, 0xffffffff81000180, 0xffffffff81000208]
    assert [table.lookup(a) for a in addresses] == [full.lookup(a) for a in addresses] == [
        None, ("_text", 0), ("copy_to_user", 4), ("memmove", 0), ("memmove", 0x88)]
    assert [table.describe(a) for a in addresses] == [full.describe(a) for a in addresses]
    assert table.describe(0xffffffff81000104) == "copy_to_user+0x4"
    assert table.text_base() == full.text_base() == 0xffffffff81000000 and table.usable
    path.write_text("".join("0" * 16 + line[16:] + "\n" for line in text.splitlines()))
    assert not TextSymbols(path).usable and TextSymbols(path).lookup(0xffffffff81000104) is None


def test_the_journeys_kernel_symbols_agree_with_a_full_parse_of_this_machines_kallsyms():
    import os
    import random

    from pagefault.kernel.kallsyms import KernelSymbols, TextSymbols
    full = KernelSymbols.load()
    if os.geteuid() != 0 or not full.usable:
        pytest.skip("kallsyms shows addresses to root only")
    table = TextSymbols()
    rng = random.Random(7)
    addresses = [rng.randrange(full.addresses[0] - 4096, full.addresses[-1] + 4096) for _ in range(2000)]
    assert [table.lookup(a) for a in addresses] == [full.lookup(a) for a in addresses]
    assert table.text_base() == full.text_base()


def test_the_text_view_says_once_that_a_count_has_no_call_sites_and_shows_them_when_it_has():
    import io

    from rich.console import Console

    from pagefault.views.trace_view import render_summary
    heap = MapsLine(0x10000, 0x20000, "rw-p", 0, "00:00", 0, "[heap]")
    rows = [(0x6, 1, 0, 0, 0, 0, 0x10000 << 3, 7, 40)]

    def text(summary) -> str:
        out = io.StringIO()
        render_summary(summary, Console(file=out, width=200, color_system=None))
        return out.getvalue()
    plain = text(summarize_counts(rows, [heap], ["p"], 40, "exited", 0.1))
    lines = [line.rstrip() for line in plain.splitlines()]
    table = lines.index("faults by class × mapping")
    assert not any("call site" in line for line in lines[table:table + 6]), lines[table:table + 6]
    assert plain.count("trace -g names them") == 1 and "not counted: trace -g names it" not in plain
    sited = text(summarize_counts(rows, [heap], ["p"], 40, "exited", 0.1, sited_rows=[(rows[0], ("user", 0x10))],
                                  name_site=lambda key: "p:main+0x10"))
    assert "faults by class × mapping × call site" in sited and "p:main+0x10" in sited
