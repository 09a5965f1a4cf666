"""`pagefault trace --summary-only` (and `trace` without -o): the faults counted in the kernel, not streamed.

bpftrace keeps, per thread, what the fault in progress did (a movable allocation and its order, pages
added to the page cache, a signal) and closes it at the thread's next fault or exit, adding one to a
BPF map keyed by (error code, what it did, the VMA's start and kind). The VMA is the thread's previous
one while it holds the address, else the maple tree's answer, read as the journey reads it. Only those counters cross to
user space, at the end: a few hundred map entries where a recording holds a record per event. The
classes then follow from the same rules as a recording's (journey/fault_classes.py), with each region
looked up in the program's mappings.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..evidence import MapsLine
from . import procfs
from .bpf_walk import BpfError, _objects_block, arm_with_own_faults, below_stack, read_available
from .runner import Target, TargetError, attach, spawn_held, start_child
from .safe_paths import trusted_executable
from .tracer import CaptureError, TargetProblem, release_target, tracepoint_events

MAP_KEYS = 8192     # distinct (kind of fault, VMA) pairs the map holds (every map is preallocated this big)
ALLOCS = re.compile(r"^@allocs: (\d+)$")
TOTAL = re.compile(r"^@total: (\d+)$")
KEY = re.compile(r"^@f\[(\d+), (\d+)\]: (\d+)$")


# A thread's fault in progress, packed in one map value (one map operation where seven were):
# bit 0 open, 1-6 error code, 7 a movable allocation, 8-12 its largest order, 13 page-cache add,
# 14-18 signal, 19-26 si_code.
ST_OPEN, ST_ALLOC, ST_CACHE = 1, 1 << 7, 1 << 13


def unpack_state(state: int) -> tuple[int, int, int, int, int, int]:
    """(error code, allocated, order, page-cache add, signal, si_code) of a packed state."""
    return (state >> 1 & 0x3F, state >> 7 & 1, state >> 8 & 0x1F, state >> 13 & 1, state >> 14 & 0x1F,
            state >> 19 & 0xFF)


def count_script(pid: int, tool_pid: int) -> str:
    """Per fault, when the thread's next fault (or its exit) closes it: @f[state, vm_start << 3 | kind] += 1."""
    close = "@f[@st[tid] & ~1, @rg[tid]] = count();"
    lookup = _objects_block("c", "$addr", quiet=True)
    return f"""
BEGIN {{ @pids[{pid}] = 1; }}
tracepoint:sched:sched_process_fork /@pids[args->parent_pid]/ {{ @pids[args->child_pid] = 1; }}
tracepoint:exceptions:page_fault_user /@pids[pid]/ {{
    if (@st[tid]) {{ {close} }}
    @total = count();
    @st[tid] = {ST_OPEN} | ((args->error_code & 0x3f) << 1);
    // the fault's VMA: the thread's last one if it still holds the address, else the maple tree's answer
    $addr = args->address;
    if (!($addr >= @vs[tid] && $addr < @ve[tid])) {{
        {lookup}
        if ($vma != 0 && ((struct vm_area_struct *)$vma)->vm_start <= $addr) {{
            $v = (struct vm_area_struct *)$vma;
            @vs[tid] = $v->vm_start; @ve[tid] = $v->vm_end;
            @rg[tid] = ($v->vm_start << 3) | ((uint64)$v->vm_file != 0 ? 1 : 0) | (((uint64)$v->vm_flags & 0x8) ? 2 : 0);
        }} else {{
            @vs[tid] = 0; @ve[tid] = 0;
            // no VMA: below the stack it grows; anywhere else it is a SIGSEGV
            @rg[tid] = {below_stack("$addr")} ? 4 : 0;
        }}
    }}
}}
tracepoint:kmem:mm_page_alloc /@pids[pid]/ {{
    @allocs = count();
    $s = @st[tid];
    if ($s && (args->gfp_flags & 0x8)) {{
        if (args->order > (($s >> 8) & 31)) {{ $s = ($s & ~(31 << 8)) | (args->order << 8); }}
        @st[tid] = $s | {ST_ALLOC};
    }}
}}
tracepoint:filemap:mm_filemap_add_to_page_cache /@st[tid]/ {{ @st[tid] = @st[tid] | {ST_CACHE}; }}
tracepoint:signal:signal_generate /@st[tid] && (args->sig == 7 || args->sig == 11)/ {{
    @st[tid] = @st[tid] | (args->sig << 14) | ((args->code & 0xff) << 19);
}}
tracepoint:sched:sched_process_exit /@st[tid]/ {{ {close} delete(@st[tid]); }}
// when the program's main thread exits, the counters are printed at once: bpftrace's own exit detaches
// every probe first, which takes about a second here
tracepoint:sched:sched_process_exit /pid == {pid} && tid == {pid}/ {{
    print(@f); print(@total); print(@allocs); printf("counted\\n");
}}
tracepoint:exceptions:page_fault_user /pid == {tool_pid} && @armed == 0/ {{ printf("armed\\n"); @armed = 1; }}
// the mappings, for the summary's mapping column: exec's own are read from /proc while bpftrace holds the
// program stopped at its exec; the later ones are told by mmap and brk as they are made (a short program
// is gone before a periodic read of /proc/PID/maps sees them)
tracepoint:sched:sched_process_exec /pid == {pid}/ {{ signal("SIGSTOP"); printf("stopped exec\\n"); }}
tracepoint:syscalls:sys_enter_mmap /@pids[pid]/ {{
    @mfd[tid] = args->fd; @mfl[tid] = args->flags; @mpr[tid] = args->prot; @mof[tid] = args->off; @mln[tid] = args->len;
}}
tracepoint:syscalls:sys_exit_mmap /@pids[pid] && @mln[tid] && args->ret >= 0/ {{
    if ((@mfl[tid] & 0x20) == 0 && @mfd[tid] >= 0) {{
        $f = (struct file *)*(curtask->files->fdt->fd + @mfd[tid]);
        printf("map %d 0x%lx 0x%lx %d %d 0x%lx %s\\n", pid, args->ret, @mln[tid], @mpr[tid], @mfl[tid], @mof[tid],
               str($f->f_path.dentry->d_name.name));
    }} else {{
        printf("map %d 0x%lx 0x%lx %d %d 0x0 //anon\\n", pid, args->ret, @mln[tid], @mpr[tid], @mfl[tid]);
    }}
    delete(@mln[tid]);
}}
tracepoint:syscalls:sys_exit_brk /@pids[pid]/ {{ printf("brk %d 0x%lx 0x%lx\\n", pid, curtask->mm->start_brk, args->ret); }}
END {{ clear(@pids); clear(@st); clear(@rg); clear(@vs); clear(@ve); clear(@armed); }}
"""


@dataclass
class KernelCounts:
    """(error code, allocated, order, page-cache add, signal, si_code, vm_start << 3 | kind) → faults;
    kind: 1 a file, 2 shared, 4 no VMA below the stack (growth), 0 with vm_start 0: no VMA."""

    rows: np.ndarray
    maps: dict[int, list[MapsLine]] = field(default_factory=dict)   # every mapping seen while it ran
    allocations: int = 0
    target_exit: str = ""
    command: list[str] = field(default_factory=list)
    pid: int = 0
    duration: float = 0.0
    total: int = 0          # every fault, counted apart: more than the rows hold if the map filled


def count_faults(argv: list[str] | None, pid: int | None, progress: Callable[[str], None] | None = None,
                 stdout: int | None = None) -> KernelCounts:
    """Run (or attach to) the target with counting probes; raises CaptureError with the reason and fix."""
    say = progress or (lambda _m: None)
    exe = trusted_executable("bpftrace")
    if not exe:
        raise CaptureError("counting in the kernel needs bpftrace; fix: as root, bash scripts/setup.sh, or record "
                           "with -o FILE")
    tracepoint_events((("exceptions", "page_fault_user", True),))   # missing (arm64): the reason, before any start
    try:
        target: Target = spawn_held(argv, stdout) if argv else attach(pid or 0)
    except TargetError as exc:
        raise TargetProblem(str(exc)) from None
    env = dict(os.environ, BPFTRACE_MAP_KEYS_MAX=str(MAP_KEYS))
    proc = start_child([exe, "--unsafe", "-B", "line", "-e", count_script(target.pid, os.getpid())],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = bytearray()
    maps: dict[int, list[MapsLine]] = {}
    try:
        say("attaching bpftrace's counting probes")
        try:
            arm_with_own_faults(proc, out)
        except BpfError as exc:
            raise CaptureError(str(exc)) from None
        t0 = time.monotonic()
        release_target(target)
        say(f"counting the faults of PID {target.pid} in the kernel")
        last = 0.0
        stops = 0
        while target.poll():
            read_available(proc, out, 0.05)
            stopped = out.count(b"stopped ")
            if stopped > stops or time.monotonic() - last > 0.05:
                _union_maps(target.pid, maps)
                last = time.monotonic()
            if stopped > stops:
                stops = stopped
                os.kill(target.pid, signal.SIGCONT)   # the maps are read
        duration = time.monotonic() - t0
        waited = time.monotonic()
        while b"counted" not in out and proc.poll() is None and time.monotonic() - waited < 5:
            read_available(proc, out, 0.05)
        if b"counted" not in out:   # attached to a process that is still running (Ctrl-C): the slow way
            proc.send_signal(2)   # SIGINT: bpftrace prints the maps and exits
            rest, _err = proc.communicate(timeout=120)
            out += rest
    finally:
        if proc.poll() is None:
            proc.kill()    # its probes go with its file descriptors; the kernel finishes that on its own
            proc.wait()
        target.end()   # an attached process that execs is stopped there by bpftrace: it is continued
        target.wait()
    text = out.decode(errors="replace").split("counted\n", 1)[0].splitlines()
    _told_maps(text, target.pid, maps)
    rows = [unpack_state(int(m.group(1))) + (int(m.group(2)), int(m.group(3)))
            for m in (KEY.match(line.strip()) for line in text) if m]
    allocs = next((int(m.group(1)) for m in (ALLOCS.match(line.strip()) for line in text) if m), 0)
    total = next((int(m.group(1)) for m in (TOTAL.match(line.strip()) for line in text) if m), 0)
    counts = KernelCounts(np.array(rows, dtype=np.uint64).reshape(-1, 8), maps, allocs, target.describe_exit(),
                          list(target.argv), target.pid, duration, total)
    return counts


def _told_maps(lines: list[str], pid: int, maps: dict[int, list[MapsLine]]) -> None:
    """The mappings bpftrace told of (mmap's result with its file's name; the heap's extent at each brk)."""
    seen = {(m.start, m.end, m.path): m for m in maps.get(pid, [])}
    heap = None
    for line in lines:
        parts = line.split()
        if parts[:1] == ["map"] and len(parts) == 8 and int(parts[1]) == pid:
            start, length, prot, flags, off = int(parts[2], 16), int(parts[3], 16), int(parts[4]), int(parts[5]), int(parts[6], 16)
            perms = ("r" if prot & 1 else "-") + ("w" if prot & 2 else "-") + ("x" if prot & 4 else "-") + \
                ("s" if flags & 1 else "p")
            path = "" if parts[7] == "//anon" else parts[7]
            end = start + ((length + 4095) & ~4095)
            seen[(start, end, path)] = MapsLine(start, end, perms, off, "00:00", 0, path)
        elif parts[:1] == ["brk"] and len(parts) == 4 and int(parts[1]) == pid:
            heap = (int(parts[2], 16), int(parts[3], 16))
    if heap and heap[1] > heap[0]:
        seen[(heap[0], heap[1], "[heap]")] = MapsLine(heap[0], heap[1], "rw-p", 0, "00:00", 0, "[heap]")
    maps[pid] = list(seen.values())


def _union_maps(pid: int, maps: dict[int, list[MapsLine]]) -> None:
    """Add the mappings /proc/PID/maps shows now to those seen before (a mapping unmapped later stays)."""
    try:
        now = procfs.read_maps(pid)
    except OSError:
        return
    seen = {(m.start, m.end, m.path): m for m in maps.get(pid, [])}
    seen.update({(m.start, m.end, m.path): m for m in now})
    maps[pid] = list(seen.values())
