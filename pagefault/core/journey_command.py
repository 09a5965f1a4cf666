"""`pagefault journey`: which journey was asked for (the exercise program's, a program of the user's, a
scenario, the simulator's, a replay), checked before anything runs, and where it is shown or written.

Running it is core/journey.py's. Any user may run it: without root the live journey is the simulator's
(said on stderr), an explicitly requested tier is CannotTrace with the fix, and a replay reads only its file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..views.terminal import say, write_text
from .arguments import parse_number
from .errors import Outcome, UsageError
from .output import terminal_console


def run(args: argparse.Namespace) -> Outcome:
    """`pagefault journey`: takes its parsed arguments (see cli.py's _register_journey).

    :raises UsageError: the options contradict each other, or an output exists (without --force).
    :raises CannotTrace: this machine (or user) cannot capture what was asked for.
    :raises NothingMatched: no fault of the program matched --at, --nth or --kind.
    """
    from . import journey as core
    output = _journey_output(args)
    console = terminal_console()
    if args.replay:
        return _emit_journey(core.replay(Path(args.replay)), args, output, console)
    argv = list(args.cmd or [])
    if argv and argv[0] == "--":
        argv = argv[1:]
    selector, value = _fault_selector(args)
    if argv or args.pid is not None:
        return _program_journey(args, argv, selector, value, output, console)
    if selector != "own":
        raise UsageError("--at, --nth and --kind choose a fault of a program of yours: give it after -- (or -p PID)")
    request = _request(args)
    if request.save_evidence:
        from ..capture.safe_paths import check_output_target
        check_output_target(request.save_evidence, args.force)
    interactive = (args.format == "text" and not args.no_pause and not args.tui and sys.stdin.isatty()
                   and sys.stdout.isatty())
    if (not interactive or request.model or request.tier == "model" or request.scenario
            or not core.machine_interface().syndrome_traced):
        return _emit_journey(core.run_journey(request), args, output, console)
    live = core.start_live(request)
    if live is None:
        return _emit_journey(core.stand_in_journey(request), args, output, console)
    core.step_through(live, console, request)
    return Outcome.DONE


def _program_journey(args: argparse.Namespace, argv: list[str], selector: str, value: object, output: Path | None,
                     console) -> Outcome:
    """journey -- CMD (or -p PID): one fault of a program of the user's, chosen by the selector."""
    from ..views.progress import stderr_progress
    from . import journey as core
    if argv and args.pid is not None:
        raise UsageError("give either a command after -- or -p PID, not both")
    if (args.scenario or args.model or args.offset or args.size or args.text is not None
            or args.tier not in ("auto", "bpf")):
        raise UsageError("--scenario, --model, --offset, --size, --text and --tier are for the exercise program; "
                         "a program of yours is followed in the bpf tier")
    if args.tui:
        raise UsageError("--tui steps through the exercise program; for a program of yours use --no-pause or "
                         "--format html")
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"--timeout {args.timeout} must be a number of seconds above 0")
    request = core.JourneyRequest(save_evidence=Path(args.save_evidence) if args.save_evidence else None,
                                  force=args.force, progress=None if args.quiet else stderr_progress,
                                  timeout=args.timeout)
    if request.save_evidence:
        from ..capture.safe_paths import check_output_target
        check_output_target(request.save_evidence, args.force)
    here = core.machine_interface()
    refusal = kernel_mode_refusal(here, selector, value)
    if refusal:
        raise UsageError(refusal)
    if not here.syndrome_traced:
        raise UsageError(f"following a program of yours needs the exceptions:page_fault_user tracepoint, which "
                         f"{here.arch.value} kernels lack; on {here.arch.value}, pagefault journey follows the "
                         "exercise program's fault")
    journey = core.program_fault_journey(argv or None, args.pid, selector, value, request)
    args.no_pause = True
    return _emit_journey(journey, args, output, console)


def kernel_mode_refusal(here, selector: str, value: object) -> str | None:
    """Why `--kind kernel` (a fault taken in kernel mode) cannot be followed on this machine's architecture,
    in one line with what can be done instead; None where it can (x86-64, whose kernel traces such a fault as
    exceptions:page_fault_kernel). `here`: core.machine_interface()'s ArchInterface.

    :returns: the refusal's one line, or None; raises nothing."""
    if selector != "kind" or value != "kernel" or here.syndrome_traced:
        return None
    return (f"--kind kernel needs the exceptions:page_fault_kernel tracepoint, which {here.arch.value} kernels lack "
            "(they have no exceptions: tracepoints at all), and the arm64 journey meets only the exercise program's own "
            f"write fault at handle_mm_fault; on {here.arch.value}, pagefault journey follows the exercise "
            "program's fault")


def _check_combinations(args: argparse.Namespace) -> None:
    """:raises UsageError: for options that mean nothing together (each message says which to leave out)."""
    if args.output and args.format == "text":
        raise UsageError("-o FILE needs --format html, markdown, json or perfetto")
    if args.format == "html" and not args.output:
        raise UsageError("--format html needs -o FILE (one self-contained .html file)")
    if args.tui and (args.format != "text" or args.output):
        raise UsageError("--tui is the interactive view; leave out --format and -o (or drop --tui to write a file)")
    if args.tui and not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("--tui needs a terminal (it works over ssh -t); fix: run it in a terminal, or use "
                         "--no-pause or --format html -o FILE")
    if args.replay:
        clashing = [name for name, given in (("--model", args.model), ("--scenario", args.scenario is not None),
                                             ("--tier", args.tier != "auto"), ("--offset", args.offset is not None),
                                             ("--size", args.size is not None), ("--text", args.text is not None),
                                             ("--save-evidence", args.save_evidence is not None)) if given]
        if clashing:
            raise UsageError(f"--replay builds the journey from the saved file; {', '.join(clashing)} would change "
                             "a capture that already happened, so leave them out")
    if getattr(args, "arch", None) is not None and not (args.model or args.tier == "model"):
        raise UsageError("--arch chooses the simulator's architecture; add --model (a live journey follows this "
                         "machine's)")
    if args.model and args.tier in ("bpf", "perf", "user"):
        raise UsageError(f"--model runs the simulator, --tier {args.tier} traces the kernel; give one of them")
    if args.scenario is not None and not args.scenario.strip():
        raise UsageError("--scenario needs a name (see pagefault scenarios)")
    varied = [name for name, value in (("--offset", args.offset), ("--size", args.size), ("--text", args.text))
              if value is not None]
    if args.save_evidence and (args.model or args.tier == "model"):
        raise UsageError("--save-evidence saves a live capture; the simulator's journey has none (leave out --model)")
    if varied and (args.model or args.scenario or args.tier == "model"):
        raise UsageError(f"{', '.join(varied)} vary the exercise program of the live journey; a scenario and the "
                         "simulator's journey have their own fixed operations, so leave them out")


def _journey_output(args: argparse.Namespace) -> Path | None:
    """Checks the options (and parses --arch in place); → the output file, checked writable now (written at
    the end), or None for the terminal.

    :raises UsageError: the options mean nothing together, --arch or --text is not valid.
    :raises OutputError: -o FILE exists (without --force) or is not a safe place to write.
    """
    _check_combinations(args)
    if getattr(args, "arch", None) is not None:
        from ..decode.arch import parse_arch
        from ..decode.bits import DecodeError
        try:
            args.arch = parse_arch(args.arch)
        except DecodeError as exc:
            raise UsageError(str(exc)) from None
    if args.text is not None:
        try:
            args.text.encode()
        except UnicodeEncodeError:
            raise UsageError("--text is not valid UTF-8; give the text in the terminal's UTF-8 encoding") from None
    output = Path(args.output) if args.output else None
    if output:
        from ..capture.safe_paths import check_output_target
        check_output_target(output, args.force)   # checked now (an OutputError is one line from main()); written at the end
    return output


def _emit_journey(journey, args: argparse.Namespace, output: Path | None, console) -> Outcome:
    """The journey shown as asked: the terminal app, stepped or printed text, or written as a file."""
    from ..views import journey_view
    if args.tui:
        from ..views.tui import run_tui
        run_tui(journey, redact=args.redact)
        return Outcome.DONE
    if args.format == "html":
        from ..capture.safe_paths import write_output
        from ..views.html import render_html
        assert output is not None   # _journey_output refused html without -o
        write_output(output, render_html(journey, redact=args.redact), args.force)
        say(f"journey written to {output} (html{', redacted' if args.redact else ''}; open it in a browser, "
            "it fetches nothing)", file=sys.stderr)
        return Outcome.DONE
    if args.redact:
        from ..journey.redact import redact_journey
        journey = redact_journey(journey)[0]
    if args.format == "text":
        if not args.no_pause and sys.stdin.isatty() and sys.stdout.isatty():
            from .journey import step_list
            step_list(journey, console)
        else:
            journey_view.render_all(journey, console)
        return Outcome.DONE
    if args.format == "perfetto":
        from ..views.perfetto import PerfettoError, dumps, journey_trace
        try:
            text = dumps(journey_trace(journey))
        except PerfettoError as exc:
            raise UsageError(str(exc)) from None
    else:
        text = journey_view.to_markdown(journey) if args.format == "markdown" else journey_view.to_json(journey)
    if output:
        from ..capture.safe_paths import write_output
        write_output(output, text, args.force)
        say(f"journey written to {output} ({args.format})")
    else:
        write_text(text)
    return Outcome.DONE


def _request(args: argparse.Namespace):
    """The JourneyRequest of the exercise program's journey (or a scenario's, or the simulator's).

    :raises UsageError: --offset or --size is not a number.
    """
    from ..evidence import ExerciseOptions
    from ..views.progress import stderr_progress
    from .journey import JourneyRequest
    options = ExerciseOptions(offset=parse_number(args.offset or "0x100", "--offset"),
                              size=parse_number(args.size or "4096", "--size"), text=args.text)
    save = Path(args.save_evidence) if getattr(args, "save_evidence", None) else None
    return JourneyRequest(tier=args.tier, options=options, scenario=args.scenario, model=args.model,
                          save_evidence=save, force=args.force, progress=None if args.quiet else stderr_progress,
                          model_arch=getattr(args, "arch", None))


def _fault_selector(args: argparse.Namespace) -> tuple[str, object]:
    """--at ADDRESS|SYMBOL|FILE:LINE, --nth N, --kind K → (selector, value); "own": the first fault in the
    program's code.

    :raises UsageError: two selectors, N below 1, or an --at that is none of the three.
    """
    given = [n for n in ("at", "nth", "kind") if getattr(args, n) is not None]
    if len(given) > 1:
        raise UsageError(f"choose the fault one way: --{given[0]} or --{given[1]}, not both")
    if args.nth is not None:
        if args.nth < 1:
            raise UsageError(f"--nth {args.nth}: faults are counted from 1")
        return "nth", args.nth
    if args.kind is not None:
        return "kind", args.kind
    if args.at is not None:
        text = args.at.strip()
        try:
            return "address", parse_number(text, "--at address")
        except UsageError:
            pass
        if ":" in text and text.rsplit(":", 1)[1].isdigit():
            return "line", text
        # [OBJECT:]FUNCTION, OBJECT a file name (libstdc++.so.6) or a library's path (/opt/x/libplugin.so)
        if "".join(c for c in text if c not in "_.:-/+").isalnum():
            return "symbol", text
        raise UsageError(f"--at {text!r}: give an address (0x7f…), a function name (libc.so.6:memset, /path/to/lib.so:f: in that object) "
                         "or FILE:LINE")
    return "own", None
