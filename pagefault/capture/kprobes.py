"""The fault-path probes: what handle_mm_fault() was called with, which handlers ran, what it returned, how long it
took; and, on the mmap side, the function that made the VMA and whether it merged. For the journey these are
programs of the compiled walk (capture/bpf/journey_walk.bpf.c), fentry/fexit where the kernel takes BPF
trampolines and kprobes where not; the scenarios' every-fault timing is still a bpftrace script here.

kprobes need a kernel built with CONFIG_KPROBES and not locked down against them. Many of the handlers
are static functions the compiler may inline; a function is probed only if /proc/kallsyms lists it as
text and the kprobe blacklist does not name it, and the others are reported as not probeable here.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..evidence import KprobeFault, KprobeMmap
from ..kernel import facts
from ..kernel.btf import VMLINUX_BTF
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
    """Whether kprobes can be attached here, and why not (with the fix)."""
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


@dataclass
class FaultPathChoice:
    """The fault-path programs of the compiled walk (capture/bpf/journey_walk.bpf.c) chosen for this kernel."""

    variant: str                                   # "fentry" (BPF trampolines) or "kprobe"
    programs: tuple[str, ...]                      # the object's programs to load and attach
    not_probeable: dict[str, str] = field(default_factory=dict)   # handler → why it is not followed here
    mmap_function: str | None = None
    mmap_not_probeable: dict[str, str] = field(default_factory=dict)
    reason: str = ""


def _in_btf(name: str, btf: bytes) -> bool:
    """`name` is in the kernel's BTF strings: a function fentry can attach to (if not, it was inlined or is
    absent; a BTF type or member of the same name is possible but none is known among these functions)."""
    return b"\0" + name.encode() + b"\0" in btf


def fault_path_programs(variant: str, btf: bytes | None = None) -> FaultPathChoice:
    """The programs following the walked fault through handle_mm_fault and its handlers, and the VMA-making
    call of the mmap before it, for `variant` "fentry" (the function must be in the kernel's BTF) or "kprobe"
    (probeable(): one text symbol, traceable, not blacklisted). Which runs is chosen by the loader: fentry
    first where the kernel takes it (no breakpoint per call), kprobes where it refuses BPF trampolines."""
    if variant == "fentry":
        if btf is None:
            try:
                btf = VMLINUX_BTF.read_bytes()
            except OSError:
                btf = b""
        names = FAULT_HANDLERS + MMAP_FUNCTIONS + MERGE_FUNCTIONS + ("handle_mm_fault",)
        found = [fn for fn in names if _in_btf(fn, btf)]
        why = {fn: "not a function in the kernel's BTF (inlined, renamed or absent): no fentry" for fn in names
               if fn not in found}
        entry, ret, handler, mmap_in, mmap_out, merge = ("hmf_fentry", "hmf_fexit", "fe_{}", "fe_{}", "fx_{}",
                                                         "fx_{}")
    else:
        found, why = probeable(FAULT_HANDLERS + MMAP_FUNCTIONS + MERGE_FUNCTIONS + ("handle_mm_fault",))
        entry, ret, handler, mmap_in, mmap_out, merge = ("hmf_kprobe", "hmf_kretprobe", "kp_{}", "kp_{}", "kr_{}",
                                                         "kr_{}")
    if "handle_mm_fault" not in found:
        return FaultPathChoice(variant, (), reason=f"handle_mm_fault: {why.get('handle_mm_fault', '?')}")
    programs = [entry, ret] + [handler.format(fn) for fn in FAULT_HANDLERS if fn in found]
    mmap_fn = next((fn for fn in MMAP_FUNCTIONS if fn in found), None)
    if mmap_fn:
        programs += [mmap_in.format(mmap_fn), mmap_out.format(mmap_fn)]
        programs += [merge.format(fn) for fn in MERGE_FUNCTIONS if fn in found]
    return FaultPathChoice(variant, tuple(programs), {fn: why[fn] for fn in FAULT_HANDLERS if fn in why}, mmap_fn,
                           {fn: why[fn] for fn in MMAP_FUNCTIONS + MERGE_FUNCTIONS if fn in why})


def fault_from_events(events: list, not_probeable: dict[str, str]) -> KprobeFault | None:
    """handle_mm_fault of the walked fault from the walk object's records (REC_FAULT_ENTRY, REC_HANDLER,
    REC_FAULT_RETURN: journey_walk.h), or None if its entry was not seen."""
    from .bpf_walk import REC_FAULT_ENTRY, REC_FAULT_RETURN, REC_HANDLER
    out = KprobeFault(not_probeable=dict(not_probeable))
    for ev in events:
        kind, v, w = int(ev["kind"]), [int(x) for x in ev["v"]], [int(x) for x in ev["w"]]
        if kind == REC_FAULT_ENTRY:
            out.vma_pointer, out.address, out.flags = v[0], v[1], v[2]
            out.vma = dict(zip(("vm_start", "vm_end", "vm_flags", "vm_page_prot", "vm_file", "anon_vma"),
                               v[3:6] + w[0:3]))
        elif kind == REC_FAULT_RETURN:
            out.retval, out.duration_ns = v[0], v[1]
        elif kind == REC_HANDLER and int(ev["id"]) < len(FAULT_HANDLERS):
            out.handlers.append((FAULT_HANDLERS[int(ev["id"])], v[0]))
    return out if out.flags is not None else None


def mmap_from_events(events: list, function: str, not_probeable: dict[str, str]) -> KprobeMmap | None:
    """The VMA-making call from the walk object's records (REC_MMAP, REC_MERGE, REC_MMAP_RETURN), or None if
    it did not return while the object was attached."""
    from .bpf_walk import REC_MERGE, REC_MMAP, REC_MMAP_RETURN
    found = KprobeMmap(function, not_probeable=dict(not_probeable))
    for ev in events:
        kind, v = int(ev["kind"]), [int(x) for x in ev["v"]]
        if kind == REC_MMAP:
            found.function = MMAP_FUNCTIONS[int(ev["id"])] if int(ev["id"]) < len(MMAP_FUNCTIONS) else function
            found.file, found.addr, found.length, found.vm_flags, found.pgoff = v[:5]
        elif kind == REC_MMAP_RETURN:
            found.retval = v[0]
        elif kind == REC_MERGE and int(ev["id"]) < len(MERGE_FUNCTIONS):
            found.merges.append((MERGE_FUNCTIONS[int(ev["id"])], v[0]))
    return found if found.retval is not None else None


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
