"""Live evidence for a scenario: its program run one operation at a time under perf_event_open,
with the region's pagemap (and the frames' kpageflags) read while it is paused after each one.

This module gathers what the machine shows; pagefault.journey.scenario_check classifies it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from ..decode.pagemap import page_state
from ..kernel import facts
from ..kernel.kallsyms import KernelSymbols
from . import procfs
from .exercise import ExerciseError, Program, ScenarioProcess, build_scenario_program
from .journey_capture import TraceEvent, decode_trace_events
from .perf_event import SAMPLE_CALLCHAIN, PerfError, PerfSession
from .tracer import TRACEPOINT_SAMPLE, CaptureError, tracepoint_events

SCENARIO_TRACEPOINTS = (
    ("exceptions", "page_fault_user", True),
    ("kmem", "mm_page_alloc", True),
)
PM_PFN = (1 << 55) - 1


@dataclass
class OpSnapshot:
    """What the program said and /proc showed right after one operation."""

    index: int
    op: str
    pid: int                                  # the process that ran it
    time_ns: int                              # CLOCK_MONOTONIC, as the samples
    region: int
    pages: int
    segv_code: int = 0
    segv_addr: int = 0
    pagemaps: dict[int, list[int]] = field(default_factory=dict)     # pid → the region's entries
    kpageflags: dict[int, int] = field(default_factory=dict)         # PFN → flags
    maps: dict[int, list[procfs.MapsLine]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def region_states(self, pid: int) -> list[str]:
        """One page_state word per page of the region in pid's pagemap."""
        return [page_state(e, self.kpageflags.get(e & PM_PFN) if e >> 63 else None)
                for e in self.pagemaps.get(pid, [])]


@dataclass
class ScenarioEvidence:
    tier: str
    kernel_release: str
    ops: list[str]
    program: Program
    settings: facts.MemorySettings
    pid: int = 0
    child_pid: int = 0
    start_ns: int = 0
    ready_maps: list[procfs.MapsLine] = field(default_factory=list)
    snapshots: list[OpSnapshot] = field(default_factory=list)
    events: list[TraceEvent] = field(default_factory=list)
    event_sources: dict[str, str] = field(default_factory=dict)
    lost_events: int = 0
    exit: str = ""

    def op_events(self, index: int, name: str) -> list[TraceEvent]:
        """The events of the program (and its child) between the pause before operation index and the one after."""
        lo = self.snapshots[index - 1].time_ns if index else self.start_ns
        hi = self.snapshots[index].time_ns
        pids = {self.pid, self.child_pid} - {0}
        return [e for e in self.events if e.name == name and e.pid in pids and lo < e.time_ns <= hi]

    def region_faults(self, index: int) -> list[TraceEvent]:
        """The page_fault_user events of operation index whose address is in the region."""
        snap = self.snapshots[index]
        lo, hi = snap.region, snap.region + snap.pages * 4096
        return [e for e in self.op_events(index, "exceptions:page_fault_user") if lo <= e.fields["address"] < hi]


def run_scenario_live(ops: list[str], progress: Callable[[str], None] | None = None) -> ScenarioEvidence:
    """Run the operations in the scenario program, traced; CaptureError (one line, with the fix) if it can't."""
    progress = progress or (lambda _m: None)
    if not facts.is_root():
        raise CaptureError("a live scenario needs the tracepoints' error codes and the PFNs: run as root (sudo), "
                           "or run it in the simulator with --model")
    try:
        program = build_scenario_program(progress)
    except ExerciseError as exc:
        raise CaptureError(str(exc)) from None
    events, formats, notes = tracepoint_events(SCENARIO_TRACEPOINTS)
    if not any(e.name == "exceptions:page_fault_user" for e in events):
        raise CaptureError("the tracepoint exceptions:page_fault_user is missing here (" + "; ".join(notes) +
                           "); run the scenario in the simulator with --model")
    ev = ScenarioEvidence("perf", facts.kernel_release(), list(ops), program, facts.memory_settings())
    for spec in events:
        ev.event_sources[spec.name] = f"tracepoint {spec.name} via perf_event_open"
    ksyms = KernelSymbols.load()
    sample_type = TRACEPOINT_SAMPLE | SAMPLE_CALLCHAIN
    proc: ScenarioProcess | None = None
    session: PerfSession | None = None
    chunks: list[bytes] = []
    try:
        proc = ScenarioProcess(program, ops)
        ev.pid = proc.pid
        session = PerfSession(events, proc.pid, enable_on_exec=True, callchain=True, data_pages=64,
                              monotonic_clock=True)
        session.enable()
        proc.release()
        phase = proc.wait_phase()
        if phase.name != "ready":
            raise CaptureError(f"the scenario program said {phase.line!r} where 'ready' was expected")
        ev.start_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        ev.ready_maps = procfs.read_maps(proc.pid)
        for i, op in enumerate(ops):
            proc.advance()
            phase = proc.wait_phase()
            if phase.name != "op" or not phase.line.startswith(f"op {i} "):
                raise CaptureError(f"the scenario program said {phase.line!r} after operation {i} ({op!r})")
            snap = OpSnapshot(i, op, int(phase.fields["pid"]), time.clock_gettime_ns(time.CLOCK_MONOTONIC),
                              int(phase.fields["region"], 16), int(phase.fields["pages"]),
                              int(phase.fields.get("segv", 0)), int(phase.fields.get("addr", "0"), 16))
            if snap.pid != ev.pid:
                ev.child_pid = snap.pid
            _read_region(snap, [p for p in (ev.pid, ev.child_pid) if p])
            ev.snapshots.append(snap)
            chunks.extend(session.drain())
            progress(f"operation {i} done: {op}")
        ev.exit = proc.finish()
        chunks.extend(session.drain())
    except (PerfError, ExerciseError) as exc:
        raise CaptureError(str(exc)) from None
    finally:
        if session:
            session.close()
        if proc and proc.target.status is None:
            proc.kill()
    ev.events, ev.lost_events = decode_trace_events(b"".join(chunks), sample_type, formats, ksyms)
    return ev


def _read_region(snap: OpSnapshot, pids: list[int]) -> None:
    for pid in pids:
        try:
            snap.maps[pid] = procfs.read_maps(pid)
            entries = procfs.read_pagemap(pid, snap.region, snap.pages) if snap.pages else []
        except OSError as exc:
            snap.errors.append(f"/proc/{pid}: {exc.strerror or exc}")
            continue
        snap.pagemaps[pid] = entries
        for e in entries:
            pfn = e & PM_PFN
            if e >> 63 and pfn and pfn not in snap.kpageflags:
                try:
                    snap.kpageflags[pfn] = procfs.read_kpageflags(pfn)
                except OSError as exc:
                    snap.errors.append(f"/proc/kpageflags: {exc.strerror or exc}")
                    break
