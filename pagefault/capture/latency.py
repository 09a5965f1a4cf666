"""`pagefault trace --latency`: every fault's handle_mm_fault() duration, from a kprobe/kretprobe pair.

perf trace's fault durations are all 0 because a page fault is not a system call; the kprobe pair on
handle_mm_fault brackets the generic handler (not the trap entry and exit around it). The last probed
handler each fault went through, and its return value, name its outcome. The durations are aggregated in
the kernel (log2 histograms, sums and maxima in BPF maps, by outcome and by VMA): no record crosses to
user space per fault.
"""

from __future__ import annotations

import enum
import os
import re
import subprocess
from dataclasses import dataclass, field
from typing import Callable

from ..evidence import MapsLine
from ..evidence.latency import KernelHistogram, merge_histogram
from ..kernel.btf import VMLINUX_BTF
from .bpf_walk import BpfError, arm_with_own_faults, read_available
from .kprobes import kprobe_support, probeable
from .mapping_watch import MAPPING_MAPS, MappingWatch, mapping_probes
from .runner import Target, TargetError, attach, spawn_held, start_child, stop_child
from .safe_paths import trusted_executable
from .tracer import CaptureError, TargetProblem, release_target


class FunctionProbe(enum.StrEnum):
    """How the latency tier hooks a kernel function's entry and return."""

    FENTRY = "fentry"   # BPF trampolines (bpftrace kfunc/kretfunc): a call, no trap; needs BTF and trampolines
    KPROBE = "kprobe"   # kprobe/kretprobe: works wherever kprobes do, at the cost of a breakpoint or ftrace hop


@dataclass
class LatencyRecording:
    by_outcome: dict[tuple[int, int], KernelHistogram]
    by_vma: dict[int, KernelHistogram]
    handler_names: list[str]
    not_probeable: dict[str, str]
    maps: dict[int, list[MapsLine]] = field(default_factory=dict)
    target_exit: str = ""
    probe: FunctionProbe = FunctionProbe.KPROBE
    probe_reason: str = ""      # why this probe kind: fentry's absence, or the user's choice


# The handlers that name a fault's outcome: the leaves of the path, not the dispatchers every fault passes
# (__handle_mm_fault, handle_pte_fault, do_fault) nor the steps inside a leaf (filemap_map_pages,
# finish_fault). Each probe hit is the largest part of the tier's cost per fault, so only these are probed;
# the single fault the journey follows gets the whole path (kprobes.FAULT_HANDLERS).
OUTCOME_HANDLERS = ("do_anonymous_page", "do_read_fault", "do_cow_fault", "do_shared_fault", "filemap_fault",
                    "do_wp_page", "wp_page_copy", "wp_page_reuse", "do_swap_page", "do_huge_pmd_anonymous_page",
                    "do_huge_pmd_wp_page", "do_numa_page")


def latency_script(pids: list[int], handlers: list[str], tool_pid: int,
                   probe: FunctionProbe = FunctionProbe.KPROBE) -> str:
    """Every process in `pids` and its descendants: per fault, its duration into one histogram (with its
    sum and maximum) per (last handler, return value, the VMA's start); user space adds them up by outcome
    and by VMA.

    Written for the least work per fault: the program's own faults pass the filter on a comparison, not a
    map lookup; the entry probe stores one value (its time and the VMA's start); a handler stores its
    code + 1 (absent reads as 0, so nothing is written for "no handler"); the return probe reads each
    per-thread value once into a local, and makes three aggregations where one map per grouping made six.
    """
    begin = " ".join(f"@pids[{p}] = 1;" for p in pids)
    # The entry keeps (start time, the VMA's start) in one map value. The VMA is read there, where the
    # fault holds it, for both hooks: a kretprobe cannot read the arguments, and at fexit a fault that
    # returned VM_FAULT_RETRY or COMPLETED has dropped its lock, so its VMA may already be freed.
    if probe is FunctionProbe.FENTRY:
        entry, ret, handler, vma = "kfunc:handle_mm_fault", "kretfunc:handle_mm_fault", "kfunc", "args->vma"
    else:
        entry, ret, handler, vma = ("kprobe:handle_mm_fault", "kretprobe:handle_mm_fault", "kprobe",
                                    "((struct vm_area_struct *)arg0)")
    enter = f"@t[tid] = (nsecs, (uint64){vma}->vm_start);"
    # the program itself first: its faults skip the map lookup (bpftrace's || stops at a true left side)
    mine = f"pid == {pids[0]} || @pids[pid]" if len(pids) == 1 else "@pids[pid]"
    lines = [f"BEGIN {{ {begin} }}",
             "tracepoint:sched:sched_process_fork /@pids[args->parent_pid]/ { @pids[args->child_pid] = 1; }",
             # one program on the entry, not two: a second one (the arming below as its own probe) ran on
             # every fault of the machine
             f"{entry} {{ if ({mine}) {{ {enter} }} else if (pid == {tool_pid} && @armed == 0) "
             '{ printf("armed\\n"); @armed = 1; } }',
             f"{ret} /{mine}/ {{ $e = @t[tid]; if ($e.0 != 0) {{ $d = nsecs - $e.0; $v = $e.1; "
             "$r = retval & 0xffffffff; $h = @h[tid] - 1; "
             "@lat[$h, $r, $v] = hist($d); @sum[$h, $r, $v] = sum($d); @max[$h, $r, $v] = max($d); "
             "delete(@t[tid]); } delete(@h[tid]); }"]
    # a handler of a fault that began before the probes were attached writes @h too: every return clears
    # it, timed or not, so no later fault inherits it
    lines += [f"{handler}:{fn} /{mine}/ {{ @h[tid] = {code + 1}; }}" for code, fn in enumerate(handlers)]
    if len(pids) == 1:
        lines.append(f"tracepoint:sched:sched_process_exit /pid == {pids[0]} && tid == {pids[0]}/ {{ exit(); }}")
        # the mappings, to name each VMA's histogram: the VMA is gone with the program, and a short
        # program is gone before a periodic read of /proc/PID/maps sees it
        lines.append(mapping_probes(pids[0], mine))
    kept = ("@pids", "@t", "@h", "@armed") + (MAPPING_MAPS if len(pids) == 1 else ())
    lines.append("END { " + " ".join(f"clear({m});" for m in kept) + " }")
    return "\n".join(lines)


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_MAP_HEAD = re.compile(r"^@lat\[(-?\d+), (\d+), (\d+)\]:\s*$")
_BUCKET = re.compile(r"^\[(\d+)([KMGT]?)(?:, (\d+)([KMGT]?)\))?\]?\s+(\d+)\s")
_SCALAR = re.compile(r"^@(sum|max)\[(-?\d+), (\d+), (\d+)\]: (\d+)$")


def parse_histograms(text: str) -> tuple[dict[tuple[int, int], KernelHistogram], dict[int, KernelHistogram]]:
    """bpftrace's printed maps, keyed (handler code, return value, vm_start) → histograms by (handler code,
    return value) and by vm_start: buckets and sums added, maxima the larger."""
    kept: dict[tuple[int, int, int], KernelHistogram] = {}
    current: KernelHistogram | None = None
    for line in text.splitlines():
        head = _MAP_HEAD.match(line)
        if head:
            current = kept.setdefault(tuple(int(x) for x in head.groups()), KernelHistogram([]))
            continue
        bucket = _BUCKET.match(line)
        if bucket and current is not None:
            current.buckets.append((int(bucket.group(1)) * _UNITS[bucket.group(2)], int(bucket.group(5))))
            continue
        current = None
        scalar = _SCALAR.match(line)
        if scalar:
            h = kept.setdefault(tuple(int(x) for x in scalar.groups()[1:4]), KernelHistogram([]))
            if scalar.group(1) == "sum":
                h.total_ns = int(scalar.group(5))
            else:
                h.max_ns = int(scalar.group(5))
    by_outcome: dict[tuple[int, int], KernelHistogram] = {}
    by_vma: dict[int, KernelHistogram] = {}
    for (code, retval, start), h in kept.items():
        merge_histogram(by_outcome.setdefault((code, retval), KernelHistogram([])), h)
        merge_histogram(by_vma.setdefault(start, KernelHistogram([])), h)
    return by_outcome, by_vma


def record_latency(argv: list[str] | None, pid: int | None, progress: Callable[[str], None] | None = None,
                   stdout: int | None = None, probe: FunctionProbe | None = None) -> LatencyRecording:
    """Run (or attach to) the target with handle_mm_fault's entry and return hooked; raises CaptureError with
    the reason and fix.

    probe: None tries fentry first (cheapest: BPF trampolines) and falls back to kprobes when bpftrace
    cannot attach it, saying why; FENTRY or KPROBE uses that one only.
    """
    say = progress or (lambda _m: None)
    exe = trusted_executable("bpftrace")
    if not exe:
        raise CaptureError("--latency needs bpftrace; fix: as root, bash scripts/setup.sh")
    candidates, refused = _probe_candidates(probe)
    if not candidates:
        raise CaptureError("--latency needs fentry or kprobes on handle_mm_fault: " + "; ".join(refused) +
                           ". Without them no tool can time a fault from the inside; pagefault trace without "
                           "--latency still counts and places every fault")
    handlers, not_probeable = probeable(OUTCOME_HANDLERS)
    try:
        target: Target = spawn_held(argv, stdout) if argv else attach(pid or 0)
    except TargetError as exc:
        raise TargetProblem(str(exc)) from None
    out = bytearray()
    watch = MappingWatch(target.pid)
    proc: subprocess.Popen | None = None
    used = candidates[0]
    try:
        for used in candidates:
            script = latency_script([target.pid], handlers, os.getpid(), used)
            proc = start_child([exe, "--unsafe", "-B", "line", "-e", script], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
            say(f"attaching the {used} probes on handle_mm_fault")
            try:
                arm_with_own_faults(proc, out)
                break
            except BpfError as exc:
                stop_child(proc, 10)
                refused.append(f"{used}: {exc}")
                if used is candidates[-1]:
                    raise CaptureError("; ".join(refused)) from None
                out.clear()
        assert proc is not None
        if target.spawned:
            watch.before_exec()
        release_target(target)
        say(f"timing the faults of PID {target.pid} ({used})")
        while proc.poll() is None:
            read_available(proc, out, 0.05)
            if target.poll():
                watch.step(out)
            elif target.spawned:
                break
        rest, _err = proc.communicate(timeout=120)
        out += rest
    except BpfError as exc:
        raise CaptureError(str(exc)) from None
    finally:
        if proc is not None:
            stop_child(proc, 10)
        target.end()   # an attached process that execs is stopped there by bpftrace: it is continued
        target.wait()
    text = out.decode(errors="replace")
    by_outcome, by_vma = parse_histograms(text)
    maps = watch.finish(text.splitlines())
    # the reason names what was tried and refused before the hook used, not what was never needed
    reason = ("chosen with --probes" if probe else "fentry attached (BPF trampolines, no breakpoint)"
              if used is FunctionProbe.FENTRY else "; ".join(refused))
    return LatencyRecording(by_outcome, by_vma, list(handlers), not_probeable, maps, target.describe_exit(),
                            used, reason)


def _probe_candidates(probe: FunctionProbe | None) -> tuple[list[FunctionProbe], list[str]]:
    """The probe kinds to try in order, and why each left out cannot work here."""
    wanted = [probe] if probe else [FunctionProbe.FENTRY, FunctionProbe.KPROBE]
    candidates, refused = [], []
    for kind in wanted:
        if kind is FunctionProbe.FENTRY and not VMLINUX_BTF.exists():
            refused.append(f"fentry: {VMLINUX_BTF} is missing (a kernel built with CONFIG_DEBUG_INFO_BTF)")
            continue
        if kind is FunctionProbe.KPROBE:
            ok, why = kprobe_support()
            if not ok:
                refused.append(f"kprobes: {why}")
                continue
        candidates.append(kind)
    return candidates, refused
