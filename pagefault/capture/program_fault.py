"""The journey of one chosen fault of any program: `pagefault journey -- CMD ARGS…` or `-p PID`.

The program runs at full speed under perf (tracepoints with kernel call chains, for the allocations and
the class) and the compiled walk (capture/bpf/journey_walk.bpf.c, MODE_PROGRAM) that picks the fault in
the kernel, by a selector (its settings, set before load):

- ``first in the program's own code`` (the default): the first fault whose RIP lies between the
  mm's start_code and end_code (the executable's text, not the loader's or a library's);
- ``--nth N``: the program's N-th fault;
- ``--at ADDRESS``: the first fault on that page;
- ``--at SYMBOL`` / ``--at FILE:LINE``: the first fault whose RIP, taken back to an ELF address
  (RIP − (start_code − the lowest executable p_vaddr)), lies in that function or line;
- ``--kind K``: the first fault that looks like K when it enters the kernel (the error code, the PTE
  and the VMA the maple tree gives, read for every candidate), checked afterwards against the class
  the events give; ``--kind kernel``: the first fault on a user address taken in kernel mode (x86's
  exceptions:page_fault_kernel: a system call touching user memory, e.g. read() copying into a fresh
  buffer), with the system call it was taken in.

Only the chosen fault pays for the deep reads: the walk and kernel objects at its entry, the walk and
its struct page at the thread's next kernel entry, where the program stops it (bpf_send_signal(SIGSTOP)) so
that /proc can be read; then it runs on (SIGCONT).

The direct map's base, which the walk needs, is derived once per boot by a journey of the exercise
program (mm->pgd − the PGD's physical address) and kept in the tool's state directory with how it was found.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Callable

from .. import __version__
from ..evidence import BpfWalk, ProgramFaultEvidence
from ..kernel import facts
from ..kernel.boot import boot_id
from ..kernel.kallsyms import KernelSymbols
from ..symbols.elf import line_ranges, min_exec_vaddr, rip_facts
from ..symbols.objects import (
    dlopen_candidates,
    find_function,
    find_line,
    loaded_objects,
    may_dlopen,
    named_file,
    nearest_names,
)
from . import procfs
from .bpf_walk import (
    EXEC_HOOK,
    EXIT_HOOK,
    FAULT_HOOK,
    FAULT_KERNEL_HOOK,
    HAVE_KERNEL_MODE,
    KINDS,
    MODE_PROGRAM,
    SEL_ADDRESS,
    SEL_KIND,
    SEL_NTH,
    SEL_OWN_CODE,
    SEL_RANGES,
    STACK_REACH,
    STAGE_DONE,
    SYSCALL_HOOK,
    WALK_RANGES,
    BpfError,
    WalkObject,
    wait_for_vmemmap,
)
from .journey_capture import decode_trace_events, walk_engine_problem
from .kaslr import kaslr_seen
from .perf_event import SAMPLE_CALLCHAIN, PerfError, PerfSession
from .records import parse_stream
from .resume_guard import ResumeGuard, process_state, refuse_stopped
from .runner import Target, TargetError, attach, spawn_held
from .safe_paths import OutputError, root_safe_state_dir, write_output
from .seen_instead import seen_instead
from .tracer import TRACEPOINT_SAMPLE, CaptureError, NothingMatched, TargetProblem, release_target, tracepoint_events

PROGRAM_TRACEPOINTS = (
    ("exceptions", "page_fault_user", True),
    ("kmem", "mm_page_alloc", True),
    ("filemap", "mm_filemap_add_to_page_cache", False),
    ("signal", "signal_generate", False),
)
# --kind kernel: the faults taken in kernel mode too, with their kernel call chains (which system call)
KERNEL_FAULT_TRACEPOINT = ("exceptions", "page_fault_kernel", True)


def direct_map_base(progress: Callable[[str], None]) -> tuple[int, str]:
    """page_offset_base for this boot, with how it was derived; derived by an exercise journey once per boot.

    :returns: (page_offset_base, how it was derived).
    :raises CaptureError: it could not be derived (the exercise's walk did not run: not root, or no BPF)."""
    boot = boot_id()
    cache = root_safe_state_dir() / f"direct-map-{boot}.json" if boot else None
    if cache is not None:
        try:
            kept = json.loads(cache.read_text())
            return int(kept["base"]), kept["how"]
        except (OSError, ValueError, KeyError):
            pass
    from ..evidence import ExerciseOptions
    from .journey_capture import LiveJourney
    progress("deriving the direct map's base once for this boot (a journey of the exercise program)")
    live = LiveJourney(ExerciseOptions(), tier="bpf", progress=progress)
    try:
        ev = live.run_all()
    finally:
        live.close()
    if ev.bpf is None:
        raise CaptureError("the direct map's base could not be derived: " + ev.unavailable.get("bpf", "no walk"))
    before = ev.bpf.reads["before"]
    how = (f"derived this boot from a journey of the exercise program (PID {ev.pid}): mm->pgd 0x{before.pgd_virtual:x} "
           f"− the PGD's physical address 0x{ev.bpf.pgd_physical:x} (its mm_page_alloc under pgd_alloc)")
    if cache is not None:
        # only a cache: where it cannot be kept (a read-only home, a full disk) the next journey derives it again
        try:
            cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_output(cache, json.dumps({"base": ev.bpf.direct_map_base, "how": how}), force=True)
        except (OSError, OutputError):
            pass
    return ev.bpf.direct_map_base, how


def _range_settings(ranges: list[tuple[int, int, int]], elf_low: int) -> dict:
    """SEL_RANGES's settings: (lo, hi, inode) each, inode 0 for the executable's ELF addresses."""
    ranges = ranges[:WALK_RANGES]
    pad = [0] * (WALK_RANGES - len(ranges))
    return {"selector": SEL_RANGES, "elf_low": elf_low, "nranges": len(ranges),
            "range_lo": [r[0] for r in ranges] + pad, "range_hi": [r[1] for r in ranges] + pad,
            "range_ino": [r[2] for r in ranges] + pad}


def _line_settings(value: str, exe: str | None, maps: list | None) -> tuple[dict, str]:
    """--at FILE:LINE: code of that line in the executable (its RIP or its call chain), else in a library
    whose line table (its own or its debug file's) has it (its RIP: the kernel-side chain check reads the
    executable's ranges only)."""
    if not exe:
        raise CaptureError("--at FILE:LINE needs the program's executable file")
    low = min_exec_vaddr(exe)
    if low is None:
        raise CaptureError(f"{exe} is not an ELF file with executable segments")
    file, _, line = value.rpartition(":")
    ranges = line_ranges(exe, file, int(line))
    if ranges:
        words = (f"the first fault whose RIP is on {value}, or whose user call chain passes through it (DWARF: "
                 f"{len(ranges)} address range(s); the chain: the return address at the stack pointer and the "
                 "frame-pointer chain's)")
        return dict(_range_settings([(lo, hi, 0) for lo, hi in ranges], low), chain=1), words
    objects = loaded_objects(exe, maps)
    found = find_line(objects, file, int(line), WALK_RANGES)
    if found is None or not found.ranges:
        libraries = ", ".join(o.name for o in objects if not o.executable) or "none"
        raise NothingMatched(f"no code for {value} in the DWARF line table of {exe}, nor in its libraries' "
                             f"({libraries}; a library's needs its debug file, e.g. libc6-dbg); fix: build with -g, "
                             "or give a function name")
    spans = ", ".join(f"0x{lo:x}..0x{hi:x}" for lo, hi in found.ranges)
    words = f"the first fault whose RIP is on {value} ({found.how}; {found.obj.name} file offsets {spans})"
    return _range_settings([(lo, hi, found.obj.inode) for lo, hi in found.ranges], 0), words


def _symbol_settings(name: str, exe: str | None, maps: list | None, cwd: str | None = None) -> tuple[dict, str]:
    """--at SYMBOL or OBJECT:SYMBOL: the function in the executable or one of its libraries: those loaded at start,
    then those it names for dlopen() (symbols.objects.dlopen_candidates, resolved from `cwd`, its working
    directory), or the library whose path OBJECT is. A library's ranges are file offsets in the file of its inode,
    which the walk matches wherever and whenever the file is mapped: a dlopen()ed one too."""
    objects = loaded_objects(exe, maps)
    if not objects:
        raise CaptureError("--at SYMBOL needs the program's executable file")
    found = find_function(objects, name, WALK_RANGES)
    if found is None or not found.ranges:
        later = named_file(name) or (dlopen_candidates(exe, cwd or os.getcwd(), objects) if exe else [])
        objects += later
        found = find_function(later, name, WALK_RANGES) or found
    names = ", ".join(o.name for o in objects)
    if (found is None or not found.ranges) and not name.rpartition(":")[0].startswith("/") and exe \
            and may_dlopen(objects):
        # it may be in a library the program maps later under a name no file foresaw: the program runs, the walk
        # matches nothing, and the miss names the libraries it mapped that have the function (seen_instead)
        return _range_settings([], 0), (f"the first fault whose RIP is in {name} (in none of {names} at the start: "
                                        "searched after the run in the libraries the program maps, as it dlopen()s)")
    if found is None or not found.ranges:
        near = nearest_names(objects, name)
        why = found.how if found is not None else (
            f"no function {name!r} in the symbols of {names} (the program, the libraries it loads at start and "
            "those it names for dlopen)")
        raise NothingMatched(why + (f"; nearest names: {', '.join(near)}" if near else "") +
                             "; fix: give another name, an address, or FILE:LINE; for a library the program "
                             "dlopen()s under a name it makes at run time, its path: --at /path/to/lib.so:FUNCTION")
    low = 0
    if found.obj.executable:
        low = min_exec_vaddr(found.obj.path) or 0
    unit = "ELF" if found.obj.executable else "file offsets"
    spans = ", ".join(f"0x{lo:x}..0x{hi:x}" for lo, hi in found.ranges)
    words = f"the first fault whose RIP is in {name} ({found.how}; {found.obj.name} {unit} {spans})"
    ino = 0 if found.obj.executable else found.obj.inode
    return _range_settings([(lo, hi, ino) for lo, hi in found.ranges], low), words


def selector_settings(selector: str, value: str | int | None, exe: str | None,
                      maps: list | None = None, cwd: str | None = None) -> tuple[dict, str]:
    """The walk's settings that pick the fault (journey_walk.h walk_settings), and the selector in words.
    `maps`: a running process's /proc/PID/maps lines (its libraries), None for a program not yet started;
    `cwd`: the program's working directory, where a library it names for dlopen() by a relative path is
    (default: ours, which a started program inherits).

    :returns: (the settings, the selector in words).
    :raises CaptureError: --at FILE:LINE without an ELF executable to read.
    :raises NothingMatched: the line or symbol is not in the file (the message has the fix)."""
    if selector == "nth":
        return {"selector": SEL_NTH, "nth": int(value or 1)}, f"the program's fault number {value}"
    if selector == "address":
        return ({"selector": SEL_ADDRESS, "page": int(value or 0) & ~0xFFF},
                f"the first fault on the page of 0x{int(value or 0):x}")
    if selector == "symbol":
        return _symbol_settings(str(value), exe, maps, cwd)
    if selector == "line":
        return _line_settings(str(value), exe, maps)
    if selector == "kind" and value == "kernel":
        return ({"selector": SEL_KIND, "kind": KINDS.index("kernel")},
                "the first fault on a user address taken in kernel mode (inside a system call)")
    if selector == "kind":
        return ({"selector": SEL_KIND, "kind": KINDS.index(str(value))},
                f"the first fault that enters the kernel looking like a {value} fault")
    return ({"selector": SEL_OWN_CODE},
            "the first fault in the program's own code (RIP inside its executable's text)")


class ProgramFault:
    """Run (or attach to) a program and capture the journey of one of its faults."""

    # pages per CPU and event of the perf buffers: enough for ~50 ms of a fast-faulting program between
    # two reads (tests shrink it to stand for a machine where the program is followed a long while before its fault)
    perf_pages = 256

    def __init__(self, argv: list[str] | None, pid: int | None, selector: str, value, progress=None,
                 timeout: float | None = None):
        self.progress = progress or (lambda _m: None)
        self.timeout = timeout
        if not facts.is_root():
            raise CaptureError("the journey of a program's fault reads kernel memory with BPF: run as root (sudo)")
        self.argv, self.pid_given, self.selector, self.value = argv, pid, selector, value

    def run(self) -> ProgramFaultEvidence:
        say = self.progress
        if self.argv:
            import shutil
            if not shutil.which(self.argv[0]):
                raise TargetProblem(f"cannot run {self.argv[0]!r}: no such program (give its path, or a command on PATH)")
        problem = walk_engine_problem()
        if problem:
            raise CaptureError(f"the journey of a program's fault needs the compiled walk: {problem}")
        levels, levels_why = facts.paging_levels()
        base, base_how = direct_map_base(say)
        try:
            target: Target = spawn_held(self.argv) if self.argv else attach(self.pid_given or 0)
        except TargetError as exc:
            raise TargetProblem(str(exc)) from None
        guard = None
        if not target.spawned:
            why = refuse_stopped(target.pid)
            if why:
                raise TargetProblem(why)
            # the walk stops it after the fault: if pagefault dies then, the guard continues it
            guard = ResumeGuard(target.pid)
        try:
            return self._follow(target, levels, levels_why, base, base_how)
        finally:
            if guard is not None:
                guard.disarm()

    def _evidence(self, target: Target, levels: int, levels_why: str, base_how: str,
                  words: str) -> ProgramFaultEvidence:
        """The evidence's frame before anything is traced: the kernel's facts and tables, what was asked for."""
        table, gfp = facts.fault_flag_values(), facts.gfp_bits()
        enums, enums_source = facts.kernel_enums()
        captured_at, host = facts.capture_origin()
        return ProgramFaultEvidence(facts.kernel_release(), facts.kernel_version(), levels, levels_why,
                                    list(target.argv), target.pid, words, self.selector, str(self.value or ""),
                                    fault_flag_table=table.values, fault_flag_source=table.source,
                                    gfp_table=gfp.values, gfp_source=gfp.source, kernel_enums=enums,
                                    kernel_enums_source=enums_source, direct_map_how=base_how,
                                    captured_at=captured_at, host=host, tool_version=__version__)

    def _follow(self, target: Target, levels: int, levels_why: str, base: int,
                base_how: str) -> ProgramFaultEvidence:
        say = self.progress
        program = self._executable(target)
        choice, words = selector_settings(self.selector, self.value, program, *self._attached_objects(target))
        ev = self._evidence(target, levels, levels_why, base_how, words)
        kernel_mode = self.selector == "kind" and self.value == "kernel"
        events, formats, notes = tracepoint_events(PROGRAM_TRACEPOINTS + (KERNEL_FAULT_TRACEPOINT,) * kernel_mode)
        for note in notes:
            ev.unavailable[note.split(" ", 1)[0]] = note
        ev.event_sources = {spec.name: f"tracepoint {spec.name} via perf_event_open" for spec in events}
        settings = dict(choice, target_tgid=target.pid, levels=levels, mode=MODE_PROGRAM, from_exec=int(bool(self.argv)),
                        stop_after=1, direct_map_base=base, stack_reach=STACK_REACH)
        session = obj = None
        try:
            session = PerfSession(events, target.pid, enable_on_exec=bool(self.argv), callchain=True, data_pages=self.perf_pages,
                                  monotonic_clock=True)
            session.enable()
            # The buffers are read all along, not once at the end: a running process fills them, and a full
            # buffer drops the samples of the very fault that is chosen next (its allocation went missing and
            # the fault read as spurious).
            drained = _Drained(session)
            say("loading the compiled walk (it picks the fault in the kernel)")
            try:
                obj = WalkObject(settings, (FAULT_HOOK, SYSCALL_HOOK, EXEC_HOOK, EXIT_HOOK) + (FAULT_KERNEL_HOOK,) * kernel_mode,
                                 levels)
            except BpfError as exc:
                raise CaptureError(str(exc)) from None
            ev.event_sources["walk"] = obj.describe()
            wait_for_vmemmap(obj)
            drained.read()
            if self.argv:
                release_target(target)
            say(f"PID {target.pid} runs at full speed until {words}")
            stopped = self._wait_for_stop(obj, target, drained.read, session, words)
            _selected(ev, obj)
            if stopped and "before" in obj.walked.reads:   # (a fault at address 0 is a chosen fault too)
                ev.paused = self._read_proc(target.pid, ev)
                os.kill(target.pid, signal.SIGCONT)
            if self.argv:
                target.wait()
                ev.exit = target.describe_exit()
            elif not target.poll() or _is_zombie(target.pid):
                ev.exit = "ended while it was followed"
            drained.read()
            counts = session.event_counts()
        except PerfError as exc:
            raise CaptureError(str(exc)) from None
        finally:
            if obj is not None:
                obj.close()
            if session is not None:
                session.close()
            # an attached process is continued only if the walk may have stopped it: a stop its owner made
            # while the walk waited for the fault is theirs
            target.end(signal.SIGKILL, resume=obj is not None and obj.stage_at_close == STAGE_DONE)
            target.wait()
        ev.events, ev.lost_events = decode_trace_events(b"".join(drained.chunks), TRACEPOINT_SAMPLE | SAMPLE_CALLCHAIN,
                                                        formats, KernelSymbols.load())
        # the kernel's own count of each event against the samples kept: drops after the last
        # PERF_RECORD_LOST (or when the oldest were let go) show only here
        if counts is not None:
            ev.lost_events = max(ev.lost_events, sum(counts.values()) - len(ev.events) - drained.dropped_samples)
        _walk_read(ev, obj, base)
        if "before" not in obj.walked.reads:
            instead = ""
            if self.selector in ("symbol", "line"):
                mmaps = parse_stream(b"".join(drained.chunks), TRACEPOINT_SAMPLE | SAMPLE_CALLCHAIN).mmaps
                instead = seen_instead(self.selector, str(self.value), ev.events, mmaps, program,
                                       set(choice.get("range_ino", [])) - {0})
            raise NothingMatched(f"no fault matched: {words}; the program {ev.exit or 'ran'} "
                                 f"({sum(e.name == 'exceptions:page_fault_user' for e in ev.events):,} faults seen)"
                                 + (f"; {instead}" if instead else ""))
        mapping = next((m for m in ev.maps if m.start <= ev.ip < m.end), None)
        if mapping is not None:
            ev.rip = rip_facts(ev.ip, mapping)
        return ev

    def _attached_objects(self, target: Target) -> tuple[list | None, str | None]:
        """An attached process's /proc/PID/maps lines (its libraries, for --at SYMBOL or FILE:LINE) and working
        directory (where a library it names for dlopen() by a relative path is); (None, None) for a program
        started here (its libraries from its executable, its directory ours)."""
        if self.argv:
            return None, None
        maps = cwd = None
        if self.selector in ("symbol", "line"):
            try:
                maps = procfs.read_maps(target.pid)
            except OSError:
                maps = None
        try:
            cwd = os.readlink(f"/proc/{target.pid}/cwd")
        except OSError:
            cwd = None
        return maps, cwd

    def _executable(self, target: Target) -> str | None:
        if self.argv:
            import shutil
            found = shutil.which(self.argv[0])
            return os.path.realpath(found) if found else None
        try:
            return os.readlink(f"/proc/{target.pid}/exe")
        except OSError:
            return None

    def _wait_for_stop(self, obj: WalkObject, target: Target, each_round: Callable[[], None],
                       session: PerfSession, words: str) -> bool:
        """Until the walk has read the chosen fault's second moment and stopped the program (False: the chosen
        thread, or the program, a spawned or an attached one, ended first). `each_round` runs every 50 ms or
        so; a progress line every 5 s says how many faults the program took (the kernel's count of the
        tracepoint's firings).

        :raises NothingMatched: --timeout passed with no fault matched."""
        started = last_said = time.monotonic()
        while "after" not in obj.walked.reads:
            each_round()
            obj.poll(50)
            if "after" in obj.walked.reads:
                break
            if obj.walked.exited or obj.state.stage == STAGE_DONE:
                obj.poll(0)
                return "after" in obj.walked.reads
            if not target.poll() or _is_zombie(target.pid):
                obj.poll(0)
                return "after" in obj.walked.reads
            now = time.monotonic()
            if self.timeout is not None and now - started > self.timeout:
                raise NothingMatched(f"no fault matched {words} within {self.timeout:g} s; PID {target.pid} took "
                                     f"{_faults_seen(session)} faults meanwhile (it is left running)")
            if now - last_said >= 5:
                self.progress(f"PID {target.pid}: {_faults_seen(session)} faults in {now - started:.0f} s, none "
                              f"matched {words} yet" + ("" if self.timeout else " (Ctrl-C stops; --timeout S gives up)"))
                last_said = now
        return True

    def _read_proc(self, pid: int, ev: ProgramFaultEvidence) -> bool:
        """/proc while the program is held stopped after the fault (the walk's SIGSTOP)."""
        for _ in range(200):   # the SIGSTOP lands as the thread returns to user mode
            state = process_state(pid)
            if not state:
                return False
            if state in ("T", "t"):
                break
            time.sleep(0.005)
        try:
            ev.maps = procfs.read_maps(pid)
            ev.pagemap = procfs.pagemap_entry(pid, ev.address)
            pfn = ev.pagemap & ((1 << 55) - 1) if ev.pagemap >> 63 else 0
            if pfn:
                ev.kpageflags, ev.kpagecount = procfs.read_kpageflags(pfn), procfs.read_kpagecount(pfn)
        except OSError as exc:
            ev.unavailable["/proc"] = f"/proc/{pid} could not be read while stopped: {exc}"
        return True


def _faults_seen(session: PerfSession) -> str:
    counts = session.event_counts() or {}
    n = counts.get("exceptions:page_fault_user")
    return f"{n:,}" if n is not None else "an unknown number of"


def _is_zombie(pid: int) -> bool:
    """An attached process that exited but is not yet reaped by its parent still answers kill(pid, 0)."""
    return process_state(pid) in ("Z", "X", "")


class _Drained:
    """The session's records read so far, newest kept: at most KEEP_BYTES, the oldest let go first (a
    process followed for minutes fills memory otherwise; the chosen fault's window is the newest)."""

    KEEP_BYTES = 256 << 20

    def __init__(self, session: PerfSession):
        self.session = session
        self.chunks: list[bytes] = []
        self.kept = 0
        self.dropped_samples = 0      # samples let go here on purpose: not lost by the kernel

    def read(self) -> None:
        for chunk in self.session.drain():
            self.chunks.append(chunk)
            self.kept += len(chunk)
        while self.kept > self.KEEP_BYTES and len(self.chunks) > 1:
            old = self.chunks.pop(0)
            self.kept -= len(old)
            self.dropped_samples += len(parse_stream(old, TRACEPOINT_SAMPLE | SAMPLE_CALLCHAIN).samples)


def _selected(ev: ProgramFaultEvidence, obj: WalkObject) -> None:
    """The chosen fault as the walk recorded it at its entry: thread, number, address, RIP, error code, time."""
    rec = obj.walked.raw.get("before")
    if rec is not None:
        ev.tid, ev.nth, ev.address, ev.ip, ev.error_code, ev.fault_ns = (
            int(rec["tid"]), int(rec["nth"]), int(rec["address"]), int(rec["ip"]), int(rec["error_code"]),
            int(rec["time_ns"]))
        if int(rec["have"]) & HAVE_KERNEL_MODE:
            ev.kernel_mode = True
            ev.syscall_nr = int(rec["syscall_nr"])


def _walk_read(ev: ProgramFaultEvidence, obj: WalkObject, base: int) -> None:
    """What the compiled walk read of the chosen fault's tables, into the evidence."""
    reads = obj.walked.reads
    if "before" in reads:
        pgdv = reads["before"].pgd_virtual
        # the PGD's physical address follows from the base: mm->pgd (read) − base (derived this boot)
        ev.bpf = BpfWalk(base, pgdv - base if pgdv is not None else 0, dict(reads), obj.describe(), obj.lost_note())
        if obj.walked.vmemmap:
            ev.bpf.vmemmap_base, ev.bpf.vmemmap_folio, ev.bpf.vmemmap_pfn, ev.bpf.struct_page_size = obj.walked.vmemmap
        ev.bpf.kaslr_on, ev.bpf.kaslr_how = kaslr_seen()
