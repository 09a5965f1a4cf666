"""`pagefault trace`: a program's page faults counted in the kernel, or recorded, and summarised.

Only what the chosen path needs is imported, when it runs: counting imports neither numpy nor rich (rich
only for a text summary), because the whole command is measured against the untraced program
(bench/summary_only.py).

Root (or CAP_PERFMON) is needed for the perf tier and for counting in the kernel; without it the user tier
records the software page-fault event, and a request for more is CannotTrace with the fix.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from ..views.terminal import print_json, say
from .errors import CannotTrace, Outcome, UsageError
from .output import terminal_console
from .recordings import summarize_recording, write_folded, write_pprof


def run(args: argparse.Namespace) -> Outcome:
    """`pagefault trace`: takes the parsed arguments (cmd or pid, output, summary_only, no_summary, summary,
    json, pprof, folded, call_graph, dwarf, latency, probes, tier, buffer_mb, allow_init, force, quiet).

    :returns: Outcome.PARTIAL when the disk filled during a recording (what was recorded is kept), else DONE.
    :raises UsageError: the options contradict each other, an output exists, or the target is refused.
    :raises CannotTrace: this machine (or user) cannot trace as asked; the message has the fix.
    """
    from ..capture.safe_paths import OutputError, check_output_target
    argv = list(args.cmd)
    if argv and argv[0] == "--":
        argv = argv[1:]
    args.call_graph = args.call_graph or args.dwarf   # --dwarf is -g with another unwinder
    if bool(argv) == (args.pid is not None):
        raise UsageError("give either a command after -- or -p PID (e.g. pagefault trace -- ls -l)")
    if args.latency:
        return _trace_latency(args, argv)
    if args.probes != "auto":
        raise UsageError("--probes chooses how --latency hooks handle_mm_fault; give it with --latency")
    if not 1 <= args.buffer_mb <= 4096:
        raise UsageError("--buffer-mb must be from 1 to 4096")
    if args.summary_only and args.output:
        raise UsageError("--summary-only counts in the kernel and writes no recording; leave out -o FILE (or "
                         "--summary-only)")
    if args.no_summary and not args.output:
        raise UsageError("--no-summary writes only the recording: give it a name with -o FILE")
    for path in (args.summary, args.pprof, args.folded):
        if path and path != "-":
            try:
                check_output_target(Path(path), args.force)   # refused before the program runs, not after
            except OutputError as exc:
                raise UsageError(str(exc)) from None
    if args.output is None:
        return _trace_summary_only(args, argv)
    return _trace_to_recording(args, argv, Path(args.output))


def _trace_to_recording(args: argparse.Namespace, argv: list[str], output: Path) -> Outcome:
    """trace -o FILE: every event recorded into FILE, then summarised from it."""
    from ..capture.safe_paths import OutputError, OutputWriteFailed, check_output_target
    from ..capture.tracer import CaptureError, TargetProblem, TraceOptions, record
    from ..views.progress import stderr_progress
    opts = TraceOptions(argv=argv, pid=args.pid, allow_init=args.allow_init, callchain=args.call_graph,
                        user_stack=args.dwarf, output=output, tier=args.tier, data_pages=pow2_pages(args.buffer_mb),
                        progress=stderr_progress if not args.quiet else None, force=args.force,
                        on_running=_prefetch_kernel_symbols if not args.no_summary and args.tier != "user" else None)
    try:
        check_output_target(output, args.force)   # refused before the program runs, not after
        meta = record(opts)
    except OutputWriteFailed:
        raise                                      # a full disk: cli.py says so, exit 1
    except (TargetProblem, OutputError) as exc:
        raise UsageError(str(exc)) from None
    except CaptureError as exc:
        raise CannotTrace(str(exc)) from None
    if not args.quiet and sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
    written = f"recording written to {output} ({meta['bytes'] / 1e6:.1f} MB of events)"
    if meta.get("disk_full"):
        written = (f"the disk filled ({meta['disk_full']}): the recording stops there; what was recorded is kept "
                   f"in {output}, which pagefault report reads as partial")
    if args.pprof:
        write_pprof(output, Path(args.pprof), args.force)
    if args.folded:
        write_folded(output, args.folded, args.force)
    outcome = Outcome.PARTIAL if meta.get("disk_full") else Outcome.DONE
    if args.no_summary:
        say(f"{written}; read it with: pagefault report {output}")
        return outcome
    write_trace_summary(args, summarize_recording(output), render_summary)
    say(f"{written}; read it again with: pagefault report {output}")
    return outcome


def _prefetch_kernel_symbols() -> None:
    """trace -o's summary names the kernel addresses it holds (kernel-mode faults' instructions, the allocations'
    call chains): their symbols are read in a thread while the program runs, not after it (~50-80 ms here). As
    root only (kallsyms shows others zeros)."""
    if os.geteuid() == 0:
        from ..kernel.kallsyms import prefetch_text_symbols
        prefetch_text_symbols()


def _trace_latency(args: argparse.Namespace, argv: list[str]) -> Outcome:
    """trace --latency: time every fault with the kprobe pair; a summary, no recording."""
    from ..capture.latency import FunctionProbe, record_latency
    from ..capture.tracer import CaptureError, TargetProblem
    from ..journey.latency import summarize_latency
    from ..kernel.facts import kernel_enums
    from ..views.progress import stderr_progress
    from ..views.trace_view import render_latency
    if args.call_graph or args.no_summary:
        raise UsageError("--latency prints a summary of durations; it takes neither -g nor --no-summary")
    try:
        rec = record_latency(argv or None, args.pid, stderr_progress if not args.quiet else None,
                             probe=None if args.probes == "auto" else FunctionProbe(args.probes))
    except TargetProblem as exc:
        raise UsageError(str(exc)) from None
    except CaptureError as exc:
        raise CannotTrace(str(exc)) from None
    enums, _source = kernel_enums(("vm_fault_reason",))
    summary = summarize_latency(rec.by_outcome, rec.by_vma, rec.handler_names, enums.get("vm_fault_reason", {}),
                                [m for lines in rec.maps.values() for m in lines])
    summary.notes += [f"not probed: {fn} ({why})" for fn, why in sorted(rec.not_probeable.items())] + list(rec.notes)
    summary.notes.append(f"handle_mm_fault hooked with {rec.probe}: {rec.probe_reason}")
    summary.notes.append(f"the program {rec.target_exit}")
    write_trace_summary(args, summary, render_latency)
    return Outcome.DONE


def write_trace_summary(args: argparse.Namespace, summary, render) -> None:
    """trace's summary (text, or JSON with --json) goes where perf stat's goes: to stderr, so that the traced
    program's standard output stays its own (`pagefault trace -- xz -c f > f.xz`). --summary FILE writes it to
    FILE instead, and --summary - to standard output.

    :raises OutputError: --summary FILE exists (without --force) or is not a safe place to write.
    """
    import io

    from ..decode.bits import to_jsonable
    if args.summary and args.summary != "-":
        from ..capture.safe_paths import write_output
        if args.json:
            text = json.dumps(to_jsonable(summary), indent=2) + "\n"
        else:
            buf = io.StringIO()
            render(summary, terminal_console(file=buf, width=140, color_system=None))
            text = buf.getvalue()
        write_output(Path(args.summary), text, args.force)
        say(f"summary written to {args.summary}")
        return
    out = sys.stdout if args.summary == "-" else sys.stderr
    if args.json:
        print_json(json.dumps(to_jsonable(summary), indent=2), out)
    else:
        render(summary, terminal_console(file=out))


def _trace_summary_only(args: argparse.Namespace, argv: list[str]) -> Outcome:
    """trace without -o (or --summary-only): count in the kernel where the compiled counter can; else record to a
    private temporary file, summarise it and remove it. Nothing is written to the working directory."""
    from ..capture.kernel_counts import engine_problem
    # -g, --folded and --pprof count each fault's stacks too (fault_stacks.bpf.c), in the kernel as well
    stacks = bool(args.call_graph or args.pprof or args.folded)
    wanted = os.geteuid() == 0 and args.tier in ("auto", "perf") and not args.dwarf   # --dwarf: stack copies, recorded
    problem = engine_problem("fault_stacks" if stacks else "fault_count") if wanted else None
    if wanted and problem is None:
        summary = _count_in_kernel(args, argv, stacks)
    else:
        summary = _record_to_temporary(args, argv, problem)
    write_trace_summary(args, summary, render_summary)
    return Outcome.DONE


def _count_in_kernel(args: argparse.Namespace, argv: list[str], stacks: bool):
    """The faults counted by the compiled counter (and their stacks with ``stacks``, written where --folded and
    --pprof say), summarised.

    :returns: the TraceSummary.
    :raises UsageError: the command cannot be run or the PID traced.
    :raises CannotTrace: the count cannot run here (the reason and its fix).
    :raises OutputError: a --folded or --pprof file cannot be written."""
    from ..capture.kernel_counts import count_faults
    from ..capture.tracer import CaptureError, TargetProblem
    from ..journey.count_summary import reconcile, summarize_counts
    from ..views.progress import stderr_progress
    try:
        kc = count_faults(argv or None, args.pid, stderr_progress if not args.quiet else None, stacks=stacks,
                          allow_init=args.allow_init, on_running=lambda: _prepare_for_the_end(args, stacks))
    except TargetProblem as exc:
        raise UsageError(str(exc)) from None
    except CaptureError as exc:
        raise CannotTrace(str(exc)) from None
    ksyms = sited = None
    name_site: Callable = str
    if stacks:   # each fault's call site is found in its stacks: the summary's breakdown names it, as a recording's
        from ..capture.kernel_counts import kernel_symbols_for
        from ..journey.fault_stacks import Symbolizer, counted_site_keys
        ksyms = kernel_symbols_for({ip for r in kc.stack_rows for ip in kc.stacks.get(r[9], [])})
        usable = ksyms if ksyms.usable else None
        sited = counted_site_keys(kc.stack_rows, kc.stacks, usable)
        name_site = Symbolizer(kc.mappings, usable).site_name
    summary = summarize_counts(kc.rows, kc.maps.get(kc.pid, []), kc.command,
                               kc.pid, kc.target_exit, kc.duration, kc.allocations, kc.total, kc.process_names,
                               maps_by_process=kc.maps, sited_rows=sited, name_site=name_site)
    summary.notes += [f"hook {h}" for h in kc.hooks] + kc.notes
    summary.notes.append(f"the counting program loaded and attached in {kc.load_ms:.0f} ms")
    if summary.kernel_mode_faults:
        summary.notes.append(f"{summary.kernel_mode_faults} of the faults were taken in kernel mode, inside system "
                             "calls touching the program's memory (exceptions:page_fault_kernel)")
    reconcile(summary, kc.kernel_fault_counts, summary.faults,
              "" if kc.kernel_mode_counted else
              "faults taken in kernel mode, which this kernel's hooks do not count (record with -o FILE)",
              from_exec=args.pid is None)
    if ksyms is not None:
        _write_counted_stacks(args, kc, ksyms)
    return summary


def _record_to_temporary(args: argparse.Namespace, argv: list[str], problem: str | None):
    """The faults recorded into a private temporary directory, summarised (with --pprof and --folded written
    from it), and the directory removed whatever happens."""
    import shutil
    import tempfile

    from ..capture.tracer import CaptureError, TargetProblem, TraceOptions, record
    from ..views.progress import stderr_progress
    work = Path(tempfile.mkdtemp(prefix="pagefault-trace-"))
    try:
        recording = work / "t.pfrec"
        try:
            record(TraceOptions(argv=argv, pid=args.pid, allow_init=args.allow_init, callchain=args.call_graph,
                                user_stack=args.dwarf, output=recording, tier=args.tier, data_pages=pow2_pages(args.buffer_mb),
                                progress=stderr_progress if not args.quiet else None))
        except TargetProblem as exc:
            raise UsageError(str(exc)) from None
        except CaptureError as exc:
            raise CannotTrace(str(exc)) from None
        summary = summarize_recording(recording)
        summary.notes.append("recorded into a temporary file (removed): " + (
            f"counting in the kernel cannot run here ({problem})" if problem else
            "counting in the kernel needs root and the perf tier"))
        if args.pprof:
            write_pprof(recording, Path(args.pprof), args.force)
        if args.folded:
            write_folded(recording, args.folded, args.force)
        return summary
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _write_counted_stacks(args: argparse.Namespace, kc, ksyms) -> None:
    """trace -g counted in the kernel: the faults' stacks as a folded flame graph (--folded) and a pprof profile
    (--pprof), built as report builds them from a recording; `ksyms` names their kernel frames.

    :returns: None.
    :raises OutputError: a file exists (without --force) or is not a safe place to write."""
    from collections import Counter

    from ..capture.safe_paths import write_output
    from ..journey.fault_stacks import counted_samples, folded
    from ..views.pprof import to_pprof
    from .recordings import emit_folded, frames_escaped
    # perf's COMM records name what exec'ed; the kernel's names add the children that only forked
    # every process's named VMAs: the stacks' rows are named by start (as before the count kept them by process)
    samples = counted_samples(kc.stack_rows, kc.stacks, kc.mappings, [m for lines in kc.maps.values() for m in lines],
                              {**kc.process_names, **kc.comms}, ksyms if ksyms.usable else None)
    if args.folded:
        stacks: Counter = Counter()
        for sample, n in samples.items():
            stacks[sample.frames] += n
        emit_folded(folded(frames_escaped(stacks)), args.folded, args.force, sum(stacks.values()), len(stacks))
    if args.pprof:
        write_output(Path(args.pprof), to_pprof(samples, duration_ns=int(kc.duration * 1e9)), args.force)
        say(f"{sum(samples.values()):,} faults in {len(samples):,} samples written to {args.pprof} (pprof); read "
            f"it with: go tool pprof -top {args.pprof}")
    if not (args.folded or args.pprof):
        say(f"the faults' stacks were counted ({len(kc.stacks):,} distinct): write them with --folded FILE or "
            "--pprof FILE")


def _prepare_for_the_end(args: argparse.Namespace, stacks: bool) -> None:
    """While the traced program runs, import what its end will need: the text summary's view (rich, ~25-40 ms
    here) unless --json, and with stacks what names them and writes them (~10 ms). Imported after the program's
    end, they were time the person waits for the summary.

    :returns: None; raises nothing of its own."""
    if not args.json:
        from ..views import safe_console, trace_view  # noqa: F401
    if stacks:   # (core.recordings, which writes the flame graph, is this module's own import already)
        from ..journey import fault_stacks  # noqa: F401
        if args.pprof:
            from ..views import pprof  # noqa: F401


def render_summary(summary, console) -> None:
    # rich is imported for a text summary only, not for --json
    """The text view of a trace's summary, printed to ``console``.

    :returns: None; raises nothing of its own."""
    from ..views.trace_view import render_summary as render
    render(summary, console)


def pow2_pages(mb: int) -> int:
    """The ring buffer's pages per CPU for ``mb`` MiB: perf_event wants a power of two (rounded down).

    :returns: a power of two, at least 1 (``mb`` of 0 gives 1). Raises nothing."""
    import mmap
    pages = mb * (1 << 20) // mmap.PAGESIZE
    return 1 << max(0, pages.bit_length() - 1)
