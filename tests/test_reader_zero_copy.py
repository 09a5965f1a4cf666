"""The recorder's reader writes the ring buffers' records straight into the recording (issue 30: a --dwarf
recording of a fast-faulting program lost most of its events while the reader copied ~8 KiB a fault three times
in Python). Each test fails on the code before the change."""

import mmap
import os
import struct
import subprocess
from pathlib import Path

import pytest

from pagefault.capture import perf_event, tracer
from pagefault.capture.recording import CHUNK_HEADER, RecordingWriter, load_recording

PAGE = mmap.PAGESIZE


def ring(pages: int, tail: int, data: bytes) -> perf_event.RingBuffer:
    """A RingBuffer over anonymous memory laid out as the kernel's: a control page (head at 1024, tail at 1032),
    then `pages` data pages holding `data` from `tail` on, wrapping round their end."""
    buf = perf_event.RingBuffer.__new__(perf_event.RingBuffer)
    buf.fd, buf.page, buf.size = -1, PAGE, pages * PAGE
    buf.map = mmap.mmap(-1, (pages + 1) * PAGE)
    buf.view = memoryview(buf.map)
    for i, byte in enumerate(data):
        buf.map[PAGE + (tail + i) % buf.size] = byte
    struct.pack_into("<QQ", buf.map, 1024, tail + len(data), tail)
    return buf


@pytest.mark.parametrize("tail", [0, 8, PAGE - 16, 2 * PAGE - 24])
def test_the_pending_records_are_the_bytes_read_gave_in_their_order_wrapping_included(tail):
    data = bytes(range(256)) * 12     # 3 KiB: wraps round the end of a 2-page buffer from the later tails
    buf = ring(2, tail, data)
    pieces, head = buf.pending()
    assert b"".join(pieces) == data and head == tail + len(data)
    assert len(pieces) == (2 if tail % (2 * PAGE) + len(data) > 2 * PAGE else 1)
    assert struct.unpack_from("<Q", buf.map, 1032)[0] == tail     # nothing handed back yet
    buf.release(head)
    assert struct.unpack_from("<Q", buf.map, 1032)[0] == head and buf.pending() == ([], head)


def test_a_full_buffer_is_pending_whole():
    data = os.urandom(2 * PAGE)
    buf = ring(2, PAGE + 8, data)
    pieces, _head = buf.pending()
    assert b"".join(pieces) == data


def test_read_still_copies_and_frees_what_it_returns():
    data = os.urandom(1000) + bytes(24)
    buf = ring(1, PAGE - 200, data)
    assert buf.read() == data and buf.read() == b""


def _records_chunks(path):
    rec = load_recording(path)
    return bytes(rec.data)


def test_a_chunk_written_from_pieces_is_the_chunk_written_from_their_bytes(tmp_path):
    head = {"sample_type": 0, "tier": "perf", "events": {}}
    pieces = [memoryview(os.urandom(4096 + 8 * k)) for k in range(3)]
    joined, split = RecordingWriter(tmp_path / "a.pfrec", head), RecordingWriter(tmp_path / "b.pfrec", head)
    joined.add(b"".join(pieces))
    split.add_views(pieces)
    assert joined.bytes == split.bytes == sum(len(p) for p in pieces)
    for w in (joined, split):
        w.close({"exit": "done"})
    a, b = _records_chunks(tmp_path / "a.pfrec"), _records_chunks(tmp_path / "b.pfrec")
    assert a == b and len(a) == CHUNK_HEADER.size + joined.bytes
    assert load_recording(tmp_path / "b.pfrec").integrity.complete


def test_the_session_drains_every_buffer_into_the_sink_and_hands_each_back():
    session = perf_event.PerfSession.__new__(perf_event.PerfSession)
    first, second = os.urandom(512), os.urandom(64)
    session.buffers = [ring(1, 0, first), ring(1, PAGE - 32, second), ring(1, 16, b"")]
    got: list[bytes] = []
    session.drain_into(lambda pieces: got.append(b"".join(pieces)))
    assert got == [first, second]
    assert all(buf.pending()[0] == [] for buf in session.buffers)


def test_an_unchanged_maps_file_is_not_parsed_again(monkeypatch):
    import pagefault.evidence.maps as maps
    parsed = []
    real = maps.parse_maps
    monkeypatch.setattr(maps, "parse_maps", lambda text: parsed.append(1) or real(text))
    seen: dict = {}
    last: list[str] = []
    still = subprocess.Popen(["sleep", "30"])   # a process whose mappings do not change meanwhile
    try:
        import time
        deadline = time.monotonic() + 10   # its loader done: it sleeps (state S) once its mappings are made
        while Path(f"/proc/{still.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "S":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for _ in range(3):
            tracer._snapshot_maps(still.pid, seen, last)
    finally:
        still.kill()
        still.wait()
    assert len(parsed) == 1 and seen and last
