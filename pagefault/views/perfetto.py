"""Traces the Perfetto UI (ui.perfetto.dev) and chrome://tracing open: the Chrome JSON trace format.

A journey's timeline becomes instant events on the program's track, with the pauses between its
phases as slices; a `pagefault trace` recording becomes one instant event per sample, on the track
of the thread that took it, with its decoded fields as arguments. A fault is named by its class (what
the kernel did: "anonymous: new zeroed page", …) with the event and the mapping it hit among its
arguments, so the timeline says what happened. No per-fault duration is shown: the tracepoints mark a
fault's entry only (the latency tier measures durations, as histograms). Times are microseconds.
"""

from __future__ import annotations

import json

import numpy as np

from ..journey.steps import Journey


class PerfettoError(ValueError):
    """Nothing with a time to put on a timeline; the message says what has one."""


def journey_trace(j: Journey) -> dict:
    if not j.timeline:
        raise PerfettoError("this journey has no timeline (the simulator has no clock); --format perfetto needs a "
                            "live run: sudo pagefault journey [--scenario NAME] --format perfetto -o FILE")
    pid = j.pid
    events: list[dict] = [
        {"ph": "M", "name": "process_name", "pid": pid, "tid": pid, "args": {"name": f"{' '.join(j.command)} (PID {pid})"}},
        {"ph": "M", "name": "thread_name", "pid": pid, "tid": pid, "args": {"name": "the program"}},
    ]
    phases = [e for e in j.timeline if e.what.startswith("program paused at ")]
    for a, b in zip(phases, phases[1:]):
        events.append({"ph": "X", "name": f"{a.what.removeprefix('program paused at ')} → "
                       f"{b.what.removeprefix('program paused at ')}", "cat": "phase", "pid": pid, "tid": pid,
                       "ts": a.time_us, "dur": max(b.time_us - a.time_us, 0.001)})
    for e in j.timeline:
        events.append({"ph": "i", "s": "t", "name": e.what, "cat": "journey", "pid": pid, "tid": pid, "ts": e.time_us,
                       "args": {"source": e.source}})
    return {"traceEvents": events, "displayTimeUnit": "ns",
            "otherData": {"tool": "pagefault journey", "tier": j.tier, "kernel": j.kernel}}


def recording_trace(columns: dict[str, np.ndarray], names: list[str], fields: dict[str, dict[str, np.ndarray]],
                    comms: dict[int, str], command: list[str], stacks: list[list[str]] | None = None,
                    labels: dict[tuple[int, int, int], tuple[str, str]] | None = None) -> dict:
    """columns: time (ns), pid, tid, cpu, event (index into names); fields: per event name, per field, one value
    per sample of that event (in sample order); stacks: each sample's call stack root→leaf (a -g recording),
    written as the trace's stackFrames with each sample's "sf"; labels: (tid, time, address) → (class,
    mapping) of each fault (trace_summary.fault_labels): such a fault's event is named "fault: CLASS"."""
    if not len(columns["time"]):
        raise PerfettoError("the recording holds no samples")
    t0 = int(columns["time"].min())
    ts = (columns["time"] - t0) / 1000.0
    events: list[dict] = []
    for tid in np.unique(columns["tid"]).tolist():
        pid = int(columns["pid"][columns["tid"] == tid][0])
        events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": int(tid),
                       "args": {"name": comms.get(int(tid), f"thread {tid}")}})
    cursors = {name: 0 for name in names}
    frame_ids: dict[tuple, str] = {}
    frames: dict[str, dict] = {}
    ev_idx = columns["event"].tolist()
    pids, tids, cpus, tss = columns["pid"].tolist(), columns["tid"].tolist(), columns["cpu"].tolist(), ts.tolist()
    times = columns["time"].tolist()
    field_lists = {name: {k: v.tolist() for k, v in f.items()} for name, f in fields.items()}
    for i in range(len(tss)):
        name = names[ev_idx[i]]
        k = cursors[name]
        cursors[name] = k + 1
        args = {f: (hex(v[k]) if f in ("address", "ip", "pfn", "gfp_flags", "error_code") else v[k])
                for f, v in field_lists.get(name, {}).items()}
        args["cpu"] = cpus[i]
        label = labels.get((tids[i], times[i], field_lists[name]["address"][k])) \
            if labels and "address" in field_lists.get(name, {}) else None
        shown = name
        if label is not None:
            shown = f"fault: {label[0]}"
            args.update(event=name, **{"class": label[0], "mapping": label[1]})
        event = {"ph": "i", "s": "t", "name": shown, "cat": name.split(":")[0], "pid": pids[i], "tid": tids[i],
                 "ts": tss[i], "args": args}
        if stacks is not None and stacks[i]:
            event["sf"] = _frame_id(stacks[i], frame_ids, frames)
        events.append(event)
    trace = {"traceEvents": events, "displayTimeUnit": "ns",
             "otherData": {"tool": "pagefault trace", "command": " ".join(command)}}
    if frames:
        trace["stackFrames"] = frames
    return trace


def _frame_id(stack: list[str], ids: dict[tuple, str], frames: dict[str, dict]) -> str:
    """The stackFrames id of a stack's leaf, adding the frames on the way (a tree: each names its parent)."""
    parent = None
    for depth in range(1, len(stack) + 1):
        key = tuple(stack[:depth])
        if key not in ids:
            ids[key] = str(len(ids) + 1)
            frames[ids[key]] = {"name": stack[depth - 1], "category": "pagefault"} | (
                {"parent": parent} if parent else {})
        parent = ids[key]
    return parent or ""


def dumps(trace: dict) -> str:
    return json.dumps(trace, separators=(",", ":"))
