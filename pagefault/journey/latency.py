"""Per-fault durations from the handle_mm_fault kprobe pair, summarised: histograms and percentiles by outcome and by mapping.

Pure: the kernel's histograms come in (capture/latency.py reads them from the compiled latency program's map), the summary goes
out as data. The kernel keeps log2 histograms (capture/bpf/latency.bpf.c), the count, the sum and the maximum per
group: a percentile is therefore known to its log2 bucket, and is reported as that bucket's upper bound
("at most"), never as a made-up exact value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..evidence import MapsLine
from ..evidence.latency import KernelHistogram, merge_histogram

PERCENTILES = (50, 90, 99)


@dataclass
class LatencyGroup:
    """Faults of one outcome (or one mapping): how many and how long they took."""

    key: str
    count: int
    percentiles_ns: dict[int, float]    # the upper bound of the log2 bucket that holds the percentile
    max_ns: int
    total_ns: int
    histogram: list[tuple[int, int]]    # (bucket's lower bound in ns, a power of two; faults in it)


@dataclass
class LatencySummary:
    faults: int
    by_outcome: list[LatencyGroup] = field(default_factory=list)
    by_mapping: list[LatencyGroup] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def vm_fault_names(value: int, names: dict[int, str]) -> str:
    """VM_FAULT_* names of a return value (0: the fault was handled)."""
    if value == 0:
        return "0"
    parts = [names.get(1 << b, f"bit{b}") for b in range(32) if value >> b & 1]
    return "|".join(parts)


def group(key: str, h: KernelHistogram) -> LatencyGroup:
    """A group from its histogram: count, each percentile's bucket bound, the kernel's sum and maximum."""
    buckets = sorted(h.buckets)
    count = sum(n for _lo, n in buckets)
    percentiles: dict[int, float] = {}
    for p in PERCENTILES:
        need, seen = count * p / 100, 0
        for lo, n in buckets:
            seen += n
            if seen >= need:
                percentiles[p] = float(min(max(2 * lo, 1), h.max_ns) if h.max_ns else max(2 * lo, 1))
                break
    return LatencyGroup(key, count, percentiles, h.max_ns, h.total_ns, buckets)


def _mapping_of(start: int, maps: list[MapsLine]) -> str:
    for m in maps:
        if m.start == start:
            return m.path or f"[anon {m.perms}]"
    return f"(the VMA at 0x{start:x}, gone before maps was read)" if start else "(no VMA)"


def summarize_latency(by_outcome: dict[tuple[int, int], KernelHistogram], by_vma: dict[int, KernelHistogram],
                      handler_names: list[str], vm_fault_reasons: dict[int, str],
                      maps: list[MapsLine]) -> LatencySummary:
    """by_outcome: (handler code, return value) → histogram (code −1: none of the probed handlers ran);
    by_vma: the VMA's vm_start → histogram; maps: the program's mappings, to name the VMAs."""
    out = LatencySummary(sum(sum(n for _lo, n in h.buckets) for h in by_outcome.values()))
    if not out.faults:
        out.notes.append("no fault of the program reached handle_mm_fault")
        return out
    for (code, retval), h in by_outcome.items():
        name = handler_names[code] if 0 <= code < len(handler_names) else "(no probed handler)"
        out.by_outcome.append(group(f"{name} → {vm_fault_names(retval, vm_fault_reasons)}", h))
    merged: dict[str, KernelHistogram] = {}
    for start, h in by_vma.items():
        merge_histogram(merged.setdefault(_mapping_of(start, maps), KernelHistogram([])), h)
    out.by_mapping = [group(label, h) for label, h in merged.items()]
    out.by_outcome.sort(key=lambda g: -g.count)
    out.by_mapping.sort(key=lambda g: -g.count)
    out.notes.append("durations kept in the kernel as log2 histograms (the compiled latency program, latency.bpf.c): "
                     "a percentile is given as the "
                     "upper bound of its bucket; the sum and maximum are exact")
    return out
