"""The `pagefault` command: its arguments, and the exit status of each way a command ends.

Only parsing lives here. What each subcommand does is core/'s (core/decode.py, core/trace.py, …, each
imported when its command runs, so that `pagefault trace` loads nothing of the journey); main() maps
their Outcome and core.errors' exceptions to exit statuses, each error one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Callable, NoReturn

from . import __version__
from .core.errors import CannotTrace, NothingMatched, Outcome, UsageError
from .journey.vocabulary import FaultKind
from .views.terminal import say

__all__ = ["EXIT_CANNOT_TRACE", "EXIT_NOTHING_MATCHED", "EXIT_PARTIAL", "EXIT_USAGE", "UsageError", "build_parser",
           "main"]

EXIT_PARTIAL = 1   # the work stopped early (e.g. a full disk); what was done is kept, and said
EXIT_USAGE = 2     # a usage error or a refusal: one line on stderr with the fix
EXIT_CANNOT_TRACE = 3   # this machine (or user) cannot trace what was asked for: one line with the fix
EXIT_NOTHING_MATCHED = 4   # the capture ran but nothing matched the selector: one line with what was seen

EXIT_OF_OUTCOME = {Outcome.DONE: 0, Outcome.PARTIAL: EXIT_PARTIAL, Outcome.NO_COMMAND: EXIT_USAGE}


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []

DECODE_KINDS = ("address", "error-code", "esr", "fault-flags", "vm-flags", "pte", "pagemap", "kpageflags", "gfp")


def _register_capture(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("doctor", help="which capture tier works here, and the fix for what is missing")
    d.add_argument("--json", action="store_true")
    d
    t = sub.add_parser("trace", help="record a program's page faults and summarise them",
                       usage="pagefault trace [-g] [-o FILE | --summary-only] [--json] [--summary FILE] [--pprof FILE] "
                             "[--folded FILE] [--latency [--probes auto|fentry|kprobe]] [--tier auto|perf|user] "
                             "(-p PID | -- CMD ARGS...)")
    t.add_argument("-g", "--call-graph", action="store_true", help="kernel and user call chains: without -o each "
                   "fault's stacks are counted in the kernel (--folded, --pprof write them); with -o, recorded")
    t.add_argument("--dwarf", action="store_true", help="-g, unwound from .eh_frame where frame pointers are missing: each "
                   "fault's registers and 8 KiB of its user stack are recorded and unwound afterwards (as perf "
                   "--call-graph dwarf does); each stack says which unwinder made it")
    t.add_argument("-o", "--output", help="write a recording of every event to FILE (without it: a summary, the faults "
                   "counted in the kernel)")
    t.add_argument("--summary-only", action="store_true", help="count in the kernel (a compiled BPF program's maps), stream nothing, "
                   "write no recording (the default without -o)")
    t.add_argument("-p", "--pid", type=int, help="attach to a running process instead of starting one")
    t.add_argument("--allow-init", action="store_true", help="with -p 1: trace the init process (refused otherwise: "
                   "holding or slowing it holds every service of the machine)")
    t.add_argument("--force", action="store_true", help="replace an existing output file")
    t.add_argument("--tier", choices=("auto", "perf", "user"), default="auto",
                   help="perf: tracepoints (root); user: software page-fault event (no root)")
    t.add_argument("--buffer-mb", type=int, default=8, help="ring buffer per CPU in MiB (default 8)")
    t.add_argument("--json", action="store_true", help="the summary as JSON")
    t.add_argument("--summary", metavar="FILE", help="write the summary to FILE (- for standard output); without it "
                   "the summary goes to standard error, as perf stat's does: standard output is the program's")
    t.add_argument("--pprof", metavar="FILE", help="also write the faults as a pprof profile (gzipped profile.proto: "
                   "go tool pprof, Pyroscope, Parca, Grafana); records the events, with -g for whole stacks")
    t.add_argument("--folded", metavar="FILE", help="also write the faults' stacks as a folded flame graph, one root "
                   "per class (- for standard output; flamegraph.pl, inferno, speedscope); without -o the stacks are "
                   "counted in the kernel")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    t.add_argument("--no-summary", action="store_true", help="only write the recording")
    t.add_argument("--latency", action="store_true",
                   help="time every fault (kprobes on handle_mm_fault): histograms and percentiles by outcome "
                        "and by mapping, instead of a recording")
    t.add_argument("--probes", choices=("auto", "fentry", "kprobe"), default="auto",
                   help="with --latency: how handle_mm_fault is hooked; auto tries fentry (BPF trampolines, the "
                        "cheapest) and falls back to kprobes, saying why")
    t.add_argument("--as-root", action="store_true", help="under sudo, run the command after -- as root with "
                   "root's environment (by default it runs as the user who ran sudo, with a clean environment)")
    t.add_argument("cmd", nargs=argparse.REMAINDER, help="the command to run, after --")
    t
    r = sub.add_parser("report", help="summarise a recording made by pagefault trace")
    r.add_argument("file")
    r.add_argument("--top", type=int, default=10)
    r.add_argument("--json", action="store_true")
    r.add_argument("--format", choices=("text", "perfetto", "folded", "speedscope", "pprof"), default="text",
                   help="perfetto: every sample on a timeline (Chrome JSON trace, with call stacks from -g), with -o "
                        "FILE; folded, speedscope: a page-fault flame graph, one root per fault class")
    r.add_argument("-o", "--output", help="where --format perfetto, folded, speedscope or pprof writes (folded and "
                   "speedscope: standard output without it)")
    r.add_argument("--force", action="store_true", help="replace an existing output file")
    r.add_argument("--events", action="store_true", help="print every sample, decoded and symbolised, one line each "
                   "(as perf script -F comm,tid,cpu,time,event,ip,sym,trace does)")
    r


COMMANDS.append(_register_capture)


def _register_journey(sub: argparse._SubParsersAction) -> None:
    j = sub.add_parser("journey", help="the live, step-by-step journey of one page fault, every number proven",
                       usage="pagefault journey [--scenario NAME] [--model] [--offset N] [--size N] [--text S] [--tier TIER] "
                             "[--no-pause | --tui] [--format text|html|markdown|json|perfetto] [-o FILE] [--redact]\n"
                             "       pagefault journey [--at ADDRESS|SYMBOL|FILE:LINE | --nth N | --kind K] "
                             "[--format …] [-o FILE] (-p PID | -- CMD ARGS…)")
    j.add_argument("--offset", help="where in the mapping to write (default 0x100)")
    j.add_argument("--size", help="the mapping's size in bytes (default 4096)")
    j.add_argument("--text", default=None, help="the string to write (default: 'offset world', copied inside main)")
    j.add_argument("--tier", choices=("auto", "bpf", "perf", "user", "model"), default="auto",
                   help="bpf: raw page-table entries too (root, the compiled walk); perf: tracepoints (root); user: no root; "
                        "model: the simulator")
    j.add_argument("--scenario", metavar="NAME", help="run a scenario of the library (see pagefault scenarios)")
    j.add_argument("--model", action="store_true", help="run in the simulator: no root, no tracing, all modelled")
    j.add_argument("--arch", metavar="ARCH", help="with --model: the architecture the simulator follows, x86_64 or "
                   "arm64 (default: this machine's)")
    j.add_argument("--no-pause", action="store_true", help="print every step at once instead of stepping")
    j.add_argument("--format", choices=("text", "html", "markdown", "json", "perfetto"), default="text",
                   help="html: one self-contained page with the walk drawn; perfetto: the timeline as a Chrome "
                        "JSON trace for ui.perfetto.dev")
    j.add_argument("-o", "--output", help="write html, markdown, json or perfetto to FILE")
    j.add_argument("--redact", action="store_true", help="hide PFNs, physical and kernel addresses (for sharing)")
    j.add_argument("--force", action="store_true", help="replace an existing output file (a symlink there is "
                                                         "replaced itself, never followed)")
    j.add_argument("--save-evidence", metavar="FILE", help="also save everything the journey was built from (JSON; "
                                                            "gzip if FILE ends in .gz), to open anywhere with --replay")
    j.add_argument("--replay", metavar="FILE", help="build the journey from a saved evidence file: no root, no "
                                                     "tracing, any machine")
    j.add_argument("--tui", action="store_true", help="browse the steps in a terminal app (keyboard; works over SSH)")
    j.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    j.add_argument("-p", "--pid", type=int, help="follow a fault of this running process instead")
    j.add_argument("--allow-init", action="store_true", help="with -p 1: follow a fault of the init process "
                   "(refused otherwise)")
    j.add_argument("--at", metavar="ADDRESS|SYMBOL|FILE:LINE", help="a program of yours: the first fault on this "
                   "address's page, or whose RIP is in this function or on this source line")
    j.add_argument("--nth", type=int, metavar="N", help="a program of yours: its N-th fault")
    j.add_argument("--kind", choices=[k.value for k in FaultKind],
                   help="a program of yours: the first fault of this kind (guessed at entry, checked after); "
                        "kernel: one the kernel took on a user address inside a system call (x86-64)")
    j.add_argument("--timeout", type=float, metavar="SECONDS", help="a program of yours: give up (exit 4) when no "
                   "fault has matched after this long (default: wait until the program ends)")
    j.add_argument("--as-root", action="store_true", help="under sudo, run the command after -- as root with "
                   "root's environment (by default it runs as the user who ran sudo, with a clean environment)")
    j.add_argument("cmd", nargs=argparse.REMAINDER, help="a program of yours to follow, after -- (default: the "
                   "first fault in its own code)")
    j


COMMANDS.append(_register_journey)


def _register_scenarios(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("scenarios", help="the scenario library, one line each (run one: pagefault journey --scenario NAME)")
    s.add_argument("--json", action="store_true", help="names, lessons and operations as JSON")
    s


COMMANDS.append(_register_scenarios)


def _register_exercise(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("exercise", help="derive the numbers of your own live fault yourself; answers checked, "
                                        "progress kept",
                       usage="pagefault exercise [NAME ...] [--all] [--list] [--reset] [--model | --replay FILE]")
    e.add_argument("names", nargs="*", metavar="NAME", help="rip, flags, indices, pfn, pte (default: those not done)")
    e.add_argument("--all", action="store_true", help="every exercise, the done ones too")
    e.add_argument("--list", action="store_true", help="show progress ([x] done) and where it is kept")
    e.add_argument("--reset", action="store_true", help="forget the progress")
    e.add_argument("--model", action="store_true", help="use the simulator's fault (no root; no RIP exercise)")
    e.add_argument("--replay", metavar="FILE", help="set the exercises on a fault saved with journey --save-evidence")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress lines while the fault is traced")
    e.set_defaults(scenario=None)


COMMANDS.append(_register_exercise)


# --- entry point ------------------------------------------------------------------------------------

def build_parser() -> Parser:
    p = Parser(prog="pagefault", description="The whole life of a Linux page fault, live on this machine.")
    p.add_argument("--version", action="version", version=f"pagefault {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=Parser, metavar="COMMAND")
    d = sub.add_parser("decode", help="decode a number of a page fault's life into named, explained fields")
    d.add_argument("kind", choices=DECODE_KINDS, metavar="KIND", help="one of: " + ", ".join(DECODE_KINDS))
    d.add_argument("value", help="the number: hex with 0x, or decimal")
    d.add_argument("--levels", type=int, choices=(4, 5), default=4, help="paging levels for addresses (default 4)")
    d.add_argument("--level", default="PTE", type=str.upper, choices=("PGD", "P4D", "PUD", "PMD", "PTE"),
                   help="page-table level of a pte value (default PTE)")
    d.add_argument("--from-error-code", action="store_true",
                   help="fault-flags: treat VALUE as an x86 error code and derive the flags handle_mm_fault gets")
    d.add_argument("--kernel", metavar="X.Y", help="pte, pagemap: decode with the tables of kernel X.Y (default: the "
                   "running kernel, with its configuration)")
    d.add_argument("--arch", help="x86_64 or arm64: whose formats address, pte, error-code/esr and vm-flags are "
                   "(default: this machine's)")
    d.add_argument("--va-bits", type=int, default=None, choices=(36, 39, 42, 47, 48, 52),
                   help="arm64: virtual-address size of the walk (default: this machine's on arm64, else 48)")
    d.add_argument("--granule", default=None, type=str.lower, choices=("4k", "16k", "64k"),
                   help="arm64: translation granule / page size (default: this machine's on arm64, else 4k)")
    d.add_argument("--pa-bits", type=int, default=None, choices=(48, 52),
                   help="arm64: output-address size; 52 = FEAT_LPA (64k) or FEAT_LPA2 (4k, 16k) (default: this "
                   "machine's on arm64, else 48)")
    d.add_argument("--json", action="store_true", help="print JSON")
    d
    for register in COMMANDS:
        register(sub)
    return p


class Terminated(BaseException):
    """SIGTERM or SIGHUP: unwinds like Ctrl-C, so every child is stopped on the way out."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _terminate(signum, _frame) -> NoReturn:
    raise Terminated(signum)


def _one_line(exc: BaseException) -> str:
    """An error's message as the one line a person reads: Python's "[Errno 13] " prefix (an OSError's str(),
    passed on inside many capture errors) left out, and the lines of a multi-line message joined."""
    import re
    text = re.sub(r"\[Errno -?\d+\] ", "", str(exc))
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _os_error_line(exc: OSError) -> str:
    """An OSError nothing else explained (a /proc file of a process that ended, a file system failing)."""
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or _one_line(exc)}"


def main(argv: list[str] | None = None) -> int:
    import signal
    try:
        # the handlers first, inside the try: a stop signal while the parser is built ends in one line too
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _terminate)
        parser = build_parser()
        args = parser.parse_args(argv)
        from .core.dispatch import run_command
        outcome = run_command(args)
        if outcome is Outcome.NO_COMMAND:
            parser.print_help()
        return EXIT_OF_OUTCOME[outcome]
    except UsageError as exc:
        say(f"pagefault: {_one_line(exc)}")
        return EXIT_USAGE
    except BrokenPipeError:
        # the reader (`| head`) left: not an error; point stdout at /dev/null so the exit flush is quiet
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        stopped = _stop_signal_behind(exc)
        if stopped is not None:       # a signal's exception that a library wrapped (numpy: an ImportError)
            return _say_stopped(stopped)
        from .capture.safe_paths import OutputError, OutputWriteFailed
        if isinstance(exc, OutputWriteFailed):
            say(f"pagefault: {exc}")
            return EXIT_PARTIAL
        if isinstance(exc, OutputError):
            say(f"pagefault: {_one_line(exc)}")
            return EXIT_USAGE
        if isinstance(exc, CannotTrace):
            say(f"pagefault: cannot trace here: {_one_line(exc)}")
            return EXIT_CANNOT_TRACE
        if isinstance(exc, NothingMatched):
            say(f"pagefault: nothing matched: {_one_line(exc)}")
            return EXIT_NOTHING_MATCHED
        if isinstance(exc, OSError):
            say(f"pagefault: {_os_error_line(exc)}")
            return EXIT_USAGE
        raise
    except (KeyboardInterrupt, Terminated) as exc:
        return _say_stopped(exc)


def _stop_signal_behind(exc: BaseException) -> KeyboardInterrupt | Terminated | None:
    """The Ctrl-C or SIGTERM/SIGHUP behind `exc`, if a library turned one into its own error: numpy, for one,
    re-raises whatever interrupts the import of its C core as an ImportError. None when no signal is behind it.

    :returns: the signal's exception found in `exc`'s cause or context chain, or None; raises nothing."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        if isinstance(link, (KeyboardInterrupt, Terminated)):
            return link
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return None


def _say_stopped(exc: KeyboardInterrupt | Terminated) -> int:
    """One line for a run a signal ended, and its exit status (130 for Ctrl-C, 128 + the signal otherwise)."""
    import signal
    if isinstance(exc, Terminated):
        print(f"pagefault: stopped by {signal.Signals(exc.signum).name}", file=sys.stderr)
        return 128 + exc.signum
    print("pagefault: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
    sys.exit(main())
