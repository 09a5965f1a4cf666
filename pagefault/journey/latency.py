"""Per-fault durations from the handle_mm_fault kprobe pair, summarised: histograms and percentiles by outcome and by mapping.

Pure: the records come in as a numpy array (capture/latency.py makes them), the summary goes out as data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..evidence import MapsLine

LATENCY_DTYPE = np.dtype([("pid", np.int32), ("address", np.uint64), ("retval", np.uint32),
                          ("handler", np.int16), ("duration_ns", np.int64)])
PERCENTILES = (50, 90, 99)


@dataclass
class LatencyGroup:
    """Faults of one outcome (or one mapping): how many and how long they took."""

    key: str
    count: int
    percentiles_ns: dict[int, float]
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


def _group(key: str, durations: np.ndarray) -> LatencyGroup:
    d = np.sort(durations.astype(np.int64))
    buckets = np.floor(np.log2(np.maximum(d, 1))).astype(np.int64)
    values, counts = np.unique(buckets, return_counts=True)
    return LatencyGroup(key, int(d.size), {p: float(np.percentile(d, p)) for p in PERCENTILES}, int(d[-1]),
                        int(d.sum()), [(1 << int(v), int(c)) for v, c in zip(values, counts)])


def _mapping_of(address: int, maps: list[MapsLine]) -> str:
    for m in maps:
        if m.start <= address < m.end:
            return m.path or f"[anon {m.perms}]"
    return "(unmapped when maps was last read)"


def summarize_latency(records: np.ndarray, handler_names: list[str], vm_fault_reasons: dict[int, str],
                      maps: dict[int, list[MapsLine]]) -> LatencySummary:
    """Group the faults by outcome (last handler seen × VM_FAULT bits) and by the mapping they hit.

    handler_names[i] names handler code i (−1: none of the probed handlers ran); maps: pid → the
    last /proc/PID/maps read of that process.
    """
    out = LatencySummary(int(records.size))
    if records.size == 0:
        out.notes.append("no fault of the program reached handle_mm_fault")
        return out
    outcome_keys = np.array([f"{handler_names[h] if h >= 0 else '(no probed handler)'} → "
                             f"{vm_fault_names(int(r), vm_fault_reasons)}"
                             for h, r in zip(records["handler"], records["retval"])])
    for key in np.unique(outcome_keys):
        out.by_outcome.append(_group(str(key), records["duration_ns"][outcome_keys == key]))
    mapping_keys = np.array([_mapping_of(int(a), maps.get(int(p), [])) for p, a in zip(records["pid"], records["address"])])
    for key in np.unique(mapping_keys):
        out.by_mapping.append(_group(str(key), records["duration_ns"][mapping_keys == key]))
    out.by_outcome.sort(key=lambda g: -g.count)
    out.by_mapping.sort(key=lambda g: -g.count)
    return out
