"""What this machine can show, tier by tier, and the fix for each missing piece."""

from __future__ import annotations

import ctypes
import enum
import mmap
import os
from dataclasses import dataclass, field

from ..decode.bits import DecodeError
from ..kernel import facts
from ..kernel.btf import VMLINUX_BTF
from ..kernel.kallsyms import KernelSymbols
from ..kernel.tracefs import TracefsError, find_tracefs, read_event_format
from .kprobes import kprobe_support
from .safe_paths import UnsafePathError, trusted_executable


class Tier(enum.StrEnum):
    """The capture tiers, best first (DESIGN.md): what this machine lets a journey observe."""

    BPF = "bpf"
    PERF = "perf"
    USER = "user"
    MODEL = "model"


TIERS = tuple(Tier)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    tiers: tuple[str, ...] = ()


@dataclass
class Diagnosis:
    checks: list[Check] = field(default_factory=list)
    tier: Tier = Tier.MODEL
    kernel: str = ""
    paging: str = ""

    def ok(self, name: str) -> bool:
        return any(c.ok for c in self.checks if c.name == name)


def _pagemap_pfn_visible() -> tuple[bool, str]:
    buf = mmap.mmap(-1, mmap.PAGESIZE)
    buf[0] = 1
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    try:
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(addr // mmap.PAGESIZE * 8)    # one entry per page of the kernel's size (16 KiB on some arm64)
            entry = int.from_bytes(f.read(8), "little")
    except OSError as exc:
        return False, f"cannot read /proc/self/pagemap: {exc.strerror}"
    finally:
        del addr
    pfn = entry & ((1 << 55) - 1)
    if entry >> 63 and pfn:
        return True, f"a touched page of ours shows PFN 0x{pfn:x}"
    return False, "pagemap shows PFN 0 for a present page (PFNs are hidden from non-root readers)"


def _perf_tracepoint_opens(tp_id: int) -> tuple[bool, str]:
    from ..capture.perf_event import PERF_TYPE_TRACEPOINT, PerfAttr, PerfError, perf_event_open
    attr = PerfAttr()
    attr.type, attr.config, attr.sample_period = PERF_TYPE_TRACEPOINT, tp_id, 1
    attr.flags = 1  # disabled
    try:
        fd = perf_event_open(attr, 0, -1, what="tracepoint exceptions:page_fault_user")
    except PerfError as exc:
        return False, str(exc)
    os.close(fd)
    return True, "perf_event_open accepted tracepoint exceptions:page_fault_user"


def _software_event_opens() -> tuple[bool, str]:
    from ..capture.perf_event import PERF_COUNT_SW_PAGE_FAULTS, PERF_TYPE_SOFTWARE, PerfAttr, PerfError, perf_event_open
    attr = PerfAttr()
    attr.type, attr.config, attr.sample_period, attr.flags = PERF_TYPE_SOFTWARE, PERF_COUNT_SW_PAGE_FAULTS, 1, 1 | 1 << 5
    try:
        fd = perf_event_open(attr, 0, -1, what="software event page-faults")
    except PerfError as exc:
        return False, str(exc)
    os.close(fd)
    return True, "perf_event_open accepted the software page-fault event for our own process"


def _compiled_counter_check() -> Check:
    """The compiled CO-RE counter (summary-only trace): libbpf and the built object, and the hook variant each
    event would take on this kernel. It decides no tier: without it, trace records to a temporary file."""
    from .kernel_counts import choose_hooks, engine_problem
    from .tracer import CaptureError
    problem = engine_problem()
    if problem:
        return Check("compiled BPF counter", False, problem, "as root: bash scripts/setup.sh (installs clang, "
                     "libbpf-dev and bpftool, and builds the objects)")
    try:
        hooks = "; ".join(f"{c.hook.event}: {c.variant}" for c in choose_hooks())
    except CaptureError as exc:
        return Check("compiled BPF counter", False, str(exc), "trace -o FILE records instead")
    return Check("compiled BPF counter", True, f"libbpf.so.1 and the counter's object are here; hooks: {hooks}")


def _compiler_check() -> Check:
    """Whether a C compiler the tool may run is here (the exercise program falls back to Python without one)."""
    try:
        cc, cc_detail = trusted_executable("cc") or trusted_executable("gcc"), "no cc or gcc on PATH"
    except UnsafePathError as exc:
        cc, cc_detail = None, str(exc)
    return Check("C compiler", bool(cc), cc or cc_detail,
                 "" if cc else "apt-get install gcc (a pure-Python exercise program is used without it)", ())


def _trap_untraced_here() -> bool:
    """Whether this machine's architecture has no tracepoint with the trap (arm64's Arch interface says so)."""
    try:
        return not facts.machine_arch().syndrome_traced
    except DecodeError:
        return False    # a machine pagefault does not know: its tracepoints decide, as they did before


def diagnose() -> Diagnosis:
    """What this machine can show, tier by tier: each check with what it saw and the fix for what is missing.

    :returns: the Diagnosis. Never raises for what the machine lacks; a caller without root gets the checks that
        need root as failed, with sudo as their fix."""
    d = Diagnosis(kernel=facts.kernel_release())
    levels, why = facts.paging_levels()
    d.paging = why
    root = facts.is_root()
    d.checks.append(Check("root", root, "running as root" if root else f"running as uid {os.geteuid()}",
                          "" if root else "run with sudo for the perf and bpf tiers", ("bpf", "perf")))
    paranoid = facts.perf_event_paranoid()
    d.checks.append(Check("perf_event_paranoid", paranoid is not None and (paranoid <= 2 or root),
                          f"/proc/sys/kernel/perf_event_paranoid = {paranoid}",
                          "sysctl kernel.perf_event_paranoid=2", ("user",)))
    tp_id = None
    # arm64 kernels (6.1, 6.12) have no exceptions:page_fault_user: there the bpf tier meets the fault at
    # kprobe:handle_mm_fault instead (capture/arm64_fault.py), so kprobes decide that tier, not the tracepoint.
    untraced = _trap_untraced_here()
    if untraced:
        d.checks.append(Check("architecture", True, "arm64: the journey meets the fault at kprobe:handle_mm_fault and "
                              "reads descriptors through the linear map; ESR_EL1 is derived, not read", "", ()))
    try:
        tracefs = find_tracefs(mount=root)
        d.checks.append(Check("tracefs", True, f"tracefs at {tracefs}", "", ("perf", "bpf")))
        missing = []
        wanted = (("kmem", "mm_page_alloc"),) if untraced else (("exceptions", "page_fault_user"), ("kmem", "mm_page_alloc"))
        for system, name in wanted:
            try:
                fmt = read_event_format(system, name, tracefs)
                if name == "page_fault_user":
                    tp_id = fmt.id
            except TracefsError as exc:
                missing.append(str(exc))
        d.checks.append(Check("tracepoints", not missing, "; ".join(missing) or
                              " and ".join(f"{a}:{b}" for a, b in wanted) + " present",
                              "a kernel built with CONFIG_TRACEPOINTS (and x86 page-fault tracepoints)" if missing else "",
                              ("perf", "bpf")))
    except TracefsError as exc:
        d.checks.append(Check("tracefs", False, str(exc).split(";")[0],
                              "as root: mount -t tracefs nodev /sys/kernel/tracing", ("perf", "bpf")))
    if tp_id is not None:
        ok, detail = _perf_tracepoint_opens(tp_id)
        d.checks.append(Check("perf tracepoints", ok, detail, "" if ok else "run as root", ("perf", "bpf")))
    ok, detail = _software_event_opens()
    d.checks.append(Check("perf software events", ok, detail, "" if ok else "sysctl kernel.perf_event_paranoid=2",
                          ("user",)))
    ok, detail = _pagemap_pfn_visible()
    d.checks.append(Check("pagemap PFNs", ok, detail, "" if ok else "run as root", ("perf", "bpf")))
    kpf = os.access("/proc/kpageflags", os.R_OK)
    d.checks.append(Check("kpageflags", kpf, "/proc/kpageflags is readable" if kpf else "/proc/kpageflags is not readable",
                          "" if kpf else "run as root", ("perf", "bpf")))
    ksyms = KernelSymbols.load()
    d.checks.append(Check("kallsyms", ksyms.usable, f"/proc/kallsyms shows {len(ksyms.addresses)} text symbols"
                          if ksyms.usable else "/proc/kallsyms shows no addresses", "" if ksyms.usable else
                          "run as root (or sysctl kernel.kptr_restrict=0)", ("perf", "bpf")))
    btf = VMLINUX_BTF.exists()
    d.checks.append(Check("BTF", btf, f"{VMLINUX_BTF} exists" if btf else f"{VMLINUX_BTF} is missing",
                          "" if btf else "a kernel built with CONFIG_DEBUG_INFO_BTF", ("bpf",)))
    d.checks.append(_compiled_counter_check())
    if not untraced:   # the x86 journey's walk (capture/bpf_walk.py): it decides the bpf tier there
        from .bpf_walk import walk_check
        ok, detail = walk_check(root)
        d.checks.append(Check("compiled journey walk", ok, detail, "" if ok else "as root: bash scripts/setup.sh",
                              ("bpf",)))
    # What the bpf tier observes with, beyond tracepoints: none of these decides the tier; each one
    # missing is a fallback the journey names.
    kprobes, kprobe_detail = kprobe_support()
    d.checks.append(Check("kprobes", kprobes, kprobe_detail + ("" if kprobes else
                          ": the journey derives the fault flags and cannot show handlers, return value or duration; "
                          "trace --latency refuses"), "", ("bpf",) if untraced else ()))
    d.checks.append(_compiler_check())

    def tier_ok(tier: str) -> bool:
        return all(c.ok for c in d.checks if tier in c.tiers)
    d.tier = next((t for t in TIERS[:-1] if tier_ok(t)), Tier.MODEL)
    return d
