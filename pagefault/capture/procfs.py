"""Reading /proc: maps, pagemap, kpageflags, kpagecount, vmstat counters. Parsing lives here only."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from ..evidence import MapsLine, parse_maps  # noqa: F401  (parse_maps: read here, parsed there)

# pagemap has one entry per page of the kernel's PAGE_SIZE (4 KiB on x86-64; 4, 16 or 64 KiB on arm64)
PAGE_SHIFT = os.sysconf("SC_PAGE_SIZE").bit_length() - 1


def read_maps(pid: int | str) -> list[MapsLine]:
    """The VMAs of process ``pid``, from /proc/PID/maps.

    :returns: one MapsLine per line.
    :raises OSError: the process is gone (FileNotFoundError) or is not the caller's to read (PermissionError: a
        caller without root reads only its own processes)."""
    return parse_maps(Path(f"/proc/{pid}/maps").read_text())


def read_pagemap(pid: int | str, address: int, count: int = 1) -> list[int]:
    """Raw 64-bit pagemap entries for `count` pages from the page holding `address`.

    :returns: the entries (fewer where the range ends); a caller without root gets PFN fields of 0.
    :raises OSError: the process is gone or is not the caller's to read."""
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek((address >> PAGE_SHIFT) * 8)
        data = f.read(8 * count)
    return list(struct.unpack(f"<{len(data) // 8}Q", data))


def _read_pfn_table(path: str, pfn: int) -> int:
    with open(path, "rb") as f:
        f.seek(pfn * 8)
        data = f.read(8)
    if len(data) != 8:
        raise OSError(f"{path} has no entry for PFN 0x{pfn:x}")
    return struct.unpack("<Q", data)[0]


def read_kpageflags(pfn: int) -> int:
    """The KPF_* flag word of frame ``pfn``, from /proc/kpageflags.

    :returns: the word.
    :raises OSError: the file cannot be read (PermissionError without root) or ``pfn`` is past its end."""
    return _read_pfn_table("/proc/kpageflags", pfn)


def read_kpagecount(pfn: int) -> int:
    """How many times frame ``pfn`` is mapped, from /proc/kpagecount.

    :returns: the count.
    :raises OSError: the file cannot be read (PermissionError without root) or ``pfn`` is past its end."""
    return _read_pfn_table("/proc/kpagecount", pfn)


def read_fault_counters(pid: int | str) -> tuple[int, int]:
    """(minor, major) page faults of a process, fields 10 and 12 of /proc/PID/stat.

    :raises OSError: the process is gone."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[7]), int(fields[9])


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a zombie does); never raises."""
    return os.path.exists(f"/proc/{pid}")


def read_smaps_vmflags(pid: int | str, start: int) -> list[str] | None:
    """The VmFlags mnemonics /proc/PID/smaps shows for the VMA starting at `start` (None: no such VMA).

    :raises OSError: the process is gone or is not the caller's to read (a caller without root reads its own)."""
    current = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 1)[0]
            if "-" in head and not head.endswith(":"):
                current = int(head.split("-")[0], 16)
            elif head == "VmFlags:" and current == start:
                return line.split()[1:]
    return None


def pagemap_entry(pid: int | str, address: int) -> int:
    """The raw 64-bit /proc/PID/pagemap entry of the page holding ``address``.

    :param pid: a process this user may read (its own, or any as root).
    :returns: the entry as the kernel wrote it (decode it with decode.pagemap.decode_pagemap_entry).
    :raises OSError: the process is gone or unreadable, or the address lies past the file's end.

    A caller without CAP_SYS_ADMIN gets the entry with its PFN field zeroed (bits 0-54), as the
    kernel hides frame numbers from unprivileged readers since Linux 4.2; the flag bits are real.
    """
    entries = read_pagemap(pid, address, 1)
    if not entries:
        raise OSError(f"/proc/{pid}/pagemap has no entry for 0x{address:x}")
    return entries[0]
