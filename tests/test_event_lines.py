"""report --events' pieces on hand-made columns: the symbol lookup and the line layout."""

import numpy as np

from pagefault.views.event_lines import event_lines, symbolizer


def test_symbolizer_names_the_function_below_each_ip():
    lookup = symbolizer([0x1000, 0x2000, 0x3000], ["a", "b", "c"])
    assert lookup(np.array([0x1000, 0x2004, 0x2004, 0xFFF, 0x3100], dtype=np.uint64)) == {
        0x1000: "a+0x0", 0x2004: "b+0x4", 0xFFF: "[unknown]", 0x3100: "c+0x100"}
    assert symbolizer([], [])(np.array([5], dtype=np.uint64)) == {5: "[unknown]"}


def test_lines_in_time_order_with_each_events_fields():
    columns = {"time": np.array([1_000_000_000, 2_500_000_000, 13_000_001_000], dtype=np.uint64),
               "tid": np.array([7, 7, 8]), "cpu": np.array([0, 1, 1]), "event": np.array([0, 1, 0]),
               "pid": np.array([7, 7, 8])}
    fields = {"ev:a": {"address": np.array([0x10, 0x2f0], dtype=np.uint64)},
              "ev:b": {"pfn": np.array([0x99], dtype=np.uint64), "delta": np.array([-3])}}
    text = b"".join(event_lines(columns, ["ev:a", "ev:b"], fields, {7: "prog"},
                                np.array([0x1000, 0xffffffff81002000, 0x1000], dtype=np.uint64),
                                {0x1000: "f+0x0"})).decode()
    # hex fields zero-padded to their column's widest value; seconds right-aligned to the widest
    assert text.splitlines() == [
        "            prog       7 [000]  1.000000: ev:a: 0000000000001000 f+0x0 address=0x010",
        "            prog       7 [001]  2.500000: ev:b: ffffffff81002000 [unknown] pfn=0x99 delta=-3",
        "               -       8 [001] 13.000001: ev:a: 0000000000001000 f+0x0 address=0x2f0"]


def test_blocks_cover_every_row_once():
    import pagefault.views.event_lines as module
    n = 1000
    columns = {"time": np.arange(n, dtype=np.uint64) * 1000, "tid": np.full(n, 5), "cpu": np.zeros(n, dtype=int),
               "event": np.arange(n) % 2, "pid": np.full(n, 5)}
    fields = {"a": {"x": np.arange(0, n, 2, dtype=np.uint64)}, "b": {"y": np.arange(1, n, 2, dtype=np.uint64)}}
    old, module.ROWS_PER_BLOCK = module.ROWS_PER_BLOCK, 64
    try:
        lines = b"".join(event_lines(columns, ["a", "b"], fields, {}, np.zeros(n, dtype=np.uint64), {})).splitlines()
    finally:
        module.ROWS_PER_BLOCK = old
    assert len(lines) == n
    assert [int(line.rsplit(b"=0x", 1)[1], 16) for line in lines] == list(range(n))
