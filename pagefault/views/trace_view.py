"""Rendering a trace summary and a doctor diagnosis in the terminal. Every string that comes from a
recording (names of mappings, processes, GFP bits) is escaped for rich's markup, which would otherwise
make a "[link=…]" in a file name a hyperlink sequence; control characters are the console's to escape
(views/safe_console.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..journey.count_summary import NO_CALL_SITE

if TYPE_CHECKING:  # only for annotations: rendering a report must not load the doctor's probes
    from ..capture.doctor import Diagnosis
    from ..journey.trace_summary import TraceSummary

TIER_TEXT = {
    "bpf": "bpf: everything perf shows plus the raw page-table entries at every level",
    "perf": "perf: tracepoints with kernel and user call chains, PFNs, pagemap PFNs, kpageflags",
    "user": "user: software page-fault samples (address, ip) for your own processes; no PFNs",
    "model": ("model: nothing can be traced here; pagefault journey --model (and --scenario NAME) runs the simulator, "
              "every value labelled modelled"),
}


def render_doctor(d: Diagnosis, console: Console) -> None:
    console.print(f"kernel {escape(d.kernel)}; {escape(d.paging)}", highlight=False)
    t = Table(show_header=True)
    t.add_column("check")
    t.add_column("")
    t.add_column("what was seen")
    t.add_column("fix")
    for c in d.checks:
        t.add_row(escape(c.name), "[green]ok[/green]" if c.ok else "[red]missing[/red]", escape(c.detail), "" if c.ok else escape(c.fix))
    console.print(t)
    console.print(f"[bold]capture tier: {TIER_TEXT[d.tier]}[/bold]")


def render_summary(s: TraceSummary, console: Console) -> None:
    console.print(f"[bold]{escape(' '.join(s.command))}[/bold] (PID {s.pid}) {escape(s.exit)}; traced for "
                  f"{s.duration:.2f} s; tier {escape(s.tier)}", highlight=False)
    console.print(s.provenance, style="dim", highlight=False, markup=False)
    if s.integrity != "complete":
        console.print(f"recording {s.integrity}", style="bold red", highlight=False, markup=False)
    if s.lost:
        console.print(f"events lost: {s.lost:,} ({s.lost_how}): the counts below are short; retry with a larger "
                      "buffer (--buffer-mb)", style="bold red", highlight=False, markup=False)
    elif s.lost is None:
        console.print(f"events lost: {s.lost_how}", style="yellow", highlight=False, markup=False)
    else:
        console.print(f"events lost: 0 ({s.lost_how})", highlight=False, markup=False)
    console.print(f"page faults: [bold]{s.faults}[/bold]   page allocations: {s.allocations}   "
                  f"mmap calls: {'not counted in this mode' if s.mmaps is None else s.mmaps}", highlight=False)
    for note in s.notes:
        console.print(f"note: {note}", style="yellow", highlight=False, markup=False)
    if s.by_kind:
        t = Table(title="faults by kind (from the error code)", title_justify="left")
        t.add_column("kind")
        t.add_column("faults", justify="right")
        for k, n in sorted(s.by_kind.items(), key=lambda kv: -kv[1]):
            t.add_row(escape(k), str(n))
        console.print(t)
    if len(s.by_process) > 1:
        t = Table(title="faults by process (the program and the ones it ran)", title_justify="left")
        for col in ("PID", "command", "faults"):
            t.add_column(col, justify="left" if col == "command" else "right")
        for pid, comm, n in s.by_process[:15]:
            t.add_row(str(pid), escape(comm), str(n))
        console.print(t)
    if s.by_class:
        t = Table(title="faults by class (what the kernel did inside each fault)", title_justify="left")
        t.add_column("class")
        t.add_column("faults", justify="right")
        t.add_column("decided by")
        for cls, n, how in s.by_class:
            t.add_row(escape(cls), str(n), escape(how))
        console.print(t)
    if s.class_breakdown:
        # a count without stacks keeps no call site: said once, under the table, not in a column that repeats it
        # on every row (--json keeps the field, with the same words)
        unsited = all(site == NO_CALL_SITE for _cls, _mapping, site, _n in s.class_breakdown)
        t = Table(title="faults by class × mapping" + ("" if unsited else " × call site"), title_justify="left",
                  caption="call sites are not counted without -g: trace -g names them" if unsited else None,
                  caption_justify="left")
        for col in ("class", "mapping") + (() if unsited else ("call site",)) + ("faults",):
            t.add_column(col, justify="right" if col == "faults" else "left")
        for cls, mapping, site, n in s.class_breakdown:
            t.add_row(escape(cls), escape(mapping), *(() if unsited else (escape(site),)), str(n))
        console.print(t)
    if s.by_mapping:
        t = Table(title="faults by mapping (/proc/PID/maps and PERF_RECORD_MMAP2)", title_justify="left")
        t.add_column("mapping")
        t.add_column("faults", justify="right")
        for k, n in s.by_mapping[:15]:
            t.add_row(escape(k), str(n))
        console.print(t)
    if s.top_instructions:
        t = Table(title="top faulting instructions", title_justify="left")
        t.add_column("RIP")
        t.add_column("faults", justify="right")
        t.add_column("where")
        for row in s.top_instructions:
            t.add_row(f"0x{row['ip']:x}", str(row["count"]), escape(row["where"]))
        console.print(t)
    if s.kernel_paths:
        t = Table(title="top kernel call paths of page allocations", title_justify="left")
        t.add_column("allocs", justify="right")
        t.add_column("path (outermost first)")
        for path, n in s.kernel_paths:
            t.add_row(str(n), escape(path))
        console.print(t)
    if s.alloc_orders:
        orders = ", ".join(f"order {o} ({4 << o} KiB): {n}" if o <= 20 else f"order {o} (impossible): {n}"
                           for o, n in sorted(s.alloc_orders.items()))
        console.print(f"allocations by order: {orders}", highlight=False, markup=False)
        # the GFP names come from the recording's table: printed without markup, as they are
        console.print("allocations by GFP flags: " + ", ".join(f"{g}: {n}" for g, n in s.alloc_gfp[:5]),
                      highlight=False, markup=False)


def render_latency(summary, console) -> None:
    """trace --latency: one table by outcome, one by mapping, with log2 histograms."""
    from rich.table import Table
    console.print(f"[bold]{summary.faults}[/bold] faults timed from handle_mm_fault's entry to its return "
                  "(the hook used is in the notes)")
    for title, groups in (("by outcome (last handler → VM_FAULT bits)", summary.by_outcome),
                          ("by mapping", summary.by_mapping)):
        table = Table(title=title, title_justify="left")
        for col in ("", "faults", "p50 ≤ µs", "p90 ≤ µs", "p99 ≤ µs", "max µs", "histogram (log2 ns buckets)"):
            table.add_column(col, justify="right" if col and col != "histogram (log2 ns buckets)" else "left")
        for g in groups:
            peak = max(c for _b, c in g.histogram)
            hist = " ".join(f"{_ns(b)}:{'█' * max(1, round(8 * c / peak))}{c}" for b, c in g.histogram)
            table.add_row(escape(g.key), str(g.count), *(f"{g.percentiles_ns[p] / 1000:.1f}" for p in (50, 90, 99)),
                          f"{g.max_ns / 1000:.1f}", hist)
        console.print(table)
    for note in summary.notes:
        console.print(escape(note), style="dim")


def _ns(bucket: int) -> str:
    return f"{bucket}ns" if bucket < 1000 else f"{bucket // 1000}µs" if bucket < 1_000_000 else f"{bucket // 1_000_000}ms"
