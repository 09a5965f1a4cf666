"""The fault-path probes: what handle_mm_fault() was called with, which handlers ran, what it returned, how long it
took; and, on the mmap side, the function that made the VMA and whether it merged. Each is a program of a
compiled object: the journey's in the walk (capture/bpf/journey_walk.bpf.c), the scenarios' every-fault timing
in capture/bpf/fault_calls.bpf.c (EveryFaultProbe, here), the latency tier's in latency.bpf.c. Each program has
an fentry/fexit variant (BPF trampolines: a call, no trap) and a kprobe/kretprobe one; fentry is tried first
where the kernel takes BPF trampolines, kprobes where not.

A function is hooked only if it is a function of its own in the kernel's BTF (many handlers are static
functions the compiler may inline: those are reported as not probeable here), asked of libbpf
(libbpf.kernel_functions); what else the kernel refuses (a kprobe on the blacklist, a name several functions
share) it says when the program is attached, and that is reported too.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..evidence import KprobeFault, KprobeMmap
from ..kernel import facts
from ..kernel.btf import VMLINUX_BTF
from .bpf import BpfObjectMissing, Hook, HookChoice, KernelHooks, object_path
from .bpf_walk import BpfError
from .libbpf import BpfObject, LibbpfError, kernel_functions

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


def kprobe_support() -> tuple[bool, str]:
    """Whether kprobes can be attached here, and why not (with the fix).

    :returns: (True, "") or (False, the reason with the fix); never raises. Needs no root: it reads the kernel's
        configuration and lockdown, not the probes."""
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


class FunctionProbe(enum.StrEnum):
    """How a kernel function's entry and return are hooked."""

    FENTRY = "fentry"   # BPF trampolines (fentry/fexit): a call, no trap; needs BTF and trampolines
    KPROBE = "kprobe"   # kprobe/kretprobe: works wherever kprobes do, at the cost of a breakpoint or ftrace hop


NOT_A_FUNCTION = "not a function in the kernel's BTF (inlined, renamed or absent)"


def probeable(functions: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """The functions a program can be attached to by name here (fentry or kprobe), and why each other one
    cannot: a function of its own in the kernel's BTF (libbpf.kernel_functions). The kernel's own refusals
    (the kprobe blacklist, an ambiguous name) come at attach, per program.

    :returns: (the functions found, function → why not); never raises (libbpf missing is each function's reason)."""
    try:
        found = kernel_functions(functions)
    except LibbpfError as exc:
        return [], {fn: str(exc) for fn in functions}
    return [fn for fn in functions if fn in found], {fn: NOT_A_FUNCTION for fn in functions if fn not in found}


def probe_candidates(probe: FunctionProbe | None) -> tuple[list[FunctionProbe], list[str]]:
    """The probe kinds to try in order (`probe` alone, or fentry then kprobes), and why each left out cannot
    work here.

    :returns: (the kinds to try, in order; why each other one cannot work); raises nothing."""
    wanted = [probe] if probe else [FunctionProbe.FENTRY, FunctionProbe.KPROBE]
    candidates, refused = [], []
    for kind in wanted:
        if kind is FunctionProbe.FENTRY and not VMLINUX_BTF.exists():
            refused.append(f"fentry: {VMLINUX_BTF} is missing (a kernel built with CONFIG_DEBUG_INFO_BTF)")
            continue
        if kind is FunctionProbe.KPROBE:
            ok, why = kprobe_support()
            if not ok:
                refused.append(f"kprobes: {why}")
                continue
        candidates.append(kind)
    return candidates, refused


def load_function_probes(name: str, entry: str, ret: str, handlers: dict[str, str], hooks: list[HookChoice],
                         rodata: bytes) -> tuple[BpfObject, dict[str, str]]:
    """Open object `name`, load it with the programs `entry` and `ret` (on handle_mm_fault), the handlers'
    (function → program) and the hooks' chosen variants, set its settings; attach the hooks, the return
    program, each handler's, and the entry last, so that every call timed has its return seen.

    :returns: the object (the caller closes it) and each handler whose attach the kernel refused, with why.
    :raises LibbpfError: the object cannot be opened, loaded, or attached on handle_mm_fault (one line; a
        failed load names the program the kernel refused and the file holding libbpf's and the verifier's log)."""
    obj = BpfObject(object_path(name))
    try:
        wanted = {entry, ret} | set(handlers.values()) | {c.program for c in hooks}
        obj.load_only(wanted)
        obj.set_rodata(rodata)
        try:
            obj.load()
        except LibbpfError as exc:
            # the program the kernel refused says more than libbpf's last line ("failed to load object")
            failed = next((line.split("libbpf: ", 1)[-1] for line in obj.log if "BPF program load failed" in line), "")
            if not failed or exc.log_path is None:
                raise
            raise LibbpfError(f"{failed}; libbpf's and the verifier's log: {exc.log_path}", exc.log_path) from None
        for c in hooks:
            obj.attach(c.program or "")
        obj.attach(ret)
        refused = {}
        for fn, program in handlers.items():
            try:
                obj.attach(program)
            except LibbpfError as exc:
                refused[fn] = f"the kernel refused it: {exc}"
        obj.attach(entry)
    except BaseException:
        obj.close()
        raise
    return obj, refused


@dataclass
class FaultPathChoice:
    """The fault-path programs of the compiled walk (capture/bpf/journey_walk.bpf.c) chosen for this kernel."""

    variant: str                                   # "fentry" (BPF trampolines) or "kprobe"
    programs: tuple[str, ...]                      # the object's programs to load and attach
    not_probeable: dict[str, str] = field(default_factory=dict)   # handler → why it is not followed here
    mmap_function: str | None = None
    mmap_not_probeable: dict[str, str] = field(default_factory=dict)
    reason: str = ""


def fault_path_programs(variant: str, functions: set[str] | None = None) -> FaultPathChoice:
    """The programs following the walked fault through handle_mm_fault and its handlers, and the VMA-making
    call of the mmap before it, for `variant` "fentry" or "kprobe": each function that is one in the kernel's
    BTF (probeable(); `functions`: those names, for a test). Which runs is chosen by the loader: fentry first
    where the kernel takes it (no breakpoint per call), kprobes where it refuses BPF trampolines.

    :returns: the FaultPathChoice (its programs, and why each function left out could not be probed); raises nothing."""
    names = FAULT_HANDLERS + MMAP_FUNCTIONS + MERGE_FUNCTIONS + ("handle_mm_fault",)
    if functions is None:
        found, why = probeable(names)
    else:
        found, why = [fn for fn in names if fn in functions], {fn: NOT_A_FUNCTION for fn in names if fn not in functions}
    if variant == "fentry":
        entry, ret, handler, mmap_in, mmap_out, merge = ("hmf_fentry", "hmf_fexit", "fe_{}", "fe_{}", "fx_{}",
                                                         "fx_{}")
    else:
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
    REC_FAULT_RETURN: journey_walk.h), or None if its entry was not seen.

    Raises nothing: a record of another kind is left out."""
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


# ---- the scenarios' every-fault timing: capture/bpf/fault_calls.bpf.c ----
CALLS_OBJECT = "fault_calls"
# The Python mirror of fault_calls.h (tests/test_latency_and_kprobes.py holds it to the object's BTF).
CALL_PATH = 16
CALLS_SETTINGS = np.dtype([("target_tgid", "<u4"), ("from_exec", "<u4")])
FAULT_CALL_KEY = np.dtype([("tid", "<u4"), ("_pad", "<u4"), ("start_ns", "<u8")])
FAULT_CALL = np.dtype([("start_ns", "<u8"), ("duration_ns", "<u8"), ("address", "<u8"), ("flags", "<u4"),
                       ("retval", "<u4"), ("pid", "<u4"), ("tid", "<u4"), ("returned", "<u4"), ("npath", "<u4"),
                       ("path_ns", "<u4", (CALL_PATH,)), ("path", "u1", (CALL_PATH,))])
CALLS_DROPPED, CALLS_UNTRACKED, CALLS_N = range(3)
# The scheduler hooks (the target's exec starts the timing; its forks are followed), each with its tp_btf
# and classic-tracepoint program.
CALLS_HOOKS = (Hook("sched", "sched_process_exec", "exec_btf", "exec_tp"),
               Hook("sched", "sched_process_fork", "fork_btf", "fork_tp"))
CALLS_ENTRY_RETURN = {FunctionProbe.FENTRY: ("hmf_fentry", "hmf_fexit"),
                      FunctionProbe.KPROBE: ("hmf_kprobe", "hmf_kretprobe")}


def calls_from_map(values: list[bytes], not_probeable: dict[str, str]) -> list[KprobeFault]:
    """The `calls` map's values (struct fault_call) as KprobeFaults, in the order the calls entered
    handle_mm_fault; a call that had not returned when the map was read has no return value nor duration."""
    if not values:
        return []
    calls = np.frombuffer(b"".join(values), dtype=FAULT_CALL)
    calls = calls[np.argsort(calls["start_ns"], kind="stable")]
    out = []
    for c in calls:
        kept = min(int(c["npath"]), CALL_PATH)
        handlers = [(FAULT_HANDLERS[int(h)] if int(h) < len(FAULT_HANDLERS) else f"handler {int(h)}", int(ns))
                    for h, ns in zip(c["path"][:kept], c["path_ns"][:kept])]
        returned = bool(c["returned"])
        out.append(KprobeFault(address=int(c["address"]), flags=int(c["flags"]), pid=int(c["pid"]),
                               start_ns=int(c["start_ns"]), handlers=handlers,
                               retval=int(c["retval"]) if returned else None,
                               duration_ns=int(c["duration_ns"]) if returned else None,
                               not_probeable=dict(not_probeable)))
    return out


class EveryFaultProbe:
    """Every call of handle_mm_fault by a held program and its children, from its exec to stop(): its address
    and flags, the handlers it went through, its return value and duration (fault_calls.bpf.c, kept in the
    kernel and read once by result()). fentry programs where the kernel takes them, else kprobes.

    :param pid: the program, held before its exec (from_exec) or running.
    :raises BpfError: one line: the object is not built, or neither fentry nor kprobes attach here (each
        reason; a failed load names the file holding libbpf's and the verifier's log)."""

    def __init__(self, pid: int, from_exec: bool = True, probe: FunctionProbe | None = None,
                 kernel: KernelHooks | None = None):
        candidates, tried = probe_candidates(probe)
        kernel = kernel or KernelHooks()
        hooks = [kernel.choose(h) for h in CALLS_HOOKS]
        missing = [c for c in hooks if c.program is None]
        if missing:
            raise BpfError(f"timing every fault needs {missing[0].hook.system}:{missing[0].hook.event}: "
                           f"{missing[0].reason}")
        settings = np.zeros(1, dtype=CALLS_SETTINGS)
        settings[0] = (pid, int(from_exec))
        t0 = time.monotonic()
        handlers, self.not_probeable = probeable(FAULT_HANDLERS)
        self.obj: BpfObject | None = None
        for kind in candidates:
            entry, ret = CALLS_ENTRY_RETURN[kind]
            programs = {fn: f"{'fe' if kind is FunctionProbe.FENTRY else 'kp'}_{fn}" for fn in handlers}
            try:
                self.obj, refused = load_function_probes(CALLS_OBJECT, entry, ret, programs, hooks,
                                                         settings.tobytes())
            except (BpfObjectMissing, LibbpfError) as exc:
                tried.append(f"{kind}: {exc}")
                continue
            self.not_probeable.update(refused)
            self.variant = kind
            break
        if self.obj is None:
            raise BpfError("handle_mm_fault could not be hooked: " + "; ".join(tried))
        self.load_ms = (time.monotonic() - t0) * 1000
        self.reason = "; ".join(tried)

    def describe(self) -> str:
        """What timed the faults: the object, the kind of program, why, and how long loading took."""
        why = ("BPF trampolines: no breakpoint per call" if self.variant is FunctionProbe.FENTRY
               else f"fentry refused here: {self.reason}" if self.reason else "chosen")
        return (f"{self.variant} programs of {CALLS_OBJECT}.bpf.o (compiled CO-RE object, its handlers found, "
                f"loaded and attached through libbpf in {self.load_ms:.0f} ms) on handle_mm_fault and its handlers ({why})")

    def arm(self) -> None:
        """Nothing to wait for: libbpf attached every program before the constructor returned."""

    def result(self) -> list[KprobeFault]:
        """Every call seen, in the order entered; the object is closed. A call the map had no room for is
        counted, not kept (dropped())."""
        assert self.obj is not None
        self.obj.detach()
        calls = self.obj.map("calls")
        faults = calls_from_map([v for _k, v in calls.items()], self.not_probeable)
        counters = self.obj.map("counters")
        self.lost = sum(int(np.frombuffer(counters.lookup(np.uint32(i).tobytes()) or bytes(8 * counters.cpus),
                                          dtype="<u8").sum()) for i in range(CALLS_N))
        self.stop()
        return faults

    lost = 0

    def stop(self) -> None:
        if self.obj is not None:
            self.obj.close()
            self.obj = None
