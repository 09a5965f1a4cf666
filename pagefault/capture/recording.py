"""The recording file `pagefault trace -o FILE` writes and `pagefault report FILE` reads.

Format (little-endian):
    8 bytes   magic b"PFREC\\x001\\n"
    8 bytes   length L of the metadata
    L bytes   metadata, UTF-8 JSON (see Recording.meta: command, pid, kernel, tier, events with
              their tracefs field layouts, sample_type, mappings seen in /proc/PID/maps, exit)
    then chunks until end of file, each:
      8 bytes length N, N bytes of raw perf records exactly as the kernel wrote them to the
      ring buffer (struct perf_event_header first; N is a multiple of 8)
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

MAGIC = b"PFREC\x001\n"


class RecordingError(Exception):
    pass


@dataclass
class Recording:
    meta: dict[str, Any]
    chunks: list[bytes] = field(default_factory=list)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


class RecordingWriter:
    """Writes the metadata at close, chunks as they come (the file is a valid recording only when closed)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".part")
        self.body: BinaryIO = open(self.tmp, "w+b")
        self.bytes = 0

    def add(self, chunk: bytes) -> None:
        self.body.write(struct.pack("<Q", len(chunk)))
        self.body.write(chunk)
        self.bytes += len(chunk)

    def discard(self) -> None:
        self.body.close()
        self.tmp.unlink(missing_ok=True)

    def close(self, meta: dict[str, Any]) -> None:
        blob = json.dumps(meta).encode()
        self.body.flush()
        self.body.seek(0)
        with open(self.path, "wb") as out:
            out.write(MAGIC + struct.pack("<Q", len(blob)) + blob)
            while True:
                buf = self.body.read(1 << 22)
                if not buf:
                    break
                out.write(buf)
        self.body.close()
        self.tmp.unlink()


def load_recording(path: Path) -> Recording:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise RecordingError(f"no recording at {path}") from None
    except OSError as exc:
        raise RecordingError(f"cannot read {path}: {exc.strerror}") from None
    if not raw.startswith(MAGIC):
        raise RecordingError(f"{path} is not a pagefault recording (bad magic); make one with pagefault trace -o FILE")
    (meta_len,) = struct.unpack_from("<Q", raw, 8)
    try:
        meta = json.loads(raw[16:16 + meta_len])
    except (ValueError, UnicodeDecodeError):
        raise RecordingError(f"{path}: the metadata is damaged") from None
    chunks, pos = [], 16 + meta_len
    while pos + 8 <= len(raw):
        (n,) = struct.unpack_from("<Q", raw, pos)
        pos += 8
        if n % 8 or pos + n > len(raw):
            meta.setdefault("warnings", []).append(f"recording is truncated at byte {pos}; later records are lost")
            break
        chunks.append(raw[pos:pos + n])
        pos += n
    return Recording(meta, chunks)
