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
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..evidence import MapsLine
from .bpf_walk import BpfError, _objects_block, arm_with_own_faults, below_stack, read_available
from .mapping_watch import MappingWatch, mapping_probes
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
    """Per fault, when the thread's next fault (or its exit) closes it: @f[state, vm_start << 3 | kind] += 1.

    Per fault it does as little as it can, since every map operation is paid 262,144 times on a 1 GiB
    loop: the program's own faults pass the filter without a map lookup, and the thread's state and its
    VMA (one tuple of start, end and region key, where three maps were) are each read once."""
    close = "$r = @vr[tid]; @f[@st[tid] & ~1, $r.2] = count();"
    lookup = _objects_block("c", "$addr", quiet=True)
    # the program's own events pass the filter on a comparison; only its children's need the map
    mine = f"pid == {pid} || @pids[pid]"
    return f"""
BEGIN {{ @pids[{pid}] = 1; }}
tracepoint:sched:sched_process_fork /@pids[args->parent_pid]/ {{ @pids[args->child_pid] = 1; }}
// one program on the fault tracepoint, not two: a second one (the arming as its own probe) ran on every
// fault of the machine
tracepoint:exceptions:page_fault_user {{
  if (pid == {tool_pid} && @armed == 0) {{ printf("armed\\n"); @armed = 1; }}
  if ({mine}) {{
    // the thread's fault in progress and its VMA (start, end, region key), each read once
    $s = @st[tid];
    $r = @vr[tid];
    if ($s) {{ @f[$s & ~1, $r.2] = count(); }}
    @total = count();
    @st[tid] = {ST_OPEN} | ((args->error_code & 0x3f) << 1);
    // the fault's VMA: the thread's last one if it still holds the address, else the maple tree's answer
    $addr = args->address;
    if (!($addr >= $r.0 && $addr < $r.1)) {{
        {lookup}
        if ($vma != 0 && ((struct vm_area_struct *)$vma)->vm_start <= $addr) {{
            $v = (struct vm_area_struct *)$vma;
            @vr[tid] = ((uint64)$v->vm_start, (uint64)$v->vm_end, (uint64)(($v->vm_start << 3) |
                       ((uint64)$v->vm_file != 0 ? 1 : 0) | (((uint64)$v->vm_flags & 0x8) ? 2 : 0)));
        }} else {{
            // no VMA: below the stack it grows; anywhere else it is a SIGSEGV
            @vr[tid] = ((uint64)0, (uint64)0, (uint64)({below_stack("$addr")} ? 4 : 0));
        }}
    }}
  }}
}}
tracepoint:kmem:mm_page_alloc /{mine}/ {{
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
tracepoint:sched:sched_process_exit {{
    if (@st[tid]) {{ {close} delete(@st[tid]); delete(@vr[tid]); }}
    // when the program's main thread exits, the counters are printed at once: bpftrace's own exit
    // detaches every probe first, which takes about a second here
    if (pid == {pid} && tid == {pid}) {{ print(@f); print(@total); print(@allocs); printf("counted\\n"); }}
}}
{mapping_probes(pid, mine)}
END {{ clear(@pids); clear(@st); clear(@vr); clear(@armed); }}
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
    watch = MappingWatch(target.pid)
    try:
        say("attaching bpftrace's counting probes")
        try:
            arm_with_own_faults(proc, out)
        except BpfError as exc:
            raise CaptureError(str(exc)) from None
        t0 = time.monotonic()
        release_target(target)
        say(f"counting the faults of PID {target.pid} in the kernel")
        while target.poll():
            read_available(proc, out, 0.05)
            watch.step(out)
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
    maps = watch.finish(text)
    rows = [unpack_state(int(m.group(1))) + (int(m.group(2)), int(m.group(3)))
            for m in (KEY.match(line.strip()) for line in text) if m]
    allocs = next((int(m.group(1)) for m in (ALLOCS.match(line.strip()) for line in text) if m), 0)
    total = next((int(m.group(1)) for m in (TOTAL.match(line.strip()) for line in text) if m), 0)
    counts = KernelCounts(np.array(rows, dtype=np.uint64).reshape(-1, 8), maps, allocs, target.describe_exit(),
                          list(target.argv), target.pid, duration, total)
    return counts
