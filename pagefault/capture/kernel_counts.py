"""`pagefault trace --summary-only` (and `trace` without -o): the faults counted in the kernel, not streamed; with
-g (or --folded, --pprof) each fault's user and kernel stacks counted too.

The compiled program capture/bpf/fault_count.bpf.c keeps, per thread, what the fault in progress did (a
movable allocation and its order, its own page added to the page cache (a read from disk), a signal) and closes it at the thread's
next fault, exec or exit, adding one to a map keyed by (error code, what it did, the VMA's start
and kind). The VMA is the thread's previous one while it holds the address, else the maple tree's
answer; each VMA found so is kept once with its name (capture/mapping_watch.py turns them into the
program's mappings). Only those maps cross to user space, at the end: a few hundred entries where a
recording holds a record per event. The classes then follow from the same rules as a recording's
(journey/fault_classes.py). Faults taken in kernel mode on the program's addresses (a system call copying into
its memory) are counted too, their error code without X86_PF_USER, as the kernel's own count has them.

fault_stacks.bpf.c is the same count with each fault's user and kernel stack ids (and process) in the key, the
stacks kept once each; the program's mappings, for naming user frames, come from perf's side-band records.

The object is loaded before the target is let go, so counting starts at its exec with nothing to wait
for; the held child's own faults before its exec are not counted.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

from .bpf import BpfObjectMissing, Hook, HookChoice, HookVariant, KernelHooks, object_path
from .libbpf import BpfObject, LibbpfError, lib
from .perf_event import FaultCounters, PerfError
from .runner import Target, TargetError, attach, spawn_held
from .signals import CaptureStopped, StopSignals
from .signals import stop_signals_caught as _stop_signals_caught
from .signals import wait_forwarding_signals as _wait_forwarding_signals
from .tracer import CaptureError, TargetProblem, release_target, tracepoint_events

if TYPE_CHECKING:
    from ..evidence import MapsLine

# No numpy here: the summary-only path reads a few hundred map entries, and importing numpy (with its BLAS
# threads) costs ~70-100 ms of a command whose whole budget over the untraced program is about that.

# A fault with no VMA this little below mm->start_stack is taken as stack growth (expand_stack), elsewhere as
# SIGSEGV (the same reach as the journey's walk, capture/bpf_walk.py STACK_REACH).
STACK_REACH = 8 << 20



class Layout:
    """One struct of fault_count.h as Python reads it: (field, struct code) pairs, little-endian, no implicit
    padding (the header pads explicitly). ``dtype`` is the same as a numpy dtype, built when asked for (the
    tests compare it with the object's BTF; the count itself never imports numpy)."""

    def __init__(self, *fields: tuple[str, str]):
        self.names = tuple(name for name, _code in fields)
        self.codes = tuple(code for _name, code in fields)
        self.struct = struct.Struct("<" + "".join(self.codes))
        self.itemsize = self.struct.size

    def unpack(self, data: bytes, offset: int = 0) -> dict[str, Any]:
        return dict(zip(self.names, self.struct.unpack_from(data, offset)))

    def pack(self, *values) -> bytes:
        return self.struct.pack(*values)

    @property
    def dtype(self):
        import numpy as np
        numpy_code = {"I": "<u4", "Q": "<u8", "i": "<i4", "q": "<i8"}
        return np.dtype([(n, numpy_code.get(c, f"S{c[:-1]}")) for n, c in zip(self.names, self.codes)])


# The Python mirror of fault_count.h (tests/test_bpf_engine.py holds it to the object's BTF).
SETTINGS = Layout(("target_tgid", "I"), ("from_exec", "I"), ("stack_reach", "Q"))
FAULT_KEY = Layout(("state", "I"), ("tgid", "I"), ("vma", "Q"))
PROCESS_NAME = Layout(("comm", "16s"))
THREAD_FAULT = Layout(("state", "I"), ("run_state", "I"), ("vm_start", "Q"), ("vm_end", "Q"), ("vma", "Q"),
                      ("run_vma", "Q"), ("run_count", "Q"), ("user_stack", "i"), ("kernel_stack", "i"),
                      ("run_user_stack", "i"), ("run_kernel_stack", "i"), ("tgid", "I"), ("_pad", "I"),
                      ("vm_pgoff", "Q"), ("file_ino", "Q"), ("fault_index", "Q"), ("file_dev", "I"), ("_pad2", "I"))
# fault_stacks.h
FAULT_STACK_KEY = Layout(("state", "I"), ("user_stack", "i"), ("kernel_stack", "i"), ("tgid", "I"), ("vma", "Q"))
STACK_DEPTH = 64
STACK = Layout(("id", "i"), ("frames", "I"), ("ip", f"{8 * STACK_DEPTH}s"))   # struct stack, its addresses as bytes
STACK_HEAD = struct.Struct("<iI")
VMA_SEEN = Layout(("start", "Q"), ("end", "Q"), ("pgoff", "Q"), ("flags", "Q"), ("what", "I"), ("_pad", "I"),
                  ("name", "64s"))
VMA_KEY = Layout(("tgid", "I"), ("_pad", "I"), ("start", "Q"))
(COUNT_TOTAL, COUNT_ALLOCS, COUNT_UNCLASSIFIED, COUNT_UNNAMED, COUNT_UNTRACKED, COUNT_NO_STACK, COUNT_UNNAMED_PROCS,
 COUNT_N) = range(8)
ST_OPEN = 1

# The hooks, each with its raw-tracepoint and classic-tracepoint program: raw_tp, not tp_btf (the objects define
# RAW_TRACEPOINTS), so that a load with the object's slice of BTF (capture/core_btf.py) parses no whole BTF: the
# counter's load went from ~20 to ~10 ms here. The classic page_fault_user's context struct is declared by hand
# (pagefault.bpf.h: it is not in BTF), so its format is checked first.
HOOKS = tuple(replace(hook, raw_kind=HookVariant.RAW_TP) for hook in (
    Hook("exceptions", "page_fault_user", "fault_btf", "fault_tp",
         layout={"address": (8, 8), "error_code": (24, 8)}),
    # faults on user addresses taken in kernel mode (inside system calls): the kernel's own count has them
    Hook("exceptions", "page_fault_kernel", "fault_kernel_btf", "fault_kernel_tp", required=False,
         layout={"address": (8, 8), "error_code": (24, 8)}),
    Hook("sched", "sched_process_exec", "exec_btf", "exec_tp"),
    Hook("sched", "sched_prepare_exec", "prepare_exec_btf", "prepare_exec_tp", required=False),
    Hook("sched", "sched_process_exit", "exit_btf", "exit_tp"),
    Hook("sched", "sched_process_fork", "fork_btf", "fork_tp"),
    Hook("kmem", "mm_page_alloc", "alloc_btf", "alloc_tp", required=False),
    Hook("filemap", "mm_filemap_add_to_page_cache", "cache_btf", "cache_tp", required=False),
    Hook("signal", "signal_generate", "signal_btf", "signal_tp", required=False),
))
# what a fault's class loses without an optional hook
WITHOUT = {"sched_prepare_exec": "counting starts at sched_process_exec: the faults exec takes setting up the new "
                                 "image (argv and auxv on its stack) are not counted, where the kernel's own count has them",
           "page_fault_kernel": "faults taken in kernel mode (inside system calls) are not counted",
           "mm_page_alloc": "no allocation is seen: new pages and copies are told apart by error code only",
           "mm_filemap_add_to_page_cache": "no page-cache add is seen: reads from disk look like cache hits",
           "signal_generate": "no signal is seen: SIGSEGV and SIGBUS faults are not told apart"}


def unpack_state(state: int) -> tuple[int, int, int, int, int, int]:
    """(error code, allocated, order, page-cache add, signal, si_code) of a packed state (fault_count.h).

    :returns: the six fields as ints; raises nothing."""
    return (state >> 1 & 0x3F, state >> 7 & 1, state >> 8 & 0x1F, state >> 13 & 1, state >> 14 & 0x1F,
            state >> 19 & 0xFF)


@dataclass
class KernelCounts:
    """(error code, allocated, order, page-cache add, signal, si_code, vm_start << 3 | kind) → faults;
    kind: 1 a file, 2 shared, 4 no VMA below the stack (growth), 0 with vm_start 0: no VMA."""

    rows: list[tuple[int, ...]]   # (error code, allocated, order, page-cache add, signal, si_code, vma key, faults, tgid)
    maps: dict[int, list[MapsLine]] = field(default_factory=dict)   # every VMA a fault was counted in
    allocations: int = 0
    target_exit: str = ""
    command: list[str] = field(default_factory=list)
    pid: int = 0
    duration: float = 0.0
    total: int = 0          # every fault, counted apart: more than the rows hold if the map filled
    hooks: list[str] = field(default_factory=list)   # "EVENT: variant (why)" for each hook
    notes: list[str] = field(default_factory=list)
    load_ms: float = 0.0    # open + load + attach of the object
    kernel_fault_counts: dict[str, int] | None = None   # the kernel's own page-faults/minor/major counts, from exec
    kernel_mode_counted: bool = True   # page_fault_kernel was hooked: faults taken in kernel mode are counted too
    # with stacks (trace -g): the rows by stack, (rows' columns..., user stack id, kernel stack id, tgid), ids < 0
    # for none; the stacks by id (leaf first); the mappings and process names perf's side-band records gave
    stack_rows: list[tuple[int, ...]] = field(default_factory=list)
    stacks: dict[int, list[int]] = field(default_factory=dict)
    mappings: list = field(default_factory=list)     # capture.records' Mapping, from PERF_RECORD_MMAP2
    comms: dict[int, str] = field(default_factory=dict)
    # each counted process's command name (tgid → comm), kept in the kernel: its last exec's, else its first fault's
    process_names: dict[int, str] = field(default_factory=dict)


def engine_problem(name: str = "fault_count") -> str | None:
    """Why the faults cannot be counted in the kernel here, with the fix; None when they can (libbpf is
    installed and the counter's object `name` is built: fault_stacks for stacks; root and the hooks are checked
    when it runs).

    Raises nothing: a missing library or object is the returned reason."""
    try:
        lib()
        object_path(name)
    except (LibbpfError, BpfObjectMissing) as exc:
        return str(exc)
    return None


def choose_hooks(kernel: KernelHooks | None = None) -> list[HookChoice]:
    """One program per hook for this kernel.

    :raises CaptureError: a hook the count cannot do without is missing (on arm64: the page-fault
        tracepoint, with the reason and what works there instead)."""
    kernel = kernel or KernelHooks()
    choices = [kernel.choose(h) for h in HOOKS]
    for c in choices:
        if c.program is None and c.hook.required:
            if c.hook.event == "page_fault_user":
                tracepoint_events(((c.hook.system, c.hook.event, True),))   # arm64: its own reason and fix
            raise CaptureError(f"counting faults in the kernel needs {c.hook.system}:{c.hook.event}: {c.reason}; "
                               "fix: record instead with -o FILE")
    return choices


def _settings(pid: int, from_exec: bool) -> bytes:
    return SETTINGS.pack(pid, int(from_exec), STACK_REACH)


def _per_cpu_sum(value: bytes) -> int:
    """A per-CPU map's value (one u64 per possible CPU), summed."""
    return sum(struct.unpack(f"<{len(value) // 8}Q", value))


def read_counts(obj: BpfObject, with_stacks: bool = False) -> tuple[list[tuple[int, ...]], int, int, list[str]]:
    """The count map as rows (unpack_state(state) + (vma key, faults, tgid)), with each live thread's run of alike
    faults and its fault still in progress (closed at the read) added; the total and allocation counters;
    notes on anything not kept. With stacks (fault_stacks' map), each row ends with the user and kernel stack
    ids and the process: (..., vma key, faults, user stack, kernel stack, tgid).

    :returns: (rows, total faults, allocations, notes).
    :raises LibbpfError: a map cannot be read."""
    counts: dict[tuple[int, ...], int] = {}

    def add(key: tuple[int, ...], n: int) -> None:
        counts[key] = counts.get(key, 0) + n
    for key, value in obj.map("counts").items():
        if with_stacks:
            k = FAULT_STACK_KEY.unpack(key)
            add((k["state"], k["vma"], k["user_stack"], k["kernel_stack"], k["tgid"]), _per_cpu_sum(value))
        else:
            k = FAULT_KEY.unpack(key)
            add((k["state"], k["vma"], k["tgid"]), _per_cpu_sum(value))
    for _tid, value in obj.map("threads").items():
        t = THREAD_FAULT.unpack(value)
        run = (t["run_user_stack"], t["run_kernel_stack"], t["tgid"]) if with_stacks else (t["tgid"],)
        now = (t["user_stack"], t["kernel_stack"], t["tgid"]) if with_stacks else (t["tgid"],)
        if t["run_count"]:
            add((t["run_state"], t["run_vma"]) + run, t["run_count"])
        if t["state"] & ST_OPEN:   # a thread still running: its last fault ends at the read
            add((t["state"] & ~ST_OPEN, t["vma"]) + now, 1)
    totals = obj.map("counters")
    sums = [_per_cpu_sum(totals.lookup(struct.pack("<I", i)) or bytes(8 * totals.cpus)) for i in range(COUNT_N)]
    notes = []
    if sums[COUNT_UNNAMED]:
        notes.append(f"{sums[COUNT_UNNAMED]} VMAs were not named: the kernel's map of them filled")
    if sums[COUNT_UNTRACKED]:
        notes.append(f"{sums[COUNT_UNTRACKED]} faults of threads beyond the map's room were counted, not classified")
    if sums[COUNT_NO_STACK]:
        notes.append(f"{sums[COUNT_NO_STACK]} faults have a stack missing (the stack map full, or no frame to read)")
    if sums[COUNT_UNNAMED_PROCS]:
        notes.append(f"{sums[COUNT_UNNAMED_PROCS]} processes' command names were not kept: the kernel's map of them "
                     "filled (their rows by process show '?')")
    rows: list[tuple[int, ...]] = [unpack_state(k[0]) + (k[1], n) + k[2:] for k, n in counts.items()]
    return rows, sums[COUNT_TOTAL], sums[COUNT_ALLOCS], notes


def by_kind(stack_rows: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Rows with stacks summed over their stacks: the summary's rows, (..., vma key, faults, tgid).

    :returns: the summed rows, in the order their kind and process first came; raises nothing."""
    summed: dict[tuple[int, ...], int] = {}
    for r in stack_rows:
        key = r[:7] + (r[10],)
        summed[key] = summed.get(key, 0) + r[7]
    return [k[:7] + (n, k[7]) for k, n in summed.items()]


def read_process_names(obj: BpfObject) -> dict[int, str]:
    """Each counted process's command name (the process_names map: tgid → comm, as its last exec set it, else as
    it was at its first fault), decoded as the kernel's COMM records are (UTF-8, bad bytes replaced).

    :returns: tgid → name.
    :raises LibbpfError: the map cannot be read."""
    out = {}
    for key, value in obj.map("process_names").items():
        comm = PROCESS_NAME.unpack(value)["comm"].split(b"\0", 1)[0]
        out[struct.unpack_from("<I", key)[0]] = comm.decode("utf-8", "replace")
    return out


def read_stacks(obj: BpfObject, ids: set[int]) -> dict[int, list[int]]:
    """The stacks named by `ids`, from the map of stacks (fault_stacks.h's struct stack: its id, its number of
    frames and its addresses, leaf first, by a hash of them): id → addresses.

    :returns: id → addresses for the ids found (an id no longer in the map is left out).
    :raises LibbpfError: the map cannot be read."""
    out = {}
    for _key, value in obj.map("stack_ids").items():
        i, frames = STACK_HEAD.unpack_from(value)
        if i in ids:
            out[i] = list(struct.unpack_from(f"<{frames}Q", value, STACK_HEAD.size))
    return out


def read_vmas(obj: BpfObject) -> list[dict[str, Any]]:
    """Every VMA a fault was counted in, as VMA_SEEN records (dicts of its fields) with the process whose fault
    named it (``tgid``, from the map's VMA_KEY: processes of one count can hold different mappings at one start).

    :returns: the records, in the map's order.
    :raises LibbpfError: the map cannot be read."""
    return [{**VMA_SEEN.unpack(value), "tgid": VMA_KEY.unpack(key)["tgid"]} for key, value in obj.map("vmas").items()]


def maps_by_process(vmas: list[dict[str, Any]], target: int) -> dict[int, list[MapsLine]]:
    """The named VMAs as /proc-style lines per process (read_vmas' records): {tgid: lines}, the target's always
    present (empty when none of its VMAs was named).

    :returns: a dict of every tgid that named a VMA, and `target`; raises nothing."""
    from .mapping_watch import maps_from_kernel
    tgids = {int(v["tgid"]) for v in vmas} | {target}
    return {tgid: maps_from_kernel([v for v in vmas if int(v["tgid"]) == tgid]) for tgid in sorted(tgids)}


def count_faults(argv: list[str] | None, pid: int | None, progress: Callable[[str], None] | None = None,
                 stdout: int | None = None, kernel: KernelHooks | None = None, stacks: bool = False,
                 allow_init: bool = False, on_running: Callable[[], None] | None = None) -> KernelCounts:
    """Run `argv` (or attach to `pid`) with the counting program loaded; count until it ends (or Ctrl-C).

    :param argv: a command to start, held until the program is attached; or None with `pid`.
    :param stdout: where the started command's standard output goes (default: ours).
    :param kernel: what the kernel offers, for the choice of each hook's program (default: read from
        this kernel's BTF and tracefs; the tests hand in a BTF without btf_trace_ typedefs to load the other variant).
    :param stacks: count each fault's user and kernel stack too (fault_stacks.bpf.c, for trace -g), with the
        program's mappings and process names from perf's side-band records (a dummy event: no sample).
    :param on_running: called once the program runs and is counted, before the wait for its end: what the
        caller will need afterwards (the text summary's imports) is made ready meanwhile, not after the end.
    :returns: the counts, the VMAs they fell in, the hooks chosen and why.
    :raises TargetProblem: the command cannot be run, or `pid` cannot be traced.
    :raises CaptureError: one line with the reason and the fix: a hook missing (arm64), the object not
        built or libbpf not installed (``bash scripts/setup.sh`` as root), the kernel refused the program
        (the file with libbpf's and the verifier's log is named). Without root, the load fails with EPERM
        and the error says to run as root."""
    say = progress or (lambda _m: None)
    choices = choose_hooks(kernel)
    try:
        path = object_path("fault_stacks" if stacks else "fault_count")
        obj = BpfObject(path)
    except (BpfObjectMissing, LibbpfError) as exc:
        raise CaptureError(f"counting in the kernel: {exc}") from None
    notes = [f"not counted: {c.hook.system}:{c.hook.event} ({c.reason}): {WITHOUT[c.hook.event]}"
             for c in choices if c.program is None]
    # stop signals are only counted from here to the end of the cleanup: one landing inside the load (in libbpf's
    # log callback, where ctypes swallowed the exception) was lost and the count ran on until the target ended;
    # one before the counting began ends the run in one line once all is closed, one after it is acted on by
    # the wait and the counts made until then are printed
    with _stop_signals_caught() as stop:
        return _count_with(obj, choices, notes, argv, pid, allow_init, stdout, stacks, say, stop, on_running)


def _count_with(obj: BpfObject, choices: list[HookChoice], notes: list[str], argv: list[str] | None,
                pid: int | None, allow_init: bool, stdout: int | None, stacks: bool, say: Callable[[str], None],
                stop: StopSignals, on_running: Callable[[], None] | None) -> KernelCounts:
    """count_faults' capture, its stop signals counted by `stop`."""
    try:
        try:
            target: Target = spawn_held(argv, stdout) if argv else attach(pid or 0, allow_init)
        except TargetError as exc:
            raise TargetProblem(str(exc)) from None
        try:
            say("loading the counting program")
            t0 = time.monotonic()
            for c in choices:
                obj.set_autoload(c.hook.btf_program, c.program == c.hook.btf_program)
                obj.set_autoload(c.hook.tracepoint_program, c.program == c.hook.tracepoint_program)
            obj.set_rodata(_settings(target.pid, from_exec=target.spawned))
            try:
                obj.load()
                if stop.count:   # before anything counted: nothing to print; stop_signals_caught ends the run
                    raise CaptureStopped()
                for c in choices:
                    if c.program:
                        obj.attach(c.program)
            except LibbpfError as exc:
                raise CaptureError(f"counting in the kernel: {exc}") from None
            load_ms = (time.monotonic() - t0) * 1000
            try:   # the kernel's own counts, beside ours: the summary reconciles the two
                counters: FaultCounters | None = FaultCounters(target.pid, enable_on_exec=target.spawned)
            except PerfError as exc:
                counters = None
                notes.append(f"the kernel's own fault counts are not shown: {exc}")
            side_band = _SideBand(target) if stacks else None
            if stop.count and target.spawned:   # attached, it is counted already: the wait prints the counts
                raise CaptureStopped()              # spawned, it has not run: nothing to print
            started = time.monotonic()
            release_target(target)
            say(f"counting the faults of PID {target.pid} in the kernel")
            # imported while the program runs, not after it: the mappings' records (pagefault.evidence, with
            # every decoder) take ~45 ms to import, which this process would otherwise add to the command's
            # time once the program has ended; meanwhile it only waits
            from .mapping_watch import maps_from_kernel  # noqa: F401  (maps_by_process uses it at the end)
            if stacks:   # the same for what the stacks are named with afterwards
                _prepare_naming()
            if on_running:
                try:   # only making the end faster: whatever it raises must not end the count (or its target)
                    on_running()
                except Exception:   # noqa: BLE001
                    pass
            _wait_forwarding_signals(target, notes, side_band.drain if side_band else None, stop)
            duration = time.monotonic() - started
            kernel_fault_counts = counters.read() if counters is not None else None
            if counters is not None:
                counters.close()
            obj.detach()
            rows, total, allocs, more = read_counts(obj, stacks)
            vmas = read_vmas(obj)
            names = read_process_names(obj)
            stack_rows: list[tuple[int, ...]] = []
            stack_ips: dict[int, list[int]] = {}
            if stacks:
                stack_rows, rows = rows, by_kind(rows)
                stack_ips = read_stacks(obj, {r[8] for r in stack_rows} | {r[9] for r in stack_rows})
        finally:
            # a spawned target still running is ended (and reaped); an attached one is left as it is: nothing
            # here stopped it, so a stop its owner made (SIGSTOP, job control) is theirs to end
            target.end(resume=False)
            target.wait()
    finally:
        obj.close()
    return KernelCounts(rows, maps_by_process(vmas, target.pid), allocs, target.describe_exit(), list(target.argv),
                        target.pid, duration, total,
                        [f"{c.hook.event}: {c.variant} ({c.reason})" for c in choices], notes + more, load_ms,
                        kernel_fault_counts,
                        any(c.program for c in choices if c.hook.event == "page_fault_kernel"),
                        stack_rows, stack_ips, *(side_band.read(notes) if side_band else ([], {})), names)


def _prepare_naming() -> None:
    """While the program runs: start reading the kernel's symbols, and import numpy (perf's side-band records
    are parsed with it) and pyelftools (user frames are named from the program's ELF symbols): ~150 ms here that
    trace -g would otherwise add after the program's end."""
    from ..kernel.kallsyms import prefetch_text_symbols
    prefetch_text_symbols()
    from . import records  # noqa: F401
    try:
        import elftools.elf.elffile  # noqa: F401
    except ImportError:
        pass


def kernel_symbols_for(addresses: set[int], path: str = "/proc/kallsyms"):
    """The kernel's symbols (kernel.kallsyms.KernelSymbols) for `addresses` only: for each, the text symbol at or
    below it, as a lookup in all of /proc/kallsyms finds it, without the full parse of every name (0.3-0.4 s
    here). The table a kernel.kallsyms.prefetch_text_symbols(path) started is used when there is one.

    Without root kallsyms shows zeros: the result is then not usable (no names, as KernelSymbols.load gives).

    :returns: the KernelSymbols; never raises for an unreadable kallsyms (the result is then not usable)."""
    from ..kernel.kallsyms import text_symbols
    return text_symbols(path).kernel_symbols(addresses)


class _SideBand:
    """perf's side-band records of the target (its mappings with their files' whole paths, its process names),
    through a dummy software event that takes no sample: what the stacks' user addresses are symbolised with
    (the counter keeps only a file's name)."""

    PAGES = 16       # per CPU: a few hundred mmap records between two drains

    def __init__(self, target: Target):
        from .perf_event import PERF_TYPE_SOFTWARE, SAMPLE_TID, SAMPLE_TIME, EventSpec, PerfSession
        self.sample_type = SAMPLE_TID | SAMPLE_TIME
        self.session = PerfSession([EventSpec("side-band", PERF_TYPE_SOFTWARE, PERF_COUNT_SW_DUMMY, self.sample_type)],
                                   target.pid, enable_on_exec=target.spawned, callchain=False, data_pages=self.PAGES)
        self.chunks: list[bytes] = []
        self.existing: list = []
        if not target.spawned:
            self.session.enable()
            # a running process's mappings made before now have no MMAP2 record: /proc/PID/maps names them
            from ..evidence import Mapping
            from .procfs import read_maps
            try:
                for m in read_maps(target.pid):
                    prot = (1 if m.perms[0:1] == "r" else 0) | (2 if m.perms[1:2] == "w" else 0) | \
                        (4 if m.perms[2:3] == "x" else 0)
                    self.existing.append(Mapping(m.start, m.end, m.offset, m.path, prot, "observed: /proc/PID/maps",
                                                 m.perms[3:4] == "s", m.inode))
            except OSError:
                pass

    def drain(self) -> None:
        self.chunks += self.session.drain()

    def read(self, notes: list[str]) -> tuple[list, dict[int, str]]:
        from .records import parse_stream
        self.drain()
        self.session.close()
        stream = parse_stream(b"".join(self.chunks), self.sample_type)
        if stream.lost:
            notes.append(f"{stream.lost} of perf's mapping records were lost: some user frames may go unnamed")
        return self.existing + stream.mmaps, stream.comms


PERF_COUNT_SW_DUMMY = 9     # include/uapi/linux/perf_event.h: an event that never counts, for side-band records
