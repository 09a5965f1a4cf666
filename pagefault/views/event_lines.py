"""`pagefault report FILE --events`: every sample of a recording, one line each, as perf script prints it.

    COMM  TID [CPU] SECONDS.MICROS: EVENT: IP SYMBOL field=value …

(perf script -F comm,tid,cpu,time,event,ip,sym,trace shows the same things.) The columns come decoded for
the whole recording at once (journey.trace_summary.recording_columns); the symbol of each distinct ip is
looked up once, with a binary search over the sorted kernel symbols, and the lines are built event type by
event type from plain Python lists, then written in large blocks.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

BLOCK = 1 << 16        # lines per write


def symbolizer(addresses: list[int], names: list[str]) -> Callable[[np.ndarray], dict[int, str]]:
    """A function mapping an array of ips to {ip: "symbol+0xoff"} for its distinct values (kallsyms order)."""
    starts = np.array(addresses, dtype=np.uint64)

    def lookup(ips: np.ndarray) -> dict[int, str]:
        unique = np.unique(ips)
        if not len(starts):
            return {int(ip): "[unknown]" for ip in unique.tolist()}
        at = np.searchsorted(starts, unique, side="right") - 1
        out = {}
        for ip, i in zip(unique.tolist(), at.tolist()):
            out[ip] = f"{names[i]}+0x{ip - int(starts[i]):x}" if i >= 0 else "[unknown]"
        return out
    return lookup


def event_lines(columns: dict[str, np.ndarray], names: list[str], fields: dict[str, dict[str, np.ndarray]],
                comms: dict[int, str], ips: np.ndarray, symbols: dict[int, str]) -> Iterator[str]:
    """The lines, in time order, in blocks of up to BLOCK lines joined by newlines (each block ends with one)."""
    n = len(columns["time"])
    event = columns["event"]
    # each event type's rows: its fields come in that type's row order (recording_columns masks by type)
    rows_of = {k: np.nonzero(event == k)[0] for k in range(len(names))}
    text = [""] * n
    for k, name in enumerate(names):
        rows = rows_of[k]
        if not len(rows):
            continue
        cols = fields.get(name, {})
        # a field column shorter than the rows (a damaged recording) leaves the rest of its rows without fields
        keys = [f for f in cols if len(cols[f]) == len(rows)]
        values = [cols[f].tolist() for f in keys]
        head = f": {name}: "
        tids = columns["tid"][rows].tolist()
        cpus = columns["cpu"][rows].tolist()
        micros = (columns["time"][rows] // 1000).tolist()
        row_ips = ips[rows].tolist()
        for j, (row, tid, cpu, us, ip) in enumerate(zip(rows.tolist(), tids, cpus, micros, row_ips)):
            trace = " ".join(f"{key}=0x{vals[j]:x}" if vals[j] >= 0 else f"{key}={vals[j]}"
                             for key, vals in zip(keys, values))
            text[row] = (f"{comms.get(tid, '-'):>16} {tid:>7} [{cpu:03d}] {us // 1000000}.{us % 1000000:06d}{head}"
                         f"{ip:16x} {symbols.get(ip, '[unknown]')} {trace}")
    for start in range(0, n, BLOCK):
        yield "\n".join(text[start:start + BLOCK]) + "\n"
