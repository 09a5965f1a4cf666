"""What a recording keeps so that `pagefault report` never has to trust a path it names (issue 28).

The recording writer (capture/recording.py) adds these fields through two calls:

- in its HEAD, ``origin``: this boot's ID (/proc/sys/kernel/random/boot_id) and the machine's ID
  (/etc/machine-id). An inode number means nothing under another boot or on another machine: a report
  of a recording whose boot ID is not this boot's opens no file it names.
- in its END, ``files``: for each file the program had mapped (the /proc/PID/maps snapshots), the
  identity the capture saw (device, inode, size, modification time, GNU build ID); and ``symbols``: for
  each file it had mapped executable, what symbolisation needs (the PT_LOAD segments and the function
  symbols, from .symtab, the distribution's debug file or .dynsym), so that a report made anywhere
  names the functions from the recording itself, or names none.

Files seen only in PERF_RECORD_MMAP2 records (a process shorter than the 50 ms between two /proc
snapshots) have their identity in those records (device and inode) and no saved symbols.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from ..kernel.boot import boot_id  # noqa: F401  (re-exported: the recording's origin, tests)
from ..symbols.elf import load_image, open_mapped_file

MAX_FUNCTIONS = 200_000     # per file: a huge C++ binary's table is cut here, and the END says so


def head_fields() -> dict[str, Any]:
    """``origin`` for a recording's HEAD: this boot's ID and the machine's (/etc/machine-id, "" where unreadable).

    :returns: the fields; raises nothing."""
    try:
        with open("/etc/machine-id") as f:
            machine = f.read().strip()
    except OSError:
        machine = ""
    return {"origin": {"boot_id": boot_id(), "machine_id": machine}}


def _identity(path: str, inode: int) -> dict[str, Any] | None:
    """The file at `path` as it is now, if it is still the regular file of that inode."""
    try:
        with open_mapped_file(path, inode or None) as f:
            st = os.fstat(f.fileno())
            from elftools.elf.elffile import ELFFile

            from ..symbols.debug_files import build_id
            try:
                bid = build_id(ELFFile(f))
            except Exception:  # not ELF (a data file): its identity is the rest
                bid = None
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return {"dev": f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}", "inode": st.st_ino, "size": st.st_size,
            "mtime_ns": st.st_mtime_ns, "build_id": bid}


def _symbols(path: str, inode: int) -> dict[str, Any] | None:
    img = load_image(path, inode or None)
    if not img.ok:
        return None
    names = [img.name_at(i) for i in range(min(len(img.addrs), MAX_FUNCTIONS))]
    return {"from": img.symbols_from, "segments": [list(s) for s in img.segments],
            "functions": [[a, s, n] for a, s, n in zip(img.addrs, img.sym_sizes, names)],
            "cut": len(img.addrs) > MAX_FUNCTIONS}


def _mmap2_files(written: Path | None) -> list[dict]:
    """The files the recording's PERF_RECORD_MMAP2 records name (path, inode, whether mapped executable), read
    back from the records written so far: a process too short for the /proc snapshots is there only."""
    if written is None:
        return []
    from .recording import RecordingError, load_recording
    from .records import parse_stream
    try:
        rec = load_recording(written)
        stream = parse_stream(rec.data, int(rec.meta["sample_type"]) | (32 if rec.meta.get("callchain") else 0),
                              in_time_order=False, columns=frozenset())
    except (RecordingError, OSError, ValueError, KeyError):
        return []
    return [{"path": m.path, "inode": m.inode, "perms": "r-x" if m.prot & PROT_EXEC else "r--"} for m in stream.mmaps]


PROT_EXEC = 4


def end_fields(maps: list[dict], written: Path | None = None) -> dict[str, Any]:
    """``files`` and ``symbols`` for the mappings seen: the /proc/PID/maps lines the END keeps (dicts), and
    the MMAP2 records of the recording `written` so far (its temporary file).

    :returns: the fields (a damaged entry of ``maps`` is left out)."""
    # the END's maps as a damaged or hostile caller may hand them: only dicts of the right types count
    maps = [m for m in (maps if isinstance(maps, list) else []) + _mmap2_files(written)
            if isinstance(m, dict) and isinstance(m.get("path", ""), str) and isinstance(m.get("perms", ""), str)]
    files: dict[str, Any] = {}
    symbols: dict[str, Any] = {}
    executable = {m.get("path") for m in maps if "x" in m.get("perms", "")}
    for m in maps:
        path, inode = m.get("path", ""), m.get("inode") or 0
        if not isinstance(inode, int) or isinstance(inode, bool):
            continue
        if not path.startswith("/") or not inode or path in files:
            continue
        ident = _identity(path, inode)
        if ident is None:
            continue
        files[path] = ident
        if path in executable:
            table = _symbols(path, inode)
            if table is not None:
                symbols[path] = table
    return {"files": files, "symbols": symbols}
