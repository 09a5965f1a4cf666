"""The kprobe probes: what handle_mm_fault() was called with, which handlers ran, what it returned, how long it took;
and, on the mmap side, the function that made the VMA and whether it merged.

kprobes need a kernel built with CONFIG_KPROBES and not locked down against them. Many of the handlers
are static functions the compiler may inline; a function is probed only if /proc/kallsyms lists it as
text and the kprobe blacklist does not name it, and the others are reported as not probeable here.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from pathlib import Path

from ..evidence import KprobeFault, KprobeMmap
from ..kernel import facts
from .bpf_walk import BpfError
from .runner import start_child, stop_child
from .safe_paths import trusted_executable

# The handlers of mm/memory.c and mm/huge_memory.c a fault can go through, in the order of the path.
FAULT_HANDLERS = ("__handle_mm_fault", "handle_pte_fault", "do_anonymous_page", "do_fault", "do_read_fault",
                  "do_cow_fault", "do_shared_fault", "filemap_map_pages", "filemap_fault", "do_wp_page",
                  "wp_page_copy", "wp_page_reuse", "do_swap_page", "do_huge_pmd_anonymous_page",
                  "do_huge_pmd_wp_page", "do_numa_page", "finish_fault")
# The function that makes the VMA: __mmap_region from 6.13, mmap_region before. Both take
# (file, addr, len, vm_flags, pgoff, uf) and return the address.
MMAP_FUNCTIONS = ("__mmap_region", "mmap_region")
# The functions that merge or expand a neighbour instead of making a new VMA, per era.
MERGE_FUNCTIONS = ("vma_merge_new_range", "vma_expand", "vma_merge")
LOCKDOWN = Path("/sys/kernel/security/lockdown")
BLACKLIST = Path("/sys/kernel/debug/kprobes/blacklist")


def kprobe_support() -> tuple[bool, str]:
    """Whether bpftrace can attach kprobes here, and why not (with the fix)."""
    config = facts.kernel_config_flag("CONFIG_KPROBES")
    if config is False:
        return False, "this kernel is built without CONFIG_KPROBES; fix: a kernel with kprobes (Debian's have them)"
    try:
        lockdown = LOCKDOWN.read_text()
    except OSError:
        lockdown = ""
    if "[confidentiality]" in lockdown:
        return False, "lockdown is confidentiality: BPF may not read kernel memory; fix: boot with lockdown=integrity or none"
    tracefs = next((p for p in (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
                    if (p / "kprobe_events").exists()), None)
    if tracefs is None:
        return False, "no kprobe_events in tracefs (CONFIG_KPROBE_EVENTS off, or tracefs not mounted)"
    return True, f"CONFIG_KPROBES {'on' if config else 'unknown (no config)'}, {tracefs / 'kprobe_events'} present"


TRACEABLE = (Path("/sys/kernel/tracing/available_filter_functions"),
             Path("/sys/kernel/debug/tracing/available_filter_functions"))


def probeable(functions: tuple[str, ...], kallsyms: Path = Path("/proc/kallsyms")) -> tuple[list[str], dict[str, str]]:
    """The functions a kprobe can attach to by name here, and why each other one cannot.

    A name must be one text symbol in /proc/kallsyms (a static function the compiler cloned or that
    shares its name with another cannot be probed by name), traceable (available_filter_functions,
    the list bpftrace itself checks) and off the kprobe blacklist: bpftrace refuses the whole script
    if one probe fails to attach, as wp_page_reuse did on Debian's 6.12.
    """
    text: dict[str, int] = {}
    try:
        with open(kallsyms) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1] in ("t", "T") and parts[2] in functions:
                    text[parts[2]] = text.get(parts[2], 0) + 1
    except OSError as exc:
        return [], {fn: f"cannot read {kallsyms}: {exc.strerror}" for fn in functions}
    traceable: set[str] | None = None
    for path in TRACEABLE:
        try:
            with open(path) as f:
                traceable = {line.split()[0] for line in f if line.strip()}
            break
        except OSError:
            continue
    blacklisted: set[str] = set()
    try:
        for line in BLACKLIST.read_text().splitlines():
            name = line.split()[-1] if line.split() else ""
            blacklisted.add(name)
    except OSError:
        pass
    ok, why = [], {}
    for fn in functions:
        if fn not in text:
            why[fn] = "not a function of this kernel (inlined, renamed or absent)"
        elif text[fn] > 1:
            why[fn] = f"{text[fn]} functions of that name: a kprobe by name is ambiguous"
        elif traceable is not None and fn not in traceable:
            why[fn] = "not traceable (not in available_filter_functions)"
        elif fn in blacklisted:
            why[fn] = "on the kprobe blacklist"
        else:
            ok.append(fn)
    return ok, why


def fault_probes(pid: int, page: int, handlers: list[str]) -> str:
    """bpftrace probes on the target's fault on `page`: arguments, handlers in order, return value, duration.

    They key on @state == 1, which the page_fault_user probe of bpf_walk sets for the same fault, so
    only that fault is followed (handle_mm_fault runs after the tracepoint).
    """
    lines = [f"""kprobe:handle_mm_fault /pid == {pid} && @state == 1 && @kp == 0 && (arg1 & ~0xfff) == {page:#x}/ {{
    @kp = 1; @kt0 = nsecs;
    $v = (struct vm_area_struct *)arg0;
    printf("kprobe handle_mm_fault 0x%lx 0x%lx 0x%lx\\n", arg0, arg1, arg2);
    printf("kprobe vma 0x%lx 0x%lx 0x%lx 0x%lx 0x%lx 0x%lx\\n", $v->vm_start, $v->vm_end, (uint64)$v->vm_flags,
           $v->vm_page_prot.pgprot, (uint64)$v->vm_file, (uint64)$v->anon_vma);
}}
kretprobe:handle_mm_fault /pid == {pid} && @kp == 1/ {{
    printf("kretprobe handle_mm_fault 0x%lx %ld\\n", retval, nsecs - @kt0);
    @kp = 2;
}}"""]
    for fn in handlers:
        lines.append(f'kprobe:{fn} /pid == {pid} && @kp == 1/ {{ printf("handler {fn} %ld\\n", nsecs - @kt0); }}')
    return "\n".join(lines)


def mmap_probes(pid: int, mmap_function: str, merge_functions: list[str], tool_pid: int) -> str:
    """bpftrace probes on the target's VMA-making call and the merges inside it."""
    lines = [f"""kprobe:{mmap_function} /pid == {pid} && @m == 0/ {{
    @m = 1;
    printf("mmap {mmap_function} 0x%lx 0x%lx 0x%lx 0x%lx 0x%lx\\n", arg0, arg1, arg2, arg3, arg4);
}}
kretprobe:{mmap_function} /pid == {pid} && @m == 1/ {{ printf("mmapret 0x%lx\\n", retval); @m = 2; exit(); }}
kprobe:{mmap_function} /pid == {tool_pid} && @armed == 0/ {{ printf("armed\\n"); @armed = 1; }}"""]
    for fn in merge_functions:
        lines.append(f'kretprobe:{fn} /pid == {pid} && @m == 1/ {{ printf("merge {fn} 0x%lx\\n", retval); }}')
    return "\n".join(lines)


def parse_fault_lines(lines: list[str], not_probeable: dict[str, str]) -> KprobeFault | None:
    """The kprobe lines of the walk's bpftrace run, or None if handle_mm_fault's probe never fired."""
    out = KprobeFault(not_probeable=dict(not_probeable))
    for line in lines:
        parts = line.split()
        if parts[:2] == ["kprobe", "handle_mm_fault"] and len(parts) == 5:
            out.vma_pointer, out.address, out.flags = (int(x, 0) for x in parts[2:])
        elif parts[:2] == ["kprobe", "vma"] and len(parts) == 8:
            out.vma = dict(zip(("vm_start", "vm_end", "vm_flags", "vm_page_prot", "vm_file", "anon_vma"),
                               (int(x, 0) for x in parts[2:])))
        elif parts[:2] == ["kretprobe", "handle_mm_fault"] and len(parts) == 4:
            out.retval, out.duration_ns = int(parts[2], 0), int(parts[3])
        elif parts[:1] == ["handler"] and len(parts) == 3:
            out.handlers.append((parts[1], int(parts[2])))
    return out if out.flags is not None else None


class MmapProbe:
    """A bpftrace on the target's next VMA-making call; arm() returns once its probe fires for us."""

    def __init__(self, pid: int):
        exe = trusted_executable("bpftrace")
        if not exe:
            raise BpfError("bpftrace is not installed")
        found, self.not_probeable = probeable(MMAP_FUNCTIONS + MERGE_FUNCTIONS)
        mmap_fn = next((fn for fn in MMAP_FUNCTIONS if fn in found), None)
        if mmap_fn is None:
            raise BpfError("no VMA-making function can be probed: " + "; ".join(
                f"{fn}: {self.not_probeable.get(fn, '?')}" for fn in MMAP_FUNCTIONS))
        self.function = mmap_fn
        merges = [fn for fn in MERGE_FUNCTIONS if fn in found]
        self.script = mmap_probes(pid, mmap_fn, merges, os.getpid())
        self.proc = start_child([exe, "-B", "line", "-e", self.script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out = b""

    def arm(self, bound: float = 600.0) -> None:
        import mmap
        started = time.monotonic()
        while b"armed" not in self.out:
            if self.proc.poll() is not None:
                raise BpfError("bpftrace stopped: " + self.proc.stderr.read().decode(errors="replace").strip()[-300:])
            if time.monotonic() - started > bound:
                raise BpfError(f"bpftrace did not attach its mmap kprobe within {bound:.0f} s")
            mmap.mmap(-1, 4096).close()     # a VMA-making call of ours
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.05)
            if ready:
                self.out += os.read(self.proc.stdout.fileno(), 65536)

    def result(self, timeout: float = 60.0) -> KprobeMmap:
        try:
            rest, _err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise BpfError(f"the target made no VMA through {self.function} within {timeout:.0f} s") from None
        found = KprobeMmap(self.function, not_probeable=dict(self.not_probeable))
        for line in (self.out + rest).decode(errors="replace").splitlines():
            parts = line.split()
            if parts[:1] == ["mmap"] and len(parts) == 7:
                found.file, found.addr, found.length, found.vm_flags, found.pgoff = (int(x, 0) for x in parts[2:])
            elif parts[:1] == ["mmapret"] and len(parts) == 2:
                found.retval = int(parts[1], 0)
            elif parts[:1] == ["merge"] and len(parts) == 3:
                found.merges.append((parts[1], int(parts[2], 0)))
        if found.retval is None:
            raise BpfError(f"bpftrace saw no return from {self.function}")
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def every_fault_probes(pid: int, handlers: list[str], tool_pid: int) -> str:
    """bpftrace probes on every handle_mm_fault of `pid` and its children: entry, handlers, return."""
    lines = [f"BEGIN {{ @pids[{pid}] = 1; }}",
             "tracepoint:sched:sched_process_fork /@pids[args->parent_pid]/ { @pids[args->child_pid] = 1; }",
             'kprobe:handle_mm_fault /@pids[pid]/ { @t[tid] = nsecs; printf("f %d %d 0x%lx 0x%lx %ld\\n", pid, tid, '
             "arg1, arg2, nsecs); }",
             'kretprobe:handle_mm_fault /@t[tid]/ { printf("r %d 0x%lx %ld\\n", tid, retval, nsecs - @t[tid]); '
             "delete(@t[tid]); }",
             f'kprobe:handle_mm_fault /pid == {tool_pid} && @armed == 0/ {{ printf("armed\\n"); @armed = 1; }}']
    lines += [f'kprobe:{fn} /@t[tid]/ {{ printf("h %d {fn} %ld\\n", tid, nsecs - @t[tid]); }}' for fn in handlers]
    return "\n".join(lines)


def parse_every_fault(text: str, not_probeable: dict[str, str]) -> list[KprobeFault]:
    """The faults of an every_fault_probes run, in the order they entered handle_mm_fault."""
    faults: list[KprobeFault] = []
    open_by_tid: dict[int, KprobeFault] = {}
    for line in text.splitlines():
        parts = line.split()
        if parts[:1] == ["f"] and len(parts) == 6:
            f = KprobeFault(address=int(parts[3], 0), flags=int(parts[4], 0), pid=int(parts[1]),
                            start_ns=int(parts[5]), not_probeable=not_probeable)
            faults.append(f)
            open_by_tid[int(parts[2])] = f
        elif parts[:1] == ["h"] and len(parts) == 4 and int(parts[1]) in open_by_tid:
            open_by_tid[int(parts[1])].handlers.append((parts[2], int(parts[3])))
        elif parts[:1] == ["r"] and len(parts) == 4 and int(parts[1]) in open_by_tid:
            f = open_by_tid.pop(int(parts[1]))
            f.retval, f.duration_ns = int(parts[2], 0) & 0xFFFFFFFF, int(parts[3])
    return faults


class EveryFaultProbe:
    """bpftrace timing every fault of a held program and its children, from before its exec to stop().

    Its output goes to an unnamed temporary file, not a pipe: a program's start-up faults would fill a
    pipe nobody reads while the program runs.
    """

    def __init__(self, pid: int):
        import tempfile
        exe = trusted_executable("bpftrace")
        if not exe:
            raise BpfError("bpftrace is not installed")
        handlers, self.not_probeable = probeable(FAULT_HANDLERS)
        self.out = tempfile.TemporaryFile()
        self.proc = start_child([exe, "-B", "line", "-e", every_fault_probes(pid, handlers, os.getpid())],
                                stdout=self.out, stderr=subprocess.PIPE)

    def arm(self, bound: float = 600.0) -> None:
        import mmap
        started = time.monotonic()
        while b"armed" not in os.pread(self.out.fileno(), 4096, 0):
            if self.proc.poll() is not None:
                raise BpfError("bpftrace stopped: " + self.proc.stderr.read().decode(errors="replace").strip()[-300:])
            if time.monotonic() - started > bound:
                self.stop()
                raise BpfError(f"bpftrace did not attach its kprobes within {bound:.0f} s")
            page = mmap.mmap(-1, 4096)
            page[0] = 1
            page.close()
            time.sleep(0.05)

    def result(self) -> list[KprobeFault]:
        self.stop()
        self.out.seek(0)
        return parse_every_fault(self.out.read().decode(errors="replace"), self.not_probeable)

    def stop(self) -> None:
        stop_child(self.proc, 30)
