"""A fault is credited to the mapping in force when it was taken: a start mapped again (MAP_FIXED over a mapping
at the same start) has a PERF_RECORD_MMAP2 each time, and each record's time (its sample_id) says from when.
Hand-built records and mappings; the live check is tests/test_live_heldout.py's fixedfile program."""

from __future__ import annotations

import struct

import numpy as np

from pagefault.capture.perf_event import SAMPLE_CPU, SAMPLE_IP, SAMPLE_RAW, SAMPLE_TID, SAMPLE_TIME
from pagefault.capture.records import parse_stream
from pagefault.evidence import Mapping
from pagefault.journey.trace_summary import mapping_index

S = 0x7FFF_F7C0_0000
ANON = Mapping(S, S + 256 * 4096, S, "//anon", 3, "observed: PERF_RECORD_MMAP2", time=1_000)
FILE = Mapping(S, S + 256 * 4096, 0, "/tmp/data.dat", 1, "observed: PERF_RECORD_MMAP2", True, 42, time=2_000)
BELOW = Mapping(S - 0x10000, S, 0, "/usr/lib/libc.so.6", 5, "observed: /proc/PID/maps")


def _in_force(maps, addresses, times=None):
    ordered, idx = mapping_index(np.array(addresses, dtype=np.uint64), maps,
                                 None if times is None else np.array(times, dtype=np.uint64))
    return [ordered[i].path if i >= 0 else None for i in idx.tolist()]


def test_a_fault_after_a_map_fixed_at_the_same_start_is_the_new_mappings():
    addresses = [S + 4096, S + 8192, S - 4096, S + 300 * 4096]
    assert _in_force([BELOW, ANON, FILE], addresses, [1_500, 2_500, 2_500, 2_500]) == [
        "//anon", "/tmp/data.dat", "/usr/lib/libc.so.6", None]


def test_the_records_order_in_the_stream_does_not_decide():
    # the file's record first in the list, though made later: before 2000 the anonymous mapping was in force
    assert _in_force([FILE, ANON], [S, S], [1_500, 2_500]) == ["//anon", "/tmp/data.dat"]
    assert _in_force([ANON, FILE], [S, S, S], [500, 1_500, 2_000]) == ["//anon", "//anon", "/tmp/data.dat"]


def test_a_later_mapping_that_does_not_reach_the_address_leaves_the_first():
    short = Mapping(S, S + 4096, 0, "/tmp/short.dat", 1, "observed: PERF_RECORD_MMAP2", time=2_000)
    assert _in_force([ANON, short], [S, S + 8192], [3_000, 3_000]) == ["/tmp/short.dat", "//anon"]


def test_without_times_the_first_mapping_at_a_start_holds_as_before():
    assert _in_force([ANON, FILE], [S, S + 4096]) == ["//anon", "//anon"]


def _mmap2(addr: int, length: int, name: bytes, sample_id: bytes) -> bytes:
    name += b"\0" * (8 - len(name) % 8)
    body = struct.pack("<IIQQQIIQQII", 7, 7, addr, length, 0, 8, 1, 42, 0, 1, 1) + name + sample_id
    return struct.pack("<IHH", 10, 2, 8 + len(body)) + body


def test_an_mmap2_records_time_is_read_from_its_sample_id():
    sample_type = SAMPLE_IP | SAMPLE_TID | SAMPLE_TIME | SAMPLE_CPU | SAMPLE_RAW
    # sample_id: pid, tid (TID), time (TIME), cpu, reserved (CPU)
    stream = parse_stream(_mmap2(S, 4096, b"/tmp/data.dat", struct.pack("<IIQII", 7, 7, 123_456_789, 1, 0)),
                          sample_type)
    (m,) = stream.mmaps
    assert (m.start, m.end, m.path, m.inode, m.shared, m.time) == (S, S + 4096, "/tmp/data.dat", 42, True, 123_456_789)


def test_without_a_time_in_the_sample_id_the_time_is_unknown():
    stream = parse_stream(_mmap2(S, 4096, b"/tmp/data.dat", struct.pack("<II", 7, 7)), SAMPLE_IP | SAMPLE_TID)
    assert stream.mmaps[0].time == -1
