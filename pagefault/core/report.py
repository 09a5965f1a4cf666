"""`pagefault report FILE`: a recording made by pagefault trace, summarised, listed event by event, or
turned into a timeline (Perfetto), a flame graph (folded, speedscope) or a profile (pprof).

Any user may read a recording; kernel symbols need /proc/kallsyms's addresses (root) and the recording's
own kernel: without them the events are listed unsymbolised, and a note says why.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..views.safe_text import escape_controls
from ..views.terminal import print_json, say, write_text
from .errors import Outcome, UsageError
from .output import terminal_console
from .recordings import frames_escaped, recording_problems_as_one_line, summarize_recording, write_pprof


def run(args: argparse.Namespace) -> Outcome:
    """`pagefault report`: takes the parsed arguments (file, top, json, format, output, force, events).

    :raises UsageError: the options contradict each other, or the recording is missing or damaged.
    :raises OutputError: -o FILE exists (without --force) or is not a safe place to write.
    """
    from ..capture.recording import load_recording
    if args.top < 0:
        raise UsageError(f"--top {args.top} is negative; give how many rows to show (0 or more)")
    if args.output and args.format == "text":
        raise UsageError("-o FILE is where --format perfetto, folded or speedscope writes; add one, or leave out -o")
    if args.format == "perfetto":
        with recording_problems_as_one_line(args.file):
            return _report_perfetto(load_recording(args.file), args)
    if args.format in ("folded", "speedscope"):
        with recording_problems_as_one_line(args.file):
            return _report_flame(load_recording(args.file), args)
    if args.format == "pprof":
        if not args.output:
            raise UsageError("--format pprof writes a binary profile: give it a file with -o FILE.pb.gz")
        from ..capture.safe_paths import check_output_target
        check_output_target(Path(args.output), args.force)
        write_pprof(Path(args.file), Path(args.output), args.force)
        return Outcome.DONE
    if args.events:
        if args.json:
            raise UsageError("--events prints text lines (as perf script does); leave out --json")
        with recording_problems_as_one_line(args.file):
            return _report_events(load_recording(args.file))
    summary = summarize_recording(args.file, args.top)
    if args.json:
        from ..decode.bits import to_jsonable
        print_json(json.dumps(to_jsonable(summary), indent=2))
    else:
        from ..views.trace_view import render_summary
        render_summary(summary, terminal_console())
    return Outcome.DONE


def _report_events(rec) -> Outcome:
    """report --events: every sample, decoded and symbolised, one line each (perf script's layout)."""
    from ..journey.trace_summary import recording_columns
    from ..kernel.kallsyms import KernelSymbols
    from ..views.event_lines import event_lines, symbolizer
    columns, names, fields, comms = recording_columns(rec)
    if rec.meta.get("tier", "perf") == "perf":
        ips = columns["ip"]     # a perf-tier recording without it is at odds with its metadata (one line)
        ksyms = KernelSymbols.load()
        recorded_base = (rec.meta.get("kernel") or {}).get("text_base")
        if ksyms.usable and recorded_base in (None, ksyms.text_base()):
            symbols = symbolizer(ksyms.addresses, ksyms.names)(ips)
        else:
            symbols = {}
            say("note: kernel symbols unavailable: " + ("/proc/kallsyms shows no addresses (run as root)"
                if not ksyms.usable else "this machine's kernel is not the recording's"), file=sys.stderr)
    else:   # the user tier's software event: the ip is the program's own, shown without a symbol
        ips, symbols = fields["page-faults"]["ip"], {}
    sys.stdout.flush()
    for block in event_lines(columns, names, fields, comms, ips, symbols):
        sys.stdout.buffer.write(block)
    sys.stdout.buffer.flush()
    return Outcome.DONE


def _report_flame(rec, args: argparse.Namespace) -> Outcome:
    """report --format folded|speedscope: a page-fault flame graph, one root per fault class."""
    from ..journey.fault_stacks import fault_stacks, folded, speedscope
    if rec.meta.get("tier", "perf") != "perf":
        raise UsageError("flame graphs need a recording of the perf tier (run pagefault trace as root)")
    stacks, chains = fault_stacks(rec)
    stacks = frames_escaped(stacks)
    name = escape_controls(" ".join(rec.meta.get("command") or []) or str(args.file))
    text = folded(stacks) if args.format == "folded" else json.dumps(speedscope(stacks, name))
    if args.output:
        from ..capture.safe_paths import check_output_target, write_output
        check_output_target(Path(args.output), args.force)
        write_output(Path(args.output), text, args.force)
    else:
        write_text(text)
    viewer = ("flamegraph.pl, inferno-flamegraph or speedscope.app" if args.format == "folded"
              else "speedscope.app (drop the file on it)")
    say(f"{sum(stacks.values()):,} faults in {len(stacks):,} stacks, one root per class"
        + ("" if chains else "; no call chains in this recording (record with -g for full stacks): each stack is "
           "the class and the faulting function") + (f"; written to {args.output}, open it with {viewer}"
                                                      if args.output else ""), file=sys.stderr)
    return Outcome.DONE


def _report_perfetto(rec, args: argparse.Namespace) -> Outcome:
    """report --format perfetto -o FILE: every sample on a timeline, as a Chrome JSON trace."""
    from ..capture.safe_paths import check_output_target, write_output
    from ..journey.fault_stacks import sample_stacks
    from ..journey.trace_summary import fault_labels, recording_columns
    from ..views.perfetto import PerfettoError, dumps, recording_trace
    if not args.output:
        raise UsageError("--format perfetto needs -o FILE (a .json trace for ui.perfetto.dev)")
    check_output_target(Path(args.output), args.force)   # an OutputError is one line from main()
    columns, names, fields, comms = recording_columns(rec)
    try:
        trace = recording_trace(columns, names, fields, comms, rec.meta.get("command", []), sample_stacks(rec),
                                fault_labels(rec))
    except PerfettoError as exc:
        raise UsageError(str(exc)) from None
    write_output(Path(args.output), dumps(trace), args.force)
    say(f"{len(columns['time']):,} samples written to {args.output} (Chrome JSON trace: open it in "
        "ui.perfetto.dev)", file=sys.stderr)
    return Outcome.DONE
