"""Recording a target's page faults: events open before exec, buffers drained while it runs."""

from __future__ import annotations

import select
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..kernel import facts
from ..kernel.kallsyms import KernelSymbols
from ..kernel.tracefs import TracefsError, find_tracefs, read_event_format
from .perf_event import (PERF_COUNT_SW_PAGE_FAULTS, PERF_TYPE_SOFTWARE, PERF_TYPE_TRACEPOINT, SAMPLE_ADDR,
                         SAMPLE_CPU, SAMPLE_IP, SAMPLE_RAW, SAMPLE_TID, SAMPLE_TIME, EventSpec, PerfError,
                         PerfSession)
from .procfs import read_maps
from .recording import RecordingWriter
from .runner import TargetError, attach, spawn_held

TRACEPOINTS = (
    ("exceptions", "page_fault_user", True),
    ("kmem", "mm_page_alloc", True),
    ("syscalls", "sys_enter_mmap", False),
    ("syscalls", "sys_exit_mmap", False),
    ("mmap", "vm_unmapped_area", False),
)
TRACEPOINT_SAMPLE = SAMPLE_IP | SAMPLE_TID | SAMPLE_TIME | SAMPLE_CPU | SAMPLE_RAW
SOFTWARE_SAMPLE = SAMPLE_IP | SAMPLE_TID | SAMPLE_TIME | SAMPLE_ADDR | SAMPLE_CPU


class CaptureError(Exception):
    """Capture cannot start; the message says why and the fix."""


@dataclass
class TraceOptions:
    argv: list[str] = field(default_factory=list)
    pid: int | None = None
    callchain: bool = False
    output: Path | None = None
    tier: str = "auto"            # auto | perf | user
    data_pages: int = 2048        # per CPU: 8 MiB
    progress: Callable[[str], None] | None = None
    target_stdout: int | None = None


def choose_tier(requested: str) -> str:
    if requested in ("perf", "user"):
        return requested
    if facts.is_root():
        return "perf"
    paranoid = facts.perf_event_paranoid()
    if paranoid is not None and paranoid <= 2:
        return "user"
    raise CaptureError(f"cannot trace here: not root and perf_event_paranoid is {paranoid}; fix: run as root, or "
                       "sysctl kernel.perf_event_paranoid=2 for the unprivileged tier")


def tracepoint_events(tracepoints=TRACEPOINTS) -> tuple[list[EventSpec], dict, list[str]]:
    """Specs for (system, name, required) tracepoints, their field layouts by id, notes on the missing."""
    try:
        root = find_tracefs()
    except TracefsError as exc:
        raise CaptureError(str(exc)) from None
    events, formats, notes = [], {}, []
    for system, name, required in tracepoints:
        try:
            fmt = read_event_format(system, name, root)
        except TracefsError as exc:
            if required:
                raise CaptureError(str(exc)) from None
            notes.append(f"{system}:{name} unavailable: {exc}")
            continue
        events.append(EventSpec(f"{system}:{name}", PERF_TYPE_TRACEPOINT, fmt.id, TRACEPOINT_SAMPLE, busy=required))
        formats[str(fmt.id)] = {"system": system, "name": name,
                                "fields": {f.name: [f.offset, f.size, f.signed] for f in fmt.fields.values()},
                                "print_fmt": fmt.print_fmt}
    return events, formats, notes


class _Stop:
    def __init__(self) -> None:
        self.requested = False
        self.signal: int | None = None

    def __call__(self, signum, _frame) -> None:
        self.requested = True
        self.signal = signum


def record(opts: TraceOptions) -> dict:
    """Trace until the target ends (or Ctrl-C / SIGTERM); write the recording; return its metadata."""
    tier = choose_tier(opts.tier)
    if tier == "perf":
        events, formats, notes = tracepoint_events()
        sample_type = TRACEPOINT_SAMPLE
    else:
        events = [EventSpec("page-faults", PERF_TYPE_SOFTWARE, PERF_COUNT_SW_PAGE_FAULTS, SOFTWARE_SAMPLE,
                            user_only=not facts.is_root())]
        formats, sample_type = {}, SOFTWARE_SAMPLE
        notes = ["unprivileged tier: the software page-fault event gives address and ip only; no error code, "
                 "no allocations, no PFNs, no kernel call chains (fix: run as root)"]
    callchain = opts.callchain
    if callchain and tier == "user" and (facts.perf_event_paranoid() or 0) > 1:
        notes.append("kernel call chains need perf_event_paranoid ≤ 1 or root; recording user frames only")

    output = opts.output or Path("pagefault.pfrec")
    try:
        writer = RecordingWriter(output)
    except OSError as exc:
        raise CaptureError(f"cannot write the recording {output}: {exc.strerror}; fix: choose another place with -o FILE") from None
    try:
        target = attach(opts.pid) if opts.pid else spawn_held(opts.argv, opts.target_stdout)
    except TargetError as exc:
        writer.discard()
        raise CaptureError(str(exc)) from None

    stop = _Stop()
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    session = None
    maps_seen: dict[tuple[int, int, str], dict] = {}
    started = time.time()
    try:
        try:
            session = PerfSession(events, target.pid, enable_on_exec=target.spawned, callchain=callchain,
                                  data_pages=opts.data_pages)
        except PerfError as exc:
            target.kill(signal.SIGKILL)
            target.wait()
            writer.discard()
            raise CaptureError(str(exc)) from None
        if target.spawned:
            try:
                target.release()
            except TargetError as exc:
                writer.discard()
                raise CaptureError(str(exc)) from None
        else:
            session.enable()
        poller = select.poll()
        for buf in session.buffers:
            poller.register(buf.fd, select.POLLIN)
        last_maps = last_progress = 0.0
        while True:
            alive = target.poll()
            now = time.time()
            if alive and now - last_maps > 0.05:
                _snapshot_maps(target.pid, maps_seen)
                last_maps = now
            for chunk in session.drain():
                writer.add(chunk)
            if opts.progress and now - last_progress > 1.0 and now - started > 1.0:
                opts.progress(f"recording {target.argv[0]} (PID {target.pid}): {now - started:.0f} s, "
                              f"{writer.bytes / 1e6:.1f} MB of events")
                last_progress = now
            if not alive:
                break
            if stop.requested:
                if target.spawned:
                    target.kill(stop.signal or signal.SIGTERM)
                    target.wait()
                break
            poller.poll(50)
        session.disable()
        for chunk in session.drain():
            writer.add(chunk)
    except BaseException:
        if session:
            session.close()
        target.kill(signal.SIGKILL)
        target.wait()
        if not writer.body.closed:  # keep what was recorded, readable by pagefault report
            writer.close({"format": 2, "aborted": True, "command": target.argv, "pid": target.pid,
                          "spawned": target.spawned, "exit": "aborted", "tier": tier, "callchain": callchain,
                          "sample_type": sample_type, "events": formats,
                          "notes": notes + ["the trace was aborted by an error; the events up to it are kept"],
                          "maps": list(maps_seen.values()), "started": started,
                          "duration": time.time() - started, "bytes": writer.bytes})
        raise
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    session.close()
    meta = {
        "format": 2,
        "command": target.argv, "pid": target.pid, "spawned": target.spawned,
        "exit": target.describe_exit(), "exit_signal": target.exit_signal,
        "interrupted_by": signal.Signals(stop.signal).name if stop.signal else None,
        "tier": tier, "callchain": callchain, "sample_type": sample_type,
        "events": formats, "notes": notes,
        "kernel": {"release": facts.kernel_release(), "paging_levels": facts.paging_levels()[0],
                   "text_base": KernelSymbols.load().text_base()},
        "gfp_bits": asdict(facts.gfp_bits()),
        "maps": list(maps_seen.values()),
        "started": started, "duration": time.time() - started, "bytes": writer.bytes,
    }
    writer.close(meta)
    return meta


def _snapshot_maps(pid: int, seen: dict) -> None:
    try:
        lines = read_maps(pid)
    except OSError:
        return
    for m in lines:
        key = (m.start, m.end, m.path)
        if key not in seen:
            seen[key] = asdict(m)


def stderr_progress(message: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K" + message)
    else:
        sys.stderr.write(message + "\n")
    sys.stderr.flush()
