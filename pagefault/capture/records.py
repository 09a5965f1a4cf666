"""Decoding a stream of raw perf records into arrays (numpy) and side-band lists."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from .perf_event import (PERF_CONTEXT_MAX, RECORD_COMM, RECORD_EXIT, RECORD_FORK, RECORD_LOST, RECORD_MMAP2,
                         RECORD_SAMPLE, SAMPLE_ADDR, SAMPLE_CALLCHAIN, SAMPLE_CPU, SAMPLE_IP, SAMPLE_RAW,
                         SAMPLE_TID, SAMPLE_TIME)

_HDR = struct.Struct("<IHH")
PERF_RECORD_MISC_MMAP_BUILD_ID = 1 << 14


@dataclass
class Mapping:
    start: int
    end: int
    pgoff: int
    path: str
    prot: int = 0
    source: str = ""

    def contains(self, address: int) -> bool:
        return self.start <= address < self.end


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


def _cstr(data: bytes, start: int, end: int) -> str:
    raw = data[start:end]
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_stream(data: bytes, sample_type: int) -> Stream:
    """Walk the record headers once; gather sample fields with numpy."""
    if len(data) % 8:
        raise ValueError("perf record stream length is not a multiple of 8")
    sample_offsets: list[int] = []
    append = sample_offsets.append
    stream = Stream(data, None)  # type: ignore[arg-type]
    counts: dict[int, int] = {}
    pos, n = 0, len(data)
    unpack = _HDR.unpack_from
    while pos + 8 <= n:
        rtype, misc, size = unpack(data, pos)
        if size < 8 or pos + size > n:
            break  # a torn tail: keep what was whole
        if rtype == RECORD_SAMPLE:
            append(pos)
        else:
            counts[rtype] = counts.get(rtype, 0) + 1
            if rtype == RECORD_LOST:
                stream.lost += struct.unpack_from("<Q", data, pos + 16)[0]
                stream.lost_records += 1
            elif rtype == RECORD_MMAP2:
                pid, tid, addr, length, pgoff = struct.unpack_from("<IIQQQ", data, pos + 8)
                prot, flags = struct.unpack_from("<II", data, pos + 64)
                stream.mmaps.append(Mapping(addr, addr + length, pgoff, _cstr(data, pos + 72, pos + size),
                                            prot, "observed: PERF_RECORD_MMAP2"))
            elif rtype == RECORD_COMM:
                pid, tid = struct.unpack_from("<II", data, pos + 8)
                stream.comms[tid] = _cstr(data, pos + 16, pos + size)
            elif rtype == RECORD_FORK:
                pid, ppid = struct.unpack_from("<II", data, pos + 8)
                stream.forks.append((ppid, pid))
            elif rtype == RECORD_EXIT:
                stream.exits.append(struct.unpack_from("<I", data, pos + 8)[0])
        pos += size
    counts[RECORD_SAMPLE] = len(sample_offsets)
    stream.record_counts = counts
    stream.samples = _gather(data, np.array(sample_offsets, dtype=np.int64), sample_type)
    return stream


def _gather(data: bytes, offs: np.ndarray, sample_type: int) -> Samples:
    w64 = np.frombuffer(data, dtype="<u8")
    w32 = np.frombuffer(data, dtype="<u4")
    idx = offs // 8 + 1  # first u64 after the header
    cols: dict[str, np.ndarray | None] = {"addr": None, "raw_offset": None, "event_type": None,
                                          "callchain_offset": None, "callchain_len": None}
    empty = np.zeros(len(offs), dtype=np.uint64)
    cols["ip"] = cols["time"] = empty
    cols["pid"] = cols["tid"] = cols["cpu"] = empty.astype(np.uint32)
    if sample_type & SAMPLE_IP:
        cols["ip"] = w64[idx]; idx = idx + 1
    if sample_type & SAMPLE_TID:
        cols["pid"], cols["tid"] = w32[idx * 2], w32[idx * 2 + 1]; idx = idx + 1
    if sample_type & SAMPLE_TIME:
        cols["time"] = w64[idx]; idx = idx + 1
    if sample_type & SAMPLE_ADDR:
        cols["addr"] = w64[idx]; idx = idx + 1
    if sample_type & SAMPLE_CPU:
        cols["cpu"] = w32[idx * 2]; idx = idx + 1
    if sample_type & SAMPLE_CALLCHAIN:
        nr = w64[idx].astype(np.int64) if len(idx) else np.zeros(0, dtype=np.int64)
        cols["callchain_offset"], cols["callchain_len"] = (idx + 1) * 8, nr
        idx = idx + 1 + nr
    if sample_type & SAMPLE_RAW:
        raw = idx * 8 + 4
        cols["raw_offset"] = raw
        cols["event_type"] = (w32[raw // 4] & 0xFFFF).astype(np.uint16) if len(raw) else np.zeros(0, np.uint16)
    order = np.argsort(cols["time"], kind="stable")
    return Samples(**{k: (v[order] if v is not None else None) for k, v in cols.items()})  # type: ignore[arg-type]


def raw_field(data: bytes, raw_offsets: np.ndarray, offset: int, size: int, signed: bool = False) -> np.ndarray:
    """One tracepoint field for many samples (raw data starts 4 bytes past an 8-aligned position)."""
    w32 = np.frombuffer(data, dtype="<u4")
    pos = (raw_offsets + offset)
    if len(pos) == 0:
        return np.zeros(0, dtype=np.int64 if signed else np.uint64)
    if pos[0] % 4 == 0 and np.all(pos % 4 == 0):
        if size == 8:
            lo = w32[pos // 4].astype(np.uint64)
            hi = w32[pos // 4 + 1].astype(np.uint64)
            out = lo | (hi << np.uint64(32))
        elif size == 4:
            out = w32[pos // 4].astype(np.uint64)
        else:
            out = _bytewise(data, pos, size)
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
    """The callchain of sample i, context markers included."""
    if samples.callchain_offset is None:
        return []
    off, nr = int(samples.callchain_offset[i]), int(samples.callchain_len[i])
    return list(struct.unpack_from(f"<{nr}Q", data, off))


def split_callchain(chain: list[int]) -> tuple[list[int], list[int]]:
    """(kernel frames, user frames), markers removed."""
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
