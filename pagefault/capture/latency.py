"""`pagefault trace --latency`: every fault's handle_mm_fault() duration, from a kprobe/kretprobe pair.

perf trace's fault durations are all 0 because a page fault is not a system call; the kprobe pair on
handle_mm_fault brackets the generic handler (not the trap entry and exit around it). The last probed
handler each fault went through, and its return value, name its outcome. The durations are aggregated in
the kernel (log2 histograms, sums and maxima in BPF maps, by outcome and by VMA): no record crosses to
user space per fault.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

from ..evidence import MapsLine
from ..journey.latency import KernelHistogram
from . import procfs
from .bpf_walk import BpfError, arm_with_own_faults, read_available
from .kprobes import FAULT_HANDLERS, kprobe_support, probeable
from .runner import Target, TargetError, attach, spawn_held, start_child, stop_child
from .safe_paths import trusted_executable
from .tracer import CaptureError, TargetProblem, release_target


@dataclass
class LatencyRecording:
    by_outcome: dict[tuple[int, int], KernelHistogram]
    by_vma: dict[int, KernelHistogram]
    handler_names: list[str]
    not_probeable: dict[str, str]
    maps: dict[int, list[MapsLine]] = field(default_factory=dict)
    target_exit: str = ""


def latency_script(pids: list[int], handlers: list[str], tool_pid: int) -> str:
    """Every process in `pids` and its descendants: per fault, its duration into histograms by
    (last handler, return value) and by the VMA's start, with sums and maxima beside them."""
    begin = " ".join(f"@pids[{p}] = 1;" for p in pids)
    lines = [f"BEGIN {{ {begin} }}",
             "tracepoint:sched:sched_process_fork /@pids[args->parent_pid]/ { @pids[args->child_pid] = 1; }",
             "kprobe:handle_mm_fault /@pids[pid]/ { @t[tid] = nsecs; @h[tid] = -1; "
             "@v[tid] = ((struct vm_area_struct *)arg0)->vm_start; }",
             "kretprobe:handle_mm_fault /@t[tid]/ { $d = nsecs - @t[tid]; $r = retval & 0xffffffff; "
             "@lat[@h[tid], $r] = hist($d); @sum[@h[tid], $r] = sum($d); @max[@h[tid], $r] = max($d); "
             "@vlat[@v[tid]] = hist($d); @vsum[@v[tid]] = sum($d); @vmax[@v[tid]] = max($d); "
             "delete(@t[tid]); delete(@h[tid]); delete(@v[tid]); }",
             f'kprobe:handle_mm_fault /pid == {tool_pid} && @armed == 0/ {{ printf("armed\\n"); @armed = 1; }}']
    lines += [f"kprobe:{fn} /@t[tid]/ {{ @h[tid] = {code}; }}" for code, fn in enumerate(handlers)]
    if len(pids) == 1:
        lines.append(f"tracepoint:sched:sched_process_exit /pid == {pids[0]} && tid == {pids[0]}/ {{ exit(); }}")
    lines.append("END { clear(@pids); clear(@t); clear(@h); clear(@v); clear(@armed); }")
    return "\n".join(lines)


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_MAP_HEAD = re.compile(r"^@(lat|vlat)\[([^\]]*)\]:\s*$")
_BUCKET = re.compile(r"^\[(\d+)([KMGT]?)(?:, (\d+)([KMGT]?)\))?\]?\s+(\d+)\s")
_SCALAR = re.compile(r"^@(sum|max|vsum|vmax)\[([^\]]*)\]: (\d+)$")


def parse_histograms(text: str) -> tuple[dict[tuple[int, int], KernelHistogram], dict[int, KernelHistogram]]:
    """bpftrace's printed maps → histograms by (handler code, return value) and by vm_start."""
    by_outcome: dict[tuple[int, int], KernelHistogram] = {}
    by_vma: dict[int, KernelHistogram] = {}
    current: KernelHistogram | None = None
    for line in text.splitlines():
        head = _MAP_HEAD.match(line)
        if head:
            key = tuple(int(x) for x in head.group(2).split(","))
            current = (by_outcome.setdefault((key[0], key[1]), KernelHistogram([])) if head.group(1) == "lat"
                       else by_vma.setdefault(key[0], KernelHistogram([])))
            continue
        bucket = _BUCKET.match(line)
        if bucket and current is not None:
            current.buckets.append((int(bucket.group(1)) * _UNITS[bucket.group(2)], int(bucket.group(5))))
            continue
        scalar = _SCALAR.match(line)
        if scalar:
            current = None
            key = tuple(int(x) for x in scalar.group(2).split(","))
            h = (by_outcome.setdefault((key[0], key[1]), KernelHistogram([])) if scalar.group(1) in ("sum", "max")
                 else by_vma.setdefault(key[0], KernelHistogram([])))
            if scalar.group(1).endswith("sum"):
                h.total_ns = int(scalar.group(3))
            else:
                h.max_ns = int(scalar.group(3))
        elif not line.strip():
            current = None
    return by_outcome, by_vma


def record_latency(argv: list[str] | None, pid: int | None, progress: Callable[[str], None] | None = None,
                   stdout: int | None = None) -> LatencyRecording:
    """Run (or attach to) the target with the kprobe pair attached; raises CaptureError with the reason and fix."""
    say = progress or (lambda _m: None)
    ok, why = kprobe_support()
    if not ok:
        raise CaptureError(f"--latency needs kprobes on handle_mm_fault: {why}. Without them no tool can time a "
                           "fault from the inside; pagefault trace without --latency still counts and places every fault")
    exe = trusted_executable("bpftrace")
    if not exe:
        raise CaptureError("--latency needs bpftrace; fix: as root, bash scripts/setup.sh")
    handlers, not_probeable = probeable(FAULT_HANDLERS)
    try:
        target: Target = spawn_held(argv, stdout) if argv else attach(pid or 0)
    except TargetError as exc:
        raise TargetProblem(str(exc)) from None
    script = latency_script([target.pid], handlers, os.getpid())
    proc = start_child([exe, "-B", "line", "-e", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = bytearray()
    maps: dict[int, list[MapsLine]] = {}
    try:
        say("attaching the kprobes on handle_mm_fault")
        arm_with_own_faults(proc, out)
        release_target(target)
        say(f"timing the faults of PID {target.pid}")
        last_maps = 0.0
        while proc.poll() is None:
            read_available(proc, out, 0.2)
            if time.monotonic() - last_maps > 0.5 and target.poll():
                _read_maps(target.pid, maps)
                last_maps = time.monotonic()
            if target.spawned and not target.poll():
                break
        rest, _err = proc.communicate(timeout=120)
        out += rest
    except BpfError as exc:
        raise CaptureError(str(exc)) from None
    finally:
        stop_child(proc, 10)
        if target.spawned and target.poll():
            target.kill()
        target.wait()
    by_outcome, by_vma = parse_histograms(out.decode(errors="replace"))
    return LatencyRecording(by_outcome, by_vma, list(handlers), not_probeable, maps, target.describe_exit())


def _read_maps(pid: int, maps: dict[int, list[MapsLine]]) -> None:
    try:
        maps[pid] = procfs.read_maps(pid)
    except OSError:
        pass
