"""Page faults as a pprof profile: the gzipped ``profile.proto`` that ``go tool pprof``, Pyroscope, Parca and
Grafana read (github.com/google/pprof, proto/profile.proto).

One sample per distinct (stack, class, process, mode), its value the number of faults; sample type
``faults/count``; labels ``class``, ``mapping`` (the leaf user frame's object), ``pid``, ``comm`` and ``mode``
(user or kernel). Locations carry function names only (no addresses): the stacks were symbolised when the
recording was read, and a profile of another machine's addresses would mean nothing here.

The protobuf wire format is written by hand (varints and length-delimited fields, about forty lines): the
message is small and fixed, and Google's protobuf runtime would need profile.proto compiled into generated
code at build time for these six message types.
"""

from __future__ import annotations

import gzip
from collections import Counter
from typing import Iterable

from ..journey.fault_stacks import TRUNCATED, FaultSample

# profile.proto field numbers
PROFILE_SAMPLE_TYPE, PROFILE_SAMPLE, PROFILE_LOCATION, PROFILE_FUNCTION, PROFILE_STRING_TABLE = 1, 2, 4, 5, 6
PROFILE_TIME_NANOS, PROFILE_DURATION_NANOS, PROFILE_PERIOD_TYPE, PROFILE_PERIOD = 9, 10, 11, 12
VARINT, LENGTH_DELIMITED = 0, 2


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64          # int64 fields: two's complement, ten bytes
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _int(field: int, n: int) -> bytes:
    return _varint(field << 3 | VARINT) + _varint(n) if n else b""


def _bytes(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | LENGTH_DELIMITED) + _varint(len(payload)) + payload


def _packed(field: int, values: Iterable[int]) -> bytes:
    return _bytes(field, b"".join(_varint(v) for v in values))


class _Strings:
    """profile.proto's string table: index 0 is the empty string."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {"": 0}

    def __call__(self, s: str) -> int:
        return self.index.setdefault(s, len(self.index))

    def encoded(self) -> bytes:
        return b"".join(_bytes(PROFILE_STRING_TABLE, s.encode()) for s in self.index)


def _mapping_of(frames: tuple[str, ...]) -> str:
    """The object of the leaf user frame ("libc.so.6:memset" → "libc.so.6"), or "[kernel]"."""
    user = [f for f in frames[1:] if not f.endswith("_[k]") and f != TRUNCATED]
    if not user:
        return "[kernel]"
    return user[-1].split(":", 1)[0].split("+", 1)[0]


# The trap's own entry frames close every user-mode fault's kernel chain: in a profile they would be the leaf of
# every sample (100% flat), hiding the program's own frames; the class, the first frame, says it was a fault.
TRAP_FRAMES = ("asm_exc_page_fault_[k]", "exc_page_fault_[k]")


def _profile_frames(frames: tuple[str, ...]) -> tuple[str, ...]:
    end = len(frames)
    while end > 1 and frames[end - 1] in TRAP_FRAMES:
        end -= 1
    return frames[:end]


def to_pprof(samples: Counter[FaultSample], *, time_ns: int = 0, duration_ns: int = 0) -> bytes:
    """The gzipped profile of `samples` (journey.fault_stacks.fault_samples), the trap's entry frames left out."""
    strings = _Strings()
    functions: dict[str, int] = {}
    body = bytearray()
    for sample, n in sorted(samples.items(), key=lambda kv: (-kv[1], kv[0].frames, kv[0].pid)):
        ids = [functions.setdefault(frame, len(functions) + 1) for frame in _profile_frames(sample.frames)]
        labels = [("class", sample.fault_class), ("mapping", _mapping_of(sample.frames)), ("comm", sample.comm),
                  ("mode", "kernel" if sample.kernel_mode else "user")]
        encoded_labels = b"".join(_bytes(3, _int(1, strings(k)) + _int(2, strings(v))) for k, v in labels)
        encoded_labels += _bytes(3, _int(1, strings("pid")) + _int(3, sample.pid))
        # pprof lists a sample's locations leaf first; one location per function, with the same id
        body += _bytes(PROFILE_SAMPLE, _packed(1, reversed(ids)) + _packed(2, [n]) + encoded_labels)
    for name, fid in functions.items():
        body += _bytes(PROFILE_LOCATION, _int(1, fid) + _bytes(4, _int(1, fid)))
        body += _bytes(PROFILE_FUNCTION, _int(1, fid) + _int(2, strings(name)) + _int(3, strings(name)))
    value_type = _int(1, strings("faults")) + _int(2, strings("count"))
    head = _bytes(PROFILE_SAMPLE_TYPE, value_type)
    tail = (_int(PROFILE_TIME_NANOS, time_ns) + _int(PROFILE_DURATION_NANOS, duration_ns)
            + _bytes(PROFILE_PERIOD_TYPE, value_type) + _int(PROFILE_PERIOD, 1))
    return gzip.compress(head + bytes(body) + strings.encoded() + tail, mtime=0)
