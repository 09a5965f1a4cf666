"""The `pagefault` command."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn

from . import __version__
from .journey.vocabulary import FaultKind
from .views.safe_text import escape_controls
from .views.terminal import print_json, say, write_text

if TYPE_CHECKING:
    from .core import JourneyRequest
    from .decode.arch import Arch

EXIT_PARTIAL = 1   # the work stopped early (e.g. a full disk); what was done is kept, and said
EXIT_USAGE = 2     # a usage error or a refusal: one line on stderr with the fix
EXIT_CANNOT_TRACE = 3   # this machine (or user) cannot trace what was asked for: one line with the fix
EXIT_NOTHING_MATCHED = 4   # the capture ran but nothing matched the selector: one line with what was seen


class UsageError(Exception):
    """A user mistake: one line on stderr, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def parse_number(text: str, what: str = "value") -> int:
    s = text.strip().replace("_", "")
    try:
        value = int(s, 0)
    except ValueError:
        raise UsageError(f"{what} {text!r} is not a number; accepted: hex with 0x (0x716b326c8100) or decimal") from None
    if value < 0:
        raise UsageError(f"{what} {text!r} is negative; accepted: 0 to 2**64-1")
    if value >= 1 << 64:
        raise UsageError(f"{what} {text!r} does not fit in 64 bits")
    return value


COMMANDS: list[Callable[[Any], None]] = []


def terminal_console(**kwargs):
    """The rich Console of every text view: control characters in what it prints are shown escaped."""
    from .views.safe_console import terminal_console as safe_console
    return safe_console(**kwargs)


# --- decode -----------------------------------------------------------------------------------------

def _kernel_tables():
    from .kernel.facts import fault_flag_values, gfp_bits, kernel_version
    return fault_flag_values, gfp_bits, kernel_version


def _decode_kernel(requested: str | None):
    """The kernel whose tables decode a value: --kernel X.Y, or the running one (with its configuration)."""
    from .decode.swap_entry import SwapConfig
    from .kernel.facts import kernel_version, parse_kernel_version, swap_config
    running = kernel_version()
    if requested is None:
        return running, swap_config()
    try:
        wanted = parse_kernel_version(requested)
    except ValueError:
        raise UsageError(f"--kernel {requested!r} is not a kernel version; fix: give it as MAJOR.MINOR, e.g. 6.12") from None
    if wanted == running:
        return wanted, swap_config()
    return wanted, SwapConfig(source=f"kernel {wanted[0]}.{wanted[1]} is not the running one, so its configuration "
                                     "is unknown")


def _decode(kind: str, value: int, levels: int, level: str, error_code: bool,
            kernel: str | None = None, arch: "Arch | None" = None) -> tuple[str, list, list[str], Any]:
    """→ (title, rows, derivations, result object). arch: whose vm_flags bits (default x86-64)."""
    # imported here, not at the top: `trace` and `report` start faster without every decoder
    from .decode import (
        decode_error_code,
        decode_fault_flags,
        decode_gfp,
        decode_kpageflags,
        decode_pagemap_entry,
        decode_pte,
        decode_vm_flags,
        derive_fault_flags,
        split_virtual_address,
    )
    from .views.decode_view import field_rows, flag_rows
    if kind == "address":
        r = split_virtual_address(value, levels)
        rows = [(i.level + " index", str(i.index), f"bits {i.high_bit}..{i.shift} = {i.bits}") for i in r.indices]
        rows += [("page offset", f"{r.page_offset} (0x{r.page_offset:x})", "bits 11..0"),
                 ("virtual page number", f"0x{r.virtual_page_number:x}", ""),
                 ("page base", f"0x{r.page_base:x}", ""), ("offset in 2 MiB page", f"0x{r.offset_in_2m:x}", ""),
                 ("offset in 1 GiB page", f"0x{r.offset_in_1g:x}", ""), ("half", r.half, ""),
                 ("bits", r.binary, "top index … offset")]
        return f"virtual address 0x{value:x} ({levels}-level paging)", rows, list(r.derivations), r
    if kind == "error-code":
        r = decode_error_code(value)
        rows = [(m.split(":")[0], "", m.split(":", 1)[1].strip()) for m in r.bit_meanings]
        return r.summary, rows, list(r.derivations), r
    if kind == "fault-flags":
        fault_flag_values, _, _ = _kernel_tables()
        table = fault_flag_values()
        if error_code:
            r = derive_fault_flags(value, table.values, source=table.source)
            rows = [(s.name, f"0x{s.value:x}", s.reason) for s in r.steps]
            return (f"fault flags for error code 0x{value:x} = 0x{r.value:x} ({table.source})", rows,
                    list(r.derivations), r)
        r = decode_fault_flags(value, table.values, table.source)
        return f"fault flags 0x{value:x} ({table.source})", flag_rows(r), list(r.derivations), r
    if kind == "vm-flags":
        _, _, kernel_version = _kernel_tables()
        from .decode.arch import Arch
        r = decode_vm_flags(value, kernel_version(), arch or Arch.X86_64)
        return f"vm_flags 0x{value:x} ({r.table_source})", flag_rows(r), list(r.derivations), r
    if kind == "pte":
        version, config = _decode_kernel(kernel)
        r = decode_pte(value, level, kernel=version, swap_config=config, paging_levels=levels)
        if r.swap is not None:
            swap = r.swap
            rows = flag_rows(r.flags) + [("kind", swap.kind.value, swap.summary),
                                         ("swap type", str(swap.swap_type), "bits 63..59"),
                                         ("offset", f"0x{swap.offset:x}", "bits 58..9, stored inverted")]
            if swap.pfn is not None:
                rows.append(("PFN", f"0x{swap.pfn:x}", "the offset of a migration, hwpoison or device entry"))
            if swap.marker is not None:
                rows += flag_rows(swap.marker)
            rows.append(("table", "", swap.table_source))
        else:
            rows = flag_rows(r.flags) + [("kind", r.kind.value, "")] + field_rows(
                r, ["pfn", "physical_address", "protection_key", "huge", "points_to"]) + [("table", "", r.table_source)]
        return f"{r.level} entry 0x{value:x}: {r.kind.value}", rows, list(r.derivations), r
    if kind == "pagemap":
        version, config = _decode_kernel(kernel)
        r = decode_pagemap_entry(value, version, config)
        rows = flag_rows(r.flags) + field_rows(r, ["pfn", "swap_type", "swap_offset"])
        if r.table_source:
            rows.append(("table", "", r.table_source))
        return f"pagemap entry 0x{value:x}: {r.summary}", rows, list(r.derivations), r
    if kind == "kpageflags":
        _, _, kernel_version = _kernel_tables()
        r = decode_kpageflags(value, kernel_version())
        return f"kpageflags 0x{value:x}", flag_rows(r), list(r.derivations), r
    if kind == "gfp":
        _, gfp_bits, _ = _kernel_tables()
        table = gfp_bits()
        r = decode_gfp(value, table.values, table.source)
        return f"GFP flags 0x{value:x} = {r.symbolic} ({table.source})", flag_rows(r.flags), list(r.derivations), r
    raise UsageError(f"unknown kind {kind!r}")


DECODE_KINDS = ("address", "error-code", "esr", "fault-flags", "vm-flags", "pte", "pagemap", "kpageflags", "gfp")
# Which kinds are one architecture's own: the other's decoder is named in the error.
_ARCH_ONLY_KINDS = {"error-code": ("x86_64", "on arm64 the trap's syndrome is ESR_EL1: pagefault decode esr VALUE "
                                   "--arch arm64"),
                    "esr": ("arm64", "on x86-64 the trap pushes an error code: pagefault decode error-code VALUE "
                            "--arch x86_64")}


def _arm64_shape(args: argparse.Namespace) -> None:
    """Fill --va-bits, --granule and --pa-bits left out: this machine's own where it is arm64 (a 16 KiB or
    52-bit kernel decodes as itself), else Linux's most common shape (48-bit, 4 KiB); args.shape_note says which."""
    given = {"va_bits": args.va_bits, "granule": args.granule, "pa_bits": args.pa_bits}
    if all(v is not None for v in given.values()):
        args.shape_note = ""
        return
    from .kernel.facts import arm64_translation, on_arm64
    if on_arm64():
        va_bits, page_size, how = arm64_translation()
        from .decode.arm64_address import lpa2_in_use
        own = {"va_bits": va_bits, "granule": f"{page_size // 1024}k",
               "pa_bits": 52 if lpa2_in_use(va_bits, page_size) else 48}
        whence = f"this machine's ({how})"
    else:
        own = {"va_bits": 48, "granule": "4k", "pa_bits": 48}
        whence = "Linux's most common arm64 shape"
    filled = [f"--{name.replace('_', '-')} {own[name]}" for name, value in given.items() if value is None]
    for name, value in given.items():
        if value is None:
            setattr(args, name, own[name])
    args.shape_note = f"assumed {', '.join(filled)}: {whence}"


def _decode_arm64(kind: str, value: int, args: argparse.Namespace) -> tuple[str, list, list[str], Any]:
    """arm64's address, descriptor and ESR decoders; the other kinds are shared with x86-64."""
    from .decode.arm64_address import split_arm64_address
    from .decode.arm64_descriptor import decode_arm64_descriptor
    from .decode.esr import decode_esr
    from .views.decode_view import field_rows, flag_rows
    _arm64_shape(args)
    granule = {"4k": 4096, "16k": 16384, "64k": 65536}[args.granule]
    if kind == "address":
        r = split_arm64_address(value, args.va_bits, granule)
        rows = [(f"{i.level} index (level {i.architectural_level})", str(i.index), f"bits {i.high_bit}..{i.shift} = {i.bits}")
                for i in r.indices]
        rows += [("page offset", f"0x{r.page_offset:x}", ""), ("page base", f"0x{r.page_base:x}", ""),
                 ("table base", r.table_base, f"the {r.half} half"), ("tag", f"0x{r.tag:x}", "bits 63..56 (TBI)")]
        return (f"arm64 virtual address 0x{value:x} ({args.va_bits}-bit VA, {granule // 1024} KiB pages, {r.levels} levels)",
                rows, list(r.derivations), r)
    if kind == "esr":
        r = decode_esr(value)
        rows = [("EC", f"0x{r.exception_class:02x}", r.class_meaning), ("IL", str(int(r.instruction_length_32)), ""),
                ("ISS", f"0x{r.iss:x}", "")]
        if r.is_abort:
            rows += [("fault status", f"0x{r.fault_status:02x}", r.fault_status_meaning),
                     ("access", "instruction fetch" if r.instruction_fetch else "write" if r.write else "read",
                      "WnR and not CM" if r.write else ""),
                     ("from", "user (EL0)" if r.from_user else "kernel (EL1)", ""),
                     ("S1PTW", "yes" if r.stage1_walk else "no", "fault on the table walk"),
                     ("FAR valid", "yes" if r.far_valid else "no", "")]
        return f"ESR_EL1 {r.summary}", rows, list(r.derivations), r
    if kind == "pte":
        version, config = _decode_kernel(args.kernel)
        r = decode_arm64_descriptor(value, args.level, kernel=version, va_bits=args.va_bits, granule=granule,
                                    pa_bits=args.pa_bits, swap_config=config)
        rows = flag_rows(r.flags) + [("kind", r.kind.value, f"level {r.architectural_level}")]
        if r.swap is not None:
            rows += [("swap type", str(r.swap.swap_type), ""), ("offset", f"0x{r.swap.offset:x}", r.swap.summary)]
        else:
            rows += field_rows(r, ["output_address", "pfn", "memory_type", "access", "shareability", "block_size"])
        rows.append(("table", "", r.table_source))
        return f"arm64 {r.level} descriptor 0x{value:x}: {r.kind.value}", rows, list(r.derivations), r
    raise UsageError(f"unknown kind {kind!r}")


def _decode_for(args: argparse.Namespace, value: int) -> tuple[str, tuple[str, list, list[str], Any]]:
    """→ (the architecture decoded as, (title, rows, derivations, result))."""
    from .decode.arch import Arch, arch_of_machine, parse_arch
    from .decode.bits import DecodeError
    try:
        arch = parse_arch(args.arch) if args.arch else arch_of_machine(os.uname().machine)
    except DecodeError as exc:
        raise UsageError(f"{exc}; fix: --arch x86_64 or --arch arm64") from None
    own = _ARCH_ONLY_KINDS.get(args.kind)
    if own and own[0] != arch.value:
        raise UsageError(f"{args.kind} is {own[0]}'s, and the architecture is {arch.value}; {own[1]}")
    if arch is Arch.ARM64 and args.kind == "fault-flags" and args.from_error_code:
        raise UsageError("--from-error-code takes an x86 error code; on arm64, decode the ESR (decode esr VALUE) "
                         "and read the flags it gives")
    if arch is Arch.ARM64 and args.kind in ("address", "esr", "pte"):
        return arch.value, _decode_arm64(args.kind, value, args)
    return arch.value, _decode(args.kind, value, args.levels, args.level, args.from_error_code, args.kernel, arch)


def cmd_decode(args: argparse.Namespace) -> int:
    from .decode import DecodeError, to_jsonable
    value = parse_number(args.value, args.kind)
    try:
        arch, (title, rows, derivations, result) = _decode_for(args, value)
    except DecodeError as exc:
        raise UsageError(str(exc)) from None
    doubts = list(getattr(result, "suspicions", ()) or ()) + list(getattr(result, "impossible", ()) or ())
    if args.json:
        print_json(json.dumps({"kind": args.kind, "value": value, "provenance": "derived", "title": title,
                          "architecture": arch, "assumed": getattr(args, "shape_note", ""),
                          "result": to_jsonable(result)}, indent=2))
        return 0
    from rich.table import Table
    console = terminal_console()
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("field")
    table.add_column("value")
    table.add_column("meaning")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if derivations:
        console.print("[bold]derivation[/bold]")
        for line in derivations:
            console.print("  " + line, highlight=False, markup=False)
    console.print(f"decoded as {arch}" + ("" if args.arch else " (this machine's architecture; --arch to choose)"),
                  highlight=False, markup=False)
    if getattr(args, "shape_note", ""):
        console.print(args.shape_note, highlight=False, markup=False)
    for line in doubts:
        console.print("[bold yellow]doubt:[/bold yellow] " + line, highlight=False)
    return 0


# --- doctor, trace, report ----------------------------------------------------------------------------

def cmd_doctor(args: argparse.Namespace) -> int:
    from .capture.doctor import diagnose
    from .views.trace_view import render_doctor
    d = diagnose()
    if args.json:
        from .decode.bits import to_jsonable
        print_json(json.dumps(to_jsonable(d), indent=2))
    else:
        render_doctor(d, terminal_console())
    return 0


def _trace_latency(args: argparse.Namespace, argv: list[str]) -> int:
    """trace --latency: time every fault with the kprobe pair; a summary, no recording."""
    from .capture.latency import FunctionProbe, record_latency
    from .capture.tracer import CaptureError
    from .core import CannotTrace
    from .journey.latency import summarize_latency
    from .kernel.facts import kernel_enums
    from .views.progress import stderr_progress
    from .views.trace_view import render_latency
    if args.call_graph or args.no_summary:
        raise UsageError("--latency prints a summary of durations; it takes neither -g nor --no-summary")
    from .capture.tracer import TargetProblem
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
    _write_trace_summary(args, summary, render_latency)
    return 0


def _write_trace_summary(args: argparse.Namespace, summary, render) -> None:
    """trace's summary (text, or JSON with --json) goes where perf stat's goes: to stderr, so that the traced
    program's standard output stays its own (`pagefault trace -- xz -c f > f.xz`). --summary FILE writes it to
    FILE instead, and --summary - to standard output."""
    import io

    from .decode.bits import to_jsonable
    if args.summary and args.summary != "-":
        from .capture.safe_paths import write_output
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


def _trace_summary_only(args: argparse.Namespace, argv: list[str]) -> int:
    """trace without -o (or --summary-only): count in the kernel where the compiled counter can; else record to a
    private temporary file, summarise it and remove it. Nothing is written to the working directory."""
    # Only what counting needs is imported on that path (no numpy, rich only for a text summary): the whole
    # command is measured against the untraced program (bench/summary_only.py).
    from .capture.kernel_counts import count_faults, engine_problem
    from .capture.tracer import CaptureError
    from .views.progress import stderr_progress
    progress = stderr_progress if not args.quiet else None
    import shutil as _shutil

    # -g, --folded and --pprof count each fault's stacks too (fault_stacks.bpf.c), in the kernel as well
    stacks = bool(args.call_graph or args.pprof or args.folded)
    wanted = os.geteuid() == 0 and args.tier in ("auto", "perf") and not args.dwarf   # --dwarf: stack copies, recorded
    problem = engine_problem("fault_stacks" if stacks else "fault_count") if wanted else None
    if wanted and problem is None:
        from .capture.tracer import TargetProblem
        from .journey.count_summary import reconcile, summarize_counts
        try:
            kc = count_faults(argv or None, args.pid, progress, stacks=stacks, allow_init=args.allow_init)
        except TargetProblem as exc:
            raise UsageError(str(exc)) from None
        except CaptureError as exc:
            from .core import CannotTrace
            raise CannotTrace(str(exc)) from None
        summary = summarize_counts(kc.rows, kc.maps.get(kc.pid, []), kc.command,
                                   kc.pid, kc.target_exit, kc.duration, kc.allocations, kc.total)
        summary.notes += [f"hook {h}" for h in kc.hooks] + kc.notes
        summary.notes.append(f"the counting program loaded and attached in {kc.load_ms:.0f} ms")
        if summary.kernel_mode_faults:
            summary.notes.append(f"{summary.kernel_mode_faults} of the faults were taken in kernel mode, inside system "
                                 "calls touching the program's memory (exceptions:page_fault_kernel)")
        reconcile(summary, kc.kernel_fault_counts, summary.faults,
                  "" if kc.kernel_mode_counted else
                  "faults taken in kernel mode, which this kernel's hooks do not count (record with -o FILE)",
                  from_exec=args.pid is None)
        if stacks:
            _write_counted_stacks(args, kc)
    else:
        import tempfile
        work = Path(tempfile.mkdtemp(prefix="pagefault-trace-"))
        try:
            args.output = str(work / "t.pfrec")
            from .capture.tracer import TargetProblem, TraceOptions, record
            try:
                record(TraceOptions(argv=argv, pid=args.pid, allow_init=args.allow_init, callchain=args.call_graph,
                                    user_stack=args.dwarf, output=Path(args.output),
                                    tier=args.tier, data_pages=_pow2_pages(args.buffer_mb), progress=progress))
            except TargetProblem as exc:
                raise UsageError(str(exc)) from None
            except CaptureError as exc:
                from .core import CannotTrace
                raise CannotTrace(str(exc)) from None
            summary = _summarize(Path(args.output))
            summary.notes.append("recorded into a temporary file (removed): " + (
                f"counting in the kernel cannot run here ({problem})" if problem else
                "counting in the kernel needs root and the perf tier"))
            if args.pprof:
                _write_pprof(Path(args.output), Path(args.pprof), args.force)
            if args.folded:
                _write_folded(Path(args.output), args.folded, args.force)
        finally:
            _shutil.rmtree(work, ignore_errors=True)
    _write_trace_summary(args, summary, _render_summary)
    return 0


def _write_counted_stacks(args: argparse.Namespace, kc) -> None:
    """trace -g counted in the kernel: the faults' stacks as a folded flame graph (--folded) and a pprof profile
    (--pprof), built as report builds them from a recording."""
    from .capture.kernel_counts import kernel_symbols_for
    from .capture.safe_paths import write_output
    from .journey.fault_stacks import counted_samples, folded
    from .views.pprof import to_pprof
    ksyms = kernel_symbols_for({ip for r in kc.stack_rows for ip in kc.stacks.get(r[9], [])})
    samples = counted_samples(kc.stack_rows, kc.stacks, kc.mappings, kc.maps.get(kc.pid, []), kc.comms,
                              ksyms if ksyms.usable else None)
    if args.folded:
        from collections import Counter
        stacks: Counter = Counter()
        for sample, n in samples.items():
            stacks[sample.frames] += n
        _emit_folded(folded(_frames_escaped(stacks)), args.folded, args.force, sum(stacks.values()), len(stacks))
    if args.pprof:
        write_output(Path(args.pprof), to_pprof(samples, duration_ns=int(kc.duration * 1e9)), args.force)
        say(f"{sum(samples.values()):,} faults in {len(samples):,} samples written to {args.pprof} (pprof); read "
            f"it with: go tool pprof -top {args.pprof}")
    if not (args.folded or args.pprof):
        say(f"the faults' stacks were counted ({len(kc.stacks):,} distinct): write them with --folded FILE or "
            "--pprof FILE")


def _emit_folded(text: str, where: str, force: bool, faults: int, stacks: int) -> None:
    if where == "-":
        write_text(text)
    else:
        from .capture.safe_paths import write_output
        write_output(Path(where), text, force)
    say(f"{faults:,} faults in {stacks:,} stacks, one root per class"
        + ("" if where == "-" else f"; written to {where}, open it with flamegraph.pl, inferno-flamegraph or "
           "speedscope.app"))


def _write_folded(recording: Path, where: str, force: bool) -> None:
    """A recording's faults as a folded flame graph (what report --format folded writes)."""
    from .capture.recording import load_recording
    from .journey.fault_stacks import fault_stacks, folded
    with _recording_problems_as_one_line(recording):
        rec = load_recording(recording)
        if rec.meta.get("tier", "perf") != "perf":
            raise UsageError("flame graphs need a recording of the perf tier (run pagefault trace as root)")
        stacks, _chains = fault_stacks(rec)
    stacks = _frames_escaped(stacks)
    _emit_folded(folded(stacks), where, force, sum(stacks.values()), len(stacks))


def _render_summary(summary, console) -> None:
    # rich is imported for a text summary only, not for --json
    from .views.trace_view import render_summary
    render_summary(summary, console)


def cmd_trace(args: argparse.Namespace) -> int:
    from .capture.safe_paths import OutputError, check_output_target
    from .capture.tracer import CaptureError, TraceOptions, record
    from .views.progress import stderr_progress
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
    output = Path(args.output)
    opts = TraceOptions(argv=argv, pid=args.pid, allow_init=args.allow_init, callchain=args.call_graph,
                        user_stack=args.dwarf, output=output, tier=args.tier,
                        data_pages=_pow2_pages(args.buffer_mb), progress=stderr_progress if not args.quiet else None,
                        force=args.force)
    from .capture.tracer import TargetProblem
    from .core import CannotTrace
    from .capture.safe_paths import OutputWriteFailed
    try:
        check_output_target(output, args.force)   # refused before the program runs, not after
        meta = record(opts)
    except OutputWriteFailed:
        raise                                      # a full disk: exit 1 from main()
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
        _write_pprof(output, Path(args.pprof), args.force)
    if args.folded:
        _write_folded(output, args.folded, args.force)
    if args.no_summary:
        say(f"{written}; read it with: pagefault report {output}")
        return 0 if not meta.get("disk_full") else EXIT_PARTIAL
    summary = _summarize(output)
    _write_trace_summary(args, summary, _render_summary)
    say(f"{written}; read it again with: pagefault report {output}")
    return 0 if not meta.get("disk_full") else EXIT_PARTIAL


def _write_pprof(recording: Path, path: Path, force: bool) -> None:
    """The recording's faults as a pprof profile at `path` (go tool pprof, Pyroscope, Parca, Grafana)."""
    from .capture.recording import load_recording
    from .capture.safe_paths import write_output
    from .journey.fault_stacks import fault_samples
    from .views.pprof import to_pprof
    with _recording_problems_as_one_line(recording):
        rec = load_recording(recording)
        if rec.meta.get("tier", "perf") != "perf":
            raise UsageError("a pprof profile needs a recording of the perf tier (run pagefault trace as root)")
        samples, chains = fault_samples(rec)
    started = float(rec.meta.get("started") or 0)
    write_output(path, to_pprof(samples, time_ns=int(started * 1e9), duration_ns=int(float(rec.meta.get("duration")
                                                                                         or 0) * 1e9)), force)
    say(f"{sum(samples.values()):,} faults in {len(samples):,} samples written to {path} (pprof"
        + ("" if chains else "; no call chains: record with -g for whole stacks")
        + f"); read it with: go tool pprof -top {path}")


@contextlib.contextmanager
def _recording_problems_as_one_line(path: Path):
    """A recording that cannot be read, or whose records contradict its metadata, is one line (UsageError)."""
    from .capture.recording import RecordingError
    try:
        yield
    except RecordingError as exc:
        raise UsageError(str(exc)) from None
    except (ValueError, IndexError, KeyError, TypeError, OverflowError) as exc:
        # the chunks' CRCs matched, so the file was written this way: a bug or a hand-made file
        raise UsageError(f"{path}: the records do not match the metadata ({exc}); record it again") from None


def _summarize(path: Path, top: int = 10):
    """The summary of a recording; a damaged one is one line (UsageError), never a traceback."""
    from .capture.recording import load_recording
    from .journey.trace_summary import summarize
    with _recording_problems_as_one_line(path):
        return summarize(load_recording(path), top=top)


def _pow2_pages(mb: int) -> int:
    import mmap
    pages = mb * (1 << 20) // mmap.PAGESIZE
    return 1 << max(0, pages.bit_length() - 1)


def cmd_report(args: argparse.Namespace) -> int:
    from .capture.recording import load_recording
    if args.top < 0:
        raise UsageError(f"--top {args.top} is negative; give how many rows to show (0 or more)")
    if args.output and args.format == "text":
        raise UsageError("-o FILE is where --format perfetto, folded or speedscope writes; add one, or leave out -o")
    if args.format == "perfetto":
        with _recording_problems_as_one_line(args.file):
            return _report_perfetto(load_recording(args.file), args)
    if args.format in ("folded", "speedscope"):
        with _recording_problems_as_one_line(args.file):
            return _report_flame(load_recording(args.file), args)
    if args.format == "pprof":
        if not args.output:
            raise UsageError("--format pprof writes a binary profile: give it a file with -o FILE.pb.gz")
        from .capture.safe_paths import check_output_target
        check_output_target(Path(args.output), args.force)
        _write_pprof(Path(args.file), Path(args.output), args.force)
        return 0
    if args.events:
        if args.json:
            raise UsageError("--events prints text lines (as perf script does); leave out --json")
        with _recording_problems_as_one_line(args.file):
            return _report_events(load_recording(args.file))
    summary = _summarize(args.file, args.top)
    if args.json:
        from .decode.bits import to_jsonable
        print_json(json.dumps(to_jsonable(summary), indent=2))
    else:
        from .views.trace_view import render_summary
        render_summary(summary, terminal_console())
    return 0


def _report_events(rec) -> int:
    """report --events: every sample, decoded and symbolised, one line each (perf script's layout)."""
    from .journey.trace_summary import recording_columns
    from .kernel.kallsyms import KernelSymbols
    from .views.event_lines import event_lines, symbolizer
    columns, names, fields, comms = recording_columns(rec)
    if rec.meta.get("tier", "perf") == "perf":
        ips = columns.get("ip")
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
    return 0


def _report_flame(rec, args) -> int:
    """report --format folded|speedscope: a page-fault flame graph, one root per fault class."""
    from .journey.fault_stacks import fault_stacks, folded, speedscope
    if rec.meta.get("tier", "perf") != "perf":
        raise UsageError("flame graphs need a recording of the perf tier (run pagefault trace as root)")
    stacks, chains = fault_stacks(rec)
    stacks = _frames_escaped(stacks)
    name = escape_controls(" ".join(rec.meta.get("command") or []) or str(args.file))
    text = folded(stacks) if args.format == "folded" else json.dumps(speedscope(stacks, name))
    if args.output:
        from .capture.safe_paths import check_output_target, write_output
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
    return 0


def _frames_escaped(stacks):
    """Stacks whose frame names (the program's comm and symbols, from the recording) have every control
    character escaped, newlines too: a folded file is read as it is printed (cat, a terminal), and a newline
    in a frame would start a stack of its own."""
    from collections import Counter

    from .views.safe_text import escape_controls
    escaped: Counter = Counter()
    for frames, count in stacks.items():
        escaped[tuple(escape_controls(f) for f in frames)] += count
    return escaped


def _report_perfetto(rec, args) -> int:
    from .journey.trace_summary import recording_columns
    from .views.perfetto import PerfettoError, dumps, recording_trace
    if not args.output:
        raise UsageError("--format perfetto needs -o FILE (a .json trace for ui.perfetto.dev)")
    from .capture.safe_paths import check_output_target, write_output
    check_output_target(Path(args.output), args.force)   # an OutputError is one line from main()
    from .journey.fault_stacks import sample_stacks
    from .journey.trace_summary import fault_labels
    columns, names, fields, comms = recording_columns(rec)
    try:
        trace = recording_trace(columns, names, fields, comms, rec.meta.get("command", []), sample_stacks(rec),
                                fault_labels(rec))
    except PerfettoError as exc:
        raise UsageError(str(exc)) from None
    write_output(Path(args.output), dumps(trace), args.force)
    say(f"{len(columns['time']):,} samples written to {args.output} (Chrome JSON trace: open it in "
          "ui.perfetto.dev)", file=sys.stderr)
    return 0


def _register_capture(sub) -> None:
    d = sub.add_parser("doctor", help="which capture tier works here, and the fix for what is missing")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_doctor)
    t = sub.add_parser("trace", help="record a program's page faults and summarise them",
                       usage="pagefault trace [-g] [-o FILE | --summary-only] [--json] [--summary FILE] [--pprof FILE] [--folded FILE] [--latency [--probes auto|fentry|kprobe]] [--tier auto|perf|user] (-p PID | -- CMD ARGS...)")
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
    t.set_defaults(func=cmd_trace)
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
    r.set_defaults(func=cmd_report)


COMMANDS.append(_register_capture)


# --- journey ------------------------------------------------------------------------------------------

def _journey_output(args) -> Path | None:
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
    if getattr(args, "arch", None) is not None:
        from .decode.arch import parse_arch
        from .decode.bits import DecodeError
        try:
            args.arch = parse_arch(args.arch)
        except DecodeError as exc:
            raise UsageError(str(exc)) from None
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
    if args.text is not None:
        try:
            args.text.encode()
        except UnicodeEncodeError:
            raise UsageError("--text is not valid UTF-8; give the text in the terminal's UTF-8 encoding") from None
    output = Path(args.output) if args.output else None
    if output:
        from .capture.safe_paths import check_output_target
        check_output_target(output, args.force)   # checked now (an OutputError is one line from main()); written at the end
    return output


def _write_output(output: Path, text: str, args) -> None:
    from .capture.safe_paths import write_output
    write_output(output, text, args.force)


def _emit_journey(journey, args, output, console) -> int:
    from .views import journey_view
    if args.tui:
        from .views.tui import run_tui
        run_tui(journey, redact=args.redact)
        return 0
    if args.format == "html":
        from .views.html import render_html
        _write_output(output, render_html(journey, redact=args.redact), args)
        say(f"journey written to {output} (html{', redacted' if args.redact else ''}; open it in a browser, "
              "it fetches nothing)", file=sys.stderr)
        return 0
    if args.redact:
        from .journey.redact import redact_journey
        journey = redact_journey(journey)[0]
    if args.format == "text":
        if not args.no_pause and sys.stdin.isatty() and sys.stdout.isatty():
            from .core import step_list
            step_list(journey, console)
        else:
            journey_view.render_all(journey, console)
        return 0
    if args.format == "perfetto":
        from .views.perfetto import PerfettoError, dumps, journey_trace
        try:
            text = dumps(journey_trace(journey))
        except PerfettoError as exc:
            raise UsageError(str(exc)) from None
    else:
        text = journey_view.to_markdown(journey) if args.format == "markdown" else journey_view.to_json(journey)
    if output:
        _write_output(output, text, args)
        say(f"journey written to {output} ({args.format})")
    else:
        write_text(text)
    return 0


def _request(args, progress) -> JourneyRequest:
    from .core import JourneyRequest
    from .evidence import ExerciseOptions
    options = ExerciseOptions(offset=parse_number(args.offset or "0x100", "--offset"),
                              size=parse_number(args.size or "4096", "--size"), text=args.text)
    save = Path(args.save_evidence) if getattr(args, "save_evidence", None) else None
    return JourneyRequest(tier=args.tier, options=options, scenario=args.scenario, model=args.model,
                          save_evidence=save, force=args.force, progress=progress,
                          model_arch=getattr(args, "arch", None))


def cmd_journey(args: argparse.Namespace) -> int:
    from . import core
    from .views.progress import stderr_progress
    output = _journey_output(args)
    console = terminal_console()
    if args.replay:
        return _emit_journey(core.replay(Path(args.replay)), args, output, console)
    from .kernel.facts import on_arm64   # not before: a replay touches nothing of the machine
    argv = list(args.cmd or [])
    if argv and argv[0] == "--":
        argv = argv[1:]
    selector, value = _fault_selector(args)
    if argv or args.pid is not None:
        if argv and args.pid is not None:
            raise UsageError("give either a command after -- or -p PID, not both")
        if args.scenario or args.model or args.offset or args.size or args.text is not None or args.tier not in ("auto", "bpf"):
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
            from .capture.safe_paths import check_output_target
            check_output_target(request.save_evidence, args.force)
        if on_arm64():
            raise UsageError("following a program of yours needs the exceptions:page_fault_user tracepoint, which "
                             "arm64 kernels lack; on arm64, pagefault journey follows the exercise program's fault")
        journey = core.program_fault_journey(argv or None, args.pid, selector, value, request)
        args.no_pause = True
        return _emit_journey(journey, args, output, console)
    if selector != "own":
        raise UsageError("--at, --nth and --kind choose a fault of a program of yours: give it after -- (or -p PID)")
    request = _request(args, None if args.quiet else stderr_progress)
    if request.save_evidence:
        from .capture.safe_paths import check_output_target
        check_output_target(request.save_evidence, args.force)
    interactive = (args.format == "text" and not args.no_pause and not args.tui and sys.stdin.isatty()
                   and sys.stdout.isatty())
    if not interactive or request.model or request.tier == "model" or request.scenario or on_arm64():
        return _emit_journey(core.run_journey(request), args, output, console)
    live = core.start_live(request)
    if live is None:
        return _emit_journey(core.stand_in_journey(request), args, output, console)
    core.step_through(live, console, request)
    return 0


def _fault_selector(args) -> tuple[str, object]:
    """--at ADDRESS|SYMBOL|FILE:LINE, --nth N, --kind K → (selector, value); "own": the first fault in the program's code."""
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
        if text.replace("_", "").replace(".", "").replace(":", "").replace("-", "").isalnum():  # [OBJECT:]FUNCTION
            return "symbol", text
        raise UsageError(f"--at {text!r}: give an address (0x7f…), a function name (libc.so.6:memset: in that object) or FILE:LINE")
    return "own", None


def _register_journey(sub) -> None:
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
                   help="a program of yours: the first fault of this kind (guessed at entry, checked after)")
    j.add_argument("--timeout", type=float, metavar="SECONDS", help="a program of yours: give up (exit 4) when no "
                   "fault has matched after this long (default: wait until the program ends)")
    j.add_argument("--as-root", action="store_true", help="under sudo, run the command after -- as root with "
                   "root's environment (by default it runs as the user who ran sudo, with a clean environment)")
    j.add_argument("cmd", nargs=argparse.REMAINDER, help="a program of yours to follow, after -- (default: the "
                   "first fault in its own code)")
    j.set_defaults(func=cmd_journey)


COMMANDS.append(_register_journey)


def cmd_scenarios(args: argparse.Namespace) -> int:
    from .model.scenarios import SCENARIOS
    if args.json:
        print_json(json.dumps([{"name": s.name, "title": s.title, "teaches": s.teaches, "ops": list(s.ops)}
                          for s in SCENARIOS], indent=2))
        return 0
    width = max(len(s.name) for s in SCENARIOS)
    for s in SCENARIOS:
        say(f"{s.name:<{width}}  {s.title}: {s.teaches}", sys.stdout)
    return 0


def _register_scenarios(sub) -> None:
    s = sub.add_parser("scenarios", help="the scenario library, one line each (run one: pagefault journey --scenario NAME)")
    s.add_argument("--json", action="store_true", help="names, lessons and operations as JSON")
    s.set_defaults(func=cmd_scenarios)


COMMANDS.append(_register_scenarios)


def _live_or_model_journey(args, progress):
    """The journey the exercises are set on: a saved one (--replay), a fresh live fault, or the
    simulator's (said on stderr) where this machine cannot trace."""
    from . import core
    from .kernel.facts import is_root
    if args.replay:
        return core.replay(Path(args.replay))
    if args.model:
        return core.model_journey(None)
    if not is_root():
        note = ("the exercises need root for the error code, the PFN and the PTE (fix: sudo); "
                "these use the simulator's fault instead")
        say(f"note: {note}")
        return core.model_journey(None, note)
    request = core.JourneyRequest(progress=progress)
    live = core.start_live(request)
    if live is None:
        return core.stand_in_journey(request, "the exercises use the simulator's fault instead")
    return core.finish_live(live, request)


def cmd_exercise(args: argparse.Namespace) -> int:
    from .views.exercise_view import Progress, ProgressError
    try:
        return _exercise(args, Progress())
    except ProgressError as exc:
        raise UsageError(str(exc)) from None


def _exercise(args, progress) -> int:
    from .journey.exercises import ORDER, build_exercises
    from .views.exercise_view import run_exercises
    from .views.progress import stderr_progress
    if progress.warning:
        say(f"note: {progress.warning}")
    if args.reset:
        progress.reset()
        say(f"progress reset ({progress.path})", sys.stdout)
        return 0
    if args.list:
        say("\n".join(progress.checklist()), sys.stdout)
        say(f"progress kept in {progress.path}", sys.stdout)
        return 0
    unknown = [n for n in args.names if n not in ORDER]
    if unknown:
        raise UsageError(f"no exercise {', '.join(unknown)}; the exercises are: {', '.join(ORDER)}")
    wanted = args.names or ([k for k in ORDER if not progress.done(k)] if not args.all else list(ORDER))
    if not wanted:
        say("\n".join(progress.checklist()), sys.stdout)
        print("every exercise is done; pagefault exercise --all sets them all again on a new fault")
        return 0
    journey = _live_or_model_journey(args, None if args.quiet else stderr_progress)
    exercises = [e for e in build_exercises(journey) if e.key in wanted]
    from rich.markup import escape as escape_markup
    console = terminal_console(highlight=False)
    where = ("the simulator's fault (scenario first-touch)" if journey.tier == "model" else
             f"PID {journey.pid}'s fault at 0x{journey.walk.address:x}, kernel {journey.kernel}" if journey.walk
             else f"PID {journey.pid}, kernel {journey.kernel}")
    console.print(f"[bold]pagefault exercise[/bold] on {escape_markup(where)}; answer each question, Enter after each "
                  "(end of input stops, keeping what is finished)")

    def ask(prompt: str) -> str | None:
        try:
            return input(prompt)
        except EOFError:
            return None
    run_exercises(exercises, ask, console, progress, where)
    return 0


def _register_exercise(sub) -> None:
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
    e.set_defaults(func=cmd_exercise, scenario=None)


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
    d.set_defaults(func=cmd_decode)
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
    parser = build_parser()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    try:
        args = parser.parse_args(argv)
        as_root = bool(getattr(args, "as_root", False))   # trace and journey: whom the command after -- runs as
        if as_root or "pagefault.capture.runner" in sys.modules:   # a replay imports no capture code
            from .capture.runner import keep_root_for_commands
            keep_root_for_commands(as_root)
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_USAGE
        return args.func(args)
    except UsageError as exc:
        say(f"pagefault: {_one_line(exc)}")
        return EXIT_USAGE
    except BrokenPipeError:
        # the reader (`| head`) left: not an error; point stdout at /dev/null so the exit flush is quiet
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        from .capture.safe_paths import OutputError, OutputWriteFailed
        from .core import CannotTrace, JourneyUsageError, NothingMatched
        if isinstance(exc, OutputWriteFailed):
            say(f"pagefault: {exc}")
            return EXIT_PARTIAL
        if isinstance(exc, (JourneyUsageError, OutputError)):
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
    except KeyboardInterrupt:
        print("pagefault: interrupted", file=sys.stderr)
        return 130
    except Terminated as exc:
        print(f"pagefault: stopped by {signal.Signals(exc.signum).name}", file=sys.stderr)
        return 128 + exc.signum


if __name__ == "__main__":
    sys.exit(main())
