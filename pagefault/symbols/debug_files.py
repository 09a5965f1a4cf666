"""A stripped file's separate debug file (a distribution's -dbg/-dbgsym package), found by its GNU build ID.

Debian's libc6-dbg, like every distribution's debug packages, installs
/usr/lib/debug/.build-id/<first two hex digits>/<the rest>.debug: a copy of the file's sections with the
full .symtab (the local functions, e.g. glibc's __memset_avx2_unaligned_erms, that .dynsym lacks) and the
DWARF, with the code left out (SHT_NOBITS). Its addresses are the stripped file's own.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from elftools.elf.elffile import ELFFile

DEBUG_ROOT = "/usr/lib/debug/.build-id"


def build_id(elf: ELFFile) -> str | None:
    """The file's NT_GNU_BUILD_ID as hex, or None."""
    for sec in elf.iter_sections():
        if sec["sh_type"] != "SHT_NOTE":
            continue
        for note in sec.iter_notes():  # type: ignore[attr-defined]
            if note["n_type"] == "NT_GNU_BUILD_ID":
                return str(note["n_desc"])
    return None


def _root_owned(path: str, regular: bool) -> bool:
    """Owned by root and writable by no one else: as root, no other user can have planted it."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    kind_ok = stat.S_ISREG(st.st_mode) if regular else stat.S_ISDIR(st.st_mode)
    return kind_ok and st.st_uid == 0 and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def debug_file_for(elf: ELFFile, root: str = DEBUG_ROOT) -> str | None:
    """The path of `elf`'s debug file under `root`, if there is one that only root can have written (every
    directory from /usr/lib/debug down, and the file); None otherwise."""
    bid = build_id(elf)
    if not bid or len(bid) < 3 or not all(c in "0123456789abcdef" for c in bid):
        return None
    path = os.path.join(root, bid[:2], bid[2:] + ".debug")
    parts = path.split("/")
    dirs = ["/".join(parts[:i]) for i in range(3, len(parts))]  # /usr/lib, …, the build-id's directory
    if not all(_root_owned(d, regular=False) for d in dirs) or not _root_owned(path, regular=True):
        return None
    return path
