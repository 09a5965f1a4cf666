"""Live evidence for the journey of one page fault: the exercise program run phase by phase under
perf_event_open (and the compiled walk, capture/bpf/journey_walk.bpf.c, in the bpf tier), with /proc
snapshots while it is paused.

This module only gathers what the machine shows; pagefault.journey turns it into steps.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from .. import __version__
from ..evidence import JourneyEvidence, Snapshot, TraceEvent
from ..kernel import facts
from ..kernel.kallsyms import KernelSymbols, TextSymbols
from . import procfs
from .bpf import BpfObjectMissing, object_path
from .bpf_walk import OBJECT, BpfError, BpfTracer
from .exercise import ExerciseError, ExerciseOptions, ExerciseProcess, build_program
from .kprobes import (
    FAULT_HANDLERS,
    MMAP_FUNCTIONS,
    FaultPathChoice,
    fault_from_events,
    fault_path_programs,
    kprobe_support,
    mmap_from_events,
)
from .libbpf import LibbpfError, lib
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
from .records import callchain, parse_stream, raw_field, split_callchain
from .tracer import TRACEPOINT_SAMPLE, CaptureError, tracepoint_events

JOURNEY_TRACEPOINTS = (
    ("exceptions", "page_fault_user", True),
    ("kmem", "mm_page_alloc", True),
    ("syscalls", "sys_enter_mmap", False),
    ("syscalls", "sys_exit_mmap", False),
    ("mmap", "vm_unmapped_area", False),
    ("sched", "sched_process_exec", False),
    # fires when the target takes mmap_lock (lock or trylock): its absence during the fault is evidence
    # of the per-VMA lock path
    ("mmap_lock", "mmap_lock_acquire_returned", False),
)


def walk_engine_problem() -> str | None:
    """Why the compiled walk cannot run here, with the fix; None when libbpf and the built object are here.

    Raises nothing: a missing library or object is the returned reason."""
    try:
        lib()
        object_path(OBJECT)
    except (LibbpfError, BpfObjectMissing) as exc:
        return str(exc)
    return None


def choose_journey_tier(requested: str, engine_ok: Callable[[], bool]) -> str:
    """The journey's tier: ``requested`` itself when it names one, else bpf as root (perf where ``engine_ok()``

    says the compiled walk cannot run), else user where perf_event_paranoid allows it.
    :returns: "bpf", "perf" or "user".
    :raises CaptureError: not root and perf_event_paranoid above 2 (the message has the fix)."""
    if requested in ("bpf", "perf", "user"):
        return requested
    if facts.is_root():
        return "bpf" if engine_ok() else "perf"
    paranoid = facts.perf_event_paranoid()
    if paranoid is not None and paranoid <= 2:
        return "user"
    raise CaptureError(f"cannot trace here: not root and perf_event_paranoid is {paranoid}; fix: run as root "
                       "(sudo), or sysctl kernel.perf_event_paranoid=2 for the unprivileged tier")


class LiveJourney:
    """Drives the exercise program through its phases; evidence grows stage by stage.

    start() → "ready" (after exec, before mmap); next_stage() → "mapped" (after mmap, before the
    write); → "touched" (after the fault, the write done); → "done" (the program has exited).
    The target stays paused at each stage until next_stage() is called.
    """

    def __init__(self, options: ExerciseOptions, tier: str = "auto", progress: Callable[[str], None] | None = None):
        options.check()
        self.progress = progress or (lambda _m: None)
        # libbpf and the built object are enough to choose the bpf tier: if the load then fails, the walk's
        # entries are shown unavailable with the kernel's reason (pagefault doctor runs the full check)
        tier = choose_journey_tier(tier, lambda: walk_engine_problem() is None)
        levels, why = facts.paging_levels()
        gfp = facts.gfp_bits()
        migratetypes, migratetype_source = facts.migratetype_names()
        captured_at, host = facts.capture_origin()
        enums, enums_source = facts.kernel_enums()
        self.ev = JourneyEvidence(tier, facts.kernel_release(), facts.kernel_version(), levels, why,
                                  build_program(self.progress), options, soft_dirty_config=facts.kernel_config_flag(
                                      "CONFIG_MEM_SOFT_DIRTY"),
                                  gfp_table=gfp.values, gfp_source=gfp.source, migratetypes=migratetypes,
                                  migratetype_source=migratetype_source, kernel_enums=enums,
                                  kernel_enums_source=enums_source, captured_at=captured_at, host=host,
                                  tool_version=__version__)
        # The kernel's symbols (for the call chains: TextSymbols, one numpy pass over kallsyms) and its
        # fault-flag values (from BTF) are read in a thread while the program starts and the walk loads (the
        # waits for the program let go of the GIL, and a quiet libbpf load takes none), joined where first needed.
        self._ksyms: KernelSymbols | TextSymbols | None = None
        self._tables_joined = False
        self._preload = threading.Thread(target=self._read_kernel_tables_quietly, name="pagefault-kernel-tables")
        self._preload.start()
        self._closing: list[threading.Thread] = []
        self.proc: ExerciseProcess | None = None
        self.session: PerfSession | None = None
        self.formats: dict = {}
        self.sample_type = 0
        self.chunks: list[bytes] = []
        self.tracer: BpfTracer | None = None
        self.fault_path: FaultPathChoice | None = None
        self.pgd_physical: int | None = None
        self.kprobes = False
        if tier == "bpf":
            self.kprobes, why = kprobe_support()
            if not self.kprobes:
                self.ev.unavailable["kprobes"] = (f"{why}; so handle_mm_fault's flags, return value, duration and "
                                                  "handlers are not observed (the flags are derived from the error code)")

    # -- stages ---------------------------------------------------------------------------------------

    def start(self) -> JourneyEvidence:
        ev = self.ev
        if ev.tier in ("bpf", "perf"):
            events, self.formats, notes = tracepoint_events(JOURNEY_TRACEPOINTS)
            for note in notes:
                ev.unavailable[note.split(" ", 1)[0]] = note + "; a kernel with that tracepoint shows this step"
            self.sample_type = TRACEPOINT_SAMPLE | SAMPLE_CALLCHAIN
        else:
            events = [EventSpec("page-faults", PERF_TYPE_SOFTWARE, PERF_COUNT_SW_PAGE_FAULTS,
                                SAMPLE_IP | SAMPLE_TID | SAMPLE_TIME | SAMPLE_ADDR | SAMPLE_CPU,
                                user_only=not facts.is_root())]
            self.sample_type = events[0].sample_type | SAMPLE_CALLCHAIN
            ev.unavailable["tracepoints"] = ("the unprivileged tier sees the software page-fault event only "
                                             "(address and ip); fix: run as root for tracepoints")
        for spec in events:
            ev.event_sources[spec.name] = (f"tracepoint {spec.name} via perf_event_open"
                                          if spec.type != PERF_TYPE_SOFTWARE else
                                          "software event page-faults via perf_event_open")
        try:
            self.proc = ExerciseProcess(ev.program, ev.options)
        except ExerciseError as exc:
            raise CaptureError(str(exc)) from None
        ev.pid, ev.argv = self.proc.pid, self.proc.argv
        ev.spawned_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        try:
            if ev.tier == "bpf":
                self._load_walk()     # while the program is held before its exec
            # Enabled now, not on exec: the exec itself (its new mm and PGD) is part of the story.
            self.session = PerfSession(events, self.proc.pid, enable_on_exec=False, callchain=True,
                                       data_pages=256, monotonic_clock=True)
            self.session.enable()
            self.proc.release()
            self._phase("ready")
            if self.tracer:
                self._arm_walk()
        except (PerfError, ExerciseError) as exc:
            self.close()
            raise CaptureError(str(exc)) from None
        return ev

    def next_stage(self) -> JourneyEvidence:
        stage = self.ev.stage
        try:
            if stage == "ready":
                self._running.advance()
                phase = self._phase("mapped")
                self.ev.vaddr = int(phase.fields["vaddr"], 16)
                if self.tracer:
                    address = self.ev.fault_address     # known now: vaddr was just read
                    if self.pgd_physical is not None and address is not None:
                        self.tracer.set_page(address, self.pgd_physical)
                    if self.fault_path and self.fault_path.mmap_function:
                        self.tracer.obj.poll(0)
                        self.ev.kprobe_mmap = mmap_from_events(self.tracer.obj.walked.events,
                                                               self.fault_path.mmap_function,
                                                               self.fault_path.mmap_not_probeable)
                        if self.ev.kprobe_mmap is None:
                            self.ev.unavailable["kprobe mmap"] = (f"the {self.fault_path.variant} probe saw no return "
                                                                  f"from {self.fault_path.mmap_function}")
                    elif self.fault_path:
                        self.ev.unavailable["kprobe mmap"] = "no VMA-making function can be probed: " + "; ".join(
                            f"{fn}: {why}" for fn, why in self.fault_path.mmap_not_probeable.items())
                self._snapshot_page("mapped")
            elif stage == "mapped":
                self._running.advance()
                phase = self._phase("touched")
                self.ev.readback = phase.fields.get("readback", "")
                self._snapshot_page("touched")
                if self.tracer:
                    try:
                        self.ev.bpf = self.tracer.result()
                    except BpfError as exc:
                        self.ev.unavailable["bpf"] = f"{exc}"
                    if self.fault_path and self.ev.bpf:
                        self.ev.kprobe_fault = fault_from_events(self.tracer.obj.walked.events,
                                                                 self.fault_path.not_probeable)
                        if self.ev.kprobe_fault is None:
                            self.ev.unavailable["kprobes"] = (f"the {self.fault_path.variant} program on "
                                                              "handle_mm_fault did not fire for the fault")
                    self._close_later(self.tracer.stop)
                    self.tracer = None
            elif stage == "touched":
                self.ev.exit = self._running.finish()
                self._collect()
                self.ev.stage = "done"
                self.close()
            else:
                raise CaptureError(f"the journey is already at its end ({stage})")
        except ExerciseError as exc:
            self.close()
            raise CaptureError(str(exc)) from None
        return self.ev

    def run_all(self) -> JourneyEvidence:
        self.start()
        while self.ev.stage != "done":
            self.next_stage()
        return self.ev

    def close(self) -> None:
        if self.tracer:
            self._close_later(self.tracer.stop)
            self.tracer = None
        if self.session:
            self._close_later(self.session.close)
            self.session = None
        if self.proc and self.proc.target.status is None:
            self.proc.kill()

    # -- helpers --------------------------------------------------------------------------------------

    def _read_kernel_tables(self) -> None:
        ff = facts.fault_flag_values()
        self._fault_flags = ff
        self._ksyms = TextSymbols()

    def _read_kernel_tables_quietly(self) -> None:
        """The thread's reading: an error is left for the main thread to meet again (no thread traceback)."""
        try:
            self._read_kernel_tables()
        except Exception:   # noqa: BLE001 - read again, and raised, where the tables are needed
            self._ksyms = None

    @property
    def ksyms(self) -> KernelSymbols | TextSymbols:
        """The kernel's symbols, once the thread reading them is done (and the fault-flag table with them)."""
        if not self._tables_joined:
            self._preload.join()
            if self._ksyms is None:     # the thread failed: read here, so that its error is raised here
                self._read_kernel_tables()
            ff = self._fault_flags
            self.ev.fault_flag_table, self.ev.fault_flag_source = ff.values, ff.source
            self._tables_joined = True
        assert self._ksyms is not None
        return self._ksyms

    def _close_later(self, close: Callable[[], None]) -> None:
        """Close in a thread: perf events and BPF links take an RCU grace period or more each to go, time
        the journey can spend building its steps. Joined by wait_closed() (and by Python at exit)."""
        t = threading.Thread(target=close, name="pagefault-close")
        t.start()
        self._closing.append(t)

    def wait_closed(self) -> None:
        while self._closing:
            self._closing.pop().join()

    @property
    def _running(self) -> ExerciseProcess:
        """The exercise program, which start() runs before any stage.

        :raises ExerciseError: start() has not run it."""
        if self.proc is None:
            raise ExerciseError("the exercise program is not running: start() first")
        return self.proc

    def _phase(self, name: str):
        phase = self._running.wait_phase()
        if phase.name != name:
            raise ExerciseError(f"the exercise program reported {phase.name!r} where {name!r} was expected")
        self.ev.stage = name
        pid = self._running.pid
        counters = procfs.read_fault_counters(pid)
        self.ev.snapshots[name] = Snapshot(name, time.clock_gettime_ns(time.CLOCK_MONOTONIC),
                                           procfs.read_maps(pid), counters[0], counters[1])
        self._collect()
        self.progress(f"target PID {pid} paused at phase {name}")
        return phase

    def _snapshot_page(self, name: str) -> None:
        snap, pid, ev = self.ev.snapshots[name], self._running.pid, self.ev
        if ev.vaddr is None or ev.fault_address is None:
            raise ExerciseError(f"phase {name}: the exercise program has not said where it mapped its page")
        try:
            snap.pagemap = procfs.pagemap_entry(pid, ev.fault_address)
        except OSError as exc:
            snap.errors.append(f"pagemap: {exc}")
        try:
            snap.vm_flags_mnemonics = procfs.read_smaps_vmflags(pid, ev.vaddr)
        except OSError as exc:
            snap.errors.append(f"smaps: {exc}")
        for page in ev.written_pages()[1:]:
            try:
                snap.more_pagemaps[page] = procfs.pagemap_entry(pid, page)
            except OSError as exc:
                snap.errors.append(f"pagemap of 0x{page:x}: {exc}")
        pfn = (snap.pagemap or 0) & ((1 << 55) - 1)
        if snap.pagemap and snap.pagemap >> 63 and pfn:
            try:
                snap.kpageflags = procfs.read_kpageflags(pfn)
                snap.kpagecount = procfs.read_kpagecount(pfn)
            except OSError as exc:
                snap.errors.append(f"/proc/kpageflags: {exc.strerror or exc}; fix: run as root")

    def _collect(self) -> None:
        """Drain the ring buffers and decode everything so far: the evidence matches the stage reached."""
        if self.session:
            self.chunks.extend(self.session.drain())
        self._decode_events()

    def _load_walk(self) -> None:
        """Load and attach the compiled walk while the program is held before its exec; the page it follows
        and the PGD are written into its state later (_arm_walk, then the mapped phase). With kprobes or BPF
        trampolines, the fault-path programs ride in the same object: fentry first, then kprobes, then none."""
        self.progress("loading the compiled walk of the page-table entries")
        attempts: list[FaultPathChoice | None] = []
        if self.kprobes:
            attempts += [c for c in (fault_path_programs("fentry"), fault_path_programs("kprobe")) if c.programs]
        attempts.append(None)
        refused: list[str] = []
        for choice in attempts:
            try:
                self.tracer = self._walk_with(choice)
            except BpfError as exc:
                if choice is None:
                    self.ev.unavailable["bpf"] = str(exc)
                    return
                refused.append(f"{choice.variant}: {exc}")
                continue
            self.fault_path = choice
            break
        if self.kprobes and self.fault_path is None:
            self.kprobes = False
            self.ev.unavailable["kprobes"] = ("the fault-path programs did not load (" + "; ".join(refused)
                                              + "); the walk ran without them")
        elif self.fault_path is not None:
            why = f"; {refused[0]}" if refused else ""
            self.ev.event_sources["handle_mm_fault"] = (
                f"{self.fault_path.variant} programs of the compiled walk on handle_mm_fault and its handlers"
                + (" (BPF trampolines: no breakpoint per call)" if self.fault_path.variant == "fentry" else
                   f" (fentry refused here{why})"))
        if self.tracer is not None:
            self.ev.event_sources["walk"] = self.tracer.obj.describe()

    def _walk_with(self, choice: FaultPathChoice | None) -> BpfTracer:
        """The walk with `choice`'s fault-path programs; a handler's program the kernel refuses (a function
        in BTF it will not attach to) is dropped and named, up to three times, before the variant is given up."""
        assert self.proc is not None
        if choice is None:
            return BpfTracer(self.proc.pid, self.ev.paging_levels)
        for _ in range(3):
            try:
                return BpfTracer(self.proc.pid, self.ev.paging_levels, choice.programs)
            except BpfError as exc:
                droppable = [p for p in exc.refused if p in choice.programs
                             and p not in ("hmf_fentry", "hmf_fexit", "hmf_kprobe", "hmf_kretprobe")]
                if not droppable:
                    raise
                for prog in droppable:
                    fn = prog.split("_", 1)[1]
                    table = choice.not_probeable if fn in FAULT_HANDLERS else choice.mmap_not_probeable
                    table[fn] = f"the kernel refused its {choice.variant} program ({exc})"
                    if fn == choice.mmap_function:
                        choice.mmap_function = None
                choice.programs = tuple(p for p in choice.programs if p not in droppable
                                        and not (choice.mmap_function is None and p.split("_", 1)[1] in MMAP_FUNCTIONS))
        return BpfTracer(self.proc.pid, self.ev.paging_levels, choice.programs)

    def _arm_walk(self) -> None:
        """At the ready phase: the PGD's allocation has been seen (the exec is done), the mmap is next."""
        tracer = self.tracer
        assert tracer is not None
        pgd = self._pgd_allocation()
        if pgd is None:
            self.ev.unavailable["bpf"] = ("no pgd_alloc allocation was seen during exec, so the direct-map base "
                                          "cannot be derived and the entries cannot be followed")
        else:
            self.pgd_physical = pgd << 12
        if self.fault_path:
            tracer.arm_mmap()
        if pgd is None and not self.fault_path:
            self._close_later(tracer.stop)
            self.tracer = None
            return
        tracer.arm()

    def _pgd_allocation(self) -> int | None:
        """The PFN of the new mm's PGD: the mm_page_alloc during exec whose call chain has pgd_alloc."""
        found = [e.fields["pfn"] for e in self.ev.events
                 if e.name == "kmem:mm_page_alloc" and any(f.startswith("pgd_alloc+") for _a, f in e.kernel_chain)]
        return found[-1] if found else None

    def _decode_events(self) -> None:
        self.ev.events, self.ev.lost_events = decode_trace_events(b"".join(self.chunks), self.sample_type,
                                                                  self.formats, self.ksyms)


def decode_trace_events(data: bytes, sample_type: int, formats: dict, ksyms: KernelSymbols | TextSymbols) -> tuple[list[TraceEvent], int]:
    """The samples of a drained ring buffer as TraceEvents with symbolised kernel chains; and the count lost.

    :returns: (events in time order, records lost). Raises ValueError if ``data`` is not a whole number of 8-byte words."""
    stream = parse_stream(data, sample_type)
    s = stream.samples
    names = {int(i): f"{f['system']}:{f['name']}" for i, f in formats.items()}
    events: list[TraceEvent] = []
    for i in range(len(s)):
        if s.raw_offset is not None and s.event_type is not None:
            name = names.get(int(s.event_type[i]), f"event {int(s.event_type[i])}")
            fmt = formats.get(str(int(s.event_type[i])), {}).get("fields", {})
            fields = {}
            for fname, (off, size, signed) in fmt.items():
                if fname.startswith("common_") or size > 8:
                    continue
                fields[fname] = int(raw_field(data, s.raw_offset[i:i + 1], off, size, bool(signed))[0])
        else:
            assert s.addr is not None   # the software page-fault event samples SAMPLE_ADDR
            name, fields = "page-faults", {"address": int(s.addr[i]), "ip": int(s.ip[i])}
        kernel, user = split_callchain(callchain(data, s, i))
        chain = [(a, ksyms.describe(a)) for a in kernel] if ksyms.usable else [(a, f"0x{a:x}") for a in kernel]
        events.append(TraceEvent(name, int(s.time[i]), int(s.cpu[i]), int(s.pid[i]), fields, chain, user))
    return events, stream.lost
