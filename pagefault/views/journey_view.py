"""The journey in the terminal (rich), as Markdown, and as JSON."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..decode.bits import to_jsonable
from ..journey.steps import WS, Journey, Step
from .safe_text import escape_controls

BADGE = {"observed": "green", "derived": "cyan", "modelled": "magenta", "unavailable": "red"}


def step_renderable(step: Step, total: int = 11, fit: Console | None = None) -> Panel:
    """One step as a panel. `fit`: the stepper's console, whose screen the step should fit: the evidence
    lines (the step's raw proof: maps lines, call chains) are cut to one row each and then shortened, fewest
    last; then the derivation's lines; then the Ws and the values' sources to one row each, until the panel is
    no taller than the screen. What is cut says so, and where all of it is shown; the values are always there."""
    if fit is None:
        return _step_panel(step, total, Fit(EVIDENCE_SHOWN), wrap_evidence=True)
    rows = fit.size.height - 2             # the prompt's line and one of the previous output stay in view
    panel = _step_panel(step, total, FITS[0], wrap_evidence=False)
    for shape in FITS[1:]:
        if len(fit.render_lines(panel, fit.options, pad=False)) <= rows:
            break
        panel = _step_panel(step, total, shape, wrap_evidence=False)
    return panel


@dataclass(frozen=True)
class Fit:
    """How much of a step the stepper's screen shows."""

    evidence: int                   # evidence lines shown
    derivation: int | None = None   # derivation lines shown (None: all)
    one_row: bool = False           # each W and each value's source on one row, cut with an ellipsis


EVIDENCE_SHOWN = 40
ALL_OF_IT = " (all of them: --no-pause, --format markdown or html)"
# tried in order until the step fits: the evidence first, then the derivation, then the Ws and sources' rows
FITS = (Fit(EVIDENCE_SHOWN), Fit(12), Fit(6), Fit(3), Fit(0), Fit(0, 24), Fit(0, 12), Fit(0, 6), Fit(0, 3),
        Fit(0, 3, one_row=True), Fit(0, 0, one_row=True))


def _step_panel(step: Step, total: int, shown: Fit, wrap_evidence: bool) -> Panel:
    parts: list = [_values_table(step, wrap_evidence, shown.one_row)]
    lines = step.all_derivations()
    if lines:
        cut = lines if shown.derivation is None else lines[:shown.derivation]
        parts.append(Text("derivation" if len(cut) == len(lines) else f"derivation ({len(lines)} lines)",
                          style="bold"))
        parts += [Text("  " + escape_controls(line)) for line in cut]
        if len(cut) < len(lines):
            parts.append(_more(len(lines) - len(cut), wrap_evidence))
    if step.ws:
        if not shown.one_row:
            parts.append(Text(""))
        for w in WS:
            if w in step.ws:
                parts.append(Text.assemble((f"{w.upper():>8}  ", "bold yellow"), escape_controls(step.ws[w]),
                                           no_wrap=shown.one_row, overflow="ellipsis"))
    if step.evidence:
        parts.append(Text("evidence" if wrap_evidence else f"evidence ({len(step.evidence)} lines)", style="bold"))
        parts += [Text("  " + escape_controls(e), style="dim") if wrap_evidence else
                  Text("  " + escape_controls(e), style="dim", no_wrap=True, overflow="ellipsis")
                  for e in step.evidence[:shown.evidence]]
        if len(step.evidence) > shown.evidence:
            parts.append(_more(len(step.evidence) - shown.evidence, wrap_evidence))
    # said on the bottom border, which takes no row of its own
    rows_cut = "[dim]Ws and sources cut to one row (whole: --no-pause, markdown, html)[/dim]" if shown.one_row else None
    return Panel(Group(*parts), title=f"[bold]step {step.number}/{total}: {_line(step.title)}[/bold]",
                 title_align="left", subtitle=rows_cut, subtitle_align="right")


def _more(n: int, wrap_evidence: bool) -> Text:
    return Text(f"  … {n} more line{'s' * (n > 1)}" + ("" if wrap_evidence else ALL_OF_IT), style="dim")


def _values_table(step: Step, wrap_evidence: bool, one_row: bool) -> Table:
    t = Table(show_header=True, header_style="bold", expand=True, show_lines=False)
    if wrap_evidence:
        t.add_column("value", ratio=2)
        t.add_column("", ratio=4)
        t.add_column("provenance", no_wrap=True, min_width=11)
        t.add_column("source / how", ratio=4)
        for v in step.values:
            t.add_row(_line(v.label), _line(v.display), f"[{BADGE[v.provenance]}]{v.provenance}[/]", _line(v.source))
    else:   # the stepper's screen: the provenance heads its source, no column of its own; no box
        t.box, t.padding = None, (0, 1, 0, 0)
        t.add_column("value", ratio=2, overflow="fold")    # a long name (FAULT_FLAG_VMA_LOCK) folds, not cut
        t.add_column("", ratio=3)
        t.add_column("provenance: source / how", ratio=5, no_wrap=one_row, overflow="ellipsis")
        for v in step.values:
            t.add_row(_line(v.label), _line(v.display), f"[{BADGE[v.provenance]}]{v.provenance}[/]: {_line(v.source)}")
    return t


def _line(text: object) -> str:
    """A string from the evidence as one line of console markup: its markup and its control characters
    (newlines too) escaped. The console escapes controls again as it writes (views/safe_console.py); doing
    it here as well keeps the table's columns their right width."""
    return escape(escape_controls(str(text)))


def header(j: Journey, console: Console) -> None:
    what = "the simulator's process" if j.tier == "model" else "PID"
    console.print(f"[bold]pagefault journey[/bold] of {what} {j.pid} ({_line(' '.join(j.command))}); "
                  f"tier [bold]{_line(j.tier)}[/bold]; kernel {_line(j.kernel)}", highlight=False)
    console.print(_line(j.program), style="dim", highlight=False)
    for line in j.observed_with:
        console.print("observed with " + _line(line), style="dim", highlight=False)
    console.print("[green]observed[/] = read on this machine   [cyan]derived[/] = computed from observed values   "
                  "[magenta]modelled[/] = from the kernel source   [red]unavailable[/] = with the reason and fix")


def render_timeline(j: Journey, console: Console) -> None:
    if not j.timeline:
        return
    t = Table(title="timeline (µs since the program was started)", title_justify="left")
    t.add_column("t", justify="right")
    t.add_column("gap", justify="right")
    t.add_column("what")
    t.add_column("source")
    for e in j.timeline:
        t.add_row(f"{e.time_us:.1f}", f"+{e.gap_us:.1f}", _line(e.what), _line(e.source))
    console.print(t)


def render_all(j: Journey, console: Console) -> None:
    header(j, console)
    for note in j.notes:
        console.print(f"note: {_line(note)}", style="yellow", highlight=False)
    for step in j.steps:
        console.print(step_renderable(step, len(j.steps)))
    render_timeline(j, console)


def to_markdown(j: Journey) -> str:
    out = [f"# The journey of one page fault (PID {j.pid})", "",
           f"- kernel: {_md(j.kernel)}", f"- capture tier: {_md(j.tier)}",
           f"- command: {_code(' '.join(j.command))}", f"- program: {_md(j.program)}"]
    out += [f"- observed with {_md(line)}" for line in j.observed_with]
    out += ["",
           "Every value says where it came from: **observed** (read on this machine), **derived** (computed "
           "from observed values, arithmetic shown), **modelled** (from the kernel source) or **unavailable** "
           "(with the reason and the fix).", ""]
    for note in j.notes:
        out.append(f"> note: {_md(note)}")
    for step in j.steps:
        out += [f"## Step {step.number}: {_md(step.title)}", "", "| value | | provenance | source / how |",
                "|---|---|---|---|"]
        for v in step.values:
            out.append(f"| {_md(v.label)} | {_code(v.display)} | {_md(v.provenance)} | {_md(v.source)} |")
        lines = step.all_derivations()
        if lines:
            out += ["", *_code_block(lines)]
        if step.ws:
            out.append("")
            out += [f"- **{w}**: {_md(step.ws[w])}" for w in WS if w in step.ws]
        if step.evidence:
            out += ["", "<details><summary>evidence</summary>", "", *_code_block(step.evidence), "", "</details>"]
        out.append("")
    if j.timeline:
        out += ["## Timeline", "", "| µs | gap | what | source |", "|---:|---:|---|---|"]
        out += [f"| {e.time_us:.1f} | +{e.gap_us:.1f} | {_md(e.what)} | {_md(e.source)} |" for e in j.timeline]
    return "\n".join(out) + "\n"


# Every string from the target or the environment (the program's path, --text, file names, kernel
# strings) goes through one of these three, so no renderer of CommonMark/GFM turns it into markup:
# text is HTML-escaped and its punctuation backslash-escaped; code spans and fences are opened with a
# backtick run longer than any inside them, where nothing is interpreted. Control characters, newlines
# included, are shown escaped (safe_text): each string stays on its own line, so a file name holding
# "\n```" can neither end a fence nor start a heading, and the file is safe to cat to a terminal.
_MD_PUNCTUATION = re.compile(r"([\\`*_\[\]|~])")   # what can open markup mid-line (< > & become entities)


def _md(text: object) -> str:
    """Inline Markdown text that renders as exactly these characters (table cells included)."""
    flat = escape_controls(str(text))
    flat = flat.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_PUNCTUATION.sub(r"\\\1", flat)


def _longest_backtick_run(text: str) -> int:
    return max((len(m) for m in re.findall(r"`+", text)), default=0)


def _code(text: object) -> str:
    """A code span holding the text literally (usable in a table cell: pipes are escaped for GFM)."""
    flat = escape_controls(str(text)).replace("|", "\\|")
    fence = "`" * (_longest_backtick_run(flat) + 1)
    pad = " " if flat.startswith(("`", " ")) or flat.endswith(("`", " ")) else ""
    return f"{fence}{pad}{flat}{pad}{fence}"


def _code_block(lines: list[str]) -> list[str]:
    """A fenced code block whose fence no line inside can close, one line per entry."""
    flat = [escape_controls(str(line)) for line in lines]
    fence = "`" * max(3, max((_longest_backtick_run(line) for line in flat), default=0) + 1)
    return [fence, *flat, fence]


def to_json(j: Journey) -> str:
    return json.dumps(to_jsonable(j), indent=2)
