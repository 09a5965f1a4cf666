"""`pagefault trace --latency`: every fault's handle_mm_fault() duration, from a kprobe/kretprobe pair.

perf trace's fault durations are all 0 because a page fault is not a system call; the kprobe pair on
handle_mm_fault brackets the generic handler (not the trap entry and exit around it). The last probed
handler each fault went through, and its return value, name its outcome.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..evidence import MapsLine
from ..journey.latency import LATENCY_DTYPE
from . import procfs
from .bpf_walk import BpfError, arm_with_own_faults
from .kprobes import FAULT_HANDLERS, kprobe_support, probeable
from .runner import Target, TargetError, attach, spawn_held, start_child
from .safe_paths import trusted_executable
from .tracer import CaptureError, TargetProblem, release_target


@dataclass
class LatencyRecording:
    records: np.ndarray
    handler_names: list[str]
    not_probeable: dict[str, str]
    maps: dict[int, list[MapsLine]] = field(default_factory=dict)
    target_exit: str = ""


def latency_script(pids: list[int], handlers: list[str], tool_pid: int) -> str:
    """Every process in `pids` and its descendants: one line per handle_mm_fault, with its last handler."""
    begin = " ".join(f"@pids[{p}] = 1;" for p in pids)
    lines = [f"BEGIN {{ {begin} }}",
             "tracepoint:sched:sched_process_fork /@pids[args->parent_pid]/ { @pids[args->child_pid] = 1; }",
             "kprobe:handle_mm_fault /@pids[pid]/ { @t[tid] = nsecs; @a[tid] = arg1; @h[tid] = -1; }",
             'kretprobe:handle_mm_fault /@t[tid]/ { printf("f %d %lx %lx %d %ld\\n", pid, @a[tid], retval, @h[tid], '
             "nsecs - @t[tid]); delete(@t[tid]); delete(@a[tid]); delete(@h[tid]); }",
             f'kprobe:handle_mm_fault /pid == {tool_pid} && @armed == 0/ {{ printf("armed\\n"); @armed = 1; }}']
    lines += [f"kprobe:{fn} /@t[tid]/ {{ @h[tid] = {code}; }}" for code, fn in enumerate(handlers)]
    if len(pids) == 1:
        lines.append(f"tracepoint:sched:sched_process_exit /pid == {pids[0]} && tid == {pids[0]}/ {{ exit(); }}")
    return "\n".join(lines)


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
            _wait_readable(proc, 0.2, out)
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
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if target.spawned and target.poll():
            target.kill()
        target.wait()
    rows = []
    for line in out.decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 6 and parts[0] == "f":
            rows.append((int(parts[1]), int(parts[2], 16), int(parts[3], 16) & 0xFFFFFFFF, int(parts[4]), int(parts[5])))
    return LatencyRecording(np.array(rows, dtype=LATENCY_DTYPE), list(handlers), not_probeable, maps,
                            target.describe_exit())


def _wait_readable(proc: subprocess.Popen, timeout: float, out: bytearray) -> None:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if ready:
        chunk = os.read(proc.stdout.fileno(), 1 << 20)
        out += chunk


def _read_maps(pid: int, maps: dict[int, list[MapsLine]]) -> None:
    try:
        maps[pid] = procfs.read_maps(pid)
    except OSError:
        pass
