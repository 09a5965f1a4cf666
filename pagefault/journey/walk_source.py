"""Which engine read the walk's values, and at which hook: taken from the evidence, never assumed.

Captures since the compiled walk record its description (`event_sources["walk"]`, `BpfWalk.script`: "…
(compiled CO-RE object, loaded through libbpf …); programs: …; hooks: page_fault_user: tp_btf (…); …") and,
on arm64, `hooks` ("handle_mm_fault: kprobe (…)"); older captures hold the bpftrace script they ran. A
label names the engine that really read the value, so an old bpftrace capture keeps "bpftrace" and a new
one names the compiled program and the hook variant (tp_btf or the classic tracepoint, fentry or kprobe).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

COMPILED_MARK = "compiled CO-RE object"
# "EVENT: VARIANT" in the compiled capture's hook list (bpf_walk.hooks_text, arm64_fault's hooks)
_HOOK = re.compile(r"\b(\w+): (tp_btf|raw_tp|tracepoint|fentry|kprobe)\b")
# the tracepoints' systems, for naming a hook the way tracefs does
_SYSTEMS = {"page_fault_user": "exceptions", "page_fault_kernel": "exceptions", "sys_enter": "raw_syscalls", "sched_process_exec": "sched",
            "sched_process_exit": "sched", "mm_page_alloc": "kmem", "mm_lru_insertion": "pagemap"}


@dataclass(frozen=True)
class WalkSource:
    """The engine of a capture's kernel reads and the variant of each hook it used."""

    compiled: bool
    variants: dict[str, str] = field(default_factory=dict)     # event → tp_btf/tracepoint/fentry/kprobe

    @property
    def engine(self) -> str:
        return "the compiled walk (CO-RE, libbpf)" if self.compiled else "bpftrace"

    def hook(self, event: str) -> str:
        """How `event` was hooked: "tp_btf exceptions:page_fault_user", "kprobe handle_mm_fault"; a bpftrace
        capture's tracepoints are its `tracepoint:` probes, its functions its kprobes."""
        system = _SYSTEMS.get(event)
        name = f"{system}:{event}" if system else event
        default = "tracepoint" if system else "kprobe"
        return f"{self.variants.get(event, default)} {name}"

    def at(self, event: str) -> str:
        """"ENGINE at HOOK", the source of a value read when `event` fired."""
        return f"{self.engine} at {self.hook(event)}"

    @property
    def probes(self) -> tuple[str, str]:
        """The entry and return probes on kernel functions: fentry/fexit (BPF trampolines) or kprobe/kretprobe."""
        return ("fentry", "fexit") if self.variants.get("handle_mm_fault") == "fentry" else ("kprobe", "kretprobe")

    @property
    def clock(self) -> str:
        """The clock of the entry and return times (CLOCK_MONOTONIC both)."""
        return "bpf_ktime_get_ns()" if self.compiled else "bpftrace nsecs"

    @property
    def held(self) -> str:
        """Who stopped the program after the fault (bpf_send_signal in the compiled walk, signal() in bpftrace)."""
        return "the compiled walk's bpf_send_signal(SIGSTOP)" if self.compiled else "bpftrace signal(SIGSTOP)"


def walk_source(description: str, hooks: list[str] | None = None) -> WalkSource:
    """The engine and hook variants from the capture's walk description (compiled object or bpftrace script)
    and, on arm64, its `hooks` list; an empty description with no hooks is an old bpftrace capture."""
    text = " ; ".join([description, *(hooks or [])])
    compiled = COMPILED_MARK in description or any(_HOOK.search(h) for h in hooks or [])
    variants = {m.group(1): m.group(2) for m in _HOOK.finditer(text)} if compiled else {}
    return WalkSource(compiled, variants)


def evidence_walk_source(ev) -> WalkSource:
    """The walk source of any evidence that has `event_sources`/`bpf` (x86) or `hooks`/`script` (arm64)."""
    sources = getattr(ev, "event_sources", {}) or {}
    bpf = getattr(ev, "bpf", None)
    description = sources.get("walk") or (bpf.script if bpf is not None else "") or getattr(ev, "script", "")
    # the x86 journey's fault-path programs: "fentry programs of the compiled walk on handle_mm_fault …"
    fault_path = sources.get("handle_mm_fault", "").split(" ", 1)[0]
    extra = [f"handle_mm_fault: {fault_path}"] if fault_path in ("fentry", "kprobe") else []
    return walk_source(description, list(getattr(ev, "hooks", []) or []) + extra)
