"""The journey of one chosen fault of any program: `pagefault journey -- CMD ARGS…` or `-p PID`.

The program runs at full speed under perf (tracepoints with kernel call chains, for the allocations and
the class) and one bpftrace that picks the fault in the kernel, by a selector:

- ``first in the program's own code`` (the default): the first fault whose RIP lies between the
  mm's start_code and end_code (the executable's text, not the loader's or a library's);
- ``--nth N``: the program's N-th fault;
- ``--at ADDRESS``: the first fault on that page;
- ``--at SYMBOL`` / ``--at FILE:LINE``: the first fault whose RIP, taken back to an ELF address
  (RIP − (start_code − the lowest executable p_vaddr)), lies in that function or line;
- ``--kind K``: the first fault that looks like K when it enters the kernel (the error code, the PTE
  and the VMA the maple tree gives, read for every candidate), checked afterwards against the class
  the events give.

Only the chosen fault pays for the deep reads: the walk and kernel objects at its entry, the walk and
its struct page at the thread's next kernel entry, where bpftrace stops the program (SIGSTOP) so that
/proc can be read; then it runs on (SIGCONT).

The direct map's base, which the walk needs, is derived once per boot by a journey of the exercise
program (mm->pgd − the PGD's physical address) and kept in the tool's state directory with how it was found.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

from .. import __version__
from ..evidence import BpfWalk, ProgramFaultEvidence
from ..kernel import facts
from ..kernel.kallsyms import KernelSymbols
from ..symbols.elf import line_ranges, min_exec_vaddr, rip_facts, symbol_range
from . import procfs
from .bpf_walk import (
    BpfError,
    _folio_block,
    _objects_block,
    _walk_block,
    arm_with_own_faults,
    below_stack,
    parse_walk_lines,
    read_available,
)
from .journey_capture import decode_trace_events
from .perf_event import SAMPLE_CALLCHAIN, PerfError, PerfSession
from .records import parse_stream
from .resume_guard import ResumeGuard, process_state, refuse_stopped
from .runner import Target, TargetError, attach, spawn_held, start_child
from .safe_paths import root_safe_state_dir, trusted_executable, write_output
from .tracer import TRACEPOINT_SAMPLE, CaptureError, NothingMatched, TargetProblem, release_target, tracepoint_events

PROGRAM_TRACEPOINTS = (
    ("exceptions", "page_fault_user", True),
    ("kmem", "mm_page_alloc", True),
    ("filemap", "mm_filemap_add_to_page_cache", False),
    ("signal", "signal_generate", False),
)
VM_WRITE, VM_HUGEPAGE = 0x2, 0x20000000


def direct_map_base(progress: Callable[[str], None]) -> tuple[int, str]:
    """page_offset_base for this boot, with how it was derived; derived by an exercise journey once per boot."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
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
        try:
            cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_output(cache, json.dumps({"base": ev.bpf.direct_map_base, "how": how}), force=True)
        except OSError:
            pass
    return ev.bpf.direct_map_base, how


def selector_condition(selector: str, value: str | int | None, exe: str | None) -> tuple[str, str]:
    """The bpftrace condition for a candidate fault ($page, $ip, $ec are set), and the selector in words."""
    if selector == "nth":
        return f"@n == {int(value or 1)}", f"the program's fault number {value}"
    if selector == "address":
        return f"$page == {int(value or 0) & ~0xFFF:#x}", f"the first fault on the page of 0x{int(value or 0):x}"
    if selector in ("symbol", "line"):
        if not exe:
            raise CaptureError("--at SYMBOL or FILE:LINE needs the program's executable file")
        low = min_exec_vaddr(exe)
        if low is None:
            raise CaptureError(f"{exe} is not an ELF file with executable segments")
        if selector == "symbol":
            r = symbol_range(exe, str(value))
            if r is None:
                raise NothingMatched(f"no function {value!r} in the symbol table of {exe}; fix: give an address, "
                                   "or build the program with symbols")
            ranges, words = [r], f"the first fault whose RIP is in {value} (ELF 0x{r[0]:x}..0x{r[1]:x})"
        else:
            file, _, line = str(value).rpartition(":")
            ranges = line_ranges(exe, file, int(line))
            if not ranges:
                raise NothingMatched(f"no code for {value} in the DWARF line table of {exe}; fix: build with -g, or "
                                   "give a function name")
            words = f"the first fault whose RIP is on {value} (DWARF: {len(ranges)} address range(s))"
        elf = f"($ip - (curtask->mm->start_code - {low:#x}))"
        cond = " || ".join(f"({elf} >= {lo:#x} && {elf} < {hi:#x})" for lo, hi in ranges[:8])
        return cond, words
    if selector == "kind":
        return _kind_condition(str(value)), f"the first fault that enters the kernel looking like a {value} fault"
    return ("$ip >= curtask->mm->start_code && $ip < curtask->mm->end_code",
            "the first fault in the program's own code (RIP inside its executable's text)")


# struct xa_node: shift (u8) at +0, slots[64] at +40 on 64-bit (include/linux/xarray.h, 6.1 to 6.18); checked
# against BTF's typed slots[0] at run time, like the maple layout.
XA_SLOTS = 40


def page_cache_lookup() -> str:
    """bpftrace statements: $incache = 1 if the file page of $vma at $addr is in the page cache (a folio, not a
    shadow value), 0 if not, −1 if the xarray could not be read (layout check failed)."""
    return "\n    ".join([
        "$incache = 0;",
        "if ($vma != 0) {",
        "  $v = (struct vm_area_struct *)$vma;",
        "  $idx = (($addr - $v->vm_start) >> 12) + $v->vm_pgoff;",
        "  $x = (uint64)$v->vm_file->f_mapping->i_pages.xa_head; $d = 0;",
        "  while ($d < 6) {",
        "    if (($x & 3) == 2 && $x > 4096) {",
        "      $node = $x - 2;",
        f"      if ((uint64)((struct xa_node *)$node)->slots[0] != *(uint64 *)($node + {XA_SLOTS})) {{ $incache = -1; $d = 6; }}",
        f"      else {{ $sh = *(uint8 *)$node; $x = *(uint64 *)($node + {XA_SLOTS} + (($idx >> $sh) & 63) * 8); }}",
        "    } else { if ($d < 6) { $incache = ($x != 0 && !($x & 1)) ? 1 : 0; $d = 6; } }",
        "    $d++;",
        "  }",
        "}"])


def _kind_condition(kind: str) -> str:
    """What a fault of `kind` looks like at entry: $ec (error code), $pte/$pmd (quiet walk), $vma (quiet search)."""
    vma = "$vma != 0 && ((struct vm_area_struct *)$vma)->vm_start <= $addr"
    # the kernel's vma_is_anonymous(): no vm_ops. [vdso] and [vvar] have no file either, but their own
    # vm_ops (special mappings): a read there is no zero-page fault
    anon = f"{vma} && (uint64)((struct vm_area_struct *)$vma)->vm_ops == 0"
    filed = f"{vma} && (uint64)((struct vm_area_struct *)$vma)->vm_file != 0"
    flags = "(uint64)((struct vm_area_struct *)$vma)->vm_flags"
    return {
        "anon": f"{anon} && $pte == 0 && ($ec & 2) && !({flags} & {VM_HUGEPAGE:#x})",
        "zero": f"{anon} && $pte == 0 && !($ec & 2) && !($ec & 16)",
        "cow": f"{vma} && ($pte & 1) && ($ec & 3) == 3",
        "file": f"{filed} && $pte == 0",
        "major": f"{filed} && $pte == 0 && $incache == 0",
        "swap": f"{anon} && $pte != 0 && !($pte & 1) && !($pte & 0x100)",
        "thp": f"{anon} && $pmd == 0 && ({flags} & {VM_HUGEPAGE:#x})",
        "stack": f"!({vma}) && {below_stack('$addr')}",
        "segv": f"(!({vma}) && !{below_stack('$addr')}) || ({vma} && ($ec & 2) && !({flags} & {VM_WRITE}))",
    }[kind]


def program_script(pid: int, levels: int, base: int, condition: str, deep_candidates: bool, tool_pid: int,
                   spawned: bool = True) -> str:
    """The bpftrace program: pick the fault, read at it and at the thread's next entry, stop the program there."""
    candidate = ""
    if deep_candidates:   # --kind: every fault's PTE and VMA (and, for file pages, the page cache), read quietly
        candidate = "\n    ".join([_walk_block("c", "$page", levels, quiet=True),
                                   _objects_block("c", "$addr", quiet=True),
                                   "if ($vma != 0 && (uint64)((struct vm_area_struct *)$vma)->vm_file != 0 && "
                                   "((struct vm_area_struct *)$vma)->vm_start <= $addr) {",
                                   page_cache_lookup(), "}"])
    # at the thread's next kernel entry (a system call, or its next fault): read again, stop the program
    after = "\n    ".join([f"$base = (uint64){base:#x}; $page = @page;", _walk_block("after", "$page", levels),
                           _folio_block(), _objects_block("after", "$page", search=False),
                           'printf("stopped %ld\\n", nsecs);', '@state = 2; signal("SIGSTOP"); exit();'])
    # a spawned program is counted from its exec: before it, the held child is still a copy of pagefault
    start = ("" if spawned else "BEGIN { @execd = 1; }\n") + \
        f"tracepoint:sched:sched_process_exec /pid == {pid}/ {{ @execd = 1; }}"
    return f"""
{start}
tracepoint:exceptions:page_fault_user /pid == {pid} && @state == 0 && @execd == 1/ {{
    @n = @n + 1;
    $addr = args->address; $page = $addr & ~0xfff; $ip = args->ip; $ec = args->error_code;
    $base = (uint64){base:#x};
    {candidate}
    if ({condition}) {{
        printf("sel %d %d 0x%lx 0x%lx 0x%lx %ld\\n", tid, @n, $addr, $ip, $ec, nsecs);
        printf("before base %lx\\n", $base);
        {_walk_block("before", "$page", levels)}
        {_objects_block("before", "$addr")}
        @state = 1; @tid = tid; @page = $page; @addr = $addr; @ip = $ip;
    }}
}}
tracepoint:raw_syscalls:sys_enter /@state == 1 && tid == @tid/ {{
    {after}
}}
tracepoint:exceptions:page_fault_user /@state == 1 && tid == @tid && (args->address != @addr || args->ip != @ip)/ {{
    {after}
}}
tracepoint:sched:sched_process_exit /@state == 1 && tid == @tid/ {{ printf("exited\\n"); exit(); }}
tracepoint:pagemap:mm_lru_insertion /@vmemmap == 0/ {{
    @vmemmap = (uint64)args->folio - args->pfn * sizeof(struct page);
    printf("vmemmap 0x%lx 0x%lx 0x%lx %d\\n", @vmemmap, (uint64)args->folio, args->pfn, sizeof(struct page));
}}
tracepoint:raw_syscalls:sys_enter /pid == {tool_pid} && @armed == 0/ {{ printf("armed\\n"); @armed = 1; }}
"""


class ProgramFault:
    """Run (or attach to) a program and capture the journey of one of its faults."""

    # pages per CPU and event of the perf buffers: enough for ~50 ms of a fast-faulting program between
    # two reads (tests shrink it to stand for a machine where bpftrace attaches slowly)
    perf_pages = 256

    def __init__(self, argv: list[str] | None, pid: int | None, selector: str, value, progress=None,
                 timeout: float | None = None):
        self.progress = progress or (lambda _m: None)
        self.timeout = timeout
        if not facts.is_root():
            raise CaptureError("the journey of a program's fault reads kernel memory with bpftrace: run as root (sudo)")
        self.argv, self.pid_given, self.selector, self.value = argv, pid, selector, value

    def run(self) -> ProgramFaultEvidence:
        say = self.progress
        if self.argv:
            import shutil
            if not shutil.which(self.argv[0]):
                raise TargetProblem(f"cannot run {self.argv[0]!r}: no such program (give its path, or a command on PATH)")
        exe = trusted_executable("bpftrace")
        if not exe:
            raise CaptureError("bpftrace is not installed; fix: as root, bash scripts/setup.sh")
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
            # bpftrace stops it after the fault: if pagefault dies then, the guard continues it
            guard = ResumeGuard(target.pid)
        try:
            return self._follow(target, exe, levels, levels_why, base, base_how)
        finally:
            if guard is not None:
                guard.disarm()

    def _follow(self, target: Target, exe: str, levels: int, levels_why: str, base: int,
                base_how: str) -> ProgramFaultEvidence:
        say = self.progress
        program = self._executable(target)
        condition, words = selector_condition(self.selector, self.value, program)
        table, gfp = facts.fault_flag_values(), facts.gfp_bits()
        enums, enums_source = facts.kernel_enums()
        captured_at, host = facts.capture_origin()
        ev = ProgramFaultEvidence(facts.kernel_release(), facts.kernel_version(), levels, levels_why,
                                  list(target.argv), target.pid, words, self.selector, str(self.value or ""),
                                  fault_flag_table=table.values, fault_flag_source=table.source,
                                  gfp_table=gfp.values, gfp_source=gfp.source, kernel_enums=enums,
                                  kernel_enums_source=enums_source, direct_map_how=base_how,
                                  captured_at=captured_at, host=host, tool_version=__version__)
        events, formats, notes = tracepoint_events(PROGRAM_TRACEPOINTS)
        for note in notes:
            ev.unavailable[note.split(" ", 1)[0]] = note
        ev.event_sources = {spec.name: f"tracepoint {spec.name} via perf_event_open" for spec in events}
        script = program_script(target.pid, levels, base, condition, self.selector == "kind", os.getpid(),
                                spawned=bool(self.argv))
        session = proc = None
        out = bytearray()
        try:
            session = PerfSession(events, target.pid, enable_on_exec=bool(self.argv), callchain=True, data_pages=self.perf_pages,
                                  monotonic_clock=True)
            session.enable()
            # The buffers are read all along, not once at the end: a running process fills them while
            # bpftrace attaches, and a full buffer drops the samples of the very fault that is chosen
            # next (its allocation went missing and the fault read as spurious).
            drained = _Drained(session)
            proc = start_child([exe, "--unsafe", "-B", "line", "-e", script], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
            say("attaching bpftrace (it picks the fault in the kernel)")
            try:
                # our mmap and read system calls fire its armed probe
                arm_with_own_faults(proc, out, each_round=drained.read)
            except BpfError as exc:
                raise CaptureError(str(exc)) from None
            if self.argv:
                release_target(target)
            say(f"PID {target.pid} runs at full speed until {words}")
            stopped = self._wait_for_stop(proc, out, target, drained.read, session, words)
            ev.lines = [ln for ln in out.decode(errors="replace").splitlines() if not ln.startswith("armed")]
            _selected(ev)
            if stopped and ev.address:
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
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            if session is not None:
                session.close()
            target.end(signal.SIGKILL)
            target.wait()
        ev.events, ev.lost_events = decode_trace_events(b"".join(drained.chunks), TRACEPOINT_SAMPLE | SAMPLE_CALLCHAIN,
                                                        formats, KernelSymbols.load())
        # the kernel's own count of each event against the samples kept: drops after the last
        # PERF_RECORD_LOST (or when the oldest were let go) show only here
        if counts is not None:
            ev.lost_events = max(ev.lost_events, sum(counts.values()) - len(ev.events) - drained.dropped_samples)
        reads, _printed_base, vmemmap = parse_walk_lines(ev.lines)
        if "before" in reads:
            pgdv = reads["before"].pgd_virtual
            # the PGD's physical address follows from the base: mm->pgd (read) − base (derived this boot)
            ev.bpf = BpfWalk(base, pgdv - base if pgdv is not None else 0, reads, script, "")
            if vmemmap:
                ev.bpf.vmemmap_base, ev.bpf.vmemmap_folio, ev.bpf.vmemmap_pfn, ev.bpf.struct_page_size = vmemmap
        if not ev.address:
            raise NothingMatched(f"no fault matched: {words}; the program {ev.exit or 'ran'} "
                               f"({sum(e.name == 'exceptions:page_fault_user' for e in ev.events)} faults seen)")
        mapping = next((m for m in ev.maps if m.start <= ev.ip < m.end), None)
        if mapping is not None:
            ev.rip = rip_facts(ev.ip, mapping)
        return ev

    def _executable(self, target: Target) -> str | None:
        if self.argv:
            import shutil
            found = shutil.which(self.argv[0])
            return os.path.realpath(found) if found else None
        try:
            return os.readlink(f"/proc/{target.pid}/exe")
        except OSError:
            return None

    def _wait_for_stop(self, proc, out: bytearray, target: Target, each_round: Callable[[], None],
                       session: PerfSession, words: str) -> bool:
        """Until bpftrace says it stopped the program after the chosen fault (False: bpftrace or the program
        ended first, a spawned or an attached one). `each_round` runs every 50 ms or so; a progress line every
        5 s says how many faults the program took (the kernel's count of the tracepoint's firings).

        :raises NothingMatched: --timeout passed with no fault matched."""
        started = last_said = time.monotonic()
        while b"stopped" not in out:
            each_round()
            if proc.poll() is not None:
                out += proc.stdout.read()
                return b"stopped" in out
            if not target.poll() or _is_zombie(target.pid):
                return b"stopped" in out
            now = time.monotonic()
            if self.timeout is not None and now - started > self.timeout:
                raise NothingMatched(f"no fault matched {words} within {self.timeout:g} s; PID {target.pid} took "
                                     f"{_faults_seen(session)} faults meanwhile (it is left running)")
            if now - last_said >= 5:
                self.progress(f"PID {target.pid}: {_faults_seen(session)} faults in {now - started:.0f} s, none "
                              f"matched {words} yet" + ("" if self.timeout else " (Ctrl-C stops; --timeout S gives up)"))
                last_said = now
            read_available(proc, out, 0.05)
        return True

    def _read_proc(self, pid: int, ev: ProgramFaultEvidence) -> bool:
        """/proc while bpftrace holds the program stopped after the fault."""
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


def _selected(ev: ProgramFaultEvidence) -> None:
    """The chosen fault as bpftrace printed it: thread, number, address, RIP, error code, time."""
    sel = next((ln.split() for ln in ev.lines if ln.startswith("sel ")), None)
    if sel is not None and len(sel) == 7:
        ev.tid, ev.nth, ev.address, ev.ip, ev.error_code, ev.fault_ns = (
            int(sel[1]), int(sel[2]), int(sel[3], 16), int(sel[4], 16), int(sel[5], 16), int(sel[6]))
