"""The recording file `pagefault trace -o FILE` writes and `pagefault report FILE` reads.

Format 2 (little-endian):
    8 bytes   magic b"PFREC\\x002\\n"
    N bytes   raw perf records exactly as the kernel wrote them to the ring buffers, whole
              records only (struct perf_event_header first; N is a multiple of 8)
    L bytes   metadata, UTF-8 JSON: command, pid, kernel, tier, events with their tracefs field
              layouts, sample_type, GFP bit table, mappings seen in /proc/PID/maps, exit
    8 bytes   L
    8 bytes   end magic b"PFRECEND"

The metadata comes last so that the records go to disk as they are drained and are never
copied again: the reader maps the file and decodes the records in place. The file is written
as FILE.part and renamed when complete, so FILE is never half-written.
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAGIC = b"PFREC\x002\n"
END_MAGIC = b"PFRECEND"
_OLD_MAGIC = b"PFREC\x001\n"


class RecordingError(Exception):
    pass


@dataclass
class Recording:
    meta: dict[str, Any]
    data: bytes | memoryview = b""     # the raw perf records


class RecordingWriter:
    """Records go straight to FILE.part as they come; close() appends the metadata and renames."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".part")
        self.body = open(self.tmp, "wb")
        self.body.write(MAGIC)
        self.bytes = 0

    def add(self, chunk: bytes) -> None:
        self.body.write(chunk)
        self.bytes += len(chunk)

    def discard(self) -> None:
        self.body.close()
        self.tmp.unlink(missing_ok=True)

    def close(self, meta: dict[str, Any]) -> None:
        blob = json.dumps(meta).encode()
        self.body.write(blob + struct.pack("<Q", len(blob)) + END_MAGIC)
        self.body.close()
        self.tmp.replace(self.path)


def load_recording(path: Path) -> Recording:
    """Map a recording; its records are decoded in place, not copied."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    except FileNotFoundError:
        raise RecordingError(f"no recording at {path}") from None
    except IsADirectoryError:
        raise RecordingError(f"{path} is a directory, not a recording") from None
    except OSError as exc:
        raise RecordingError(f"cannot read {path}: {exc.strerror}") from None
    if mapped[:8] == _OLD_MAGIC:
        raise RecordingError(f"{path} is a format-1 recording from an older pagefault; record it again")
    if mapped[:8] != MAGIC:
        raise RecordingError(f"{path} is not a pagefault recording (bad magic); make one with pagefault trace -o FILE")
    if size < 32 or mapped[size - 8:] != END_MAGIC:
        raise RecordingError(f"{path} is incomplete: the tracer stopped before writing its metadata "
                             "(was it killed?); record it again")
    (meta_len,) = struct.unpack_from("<Q", mapped, size - 16)
    meta_start = size - 16 - meta_len
    if meta_start < 8 or (meta_start - 8) % 8:
        raise RecordingError(f"{path}: the metadata length is damaged")
    try:
        meta = json.loads(bytes(mapped[meta_start:size - 16]))
    except (ValueError, UnicodeDecodeError):
        raise RecordingError(f"{path}: the metadata is damaged") from None
    if not isinstance(meta, dict) or "sample_type" not in meta:
        raise RecordingError(f"{path}: the metadata is damaged")
    return Recording(meta, memoryview(mapped)[8:meta_start])
