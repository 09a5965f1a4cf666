"""When no fault matched `--at SYMBOL` or `--at FILE:LINE`: what the program's faults hit instead, nearest first.

The faults are the perf samples of exceptions:page_fault_user the capture kept (RIP and the user call
chain, frame-pointer unwound by the kernel); the mappings are its PERF_RECORD_MMAP2 records, so a
library mapped and a program ended by now are still known. A symbol selector ranks the functions faulted
by how close their names are to the one asked for (difflib), then by count; a line selector, the lines
of the same source file that faulted or called the faulting code, by their distance to the line asked for.
"""

from __future__ import annotations

import bisect
import difflib
from collections import Counter

from ..evidence import Mapping, TraceEvent
from ..symbols.elf import line_rows, resolve_ip

SHOWN = 6
UNIQUE_IPS = 4096   # enough for the picture; a program with more distinct faulting RIPs is summarised by these


def _mapping_of(maps: list[Mapping], starts: list[int], ip: int) -> Mapping | None:
    i = bisect.bisect_right(starts, ip) - 1
    return maps[i] if i >= 0 and maps[i].start <= ip < maps[i].end else None


def faulted_functions(events: list[TraceEvent], mmaps: list[Mapping]) -> Counter:
    """OBJECT:FUNCTION (or OBJECT+0xOFFSET) → how many faults had their RIP there.

    :returns: the Counter, over the UNIQUE_IPS most frequent addresses."""
    maps = sorted((m for m in mmaps if m.path.startswith("/")), key=lambda m: m.start)
    starts = [m.start for m in maps]
    ips = Counter(e.fields.get("ip", 0) for e in events if e.name == "exceptions:page_fault_user")
    out: Counter = Counter()
    for ip, n in ips.most_common(UNIQUE_IPS):
        m = _mapping_of(maps, starts, ip)
        if m is None:
            out["[code in no mapping the capture recorded]"] += n
            continue
        r = resolve_ip(ip, m.start, m.pgoff, m.path, m.inode)
        name = m.path.rsplit("/", 1)[-1]
        out[f"{name}:{r.symbol}" if r.symbol else f"{name}+0x{r.file_offset:x}"] += n
    return out


def faulted_lines(events: list[TraceEvent], mmaps: list[Mapping], exe: str, file: str) -> Counter:
    """LINE of `file` (by base name) → how many faults had the RIP or a return address (less one) on it, in
    the executable `exe`."""
    want = file.rsplit("/", 1)[-1]
    rows = sorted((lo, hi, line) for lo, hi, name, line in line_rows(exe) if name.rsplit("/", 1)[-1] == want)
    los = [r[0] for r in rows]
    maps = sorted((m for m in mmaps if m.path == exe), key=lambda m: m.start)
    starts = [m.start for m in maps]
    from ..symbols.elf import load_image
    img = load_image(exe)
    out: Counter = Counter()
    for e in events:
        if e.name != "exceptions:page_fault_user":
            continue
        lines = set()
        for k, ip in enumerate([e.fields.get("ip", 0)] + list(e.user_chain[1:])):
            m = _mapping_of(maps, starts, ip - (k > 0))
            if m is None or not img.ok:
                continue
            vaddr = img.offset_to_vaddr(ip - (k > 0) - m.start + m.pgoff)
            i = bisect.bisect_right(los, vaddr) - 1 if vaddr is not None else -1
            if i >= 0 and rows[i][0] <= vaddr < rows[i][1]:
                lines.add(rows[i][2])
        for line in lines:
            out[line] += 1
    return out


def mapped_later(value: str, mmaps: list[Mapping], exe: str | None, searched: set[int]) -> str:
    """--at [OBJECT:]FUNCTION that matched nothing: the libraries the program mapped while it ran (its MMAP2
    records: one it dlopen()ed included) that hold FUNCTION, other than those searched (`searched`: their inodes),
    with the selector that picks it; "" when none does.

    It returns the sentence; it reads only the mapped files (regular files of the inode the record gave)."""
    from ..symbols.objects import LoadedObject, find_function
    func = value.rpartition(":")[2]
    libraries: dict[str, LoadedObject] = {}
    for m in mmaps:
        if m.prot & 4 and m.path.startswith("/") and m.path != exe and m.inode and m.inode not in searched:
            libraries.setdefault(m.path, LoadedObject(m.path, m.inode, False))
    found = [o for o in libraries.values() if (f := find_function([o], func, 8)) is not None and f.ranges]
    if not found:
        return ""
    return (f"{func} is in " + ", ".join(f"{o.name} ({o.path})" for o in found[:SHOWN]) + ", mapped by the program "
            f"while it ran (a library it dlopen()ed): --at {found[0].path}:{func} picks it")


def seen_instead(selector: str, value: str, events: list[TraceEvent], mmaps: list[Mapping], exe: str | None,
                 searched: set[int] | None = None) -> str:
    """One sentence: what the faults hit, nearest to the selector first; "" when no fault was kept. For a
    function, first the libraries mapped while the program ran that hold it, other than those of the inodes
    `searched` (mapped_later).

    It returns the sentence; it reads only the program's ELF files, never the machine."""
    later = mapped_later(value, mmaps, exe, searched or set()) if selector == "symbol" else ""
    rest = _faulted_instead(selector, value, events, mmaps, exe)
    return "; ".join(part for part in (later, rest) if part)


def _faulted_instead(selector: str, value: str, events: list[TraceEvent], mmaps: list[Mapping], exe: str | None) -> str:
    """seen_instead's sentence on the faults themselves."""
    if selector == "line" and exe:
        file, _, wanted = value.rpartition(":")
        lines = faulted_lines(events, mmaps, exe, file)
        if lines:
            near = sorted(lines, key=lambda n: (abs(n - int(wanted)), -lines[n]))[:SHOWN]
            return ("faults seen instead on these lines of " + file.rsplit("/", 1)[-1] + " (RIP or call chain), "
                    "nearest first: " + ", ".join(f"{file.rsplit('/', 1)[-1]}:{n} ({lines[n]:,})" for n in near))
    funcs = faulted_functions(events, mmaps)
    if not funcs:
        return ""
    wanted_name = value.rpartition(":")[2] if selector == "symbol" else ""

    def closeness(name: str) -> float:
        return difflib.SequenceMatcher(None, wanted_name, name.rpartition(":")[2]).ratio() if wanted_name else 0.0
    near = sorted(funcs, key=lambda n: (-closeness(n), -funcs[n]))[:SHOWN]
    order = "nearest name first" if wanted_name else "most faults first"
    return f"faults seen instead, {order}: " + ", ".join(f"{n} ({funcs[n]:,})" for n in near)
