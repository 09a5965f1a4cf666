"""The traced program's mappings, for the summaries' mapping columns, when its faults are counted in the
kernel (trace --summary-only, trace --latency) and no recording holds its mmap events.

A short program is gone before a periodic read of /proc/PID/maps sees it, and its mm is torn down
before the exit tracepoint fires. So bpftrace stops the program at its exec (SIGSTOP) while
/proc/PID/maps is read, and tells of every later mmap (its result, flags and file name) and brk as
they are made; /proc/PID/maps is read again every 50 ms while it runs. A mapping seen once stays,
so a VMA unmapped before the end is still named.
"""

from __future__ import annotations

import os
import signal
import time

from ..evidence import MapsLine
from . import procfs


def mapping_probes(pid: int, mine: str) -> str:
    """bpftrace probes (needing --unsafe, for signal()) that stop `pid` at its exec and print a "map" line for
    each mmap of the processes `mine` selects and a "brk" line for each brk; maps they use are @m*."""
    return f"""
tracepoint:sched:sched_process_exec /pid == {pid}/ {{ signal("SIGSTOP"); printf("stopped exec\\n"); }}
tracepoint:syscalls:sys_enter_mmap /{mine}/ {{
    @mfd[tid] = args->fd; @mfl[tid] = args->flags; @mpr[tid] = args->prot; @mof[tid] = args->off; @mln[tid] = args->len;
}}
tracepoint:syscalls:sys_exit_mmap /({mine}) && @mln[tid] && args->ret >= 0/ {{
    if ((@mfl[tid] & 0x20) == 0 && @mfd[tid] >= 0) {{
        $f = (struct file *)*(curtask->files->fdt->fd + @mfd[tid]);
        printf("map %d 0x%lx 0x%lx %d %d 0x%lx %s\\n", pid, args->ret, @mln[tid], @mpr[tid], @mfl[tid], @mof[tid],
               str($f->f_path.dentry->d_name.name));
    }} else {{
        printf("map %d 0x%lx 0x%lx %d %d 0x0 //anon\\n", pid, args->ret, @mln[tid], @mpr[tid], @mfl[tid]);
    }}
    delete(@mln[tid]);
}}
tracepoint:syscalls:sys_exit_brk /{mine}/ {{ printf("brk %d 0x%lx 0x%lx\\n", pid, curtask->mm->start_brk, args->ret); }}
"""


MAPPING_MAPS = ("@mfd", "@mfl", "@mpr", "@mof", "@mln")
BEFORE_EXEC = "(before exec) "


class MappingWatch:
    """The mappings of one program while bpftrace runs mapping_probes() on it."""

    def __init__(self, pid: int):
        self.pid = pid
        self.maps: dict[int, list[MapsLine]] = {}
        self._stops = 0
        self._last_read = 0.0
        self.page_size = os.sysconf("SC_PAGE_SIZE")   # this kernel's (16 KiB on some arm64 kernels)

    def before_exec(self) -> None:
        """The held program's mappings before its exec (the tool's own image, forked): named apart, so
        that faults made there are not taken for the program's."""
        try:
            self.maps[self.pid] = [MapsLine(m.start, m.end, m.perms, m.offset, m.dev, m.inode,
                                            f"{BEFORE_EXEC}{m.path or '[anon ' + m.perms + ']'}")
                                   for m in procfs.read_maps(self.pid)]
        except OSError:
            pass

    def step(self, out: bytearray) -> None:
        """Read /proc/PID/maps every 50 ms, and when bpftrace has stopped the program at its exec, then
        continue it."""
        stopped = out.count(b"stopped ")
        if stopped > self._stops or time.monotonic() - self._last_read > 0.05:
            self._union_maps()
            self._last_read = time.monotonic()
        if stopped > self._stops:
            self._stops = stopped
            try:
                os.kill(self.pid, signal.SIGCONT)   # the maps are read
            except ProcessLookupError:
                pass

    def finish(self, lines: list[str]) -> dict[int, list[MapsLine]]:
        """Every mapping seen, with those bpftrace told of (mmap's result with its file's name; the heap's
        extent at the last brk)."""
        seen = {(m.start, m.end, m.path): m for m in self.maps.get(self.pid, [])}
        heap = None
        for line in lines:
            parts = line.split()
            if parts[:1] == ["map"] and len(parts) == 8 and int(parts[1]) == self.pid:
                start, length, prot, flags = int(parts[2], 16), int(parts[3], 16), int(parts[4]), int(parts[5])
                off = int(parts[6], 16)
                perms = ("r" if prot & 1 else "-") + ("w" if prot & 2 else "-") + ("x" if prot & 4 else "-") + \
                    ("s" if flags & 1 else "p")
                path = "" if parts[7] == "//anon" else parts[7]
                end = start + ((length + self.page_size - 1) & ~(self.page_size - 1))   # mmap rounds up
                # bpftrace tells the file's name only; /proc's line for the same mapping has its whole path
                if any(k[0] == start and k[1] == end and (k[2] == path or k[2].endswith("/" + path)) for k in seen):
                    continue
                seen[(start, end, path)] = MapsLine(start, end, perms, off, "00:00", 0, path)
            elif parts[:1] == ["brk"] and len(parts) == 4 and int(parts[1]) == self.pid:
                heap = (int(parts[2], 16), int(parts[3], 16))
        if heap and heap[1] > heap[0]:
            seen[(heap[0], heap[1], "[heap]")] = MapsLine(heap[0], heap[1], "rw-p", 0, "00:00", 0, "[heap]")
        # a mapping before the exec and one after it can start at the same address (seen with 16 KiB pages),
        # and a VMA is looked up by its start: the program's own come first, since nearly all faults are its
        self.maps[self.pid] = sorted(seen.values(), key=lambda m: m.path.startswith(BEFORE_EXEC))
        return self.maps

    def _union_maps(self) -> None:
        """Add the mappings /proc/PID/maps shows now to those seen before (a mapping unmapped later stays)."""
        try:
            now = procfs.read_maps(self.pid)
        except OSError:
            return
        seen = {(m.start, m.end, m.path): m for m in self.maps.get(self.pid, [])}
        seen.update({(m.start, m.end, m.path): m for m in now})
        self.maps[self.pid] = list(seen.values())
