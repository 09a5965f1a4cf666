"""`pagefault trace --latency`: every fault's handle_mm_fault() duration, timed in the kernel.

perf trace's fault durations are all 0 because a page fault is not a system call; a probe pair on
handle_mm_fault brackets the generic handler (not the trap entry and exit around it). The last outcome
handler each fault went through, and its return value, name its outcome.

The compiled program capture/bpf/latency.bpf.c does it all in the kernel: log2 histograms with their sums
and maxima per (last handler, return value, the VMA's start) in a per-CPU map, and each VMA named once
when a fault first enters it (struct vma_seen, which mapping_watch.maps_from_kernel reads). Only those
maps cross to user space, at the end. handle_mm_fault and each handler have an fentry/fexit program (BPF
trampolines, a call and no trap: the cheaper) and a kprobe/kretprobe one; `auto` loads the fentry ones
and falls back to kprobes when the kernel refuses them, saying why. The object is loaded and attached
before the target is let go, so timing starts at its exec with nothing to wait for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from ..evidence import MapsLine
from ..evidence.latency import KernelHistogram, merge_histogram
from .bpf import BpfObjectMissing, Hook, HookChoice, KernelHooks, object_path
from .kernel_counts import read_vmas
from .kprobes import FunctionProbe, load_function_probes, probe_candidates, probeable
from .libbpf import BpfObject, LibbpfError
from .mapping_watch import maps_from_kernel
from .runner import Target, TargetError, attach, spawn_held
from .signals import wait_forwarding_signals
from .tracer import CaptureError, TargetProblem, release_target


@dataclass
class LatencyRecording:
    by_outcome: dict[tuple[int, int], KernelHistogram]
    by_vma: dict[int, KernelHistogram]
    handler_names: list[str]
    not_probeable: dict[str, str]
    maps: dict[int, list[MapsLine]] = field(default_factory=dict)
    target_exit: str = ""
    probe: FunctionProbe = FunctionProbe.KPROBE
    probe_reason: str = ""      # why this probe kind, and how long loading and attaching it took
    load_ms: float = 0.0        # open + load + attach of the object (the tier's start-up)
    notes: list[str] = field(default_factory=list)


# The handlers that name a fault's outcome: the leaves of the path, not the dispatchers every fault passes
# (__handle_mm_fault, handle_pte_fault, do_fault) nor the steps inside a leaf (filemap_map_pages,
# finish_fault). Each probe hit is the largest part of the tier's cost per fault, so only these are probed;
# the single fault the journey follows gets the whole path (kprobes.FAULT_HANDLERS). A handler's code in
# a histogram's key is its index here: latency.h's enum outcome_handler, in the same order (a test holds
# the two together through the object's BTF).
OUTCOME_HANDLERS = ("do_anonymous_page", "do_read_fault", "do_cow_fault", "do_shared_fault", "filemap_fault",
                    "do_wp_page", "wp_page_copy", "wp_page_reuse", "do_swap_page", "do_huge_pmd_anonymous_page",
                    "do_huge_pmd_wp_page", "do_numa_page")

# The Python mirror of latency.h (tests/test_latency_and_kprobes.py holds it to the object's BTF).
SETTINGS = np.dtype([("target_tgid", "<u4"), ("from_exec", "<u4")])
LATENCY_KEY = np.dtype([("handler", "<i4"), ("retval", "<u4"), ("vm_start", "<u8")])
LATENCY_SLOTS = 40
LATENCY_HIST = np.dtype([("slots", "<u8", (LATENCY_SLOTS,)), ("total_ns", "<u8"), ("max_ns", "<u8")])
FAULT_TIMING = np.dtype([("start_ns", "<u8"), ("vm_start", "<u8"), ("handler", "<i4"), ("_pad", "<u4")])
LAT_TIMED, LAT_NO_ROOM, LAT_UNNAMED, LAT_UNTIMED, LAT_N = range(5)

# The programs of each kind: (entry, return); a handler's is FUNCTION_fentry or FUNCTION_kprobe.
ENTRY_RETURN = {FunctionProbe.FENTRY: ("enter_fentry", "return_fexit"),
                FunctionProbe.KPROBE: ("enter_kprobe", "return_kretprobe")}
# The scheduler hooks (the target's exec starts the timing; its forks are followed), each with its tp_btf
# and classic-tracepoint program, chosen as the counter's are.
HOOKS = (Hook("sched", "sched_process_exec", "exec_btf", "exec_tp"),
         Hook("sched", "sched_process_fork", "fork_btf", "fork_tp"))


def handler_program(fn: str, kind: FunctionProbe) -> str:
    """The name of the BPF program that hooks handler ``fn`` with ``kind`` (latency.bpf.c names them so).

    :returns: the program's name; raises nothing."""
    return f"{fn}_{kind.value}"


def slot_floor(slot: int) -> int:
    """A log2 slot's lower bound in ns (latency.h: slot 0 holds 0 ns, slot s ≥ 1 holds [2^(s-1), 2^s)).

    :returns: the bound in ns; raises nothing."""
    return 0 if slot == 0 else 1 << (slot - 1)


def histograms_from_map(items: Iterable[tuple[bytes, bytes]]) -> dict[tuple[int, int, int], KernelHistogram]:
    """The `hists` map's entries (key: LATENCY_KEY; value: one LATENCY_HIST per possible CPU) →
    (handler code, return value, vm_start) → the histogram: every CPU's buckets and sums added, maxima the
    largest; empty buckets left out."""
    out: dict[tuple[int, int, int], KernelHistogram] = {}
    for key, value in items:
        k = np.frombuffer(key, dtype=LATENCY_KEY)[0]
        per_cpu = np.frombuffer(value, dtype=LATENCY_HIST)
        slots = per_cpu["slots"].sum(axis=0)
        h = KernelHistogram([(slot_floor(s), int(n)) for s, n in enumerate(slots) if n],
                            int(per_cpu["total_ns"].sum()), int(per_cpu["max_ns"].max()))
        merge_histogram(out.setdefault((int(k["handler"]), int(k["retval"]), int(k["vm_start"])),
                                       KernelHistogram([])), h)
    return out


def group_histograms(kept: dict[tuple[int, int, int], KernelHistogram]
                     ) -> tuple[dict[tuple[int, int], KernelHistogram], dict[int, KernelHistogram]]:
    """Histograms keyed (handler code, return value, vm_start) → by (handler code, return value) and by
    vm_start: buckets and sums added, maxima the larger."""
    by_outcome: dict[tuple[int, int], KernelHistogram] = {}
    by_vma: dict[int, KernelHistogram] = {}
    for (code, retval, start), h in kept.items():
        merge_histogram(by_outcome.setdefault((code, retval), KernelHistogram([])), h)
        merge_histogram(by_vma.setdefault(start, KernelHistogram([])), h)
    return by_outcome, by_vma


def read_counters(obj: BpfObject) -> list[int]:
    """The per-CPU counters (LAT_*), summed over the CPUs.

    :returns: LAT_N sums (a counter the map lacks reads 0).
    :raises LibbpfError: the map cannot be read."""
    m = obj.map("counters")
    return [int(np.frombuffer(m.lookup(np.uint32(i).tobytes()) or bytes(8 * m.cpus), dtype="<u8").sum())
            for i in range(LAT_N)]


def counter_notes(counts: list[int]) -> list[str]:
    """What the kernel could not keep, said (nothing when all was kept).

    :returns: the notes, one per counter that is not 0; raises nothing."""
    notes = []
    if counts[LAT_NO_ROOM]:
        notes.append(f"{counts[LAT_NO_ROOM]} faults were timed but not kept: the kernel's map of histograms filled")
    if counts[LAT_UNTIMED]:
        notes.append(f"{counts[LAT_UNTIMED]} faults were not timed: the kernel's map of faults in progress filled")
    if counts[LAT_UNNAMED]:
        notes.append(f"{counts[LAT_UNNAMED]} VMAs were not named: the kernel's map of them filled")
    return notes


def hookable(kind: FunctionProbe) -> tuple[list[str], dict[str, str]]:
    """The outcome handlers `kind` can hook here, and why each other one cannot (kprobes.probeable: a function
    of its own in the kernel's BTF, for fentry and kprobes alike; the kernel's refusals come at attach).

    :returns: (the handlers found, handler → why not); never raises."""
    return probeable(OUTCOME_HANDLERS)


def _settings(pid: int, from_exec: bool) -> bytes:
    s = np.zeros(1, dtype=SETTINGS)
    s[0] = (pid, int(from_exec))
    return s.tobytes()


def choose_hooks(kernel: KernelHooks | None = None) -> list[HookChoice]:
    """One program per scheduler hook for this kernel.

    :raises CaptureError: neither variant of one is here."""
    kernel = kernel or KernelHooks()
    choices = [kernel.choose(h) for h in HOOKS]
    for c in choices:
        if c.program is None:
            raise CaptureError(f"--latency needs {c.hook.system}:{c.hook.event}: {c.reason}")
    return choices


def load_latency(kind: FunctionProbe, handlers: list[str], choices: list[HookChoice], pid: int,
                 from_exec: bool) -> tuple[BpfObject, dict[str, str]]:
    """Open, set up, load and attach the latency object with `kind`'s programs on handle_mm_fault and on
    `handlers` (kprobes.load_function_probes: the return first, the entry last).

    :returns: the object (the caller closes it) and each handler whose attach the kernel refused, with why.
    :raises LibbpfError: the object cannot be opened, loaded, or attached on handle_mm_fault (one line)."""
    entry, ret = ENTRY_RETURN[kind]
    return load_function_probes("latency", entry, ret, {fn: handler_program(fn, kind) for fn in handlers},
                                choices, _settings(pid, from_exec))


def record_latency(argv: list[str] | None, pid: int | None, progress: Callable[[str], None] | None = None,
                   stdout: int | None = None, probe: FunctionProbe | None = None,
                   kernel: KernelHooks | None = None) -> LatencyRecording:
    """Run `argv` (or attach to `pid`) with handle_mm_fault's entry and return hooked; time until it ends
    (or Ctrl-C, as the counter: the first is passed to a started program, a second kills it).

    :param probe: None loads the fentry programs first (cheapest: BPF trampolines) and falls back to
        kprobes when the kernel refuses them, saying why; FENTRY or KPROBE uses that one only.
    :param kernel: what the kernel offers, for the scheduler hooks' variant (default: read from this
        kernel's BTF and tracefs).
    :returns: the histograms by outcome and by VMA, the VMAs named, the hook used and why, its start-up time.
    :raises TargetProblem: the command cannot be run, or `pid` cannot be traced.
    :raises CaptureError: one line with the reason and the fix: the object is not built or libbpf is
        missing (``bash scripts/setup.sh`` as root), neither fentry nor kprobes work here (each reason)."""
    say = progress or (lambda _m: None)
    try:
        object_path("latency")
    except BpfObjectMissing as exc:
        raise CaptureError(f"--latency: {exc}") from None
    candidates, refused = probe_candidates(probe)
    if not candidates:
        raise CaptureError(_no_hook(refused))
    choices = choose_hooks(kernel)
    try:
        target: Target = spawn_held(argv, stdout) if argv else attach(pid or 0)
    except TargetError as exc:
        raise TargetProblem(str(exc)) from None
    notes: list[str] = []
    try:
        obj: BpfObject | None = None
        used, not_probeable = candidates[0], dict[str, str]()
        found_ms = load_ms = 0.0
        for used in candidates:
            t0 = time.monotonic()
            handlers, not_probeable = hookable(used)
            found_ms += (time.monotonic() - t0) * 1000
            t0 = time.monotonic()
            say(f"loading the {used} programs on handle_mm_fault")
            try:
                obj, attach_refused = load_latency(used, handlers, choices, target.pid, target.spawned)
            except LibbpfError as exc:
                refused.append(f"{used}: {exc}")
                load_ms += (time.monotonic() - t0) * 1000
                continue
            not_probeable.update(attach_refused)
            break
        if obj is None:
            raise CaptureError(_no_hook(refused))
        load_ms += (time.monotonic() - t0) * 1000
        try:
            release_target(target)
            say(f"timing the faults of PID {target.pid} ({used})")
            wait_forwarding_signals(target, notes)
            obj.detach()
            kept = histograms_from_map(obj.map("hists").items())
            vmas = read_vmas(obj)
            notes += counter_notes(read_counters(obj))
        finally:
            obj.close()
    finally:
        target.end(resume=False)   # a spawned target still running is ended; an attached one is left as it is
        target.wait()
    by_outcome, by_vma = group_histograms(kept)
    # the reason names what was tried and refused before the hook used, not what was never needed
    reason = ("chosen with --probes" if probe else "fentry attached (BPF trampolines, no breakpoint)"
              if used is FunctionProbe.FENTRY else "; ".join(refused))
    # the tier's start-up, shown so that the kernel matrix's output carries it
    reason += (f"; started in {found_ms + load_ms:.0f} ms: the handlers found in {found_ms:.0f} ms, then loaded and "
               f"attached in {load_ms:.0f} ms")
    return LatencyRecording(by_outcome, by_vma, list(OUTCOME_HANDLERS), not_probeable,
                            {target.pid: maps_from_kernel(vmas)}, target.describe_exit(), used, reason, load_ms,
                            notes)


def _no_hook(refused: list[str]) -> str:
    return ("--latency needs fentry or kprobes on handle_mm_fault: " + "; ".join(refused) +
            ". Without them no tool can time a fault from the inside; fix: a kernel that allows BPF trampolines "
            "or kprobes (Debian's 6.1 and 6.12 do), or pagefault trace without --latency, which still counts "
            "and places every fault")
