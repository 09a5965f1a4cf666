"""The traced program's mappings, for the summaries' mapping columns, when its faults are counted in the
kernel (trace --summary-only, trace --latency) and no recording holds its mmap events.

A short program is gone before a periodic read of /proc/PID/maps sees it, and its mm is torn down before
the exit tracepoint fires. Two ways are used:

- the compiled counter (capture/bpf/fault_count.bpf.c, trace --summary-only) names each VMA in the kernel
  when a fault is first counted in it: start, end, flags, offset, its file's name or [heap], [stack],
  [vdso]. Those are exactly the VMAs the counts refer to, read while they exist, with nothing to stop or
  wait for; maps_from_kernel() turns them into /proc-style lines.
- with bpftrace (trace --latency), mapping_probes() stops the program at its exec (SIGSTOP) while
  /proc/PID/maps is read, and tells of every later mmap (its result, flags and file name) and brk as
  they are made; MappingWatch reads /proc/PID/maps again every 50 ms while it runs. A mapping seen once
  stays, so a VMA unmapped before the end is still named.
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


# struct vma_seen's `what` (capture/bpf/fault_count.h)
VMA_HEAP, VMA_STACK, VMA_SPECIAL = 1, 2, 4
VM_READ, VM_WRITE, VM_EXEC, VM_SHARED = 0x1, 0x2, 0x4, 0x8


def maps_from_kernel(vmas) -> list[MapsLine]:
    """/proc/PID/maps-style lines for the VMAs the counter named (records with start, end, pgoff, flags,
    what and name, as fault_count.h's struct vma_seen). A file's path is its name only (the kernel's
    dentry, where /proc would print the whole path); an anonymous VMA's is "" unless it is the heap, the
    stack or a special mapping ([vdso]); no device or inode is known."""
    page = os.sysconf("SC_PAGE_SIZE")
    out = []
    for v in vmas:
        flags, what = int(v["flags"]), int(v["what"])
        name = bytes(v["name"]).split(b"\0", 1)[0].decode(errors="replace")
        perms = ("r" if flags & VM_READ else "-") + ("w" if flags & VM_WRITE else "-") + \
            ("x" if flags & VM_EXEC else "-") + ("s" if flags & VM_SHARED else "p")
        is_file = what == 0 and bool(name)
        path = ("[heap]" if what & VMA_HEAP else "[stack]" if what & VMA_STACK else
                name if is_file or (what & VMA_SPECIAL and name.startswith("[")) else "")
        out.append(MapsLine(int(v["start"]), int(v["end"]), perms, int(v["pgoff"]) * page if is_file else 0,
                            "00:00", 0, path))
    return sorted(out, key=lambda m: m.start)


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
