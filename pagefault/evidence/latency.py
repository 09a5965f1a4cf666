"""The kernel's per-fault duration histograms, as a capture reads them (capture/latency.py) and the latency
summary takes them (journey/latency.py): plain data, shared by both sides of the layer boundary."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class KernelHistogram:
    """One group's durations as the kernel kept them: log2 buckets (lower bound in ns, faults), sum and max."""

    buckets: list[tuple[int, int]]
    total_ns: int = 0
    max_ns: int = 0


def merge_histogram(into: KernelHistogram, h: KernelHistogram) -> None:
    """Add `h`'s faults to `into`: bucket counts and sums add up, the maximum is the larger.

    :returns: None; ``into`` is changed in place and ``h`` is left as it was. Raises nothing."""
    counts = dict(into.buckets)
    for lo, n in h.buckets:
        counts[lo] = counts.get(lo, 0) + n
    into.buckets = sorted(counts.items())
    into.total_ns += h.total_ns
    into.max_ns = max(into.max_ns, h.max_ns)
