"""Symbols for a recording's user addresses: from the files themselves only when they are provably the files
the capture saw, else from the symbols the recording saved, else none (issue 28).

A file named by a recording is opened only if
- the recording was made under this boot (its HEAD's origin.boot_id is this boot's: an inode number
  means nothing across boots or machines), and
- the file at that path is the one the capture saw: the device, inode, size and modification time its
  END's ``files`` kept (or, for a file only the MMAP2 records name, the inode they give).
Otherwise the recording's own ``symbols`` (the file's segments and function symbols, saved at record
time by capture/recording_identity.py) name the function; a file without them is shown as file+offset.
"""

from __future__ import annotations

import bisect
import os
from typing import TYPE_CHECKING, Any

from ..kernel.boot import boot_id
from .elf import ResolvedIP, resolve_ip

if TYPE_CHECKING:
    from ..evidence import Mapping


class SavedSymbols:
    """One file's segments and function symbols as the recording saved them."""

    def __init__(self, saved: dict[str, Any]):
        self.segments = [tuple(int(x) for x in s) for s in saved.get("segments", []) if len(s) == 3]
        rows = sorted((int(a), int(s), str(n)) for a, s, n in saved.get("functions", []))
        self.addrs = [r[0] for r in rows]
        self.sizes = [r[1] for r in rows]
        self.names = [r[2] for r in rows]
        self.source = str(saved.get("from", ""))

    def offset_to_vaddr(self, offset: int) -> int | None:
        return next((offset - p_off + p_vaddr for p_off, p_vaddr, p_filesz in self.segments
                     if p_off <= offset < p_off + p_filesz), None)

    def symbolize(self, vaddr: int) -> tuple[str, int] | None:
        i = bisect.bisect_right(self.addrs, vaddr) - 1
        if i < 0 or (self.sizes[i] and vaddr >= self.addrs[i] + self.sizes[i]):
            return None
        return self.names[i], vaddr - self.addrs[i]


class RecordedFiles:
    """Which of a recording's files may be opened here, and the symbols it saved for the others."""

    def __init__(self, meta: dict[str, Any], boot: str | None = None):
        origin: dict[str, Any] = meta["origin"] if isinstance(meta.get("origin"), dict) else {}
        recorded_boot = str(origin.get("boot_id") or "")
        here = boot_id() if boot is None else boot
        self.same_boot = bool(recorded_boot) and recorded_boot == here and not origin.get("distrusted")
        self.why_not = ("" if self.same_boot else
                        str(origin.get("distrusted")) if origin.get("distrusted") else
                        "the recording names no boot" if not recorded_boot else
                        f"recorded under another boot ({recorded_boot[:8]}…, this one {here[:8]}…)")
        files = meta.get("files")
        self.files: dict[str, Any] = files if isinstance(files, dict) else {}
        saved = meta.get("symbols")
        self.saved_raw: dict[str, Any] = saved if isinstance(saved, dict) else {}
        self.saved: dict[str, SavedSymbols] = {}
        self.decided: dict[tuple[str, int], str] = {}

    def refusal(self, path: str, inode: int) -> str:
        """"" if the file at `path` may be opened; else why not."""
        key = (path, inode)
        if key not in self.decided:
            self.decided[key] = self._refusal(path, inode)
        return self.decided[key]

    def _refusal(self, path: str, inode: int) -> str:
        if not self.same_boot:
            return self.why_not
        ident = self.files.get(path)
        if not isinstance(ident, dict):
            return "" if inode else "the capture did not record which file was mapped there"
        try:
            st = os.lstat(path)
        except OSError as exc:
            return f"{path}: {exc.strerror}"
        now = {"dev": f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}", "inode": st.st_ino,
               "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        changed = [k for k, v in now.items() if ident.get(k) != v]
        return f"{path} is not the file the capture saw ({', '.join(changed)} differ)" if changed else ""

    def resolve(self, ip: int, m: Mapping) -> ResolvedIP:
        why = self.refusal(m.path, m.inode)
        if not why:
            return resolve_ip(ip, m.start, m.pgoff, m.path, m.inode or None)
        file_offset = ip - m.start + m.pgoff
        lines = [f"file offset = RIP 0x{ip:x} − mapping start 0x{m.start:x} + mapping offset 0x{m.pgoff:x} "
                 f"= 0x{file_offset:x}"]
        if m.path not in self.saved and isinstance(self.saved_raw.get(m.path), dict):
            self.saved[m.path] = SavedSymbols(self.saved_raw[m.path])
        table = self.saved.get(m.path)
        if table is None:
            lines.append(f"{m.path} not opened ({why}) and the recording saved no symbols for it")
            return ResolvedIP(ip, m.path, m.start, file_offset, None, None, None, tuple(lines))
        vaddr = table.offset_to_vaddr(file_offset)
        found = table.symbolize(vaddr) if vaddr is not None else None
        lines.append(f"{m.path} not opened ({why}): the recording's saved symbols ({table.source}) give "
                     + (f"{found[0]}+0x{found[1]:x}" if found else "no function there"))
        return ResolvedIP(ip, m.path, m.start, file_offset, vaddr, found[0] if found else None,
                          found[1] if found else None, tuple(lines))
