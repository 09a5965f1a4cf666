"""Decoding a stream of raw perf records into arrays (numpy) and side-band lists."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ..evidence.maps import Mapping  # not the package: its records module (every evidence type) is ~18 ms
from .perf_event import (
    PERF_CONTEXT_MAX,
    RECORD_COMM,
    RECORD_EXIT,
    RECORD_FORK,
    RECORD_LOST,
    RECORD_MMAP2,
    RECORD_SAMPLE,
    SAMPLE_ADDR,
    SAMPLE_CALLCHAIN,
    SAMPLE_CPU,
    SAMPLE_IP,
    SAMPLE_RAW,
    SAMPLE_TID,
    SAMPLE_TIME,
)

PERF_RECORD_MISC_MMAP_BUILD_ID = 1 << 14


@dataclass
class Samples:
    """Column arrays of the sample records, in time order."""

    ip: np.ndarray
    pid: np.ndarray
    tid: np.ndarray
    time: np.ndarray
    cpu: np.ndarray
    addr: np.ndarray | None
    raw_offset: np.ndarray | None     # byte offset of each record's raw tracepoint data in the stream
    event_type: np.ndarray | None     # common_type of the raw data: the tracepoint id
    callchain_offset: np.ndarray | None
    callchain_len: np.ndarray | None

    def __len__(self) -> int:
        return len(self.ip)


@dataclass
class Stream:
    data: bytes
    samples: Samples
    lost: int = 0
    lost_records: int = 0
    mmaps: list[Mapping] = field(default_factory=list)
    comms: dict[int, str] = field(default_factory=dict)
    forks: list[tuple[int, int]] = field(default_factory=list)
    exits: list[int] = field(default_factory=list)
    record_counts: dict[int, int] = field(default_factory=dict)
    time_from_end: int = 0   # where a side-band record's time is, in bytes from its end (sample_id_all); 0: not there


def _cstr(data: bytes | memoryview, start: int, end: int) -> str:
    raw = bytes(data[start:end])
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_stream(data: bytes | memoryview, sample_type: int, *, in_time_order: bool = True,
                 columns: frozenset[str] | None = None) -> Stream:
    """Walk the record headers once; gather sample fields with numpy.

    in_time_order=False keeps the samples in stream order (per-buffer runs), for callers that only
    count; columns limits which of ip, tid, time, addr, cpu are gathered (the others read as zeros).

    :returns: the Stream: sample columns and side-band records (a torn last record is left out).
    :raises ValueError: ``data`` is not a whole number of 8-byte words.
    """
    if len(data) % 8:
        raise ValueError("perf record stream length is not a multiple of 8")
    runs: list[np.ndarray] = []          # sample offsets found by galloping over equal-size records
    sample_offsets: list[int] = []       # and one by one
    append = sample_offsets.append
    stream = Stream(data, None)  # type: ignore[arg-type]
    stream.time_from_end = _sample_id_time(sample_type)
    counts: dict[int, int] = {}
    pos, n = 0, len(data)
    words16 = memoryview(data).cast("H")  # header: u32 type (two u16), u16 misc, u16 size
    w16 = np.frombuffer(data, dtype="<u2")
    history: list[int] = []
    countdown = 8
    while pos + 8 <= n:
        h = pos >> 1
        size = words16[h + 3]
        if size < 8 or pos + size > n:
            break  # a torn tail: keep what was whole
        history.append(size)
        countdown -= 1
        if countdown <= 0:
            cycle = _repeating_cycle(history)
            if cycle:
                pos = _gallop(stream, counts, data, w16, words16, pos, cycle, runs)
                history, countdown = [], 8
                continue
            countdown = 8
        if len(history) > 64:
            del history[:-16]
        if words16[h] == RECORD_SAMPLE and not words16[h + 1]:
            append(pos)
        else:
            _side_band(stream, counts, data, pos, words16[h] | words16[h + 1] << 16, size)
        pos += size
    offsets = np.sort(np.concatenate(runs + [np.array(sample_offsets, dtype=np.int64)]))
    counts[RECORD_SAMPLE] = len(offsets)
    stream.record_counts = counts
    stream.samples = _gather(data, offsets, sample_type, in_time_order, columns)
    return stream


def _repeating_cycle(history: list[int]) -> list[int] | None:
    """If the last sizes repeat with a period of 1 to 4 records, the cycle from the newest record on.

    The newest entry is the record at the current position, so the cycle starts with it.
    """
    for period in (1, 2, 3, 4):
        if len(history) >= 2 * period and history[-period:] == history[-2 * period:-period]:
            return [history[-1]] + history[-period:-1]
    return None


def _gallop(stream, counts, data, w16, words16, pos: int, cycle: list[int], runs: list) -> int:
    """From pos, take as many records as continue the size cycle, checked in one vectorised step.

    The prefix of candidates whose sizes all match is exactly the next records: each record's size
    says where the following one starts. Returns the position after the last record taken.
    """
    n = len(data)
    period_bytes = sum(cycle)
    global _gallop_periods
    k = max(1, min(_gallop_periods, (n - pos) // period_bytes))
    k = 1 << (k.bit_length() - 1)  # powers of two, so that the windows repeat and stay cached
    rel, expect = _cycle_window(tuple(cycle), k)
    cand = rel + pos
    if pos + int(rel[-1]) + 8 > n:
        inside = cand + 8 <= n
        cand, expect = cand[inside], expect[inside]
    ok = (w16[(cand >> 1) + 3] == expect) & (cand + expect <= n)
    run = len(cand) if ok.all() else int(np.argmin(ok))
    if run == 0:
        # the cycle broke at once: take this one record the slow way
        size = words16[(pos >> 1) + 3]
        rtype = words16[pos >> 1] | words16[(pos >> 1) + 1] << 16
        if rtype == RECORD_SAMPLE:
            runs.append(np.array([pos], dtype=np.int64))
        else:
            _side_band(stream, counts, data, pos, rtype, size)
        return pos + size
    # Try further next time if the whole window matched; start small again if the cycle broke early.
    _gallop_periods = min(1 << 15, _gallop_periods * 2) if run == len(cand) else max(64, run // len(cycle) * 2)
    cand, sizes = cand[:run], expect[:run]
    sample = (w16[cand >> 1] == RECORD_SAMPLE) & (w16[(cand >> 1) + 1] == 0)
    if sample.all():
        runs.append(cand)
    else:
        runs.append(cand[sample])
        for other, size in zip(cand[~sample].tolist(), sizes[~sample].tolist()):
            _side_band(stream, counts, data, other, words16[other >> 1] | words16[(other >> 1) + 1] << 16, size)
    return int(cand[-1]) + int(sizes[-1])


@lru_cache(maxsize=256)
def _cycle_window(cycle: tuple[int, ...], periods: int) -> tuple[np.ndarray, np.ndarray]:
    """Start offsets (from the first record) and sizes of `periods` repetitions of a size cycle."""
    starts = np.cumsum((0,) + cycle[:-1])
    rel = (sum(cycle) * np.arange(periods, dtype=np.int64)[:, None] + starts[None, :]).ravel()
    return rel, np.tile(np.array(cycle, dtype=np.uint16), periods)


_gallop_periods = 64   # how many cycles _gallop checks at once: doubles while the cycle holds


SAMPLE_ID, SAMPLE_STREAM_ID, SAMPLE_IDENTIFIER = 1 << 6, 1 << 9, 1 << 16   # perf_event.h's, in sample_id only


def _sample_id_time(sample_type: int) -> int:
    """Where the time is in a side-band record's sample_id (attr.sample_id_all): its fields follow the record's
    own, in the order TID, TIME, ID, STREAM_ID, CPU, IDENTIFIER (perf_event.h), each 8 bytes; the time counted
    back from the record's end. 0: no time recorded."""
    if not sample_type & SAMPLE_TIME:
        return 0
    after = sum(8 for bit in (SAMPLE_ID, SAMPLE_STREAM_ID, SAMPLE_CPU, SAMPLE_IDENTIFIER) if sample_type & bit)
    return after + 8


def _side_band(stream: Stream, counts: dict[int, int], data: bytes | memoryview, pos: int, rtype: int, size: int) -> None:
    counts[rtype] = counts.get(rtype, 0) + 1
    if rtype == RECORD_LOST:
        stream.lost += struct.unpack_from("<Q", data, pos + 16)[0]
        stream.lost_records += 1
    elif rtype == RECORD_MMAP2:
        _pid, _tid, addr, length, pgoff, _maj, _min, ino = struct.unpack_from("<IIQQQIIQ", data, pos + 8)
        prot, flags = struct.unpack_from("<II", data, pos + 64)
        back = stream.time_from_end
        time = struct.unpack_from("<Q", data, pos + size - back)[0] if back and size - back >= 72 else -1
        stream.mmaps.append(Mapping(addr, addr + length, pgoff, _cstr(data, pos + 72, pos + size),
                                    prot, "observed: PERF_RECORD_MMAP2", bool(flags & 0x01), ino, time))
    elif rtype == RECORD_COMM:
        _pid, tid = struct.unpack_from("<II", data, pos + 8)
        stream.comms[tid] = _cstr(data, pos + 16, pos + size)
    elif rtype == RECORD_FORK:
        pid, ppid = struct.unpack_from("<II", data, pos + 8)
        stream.forks.append((ppid, pid))
    elif rtype == RECORD_EXIT:
        stream.exits.append(struct.unpack_from("<I", data, pos + 8)[0])


def _gather(data: bytes | memoryview, offs: np.ndarray, sample_type: int, in_time_order: bool = True,
            columns: frozenset[str] | None = None) -> Samples:
    w64 = np.frombuffer(data, dtype="<u8")
    # The u64 words before any callchain sit at fixed places in every sample.
    fixed = [name for bit, name in ((SAMPLE_IP, "ip"), (SAMPLE_TID, "tid"), (SAMPLE_TIME, "time"),
                                    (SAMPLE_ADDR, "addr"), (SAMPLE_CPU, "cpu")) if sample_type & bit]
    offs = _whole_samples(data, w64, offs, sample_type, len(fixed))
    first = offs // 8 + 1  # first u64 after the header
    word = {name: w64[first + i] for i, name in enumerate(fixed) if columns is None or name in columns}
    zeros = np.zeros(len(offs), dtype=np.uint64)
    cols: dict[str, np.ndarray | None] = {
        "ip": word.get("ip", zeros), "time": word.get("time", zeros), "addr": word.get("addr"),
        "pid": (word["tid"] & np.uint64(0xFFFFFFFF)).astype(np.uint32) if "tid" in word else zeros.astype(np.uint32),
        "tid": (word["tid"] >> np.uint64(32)).astype(np.uint32) if "tid" in word else zeros.astype(np.uint32),
        "cpu": (word["cpu"] & np.uint64(0xFFFFFFFF)).astype(np.uint32) if "cpu" in word else zeros.astype(np.uint32),
        "raw_offset": None, "event_type": None, "callchain_offset": None, "callchain_len": None,
    }
    idx = first + len(fixed)
    if sample_type & SAMPLE_CALLCHAIN:
        nr = w64[idx].astype(np.int64) if len(idx) else np.zeros(0, dtype=np.int64)
        cols["callchain_offset"], cols["callchain_len"] = (idx + 1) * 8, nr
        idx = idx + 1 + nr
    if sample_type & SAMPLE_RAW:
        raw = idx * 8 + 4
        cols["raw_offset"] = raw
        # the u32 raw size, then common_type (u16) as the low half of the next u32
        cols["event_type"] = (w64[idx] >> np.uint64(32) & np.uint64(0xFFFF)).astype(np.uint16)
    t = word.get("time", zeros)
    if in_time_order and len(t) > 1 and not np.all(t[1:] >= t[:-1]):  # per-CPU buffers interleave; most streams are in order
        order = np.argsort(t, kind="stable")
        cols = {k: (v[order] if v is not None else None) for k, v in cols.items()}
    return Samples(**cols)  # type: ignore[arg-type]


def _whole_samples(data, w64: np.ndarray, offs: np.ndarray, sample_type: int, n_fixed: int) -> np.ndarray:
    """The sample offsets whose fields all lie inside their own record (a damaged or hostile record
    whose callchain or raw size runs past its end is dropped, never read past).

    One pass of gathers with the indices clamped to the stream, so a bad record cannot make a read
    fail; the mask is applied only when some record is bad (the usual stream costs a few ms)."""
    if not len(offs):
        return offs
    last = len(w64) - 1
    w16 = np.frombuffer(data, dtype="<u2")
    ends = offs + w16[(offs >> 1) + 3]                          # each record's end, in bytes
    idx = (offs >> 3) + (1 + n_fixed)                          # the next u64 to read
    if sample_type & SAMPLE_CALLCHAIN:
        nr = w64[np.minimum(idx, last)]
        idx = idx + 1 + np.minimum(nr, 1 << 16).astype(np.int64)
        bad = nr >= 1 << 16
    else:
        bad = np.zeros(len(offs), dtype=bool)
    if sample_type & SAMPLE_RAW:
        raw_size = (w64[np.minimum(idx, last)] & 0xFFFFFFFF).astype(np.int64)
        bad |= (idx << 3) + 4 + raw_size > ends
    else:
        bad |= idx << 3 > ends
    return offs[~bad] if bad.any() else offs


def raw_field(data: bytes, raw_offsets: np.ndarray, offset: int, size: int, signed: bool = False) -> np.ndarray:
    """One tracepoint field for many samples (raw data starts 4 bytes past an 8-aligned position).

    :returns: the values, one per offset (int64 if signed, else uint64).
    :raises ValueError: the field lies outside ``data`` or is wider than 8 bytes."""
    pos = raw_offsets + offset
    if len(pos) == 0:
        return np.zeros(0, dtype=np.int64 if signed else np.uint64)
    if not 0 < size <= 8 or int(pos.max()) + size > len(data):
        raise ValueError(f"a tracepoint field (offset {offset}, size {size}) lies outside the records")
    dtype = {8: "<u8", 4: "<u4", 2: "<u2", 1: "u1"}.get(size)
    shift = int(pos[0]) % size if dtype else 0
    if dtype and np.all(pos % size == shift):
        # one gather from a view of the stream that starts where these fields are aligned
        words = np.frombuffer(data, dtype=dtype, offset=shift, count=(len(data) - shift) // size)
        out = words[(pos - shift) // size].astype(np.uint64)
    else:
        out = _bytewise(data, pos, size)
    if signed:
        bits = size * 8
        out = out.astype(np.int64)
        if bits < 64:
            out = np.where(out >= 1 << (bits - 1), out - (1 << bits), out)
    return out


def _bytewise(data: bytes, pos: np.ndarray, size: int) -> np.ndarray:
    b = np.frombuffer(data, dtype=np.uint8)
    out = np.zeros(len(pos), dtype=np.uint64)
    for i in range(size):
        out |= b[pos + i].astype(np.uint64) << np.uint64(8 * i)
    return out


def callchain(data: bytes, samples: Samples, i: int) -> list[int]:
    """The callchain of sample i, context markers included.

    :returns: the addresses ([] where the samples have no chains); raises nothing."""
    if samples.callchain_offset is None or samples.callchain_len is None:
        return []
    off, nr = int(samples.callchain_offset[i]), int(samples.callchain_len[i])
    return list(struct.unpack_from(f"<{nr}Q", data, off))


def distinct_callchains(data: bytes | memoryview, samples: Samples, indices: np.ndarray
                        ) -> tuple[list[list[int]], np.ndarray]:
    """The distinct callchains of the samples at `indices` (context markers included), and for each of those
    samples the index of its chain in that list. Chains are told apart by their bytes, so only the distinct
    ones are decoded: a summary of 262,144 allocations decoded each chain on its own (struct and a Python
    split per record, ~4 s here) where their distinct chains are a few hundred.

    :returns: (the chains, each sample's index into them); raises nothing."""
    if samples.callchain_offset is None or samples.callchain_len is None or not len(indices):
        return [], np.zeros(len(indices), dtype=np.int64)
    view = memoryview(data)
    offsets = samples.callchain_offset[indices].tolist()
    ends = (samples.callchain_offset[indices] + 8 * samples.callchain_len[indices]).tolist()
    seen: dict[bytes, int] = {}
    which = np.fromiter((seen.setdefault(bytes(view[a:b]), len(seen)) for a, b in zip(offsets, ends)),
                        dtype=np.int64, count=len(offsets))
    return [list(struct.unpack(f"<{len(k) // 8}Q", k)) for k in seen], which


def split_callchain(chain: list[int]) -> tuple[list[int], list[int]]:
    """(kernel frames, user frames), markers removed.

    :returns: the two lists, each in the chain's order; raises nothing."""
    from .perf_event import PERF_CONTEXT_KERNEL, PERF_CONTEXT_USER
    kernel: list[int] = []
    user: list[int] = []
    target = kernel
    for ip in chain:
        if ip >= PERF_CONTEXT_MAX:
            target = kernel if ip == PERF_CONTEXT_KERNEL else user if ip == PERF_CONTEXT_USER else []
            continue
        target.append(ip)
    return kernel, user
