"""The recording file `pagefault trace -o FILE` writes and `pagefault report FILE` reads.

Format 3 (little-endian), a run of 8-aligned chunks after an 8-byte magic ``b"PFREC\\x003\\n"``:

    chunk header (24 bytes), shaped as a perf record so the reader can decode the records in
    place, across chunk boundaries, without copying them:
        u32 type = CHUNK_RECORD_TYPE   (outside the kernel's PERF_RECORD_* range)
        u16 misc = 0, u16 size = 24    (a perf_event_header: the record walker skips it)
        u32 kind (HEAD, RECORDS or END), u32 payload length (a multiple of 8)
        u32 CRC-32 of the payload, u32 reserved = 0
    payload

    HEAD     UTF-8 JSON, space-padded: what is known before the run (command, tier, sample_type,
             events with their tracefs field layouts, kernel, GFP bit table). Always first.
    RECORDS  raw perf records exactly as the kernel wrote them to a ring buffer, whole records only.
    END      UTF-8 JSON: what is known after it (exit, maps seen, duration, the kernel's own event
             counts for the lost-event check). Always last.

A file killed mid-run (FILE.part, or one cut short) still has its HEAD, so every records chunk
before the damage is read and the report says the rest is missing; a chunk whose CRC does not
match ends the readable part the same way, and the report says how many bytes were skipped.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..evidence.input_file import NotARegularInput, open_input_file
from . import recording_identity
from .safe_paths import OutputFile, OutputWriteFailed, written_by_another

MAGIC = b"PFREC\x003\n"
_OLD_MAGICS = {b"PFREC\x001\n": 1, b"PFREC\x002\n": 2}
CHUNK_RECORD_TYPE = 0x7046      # "Fp": above every PERF_RECORD_* the kernel writes (< 64)
CHUNK_HEADER = struct.Struct("<IHHIIII")
HEAD, RECORDS, END = 1, 2, 3
KIND_NAMES = {HEAD: "HEAD", RECORDS: "RECORDS", END: "END"}

# Metadata fields the reader relies on, with the type each must have.
REQUIRED_HEAD = {"sample_type": int, "tier": str, "events": dict}
TYPED_FIELDS: dict[str, type | tuple[type, ...]] = {
                "command": list, "pid": int, "callchain": bool, "notes": list, "maps": list, "duration": (int, float),
                "started": (int, float), "exit": str, "kernel": dict, "gfp_bits": dict, "event_counts": dict,
                "spawned": bool}


class RecordingError(Exception):
    """The file is not a readable recording; the message names what is wrong and the fix."""


@dataclass
class Integrity:
    """How much of the file was read: whole, or up to damage / an early end."""

    complete: bool = True
    problem: str = ""            # why the readable part ends early
    bytes_read: int = 0          # records bytes kept
    bytes_skipped: int = 0       # bytes after the damage that were not read

    def describe(self) -> str:
        if self.complete:
            return "complete"
        return (f"partial: {self.problem}; the {self.bytes_read / 1e6:.1f} MB of records before it are read"
                + (f", {self.bytes_skipped:,} bytes after it skipped" if self.bytes_skipped else ""))


@dataclass
class Recording:
    meta: dict[str, Any]
    data: bytes | memoryview = b""     # the raw perf records (chunk headers among them, skipped as records)
    integrity: Integrity = field(default_factory=Integrity)


def _chunk(kind: int, payload: bytes) -> bytes:
    pad = -len(payload) % 8
    if pad:
        payload += (b" " if kind != RECORDS else b"\0") * pad
    return CHUNK_HEADER.pack(CHUNK_RECORD_TYPE, 0, CHUNK_HEADER.size, kind, len(payload),
                             zlib.crc32(payload), 0) + payload


class RecordingWriter:
    """Records go to a private temporary file beside FILE as they come; close() appends the END
    metadata and names the file. Raises OutputError (safe_paths) when FILE cannot be written."""

    def __init__(self, path: Path, head: dict[str, Any], force: bool = False):
        self.out = OutputFile(Path(path), force)
        self.path = self.out.path
        self.bytes = 0
        head = {**head, **recording_identity.head_fields()}   # the boot the files' identities hold for
        try:
            self.out.write(MAGIC + _chunk(HEAD, json.dumps(head).encode()))
            self.out.file.flush()    # a full disk is found now, before the program runs, not at the end
        except OSError as exc:
            self.out.discard()
            raise OutputWriteFailed(f"cannot write {path}: {exc.strerror}; nothing was recorded; fix: free space "
                                    "on its file system, or record elsewhere with -o") from None

    def add(self, records: bytes) -> None:
        """One run of whole records; raises OSError (a full disk) with nothing half-counted."""
        self.out.write(_chunk(RECORDS, records))
        self.bytes += len(records)

    def add_views(self, pieces: list[memoryview]) -> None:
        """One run of whole records given in pieces (a ring buffer's, where it wraps round), written as one chunk
        straight from them: the CRC is taken over each piece and each is written as it is, never joined or
        copied (a --dwarf recording streams ~8 KiB a fault: each copy slowed the reader till events were lost).
        Raises OSError (a full disk) with nothing half-counted."""
        size = sum(len(p) for p in pieces)
        pad = -size % 8     # the kernel's records are 8-aligned: none, but the chunk's rule is kept
        crc = 0
        for piece in pieces:
            crc = zlib.crc32(piece, crc)
        if pad:
            crc = zlib.crc32(bytes(pad), crc)
        self.out.write(CHUNK_HEADER.pack(CHUNK_RECORD_TYPE, 0, CHUNK_HEADER.size, RECORDS, size + pad, crc, 0))
        for piece in pieces:
            self.out.file.write(piece)   # a large piece goes from the buffer to the file unbuffered, uncopied
        if pad:
            self.out.write(bytes(pad))
        self.bytes += size

    def discard(self) -> None:
        self.out.discard()

    def close(self, end: dict[str, Any] | None) -> Path:
        """Append the END metadata (None: the disk is full, leave it out) and give FILE its name."""
        if end is not None:
            self.out.file.flush()   # the files seen, by /proc and by the MMAP2 records written so far, and their symbols
            end = {**end, **recording_identity.end_fields(end.get("maps") or [], self.out.tmp)}
            self.out.write(_chunk(END, json.dumps(end).encode()))
        return self.out.commit(keep_partial=True)


def load_recording(path: Path) -> Recording:
    """Map a recording and check its chunks; its records are decoded in place, not copied.

    :returns: the recording, with ``integrity`` saying whether it is whole; a file cut short or
        damaged after its HEAD chunk is read up to the damage, not refused.
    :raises RecordingError: not a recording, an older format, or a damaged HEAD.
    """
    path = Path(path)
    try:
        with open_input_file(path) as f:
            written = os.fstat(f.fileno())
            size = f.seek(0, 2)
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    except FileNotFoundError:
        raise RecordingError(f"no recording at {path}") from None
    except NotARegularInput as exc:     # a FIFO blocked forever; /dev/zero was read for 512 MiB
        raise RecordingError(str(exc)) from None
    except IsADirectoryError:
        raise RecordingError(f"{path} is a directory, not a recording") from None
    except (OSError, ValueError) as exc:
        raise RecordingError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    head8 = bytes(mapped[:8])
    if head8 in _OLD_MAGICS:
        raise RecordingError(f"{path} is a format-{_OLD_MAGICS[head8]} recording from an older pagefault; record it again")
    if head8 != MAGIC:
        raise RecordingError(f"{path} is not a pagefault recording (bad magic); make one with pagefault trace -o FILE")
    view = memoryview(mapped)
    chunk = _read_chunk(view, 8)
    if isinstance(chunk, str) or chunk[0] != HEAD:
        raise RecordingError(f"{path}: the head of the recording is damaged ({chunk if isinstance(chunk, str) else 'no HEAD chunk'}); "
                             "record it again")
    meta = _parse_meta(view, chunk, path, "head")
    _check_head(meta, path)
    pos = records_start = chunk[2]
    integrity = Integrity()
    end_meta: dict[str, Any] | None = None
    while True:
        if pos == size:
            integrity = Integrity(False, "the recording ends without its END chunk (the tracer was killed, or the "
                                  "disk filled)")
            break
        chunk = _read_chunk(view, pos)
        if isinstance(chunk, str):
            integrity = Integrity(False, f"damaged at byte {pos:,} ({chunk})", bytes_skipped=size - pos)
            break
        kind, payload_start, after = chunk
        if kind == RECORDS:
            pos = after
            continue
        if kind == END:
            try:
                end_meta = _parse_meta(view, chunk, path, "end")
            except RecordingError as exc:
                integrity = Integrity(False, str(exc).split(": ", 1)[-1], bytes_skipped=size - pos)
                break
            if after != size:
                integrity = Integrity(False, f"{size - after:,} bytes follow the END chunk", bytes_skipped=size - after)
            break
        integrity = Integrity(False, f"a second {KIND_NAMES.get(kind, kind)} chunk at byte {pos:,}",
                              bytes_skipped=size - pos)
        break
    if end_meta:
        redefined = sorted(set(end_meta) & set(REQUIRED_HEAD))
        if redefined:
            raise RecordingError(f"{path}: the END metadata redefines {', '.join(redefined)}, which only the HEAD "
                                 "holds; the file was not written by pagefault")
        _check_types(end_meta, path)
        meta.update(end_meta)
    integrity.bytes_read = pos - records_start
    distrust = written_by_another(written)
    if distrust:    # its paths and identities are anyone's claims: no file it names is opened, its saved symbols are used
        meta["origin"] = {"distrusted": f"{path} may have been written by another user ({distrust})"}
    if not integrity.complete:
        meta.setdefault("exit", "unknown: the recording is partial")
    return Recording(meta, view[records_start:pos], integrity)


def _read_chunk(view: memoryview, pos: int) -> tuple[int, int, int] | str:
    """(kind, payload start, position after) of the chunk at pos, or what is wrong with it."""
    if pos + CHUNK_HEADER.size > len(view):
        return "cut short inside a chunk header"
    rtype, _misc, hsize, kind, length, crc, _res = CHUNK_HEADER.unpack_from(view, pos)
    if rtype != CHUNK_RECORD_TYPE or hsize != CHUNK_HEADER.size or kind not in KIND_NAMES or length % 8:
        return "not a chunk header"
    start, after = pos + CHUNK_HEADER.size, pos + CHUNK_HEADER.size + length
    if after > len(view):
        return f"a {KIND_NAMES[kind]} chunk of {length:,} bytes is cut short"
    if zlib.crc32(view[start:after]) != crc:
        return f"the CRC of a {KIND_NAMES[kind]} chunk does not match"
    return kind, start, after


def _parse_meta(view: memoryview, chunk: tuple[int, int, int], path: Path, which: str) -> dict[str, Any]:
    try:
        meta = json.loads(bytes(view[chunk[1]:chunk[2]]))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise RecordingError(f"{path}: the {which} metadata is not JSON") from None
    if not isinstance(meta, dict):
        raise RecordingError(f"{path}: the {which} metadata is not a JSON object")
    return meta


def _check_head(meta: dict[str, Any], path: Path) -> None:
    for name, kind in REQUIRED_HEAD.items():
        if name not in meta:
            raise RecordingError(f"{path}: the metadata has no {name!r}; record it again")
    _check_types(meta, path)
    if meta["tier"] not in ("perf", "user"):
        raise RecordingError(f"{path}: the metadata names an unknown tier {meta['tier']!r}")
    for key, ev in meta["events"].items():
        ok = (isinstance(key, str) and key.isdigit() and isinstance(ev, dict) and isinstance(ev.get("system"), str)
              and isinstance(ev.get("name"), str) and isinstance(ev.get("fields"), dict)
              and all(isinstance(f, list) and len(f) == 3 and all(isinstance(x, int) for x in f)
                      and 0 <= f[0] < 1 << 16 and 0 < f[1] <= 1 << 16 for f in ev["fields"].values()))
        if not ok:
            raise RecordingError(f"{path}: the layout of event {key!r} in the metadata is damaged")


def _check_types(meta: dict[str, Any], path: Path) -> None:
    for name, kind in {**REQUIRED_HEAD, **TYPED_FIELDS}.items():
        if name in meta and (meta[name] is not None or name in REQUIRED_HEAD) and (not isinstance(meta[name], kind)
                                                        or (kind is int and isinstance(meta[name], bool))):
            raise RecordingError(f"{path}: the metadata field {name!r} has the wrong type "
                                 f"({type(meta[name]).__name__}); record it again")
    if "sample_type" in meta and not 0 <= meta["sample_type"] < 1 << 20:
        raise RecordingError(f"{path}: the metadata's sample_type {meta['sample_type']} is out of range")
    for m in meta.get("maps") or []:
        if not (isinstance(m, dict) and all(isinstance(m.get(k), int) for k in ("start", "end", "offset"))
                and isinstance(m.get("path"), str)):
            raise RecordingError(f"{path}: a mapping in the metadata is damaged")
