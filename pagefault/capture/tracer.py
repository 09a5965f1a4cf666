"""Recording a target's page faults: events open before exec, buffers drained while it runs."""

from __future__ import annotations

import os
import select
import signal
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from ..kernel.tracefs import TracefsError, find_tracefs, read_event_format
from .perf_event import (
    PERF_COUNT_SW_PAGE_FAULTS,
    PERF_TYPE_SOFTWARE,
    PERF_TYPE_TRACEPOINT,
    SAMPLE_ADDR,
    SAMPLE_CPU,
    SAMPLE_IP,
    SAMPLE_RAW,
    SAMPLE_REGS_USER,
    SAMPLE_STACK_USER,
    SAMPLE_TID,
    SAMPLE_TIME,
    USER_STACK_BYTES,
    EventSpec,
    FaultCounters,
    PerfError,
    PerfSession,
)
from .runner import TargetError, attach, spawn_held
from .safe_paths import OutputWriteFailed
from .signal_deferral import STOP_SIGNALS, swap_handlers

# kernel.facts (every decoder, through decode.arch), the recording's writer (cattrs) and /proc's maps parser
# (the evidence records) are imported where they are used: the summary-only count imports this module for its
# errors and signal handling, and these cost it ~50 ms of start-up.

TRACEPOINTS = (
    ("exceptions", "page_fault_user", True),
    # faults on user addresses taken inside system calls (read() copying into a fresh buffer): the kernel counts
    # them as the program's, and so must the summary
    ("exceptions", "page_fault_kernel", False),
    ("kmem", "mm_page_alloc", True),
    ("syscalls", "sys_enter_mmap", False),
    ("syscalls", "sys_exit_mmap", False),
    ("mmap", "vm_unmapped_area", False),
    # what a fault did, for its class: pages read into the page cache, and the signal it raised
    ("filemap", "mm_filemap_add_to_page_cache", False),
    ("signal", "signal_generate", False),
    # the brk heap: perf writes no MMAP2 record when brk grows it, so its extent comes from brk's returns
    ("syscalls", "sys_exit_brk", False),
)
# optional events that fire as often as faults do: a full-size ring buffer each
BUSY_OPTIONAL = {("exceptions", "page_fault_kernel")}
TRACEPOINT_SAMPLE = SAMPLE_IP | SAMPLE_TID | SAMPLE_TIME | SAMPLE_CPU | SAMPLE_RAW
SOFTWARE_SAMPLE = SAMPLE_IP | SAMPLE_TID | SAMPLE_TIME | SAMPLE_ADDR | SAMPLE_CPU


class CaptureError(Exception):
    """Capture cannot start; the message says why and the fix."""


class NothingMatched(CaptureError):
    """The capture ran, but nothing matched what was asked for (no such fault, symbol or line): exit 4."""


class TargetProblem(CaptureError):
    """The program to trace cannot be started or attached to (a usage error, not the machine's)."""


def release_target(target) -> None:
    """Let a held target exec; a program that cannot run is a TargetProblem.

    :returns: None.
    :raises TargetProblem: the program cannot be run."""
    try:
        target.release()
    except TargetError as exc:
        raise TargetProblem(str(exc)) from None


@dataclass
class TraceOptions:
    argv: list[str] = field(default_factory=list)
    pid: int | None = None
    allow_init: bool = False     # -p 1: the init process, only when asked (--allow-init)
    callchain: bool = False
    user_stack: bool = False      # --dwarf: each fault's registers and stack top, unwound with .eh_frame by report
    output: Path | None = None
    tier: str = "auto"            # auto | perf | user
    data_pages: int = 2048        # per CPU: 8 MiB
    progress: Callable[[str], None] | None = None
    target_stdout: int | None = None
    force: bool = False           # replace an existing output file
    # called once the target runs (started, or attached): work done meanwhile, not after it (trace -o: the
    # summary's kernel symbols, read on another CPU)
    on_running: Callable[[], None] | None = None


def choose_tier(requested: str) -> str:
    """The trace's tier: ``requested`` itself when it names one, else perf as root, else user where

    perf_event_paranoid allows it.
    :returns: "perf" or "user".
    :raises CaptureError: not root and perf_event_paranoid above 2 (the message has the fix)."""
    from ..kernel import facts
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
    """Specs for (system, name, required) tracepoints, their field layouts by id, notes on the missing.

    :returns: (the EventSpecs, formats by tracepoint id, notes on the optional ones missing).
    :raises CaptureError: tracefs is not mounted or readable (a caller without root may not read it), or a
        required tracepoint is missing (on arm64: the fix names what works there)."""
    from ..kernel import facts
    try:
        root = find_tracefs()
    except TracefsError as exc:
        raise CaptureError(str(exc)) from None
    events, formats, notes = [], {}, []
    for system, name, required in tracepoints:
        try:
            fmt = read_event_format(system, name, root)
        except TracefsError as exc:
            if required and (system, name) == ("exceptions", "page_fault_user") and _trap_untraced_here(facts):
                raise CaptureError(f"{exc}: arm64 kernels (6.1, 6.12) have no page-fault tracepoint, so trace and "
                                   "journey -- CMD cannot follow every fault here; pagefault journey follows the "
                                   "exercise program's fault through kprobes, and decode takes --arch arm64") from None
            if required:
                raise CaptureError(str(exc)) from None
            notes.append(f"{system}:{name} unavailable: {exc}")
            continue
        events.append(EventSpec(f"{system}:{name}", PERF_TYPE_TRACEPOINT, fmt.id, TRACEPOINT_SAMPLE,
                                busy=required or (system, name) in BUSY_OPTIONAL))
        formats[str(fmt.id)] = {"system": system, "name": name,
                                "fields": {f.name: [f.offset, f.size, f.signed] for f in fmt.fields.values()},
                                "print_fmt": fmt.print_fmt}
    return events, formats, notes


def _trap_untraced_here(facts) -> bool:
    """Whether this machine's architecture has no tracepoint with the trap (arm64): a missing page_fault_user
    is then the architecture's, not the kernel's configuration."""
    from ..decode.bits import DecodeError
    try:
        return not facts.machine_arch().syndrome_traced
    except DecodeError:
        return False


class _Stop:
    """SIGINT/SIGTERM/SIGHUP while tracing: the first asks the target to end, a second stops for good."""

    def __init__(self) -> None:
        self.count = 0
        self.signal: int | None = None

    def __call__(self, signum, _frame) -> None:
        self.count += 1
        self.signal = self.signal or signum




def record(opts: TraceOptions) -> dict:
    """Trace until the target ends (or a signal); write the recording; return its metadata.

    A first SIGINT/SIGTERM/SIGHUP is passed to a started target and tracing goes on until it ends;
    a second kills it (a target that ignores signals cannot hold the tool). A full disk stops the
    recording, keeps what was written and says so in the returned ``disk_full``.

    :raises CaptureError: capture cannot start (the message has the fix).
    :raises TargetProblem: the program cannot be started or attached to.
    :raises OutputError: the output file cannot be created.
    """
    from .recording import RecordingWriter
    tier = choose_tier(opts.tier)
    events, formats, sample_type, notes = _events_for(opts, tier)
    try:
        target = attach(opts.pid, opts.allow_init) if opts.pid is not None else spawn_held(opts.argv, opts.target_stdout)
    except TargetError as exc:
        raise TargetProblem(str(exc)) from None
    head = _head(opts, target, tier, sample_type, formats, notes)
    # the run's stop handler from before its file exists: a signal raised while the temporary file is being
    # created and handed over (an exception at any bytecode there) left FILE.*.part behind; now it is counted,
    # and the run, seeing it, stops at once and names what it has, as for a signal at any later moment
    stop = _Stop()
    old = swap_handlers({s: stop for s in STOP_SIGNALS})   # all at once: none lands between two of the swaps
    try:
        writer = RecordingWriter(opts.output or Path("pagefault.pfrec"), head, opts.force)
    except BaseException:
        swap_handlers(old)
        target.kill(signal.SIGKILL)
        target.wait()
        raise
    run = _Run(opts, target, writer, notes, head["started"], stop)
    try:
        run.trace(events, opts.callchain)
    except BaseException:
        run.abort()
        raise
    finally:
        swap_handlers(old)
    return {**head, **run.finish()}


def _events_for(opts: TraceOptions, tier: str) -> tuple[list[EventSpec], dict, int, list[str]]:
    """The events a tier records (with the user stacks asked for), their formats, sample type and notes."""
    from ..kernel import facts
    if tier == "perf":
        events, formats, notes = tracepoint_events()
        sample_type = TRACEPOINT_SAMPLE
    else:
        events = [EventSpec("page-faults", PERF_TYPE_SOFTWARE, PERF_COUNT_SW_PAGE_FAULTS, SOFTWARE_SAMPLE,
                            user_only=not facts.is_root())]
        formats, sample_type = {}, SOFTWARE_SAMPLE
        notes = ["unprivileged tier: the software page-fault event gives address and ip only; no error code, "
                 "no allocations, no PFNs, no kernel call chains (fix: run as root)"]
    if opts.user_stack and tier == "perf":   # the fault event alone carries them: it is what the stacks are of
        events = [replace(e, sample_type=e.sample_type | SAMPLE_REGS_USER | SAMPLE_STACK_USER)
                  if e.name == "exceptions:page_fault_user" else e for e in events]
    if opts.callchain and tier == "user" and (facts.perf_event_paranoid() or 0) > 1:
        notes.append("kernel call chains need perf_event_paranoid ≤ 1 or root; recording user frames only")
    return events, formats, sample_type, notes


def _head(opts: TraceOptions, target, tier: str, sample_type: int, formats: dict, notes: list[str]) -> dict:
    """The recording's HEAD: what was traced, how, and this kernel's facts a report needs."""
    from ..kernel import facts
    from ..kernel.kallsyms import KernelSymbols
    return {"format": 3, "command": target.argv, "pid": target.pid, "spawned": target.spawned, "tier": tier,
            "callchain": opts.callchain, "sample_type": sample_type, "events": formats, "notes": notes,
            "kernel": {"release": facts.kernel_release(), "paging_levels": facts.paging_levels()[0],
                       "text_base": KernelSymbols.read_text_base()},
            "gfp_bits": asdict(facts.gfp_bits()), "started": time.time(),
            "user_stack": USER_STACK_BYTES if opts.user_stack and tier == "perf" else 0}


def _signal_name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum else "signal"


class _Run:
    """One recording under way: the target, its events and the file, until the target ends or is stopped."""

    def __init__(self, opts: TraceOptions, target, writer, notes: list[str], started: float, stop: _Stop):
        self.opts, self.target, self.writer, self.notes, self.started = opts, target, writer, notes, started
        self.stop = stop     # already the stop signals' handler: record() installed it before the file existed
        self.session: PerfSession | None = None
        self.counters: FaultCounters | None = None
        self.maps_seen: dict[tuple[int, int, str], dict] = {}
        self.maps_text: list[str] = []     # the last /proc/PID/maps read (_snapshot_maps)
        self.disk_full: str | None = None
        self.killed_by_us = ""
        self.counts: dict[str, int] | None = None
        self.kernel_counts: dict | None = None

    def _kill_target(self) -> None:
        self.target.kill(signal.SIGKILL)
        self.target.wait()

    def _open(self, events: list[EventSpec], callchain: bool) -> PerfSession:
        """Open the events on the target and start it (or, attached, enable them)."""
        target, opts = self.target, self.opts
        try:
            session = self.session = PerfSession(events, target.pid, enable_on_exec=target.spawned,
                                                 callchain=callchain, data_pages=opts.data_pages)
        except PerfError as exc:
            self._kill_target()
            self.writer.discard()
            raise CaptureError(str(exc)) from None
        try:
            self.counters = FaultCounters(target.pid, enable_on_exec=target.spawned)
        except PerfError as exc:
            self.notes.append(f"the kernel's own fault counts are not shown: {exc}")
        if target.spawned:
            try:
                target.release()
            except TargetError as exc:
                self.writer.discard()
                raise TargetProblem(str(exc)) from None
        else:
            session.enable()
        if opts.on_running is not None:
            opts.on_running()
        return session

    def _drain(self, session: PerfSession) -> None:
        """Every CPU's new records into the recording, written straight from the ring buffers (no copy in
        Python: a --dwarf recording streams ~8 KiB a fault, and the copies made the reader fall behind, events
        lost); once the disk is full they are let go unwritten."""
        session.drain_into(self._write_records)

    def _write_records(self, pieces: list[memoryview]) -> None:
        if self.disk_full is None:
            try:
                self.writer.add_views(pieces)
            except OSError as exc:
                self.disk_full = f"{exc.strerror} after {self.writer.bytes / 1e6:.1f} MB of events"

    def trace(self, events: list[EventSpec], callchain: bool) -> None:
        """Record until the target ends, the disk fills or a signal stops it; then read the counts."""
        session = self._open(events, callchain)
        poller = select.poll()
        for buf in session.buffers:
            poller.register(buf.fd, select.POLLIN)
        last_maps = last_progress = 0.0
        forwarded = False
        target, opts, stop = self.target, self.opts, self.stop
        while True:
            alive = target.poll()
            now = time.time()
            if alive and now - last_maps > 0.05:
                _snapshot_maps(target.pid, self.maps_seen, self.maps_text)
                last_maps = now
            self._drain(session)
            if opts.progress and now - last_progress > 1.0 and now - self.started > 1.0:
                opts.progress(f"recording {target.argv[0]} (PID {target.pid}): {now - self.started:.0f} s, "
                              f"{self.writer.bytes / 1e6:.1f} MB of events")
                last_progress = now
            if not alive or self._stopped():
                break
            if stop.count and not forwarded:
                target.kill(stop.signal or signal.SIGTERM)
                forwarded = True
                if opts.progress:
                    opts.progress(f"sent {_signal_name(stop.signal)} to PID {target.pid}; waiting for it to "
                                  "end (press Ctrl-C again to kill it)")
            poller.poll(50)
        session.disable()
        self._drain(session)
        self.counts = session.event_counts()
        self.kernel_counts = self.counters.read() if self.counters is not None else None

    def _stopped(self) -> bool:
        """Whether to stop now: the disk is full, a watched process is let go, or a second signal came."""
        target, stop = self.target, self.stop
        if self.disk_full is not None:
            if target.spawned:
                self._kill_target()
                self.killed_by_us = "pagefault killed it when the disk filled"
            return True
        if stop.count and not target.spawned:
            return True     # an attached process is left running: we only stop watching it
        if stop.count >= 2:
            self._kill_target()
            self.killed_by_us = (f"pagefault killed it after a second {_signal_name(stop.signal)}: "
                                 "it did not end on the first")
            return True
        return False

    def abort(self) -> None:
        """An error while tracing: close the events, kill the target, keep what was recorded."""
        if self.counters is not None:
            self.counters.close()
        if self.session:
            self.session.close()
        self._kill_target()
        writer = self.writer
        if not writer.out.file.closed:  # keep what was recorded, readable by pagefault report
            try:
                writer.close({"exit": "aborted", "notes": self.notes + ["the trace was aborted by an error; the "
                                                                         "events up to it are kept"],
                              "maps": list(self.maps_seen.values()), "duration": time.time() - self.started,
                              "bytes": writer.bytes})
            except Exception:
                pass

    def finish(self) -> dict:
        """Close the events and the file; the END metadata, with where the recording went."""
        assert self.session is not None     # trace() opened it
        _close_behind(self.session)
        if self.counters is not None:
            self.counters.close()
        target, writer, stop = self.target, self.writer, self.stop
        end: dict[str, object] = {
            "exit": target.describe_exit() + (f" ({self.killed_by_us})" if self.killed_by_us else ""),
            "exit_signal": target.exit_signal,
            "interrupted_by": signal.Signals(stop.signal).name if stop.signal else None,
            "maps": list(self.maps_seen.values()), "event_counts": self.counts,
            "kernel_fault_counts": self.kernel_counts, "duration": time.time() - self.started, "bytes": writer.bytes,
        }
        if self.disk_full:
            end["notes"] = self.notes + [f"the disk filled ({self.disk_full}): the recording stops there"]
        try:
            try:
                writer.close(end)
            except OSError:
                writer.close(None)   # no room for the END chunk either: the file is still read, as partial
        except OutputWriteFailed as exc:     # the last flush failed: the file is named all the same, read as partial
            self.disk_full = self.disk_full or str(exc)
        return {**end, "disk_full": self.disk_full, "output": str(writer.path)}


def _close_behind(session: PerfSession) -> None:
    """Stop the session's events now, and close them behind the caller's back: a thread per event, left running
    while the summary is built (Python waits for them before it exits). Closing an inherited event waits in
    the kernel: 25-50 ms each here, 0.35 s for the nine slow ones one after another (strace -T), which the
    command paid after the program had ended; run together they take ~0.1-0.2 s, and close(2) lets go of
    the GIL, so the summary goes on meanwhile."""
    import threading
    session.disable()
    for buf in session.buffers:
        buf.close()
    for fd in session.fds:
        threading.Thread(target=_close_quietly, args=(fd,), name=f"close perf event {fd}").start()
    session.fds, session.fd_events, session.buffers = [], [], []


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _snapshot_maps(pid: int, seen: dict, last: list[str] | None = None) -> None:
    """Add the target's mappings not seen yet to `seen`. With `last` (a one-item list holding the text read the
    time before), an unchanged /proc/PID/maps is not parsed again: the loop reads it every 50 ms while it also
    has to keep up with the events, and parsing ~100 lines took ~3 ms of each 50 (a --dwarf recording lost
    events meanwhile)."""
    from ..evidence.maps import parse_maps
    try:
        text = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return
    if last is not None:
        if last and last[0] == text:
            return
        last[:] = [text]
    for m in parse_maps(text):
        key = (m.start, m.end, m.path)
        if key not in seen:
            seen[key] = asdict(m)
