"""Live: faults in the brk heap are named [heap], though perf writes no mapping record when brk grows it
and the program ends before any /proc snapshot sees its heap at the top (issue 26)."""

import re

import pytest

from pagefault.capture.recording import load_recording
from pagefault.capture.tracer import TraceOptions, record
from pagefault.journey.trace_summary import brk_heaps, classify_recording, summarize

pytestmark = pytest.mark.live
LINE = re.compile(r"^heap start=0x([0-9a-f]+) end=0x([0-9a-f]+) pages=(\d+)$")


def test_faults_in_a_heap_grown_by_brk_are_named_heap(can_trace, cbin, tmp_path):
    with open(tmp_path / "out", "w") as f:
        record(TraceOptions(argv=[str(cbin("heap_growth"))], output=tmp_path / "t.pfrec", target_stdout=f.fileno()))
    m = LINE.match((tmp_path / "out").read_text().strip())
    assert m, (tmp_path / "out").read_text()
    start, end, pages = int(m.group(1), 16), int(m.group(2), 16), int(m.group(3))
    rec = load_recording(tmp_path / "t.pfrec")
    addresses, _tids, _times, result = classify_recording(rec)
    in_heap = [a for a in addresses.tolist() if start <= a < end]
    # 32 × 64 KiB written, page by page: every page of it faulted once (malloc's headers share those pages)
    assert len(in_heap) >= 32 * 16 and len(in_heap) <= pages
    summary = summarize(rec)
    by_mapping = dict(summary.by_mapping)
    assert by_mapping.get("[heap]", 0) >= len(in_heap), summary.by_mapping
    assert "(no mapping: unmapped address)" not in by_mapping, summary.by_mapping
    from pagefault.capture.records import parse_stream
    heaps = brk_heaps(rec.meta, parse_stream(rec.data, rec.meta["sample_type"]))
    mine = [h for h in heaps if h.start <= start < h.end]
    assert mine and mine[0].end >= end and mine[0].source.startswith("derived: PID")
