"""Live evidence for a scenario: its program run one operation at a time under perf_event_open,
with the region's pagemap (and the frames' kpageflags) read while it is paused after each one.

On x86 the faults are the exceptions:page_fault_user tracepoint's, with their error codes. arm64
kernels have no such tracepoint (before 6.x's newer ones), so there the faults are the perf software
page-fault event's samples (address, IP: arm64's do_page_fault() emits it before it looks up the VMA,
so a fault that ends in SIGSEGV has one too), and what each fault was is read from the flags
handle_mm_fault() was called with (the kprobe tier, required there).

This module gathers what the machine shows; pagefault.journey.scenario_check classifies it.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from .. import __version__
from ..decode.arch_interface import ArchInterface, arch_interface
from ..evidence import OpSnapshot, ScenarioEvidence
from ..kernel import facts
from ..kernel.kallsyms import KernelSymbols
from . import procfs
from .bpf_walk import BpfError
from .exercise import ExerciseError, ScenarioProcess, build_scenario_program
from .journey_capture import decode_trace_events
from .kprobes import EveryFaultProbe, kprobe_support
from .perf_event import (
    PERF_COUNT_SW_PAGE_FAULTS,
    PERF_TYPE_SOFTWARE,
    SAMPLE_ADDR,
    SAMPLE_CALLCHAIN,
    SAMPLE_CPU,
    SAMPLE_IP,
    SAMPLE_TID,
    SAMPLE_TIME,
    EventSpec,
    PerfError,
    PerfSession,
)
from .tracer import TRACEPOINT_SAMPLE, CaptureError, tracepoint_events

SCENARIO_TRACEPOINTS = (
    ("exceptions", "page_fault_user", True),
    ("kmem", "mm_page_alloc", True),
)
# where no tracepoint has the trap (arm64), the faults are the software page-fault event's samples instead
UNTRACED_TRAP_TRACEPOINTS = (("kmem", "mm_page_alloc", True),)
SCENARIO_PAGE_SIZE = 4096       # the scenarios' offsets and page counts are in 4 KiB pages
PM_PFN = (1 << 55) - 1
SOFTWARE_FAULT_EVENT = EventSpec("page-faults", PERF_TYPE_SOFTWARE, PERF_COUNT_SW_PAGE_FAULTS,
                                 SAMPLE_IP | SAMPLE_TID | SAMPLE_TIME | SAMPLE_ADDR | SAMPLE_CPU)


def run_scenario_live(ops: list[str], progress: Callable[[str], None] | None = None,
                      scenario_name: str = "") -> ScenarioEvidence:
    """Run the operations in the scenario program, traced, reading the region after each one.

    :param ops: the scenario's operations (model/scenarios.py's language), run in order.
    :param progress: called with one line per stage (None: silent).
    :returns: the ScenarioEvidence: events, pagemap and kpageflags snapshots, this machine's settings.
    :raises CaptureError: this machine cannot run it live (not root; a 16 or 64 KiB-page kernel; no trap
        tracepoint and no kprobes; the program cannot be built or misbehaves), one line with the fix. A
        caller without root gets it at once, before anything is built or started.
    """
    progress = progress or (lambda _m: None)
    if not facts.is_root():
        raise CaptureError("a live scenario needs the tracepoints' error codes and the PFNs: run as root (sudo), "
                           "or run it in the simulator with --model")
    here, lpa2, kprobes, why = _machine_for_scenarios()
    try:
        program = build_scenario_program(progress)
    except ExerciseError as exc:
        raise CaptureError(str(exc)) from None
    events, formats, notes = tracepoint_events(SCENARIO_TRACEPOINTS if here.syndrome_traced
                                               else UNTRACED_TRAP_TRACEPOINTS)
    if here.syndrome_traced and not any(e.name == here.trap_event for e in events):
        raise CaptureError(f"the tracepoint {here.trap_event} is missing here (" + "; ".join(notes) +
                           "); run the scenario in the simulator with --model")
    ev = _scenario_evidence(ops, program, scenario_name, here, lpa2, events)
    if not kprobes:
        ev.unavailable["kprobes"] = why
    ksyms = KernelSymbols.load()
    chunks, fault_chunks = _trace_operations(ev, program, ops, events, here.syndrome_traced, kprobes, progress)
    ev.events, ev.lost_events = decode_trace_events(b"".join(chunks), TRACEPOINT_SAMPLE | SAMPLE_CALLCHAIN, formats,
                                                    ksyms)
    if fault_chunks:
        samples, lost = decode_trace_events(b"".join(fault_chunks), SOFTWARE_FAULT_EVENT.sample_type | SAMPLE_CALLCHAIN,
                                            {}, ksyms)
        ev.events = sorted(ev.events + samples, key=lambda e: e.time_ns)
        ev.lost_events += lost
    return ev


def _machine_for_scenarios() -> tuple[ArchInterface, bool, bool, str]:
    """(this machine's Arch interface in its paging shape, LPA2 in use, kprobes usable, why not).

    :raises CaptureError: the pages are not 4 KiB, or the trap is untraced here and kprobes cannot stand in.
    """
    page_size = os.sysconf("SC_PAGE_SIZE")
    if page_size != SCENARIO_PAGE_SIZE:
        raise CaptureError(f"the scenarios are written in 4 KiB pages and this kernel's pages are {page_size} "
                           "bytes; run them on a 4 KiB-page kernel, or in the simulator with --model")
    arch, levels, lpa2, _how = facts.model_shape()     # with 4 KiB pages, exactly this machine's shape
    here = arch_interface(arch, levels)
    kprobes, why = kprobe_support()
    if not here.syndrome_traced and not kprobes:
        raise CaptureError(f"on {arch.value} a live scenario reads each fault from handle_mm_fault's kprobe ({why}); "
                           "run it in the simulator with --model")
    return here, lpa2, kprobes, why


def _scenario_evidence(ops: list[str], program, scenario_name: str, here: ArchInterface, lpa2: bool,
                       events: list[EventSpec]) -> ScenarioEvidence:
    """The evidence before anything ran: this machine's settings, tables and the events' sources."""
    captured_at, host = facts.capture_origin()
    ev = ScenarioEvidence("perf", facts.kernel_release(), list(ops), program, facts.memory_settings(),
                          scenario=scenario_name, paging_levels=here.paging_levels, captured_at=captured_at,
                          host=host, tool_version=__version__)
    ev.arch, ev.lpa2 = here.arch, lpa2
    if not here.syndrome_traced:
        ev.event_sources[SOFTWARE_FAULT_EVENT.name] = ("perf software event page-faults (PERF_SAMPLE_ADDR, "
                                                       "PERF_SAMPLE_IP) via perf_event_open")
    for spec in events:
        ev.event_sources[spec.name] = f"tracepoint {spec.name} via perf_event_open"
    table = facts.fault_flag_values()
    ev.fault_flag_table, ev.fault_flag_source = table.values, table.source
    ev.kernel_enums, ev.kernel_enums_source = facts.kernel_enums()
    return ev


def _trace_operations(ev: ScenarioEvidence, program, ops: list[str], events: list[EventSpec], trap_traced: bool,
                      kprobes: bool, progress: Callable[[str], None]) -> tuple[list[bytes], list[bytes]]:
    """Run the program one operation at a time, traced; → the tracepoints' and the software fault event's
    raw chunks. Every session, probe and the program are stopped whatever happens."""
    proc: ScenarioProcess | None = None
    session: PerfSession | None = None
    faults: PerfSession | None = None          # an untraced trap: the software page-fault event, in its own buffers
    probe: EveryFaultProbe | None = None
    chunks: list[bytes] = []
    fault_chunks: list[bytes] = []

    def drain() -> None:
        chunks.extend(session.drain() if session else [])
        fault_chunks.extend(faults.drain() if faults else [])
    try:
        proc = ScenarioProcess(program, ops)
        ev.pid = proc.pid
        session = PerfSession(events, proc.pid, enable_on_exec=True, callchain=True, data_pages=64,
                              monotonic_clock=True)
        session.enable()
        if not trap_traced:
            faults = PerfSession([SOFTWARE_FAULT_EVENT], proc.pid, enable_on_exec=True, callchain=True,
                                 data_pages=64, monotonic_clock=True)
            faults.enable()
        if kprobes:
            progress("attaching the fault-path programs to handle_mm_fault and its handlers")
            probe = _attach_probe(ev, proc.pid, required=not trap_traced)
        proc.release()
        _run_operations(ev, proc, ops, drain, progress)
        ev.exit = proc.finish()
        drain()
        if probe:
            ev.kprobe_faults = probe.result()
            probe = None
    except (PerfError, ExerciseError) as exc:
        raise CaptureError(str(exc)) from None
    finally:
        if probe:
            probe.stop()
        if session:
            session.close()
        if faults:
            faults.close()
        if proc and proc.target.status is None:
            proc.kill()
    return chunks, fault_chunks


def _attach_probe(ev: ScenarioEvidence, pid: int, required: bool) -> EveryFaultProbe | None:
    """The fault-path programs on handle_mm_fault for ``pid``; None (said in the evidence) where they cannot attach.

    :raises CaptureError: they cannot attach and are ``required`` (the trap is not traced otherwise).
    """
    probe: EveryFaultProbe | None = None
    try:
        probe = EveryFaultProbe(pid)
        probe.arm()
        ev.event_sources["handle_mm_fault"] = probe.describe()
        return probe
    except BpfError as exc:
        if probe:
            probe.stop()
        if required:
            raise CaptureError(f"the kprobes on handle_mm_fault could not be attached: {exc}") from None
        ev.unavailable["kprobes"] = str(exc)
        return None


def _run_operations(ev: ScenarioEvidence, proc: ScenarioProcess, ops: list[str], drain: Callable[[], None],
                    progress: Callable[[str], None]) -> None:
    """Step the paused program through each operation, reading its region after each.

    :raises CaptureError: the program said something other than the phase expected.
    """
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
                          int(phase.fields.get("segv", 0)), int(phase.fields.get("addr", "0"), 16),
                          segv_esr=int(phase.fields.get("esr", "0"), 16))
        if snap.pid != ev.pid:
            ev.child_pid = snap.pid
        _read_region(snap, [p for p in (ev.pid, ev.child_pid) if p])
        ev.snapshots.append(snap)
        drain()
        progress(f"operation {i} done: {op}")


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
