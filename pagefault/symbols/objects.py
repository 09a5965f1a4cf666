"""The objects a program runs: its executable and its shared libraries, and a function found in any of them.

`--at SYMBOL` searches them all (`--at libc.so.6:memset` one of them). A library's place in memory is
chosen at run time, so its function is given to the kernel-side selector as file offsets in the file of
that inode (the VMA holding a RIP says which file and offset it is); the executable's as ELF addresses,
as before. Libraries come from /proc/PID/maps for a running process, else from the executable's
DT_NEEDED entries resolved as the dynamic loader does (DT_RUNPATH/DT_RPATH, /etc/ld.so.conf.d, the
system's library directories). A library the program dlopen()s later is not among them: dlopen_candidates()
adds those whose names the executable holds as strings (dlopen("libplugin.so")), resolved as dlopen resolves
them, and `--at /path/to/lib.so:FUNCTION` names one outright; what the program mapped later is searched after
its run (capture/seen_instead.py), so a miss names the library that had the function.
"""

from __future__ import annotations

import difflib
import glob
import os
import re
from dataclasses import dataclass

from .elf import line_ranges, load_image, open_mapped_file

SYSTEM_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib")
STT_GNU_IFUNC = 10


@dataclass(frozen=True)
class LoadedObject:
    path: str
    inode: int
    executable: bool       # the program's own executable (ELF addresses), else a library (file offsets)
    how: str = ""          # how a library not loaded at start was found ("" for one loaded at start)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


@dataclass(frozen=True)
class FunctionRanges:
    """Where a function's code is: [lo, hi) ELF addresses (the executable) or file offsets (a library)."""

    obj: LoadedObject
    names: tuple[str, ...]          # the function, or an IFUNC's implementations
    ranges: tuple[tuple[int, int], ...]
    how: str                        # how they were found, in words


def _dynamic(path: str) -> tuple[list[str], list[str], int | None]:
    """(DT_NEEDED, DT_RUNPATH or DT_RPATH directories, e_machine) of an ELF file; empty if unreadable."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    try:
        with open_mapped_file(path) as f:
            elf = ELFFile(f)
            sec = elf.get_section_by_name(".dynamic")
            needed, paths = [], []
            if sec is not None:
                for tag in sec.iter_tags():  # type: ignore[attr-defined]
                    if tag.entry.d_tag == "DT_NEEDED":
                        needed.append(tag.needed)
                    elif tag.entry.d_tag in ("DT_RUNPATH", "DT_RPATH"):
                        text = tag.runpath if tag.entry.d_tag == "DT_RUNPATH" else tag.rpath
                        origin = os.path.dirname(path)
                        paths += [p.replace("$ORIGIN", origin).replace("${ORIGIN}", origin) for p in text.split(":") if p]
            return needed, paths, elf["e_machine"]
    except (OSError, ELFError, ValueError, KeyError):
        return [], [], None


def _conf_dirs() -> list[str]:
    out = []
    for conf in sorted(glob.glob("/etc/ld.so.conf.d/*.conf")):
        try:
            lines = open(conf).read().splitlines()
        except OSError:
            continue
        out += [line.strip() for line in lines if line.strip().startswith("/")]
    return out


def needed_libraries(exe: str) -> list[str]:
    """The shared libraries `exe` loads at start, breadth first, each resolved to a real path."""
    _needed, _paths, machine = _dynamic(exe)
    seen: list[str] = []
    queue = [exe]
    dirs_system = _conf_dirs() + list(SYSTEM_DIRS)
    while queue:
        current = queue.pop(0)
        needed, paths, _m = _dynamic(current)
        for name in needed:
            for d in ([os.path.dirname(name)] if "/" in name else paths + dirs_system):
                real = os.path.realpath(os.path.join(d, os.path.basename(name)))
                if not os.path.isfile(real) or _dynamic(real)[2] != machine:
                    continue
                if real not in seen:
                    seen.append(real)
                    queue.append(real)
                break
    return seen


def loaded_objects(exe: str | None, maps: list | None = None) -> list[LoadedObject]:
    """The executable first, then its libraries: from a running process's /proc/PID/maps lines when given
    (evidence.MapsLine: their inodes as the kernel gives them), else from DT_NEEDED (inodes by stat)."""
    out: list[LoadedObject] = []
    for m in maps or []:
        if "x" in m.perms and m.path.startswith("/") and m.inode and all(o.path != m.path for o in out):
            out.append(LoadedObject(m.path, m.inode, m.path == exe))
    if out:
        out.sort(key=lambda o: not o.executable)
        return out
    if exe:
        out.append(LoadedObject(exe, _inode(exe), True))
        out += [LoadedObject(p, _inode(p), False) for p in needed_libraries(exe)]
    return out


# A library name as a dlopen() argument holds it: a path or a bare name ending in .so or .so.VERSION
_LIBRARY_NAME = re.compile(rb"(?<![\w./+-])([\w./+-]{1,240}\.so(?:\.[0-9]+)*)\0")
_STRINGS_READ = 64 << 20     # an executable's first bytes searched for library names


def dlopen_candidates(exe: str, cwd: str, start: list[LoadedObject], env: dict[str, str] | None = None) -> list[LoadedObject]:
    """Libraries the program may dlopen() later: each name ending in .so (or .so.N) that the executable holds as a
    string, resolved as dlopen(3) resolves it (a name with a slash: that path, relative to `cwd`, the program's
    working directory; else the executable's DT_RPATH/DT_RUNPATH, LD_LIBRARY_PATH of `env`, /etc/ld.so.conf.d and
    the system's directories), the same machine's ELF files only, those of `start` left out. Files are only read.

    :returns: the libraries found, in the order of their names in the file; raises nothing (an unreadable
        executable gives none)."""
    try:
        with open_mapped_file(exe) as f:      # a regular file only, never a FIFO or a device
            data = f.read(_STRINGS_READ)
    except OSError:
        return []
    _needed, paths, machine = _dynamic(exe)
    library_path = [d for d in ((env if env is not None else os.environ).get("LD_LIBRARY_PATH") or "").split(":") if d]
    dirs = paths + library_path + _conf_dirs() + list(SYSTEM_DIRS)
    known = {o.path for o in start}
    out: list[LoadedObject] = []
    for m in _LIBRARY_NAME.finditer(data):
        name = m.group(1).decode("ascii", "replace")
        places = [os.path.join(cwd, name)] if "/" in name else [os.path.join(d, name) for d in dirs]
        for place in places:
            real = os.path.realpath(place)
            if real in known or not os.path.isfile(real) or _dynamic(real)[2] != machine:
                continue
            known.add(real)
            out.append(LoadedObject(real, _inode(real), False, f"named {name!r} in {os.path.basename(exe)}, not loaded "
                                                               "at start (a dlopen)"))
            break
    return out


def may_dlopen(objects: list[LoadedObject]) -> bool:
    """Whether one of `objects` calls dlopen() or dlmopen() (an undefined dynamic symbol of that name: libc's own
    definition is not a call), so that it may map a library no name foresaw.

    :returns: True or False; an unreadable object counts as no call. Raises nothing."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    for obj in objects:
        try:
            with open_mapped_file(obj.path) as f:
                dynsym = ELFFile(f).get_section_by_name(".dynsym")
                if dynsym is None:
                    continue
                for sym in dynsym.iter_symbols():  # type: ignore[attr-defined]
                    if sym.name in ("dlopen", "dlmopen") and sym["st_shndx"] == "SHN_UNDEF":
                        return True
        except (OSError, ELFError, ValueError, KeyError):
            continue
    return False


def named_file(name: str) -> list[LoadedObject]:
    """`--at /path/to/lib.so:FUNCTION`: the library that path names, searched whether or not the program has it
    loaded at start (one it dlopen()s later). Only an absolute path names a file here.

    :returns: [that library], or [] when `name` has no absolute OBJECT part or it is not a file; raises nothing."""
    where = name.rpartition(":")[0]
    if not where.startswith("/"):
        return []
    real = os.path.realpath(where)
    if not os.path.isfile(real):
        return []
    return [LoadedObject(real, _inode(real), False, f"the file {where} given")]


def _inode(path: str) -> int:
    try:
        return os.stat(path).st_ino
    except OSError:
        return 0


def _vaddr_to_offset(img, vaddr: int) -> int | None:
    for p_off, p_vaddr, p_filesz in img.segments:
        if p_vaddr <= vaddr < p_vaddr + p_filesz:
            return vaddr - p_vaddr + p_off
    return None


def find_function(objects: list[LoadedObject], name: str, limit: int) -> FunctionRanges | None:
    """The first object (executable first) whose symbols hold function `name`, with its code's ranges (at
    most `limit`: an IFUNC's implementations are merged across the smallest gaps until they fit, and the
    words say so). `name` may be OBJECT:FUNCTION, OBJECT being a file name or its start (libc, libc.so.6).

    An IFUNC (glibc's memset) is a resolver that picks the code at load time; its implementations are
    glibc's __NAME_VARIANT functions (__memset_avx2_unaligned_erms), named in .symtab only (the debug file's,
    for a stripped library): those are the ranges."""
    where, _, func = name.rpartition(":")
    path = os.path.realpath(where) if where.startswith("/") else ""   # a path: that file only
    for obj in objects:
        if path and obj.path != path:
            continue
        if where and not path and not (obj.name == where or obj.name.startswith(where + ".") or
                                       obj.name.startswith(where + "-")):
            continue
        img = load_image(obj.path, obj.inode or None)
        if not img.ok:
            continue
        found = _ranges_in(img, obj, func, limit)
        if found is not None:
            return found
    return None


def _ranges_in(img, obj: LoadedObject, func: str, limit: int) -> FunctionRanges | None:
    table = img.functions_by_name()
    if func not in table:
        return None
    value, size, kind = table[func]
    names: list[str] = [func]
    spans = [(value, value + max(size, 1))]
    how = f"{func} in {img.symbols_from} of {obj.name}" + (f" ({obj.how})" if obj.how else "")
    if kind == STT_GNU_IFUNC:
        prefix, chk = f"__{func}_", f"__{func}_chk"
        variants = [n for n, (_v, _s, k) in table.items() if n.startswith(prefix) and not n.startswith(chk)
                    and k != STT_GNU_IFUNC]
        if not variants:
            return FunctionRanges(obj, (func,), (), f"{func} in {obj.name} is an IFUNC (its code is chosen when the "
                                  f"program loads) and {obj.name} names no implementation of it ({img.symbols_from} "
                                  "only): install the library's debug symbols (e.g. libc6-dbg)")
        names = sorted(variants)
        spans = sorted((table[n][0], table[n][0] + max(table[n][1], 1)) for n in variants)
        how = (f"{func} in {obj.name} is an IFUNC: its {len(names)} implementations __{func}_* "
               f"(from {img.symbols_from})")
    merged = _merge_to(spans, limit)
    if len(merged) < len(spans):
        between = sum(b[0] - a[1] for a, b in zip(merged, merged[1:]))
        gaps = sum(b[0] - a[1] for a, b in zip(spans, spans[1:])) - between
        how += f", in {len(merged)} ranges (the selector holds {limit}: {gaps} bytes between them are included)"
    if not obj.executable:
        offsets = [(_vaddr_to_offset(img, lo), _vaddr_to_offset(img, hi - 1)) for lo, hi in merged]
        merged = [(lo, hi + 1) for lo, hi in offsets if lo is not None and hi is not None]
    return FunctionRanges(obj, tuple(names), tuple(merged), how)


def _merge_to(spans: list[tuple[int, int]], limit: int) -> list[tuple[int, int]]:
    spans = sorted(spans)
    while len(spans) > limit:
        i = min(range(len(spans) - 1), key=lambda k: spans[k + 1][0] - spans[k][1])
        spans[i:i + 2] = [(spans[i][0], max(spans[i][1], spans[i + 1][1]))]
    return spans


def nearest_names(objects: list[LoadedObject], name: str, count: int = 5) -> list[str]:
    """The function names of the objects closest to `name` (difflib), as OBJECT:FUNCTION."""
    func = name.rpartition(":")[2]
    pool: dict[str, str] = {}
    for obj in objects:
        img = load_image(obj.path, obj.inode or None)
        if img.ok:
            for n in img.functions_by_name():
                pool.setdefault(n, obj.name)
    return [f"{pool[n]}:{n}" for n in difflib.get_close_matches(func, list(pool), n=count, cutoff=0.6)]


def find_line(objects: list[LoadedObject], file: str, line: int, limit: int) -> FunctionRanges | None:
    """The first library (the executable is searched by the caller, with its call chains) whose DWARF line
    table gives code to `file:line`: its own .debug_line, or its separate debug file's (libc6-dbg: found by
    build ID, symbols/debug_files.py); the ranges as file offsets, as find_function gives a library's."""
    for obj in objects:
        if obj.executable:
            continue
        img = load_image(obj.path, obj.inode or None)
        if not img.ok:
            continue
        source, from_where = _line_table_file(obj)
        if source is None:
            continue
        spans = line_ranges(source, file, line)
        if not spans:
            continue
        merged = _merge_to(spans, limit)
        offsets = [(_vaddr_to_offset(img, lo), _vaddr_to_offset(img, hi - 1)) for lo, hi in merged]
        ranges = tuple((lo, hi + 1) for lo, hi in offsets if lo is not None and hi is not None)
        how = f"{file}:{line} in the line table of {from_where}: {len(spans)} address range(s)"
        if len(merged) < len(spans):
            how += f", merged into {len(merged)} (the selector holds {limit})"
        return FunctionRanges(obj, (f"{file}:{line}",), ranges, how)
    return None


def _line_table_file(obj: LoadedObject) -> tuple[str | None, str]:
    """(the file holding `obj`'s DWARF line table, in words where it is), or (None, "")."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    from .debug_files import debug_file_for
    try:
        with open_mapped_file(obj.path, obj.inode or None) as f:
            elf = ELFFile(f)
            if elf.get_section_by_name(".debug_line") is not None:
                return obj.path, obj.name
            debug = debug_file_for(elf)
    except (OSError, ELFError, ValueError, KeyError):
        return None, ""
    return (debug, f"{obj.name}'s debug file {debug}") if debug else (None, "")
