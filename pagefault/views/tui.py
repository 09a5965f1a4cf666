"""pagefault journey --tui: the journey in a Textual app. The steps on the left, the current step's values
with provenance badges, its derivations, the 7 Ws and its raw evidence on the right; keys move between steps.
Textual draws in the terminal only, so it works over SSH (ssh -t). Textual writes the text it is given as
it is, so every string of the journey passes through safe() (views/safe_text.py) before it is shown.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import DataTable, Footer, Header, ListItem, ListView, Static

from ..journey.steps import WS, Journey, Step
from .journey_view import BADGE
from .safe_text import escape_controls as safe

TIMELINE = "timeline"


def badge(provenance: str) -> Text:
    return Text(f" {provenance} ", style=f"bold white on {BADGE[provenance]}")


class JourneyApp(App):
    """One page of the journey at a time; the list on the left is the timeline of steps."""

    TITLE = "pagefault journey"
    CSS = """
    #steps { width: 42; border-right: solid $primary; }
    #detail { padding: 0 1; }
    #values { height: auto; max-height: 60%; }
    .section { margin-top: 1; }
    #evidence { color: $text-muted; }
    """
    BINDINGS = [
        Binding("n,right,j", "next", "next step"),
        Binding("b,left,k", "back", "back"),
        Binding("e", "toggle_evidence", "evidence"),
        Binding("t", "timeline", "timeline"),
        Binding("home", "first", "first", show=False),
        Binding("end", "last", "last", show=False),
        Binding("q,escape", "quit", "quit"),
    ]

    def __init__(self, journey: Journey):
        super().__init__()
        self.journey = journey
        self.pages: list[Step | str] = list(journey.steps) + ([TIMELINE] if journey.timeline else [])
        self.index = 0
        self.show_evidence = True

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            items = [ListItem(Static(Text(f"{s.number:>2} {safe(s.title)}")), id=f"item-{i}") for i, s in enumerate(self.journey.steps)]
            if self.journey.timeline:
                items.append(ListItem(Static(" ⏱ timeline"), id=f"item-{len(items)}"))
            yield ListView(*items, id="steps")
            with VerticalScroll(id="detail"):
                yield Static(id="title")
                yield DataTable(id="values", zebra_stripes=True, cursor_type="row")
                yield Static(id="derivations", classes="section")
                yield Static(id="ws", classes="section")
                yield Static(id="evidence", classes="section")
        yield Footer()

    def on_mount(self) -> None:
        j = self.journey
        what = "the simulator's process" if j.tier == "model" else "PID"
        self.sub_title = safe(f"{what} {j.pid} · tier {j.tier} · {j.kernel}")
        self.show_page(0)

    # --- navigation ---------------------------------------------------------------------------------------

    def action_next(self) -> None:
        self.show_page(min(self.index + 1, len(self.pages) - 1))

    async def action_back(self) -> None:   # async as App's own action_back, which this replaces
        self.show_page(max(self.index - 1, 0))

    def action_first(self) -> None:
        self.show_page(0)

    def action_last(self) -> None:
        self.show_page(len(self.pages) - 1)

    def action_timeline(self) -> None:
        if TIMELINE in self.pages:
            self.show_page(self.pages.index(TIMELINE))
        else:
            self.notify("this journey has no timeline (the simulator has no clock)", severity="warning")

    def action_toggle_evidence(self) -> None:
        self.show_evidence = not self.show_evidence
        self.show_page(self.index)

    def on_list_view_selected(self, event: ListView.Selected) -> None:
        self._follow(event.item)

    def on_list_view_highlighted(self, event: ListView.Highlighted) -> None:
        self._follow(event.item)

    def _follow(self, item: ListItem | None) -> None:
        """Up/down or a click in the list of steps shows that step."""
        if item is not None and item.id:
            index = int(item.id.split("-")[1])
            if index != self.index:
                self.show_page(index)

    # --- drawing ------------------------------------------------------------------------------------------

    def show_page(self, index: int) -> None:
        if not self.pages:
            self.query_one("#title", Static).update("this journey has no steps")
            return
        self.index = index
        steps = self.query_one("#steps", ListView)
        if steps.index != index:
            steps.index = index
        page = self.pages[index]
        if isinstance(page, str):   # TIMELINE, the only page that is not a step
            self._show_timeline()
        else:
            self._show_step(page)
        self.query_one("#detail", VerticalScroll).scroll_home(animate=False)

    def _table(self, columns: tuple[str, ...], rows: list[tuple]) -> DataTable:
        """Fill the values table so that it fits the width the screen gives it: each column at most as wide
        as it needs, the last one taking what is left, and cells too long for their column wrapped onto
        more lines (a row grows in height) instead of being cut at the screen's edge."""
        table = self.query_one("#values", DataTable)
        table.clear(columns=True)
        for name, width in zip(columns, fit_widths(columns, rows, self._values_width())):
            table.add_column(name, width=width)
        for row in rows:
            table.add_row(*row, height=None)
        return table

    def _values_width(self) -> int:
        """The columns the values table may use: the detail pane's width, less its padding and the table's
        own cell padding (DataTable pads each cell by one column on both sides)."""
        detail = self.query_one("#detail", VerticalScroll)
        width = detail.size.width or max(self.size.width - 44, 40)
        return max(width - 2 - 2, 20)     # its padding (0 1), and its vertical scrollbar (2 columns)

    def on_resize(self, _event) -> None:
        if self.pages:
            self.show_page(self.index)

    def _show_step(self, step: Step) -> None:
        notes = "".join(f"\nnote: {safe(n)}" for n in self.journey.notes) if step.number == 1 else ""
        self.query_one("#title", Static).update(Text.assemble(
            (f"step {step.number}/{len(self.journey.steps)}: {safe(step.title)}", "bold"),
            ((f"\nevidence taken at the program's phase '{safe(step.stage)}'" if self.journey.tier != "model" else
              "\nthe simulator's run") + notes, "dim")))
        self._table(("value", "", "provenance", "source / how"),
                    [(Text(safe(v.label)), Text(safe(v.display)), badge(v.provenance), Text(safe(v.source)))
                     for v in step.values])
        lines = step.all_derivations()
        self.query_one("#derivations", Static).update(
            Text("derivation\n", style="bold") + Text("\n".join("  " + safe(d) for d in lines)) if lines else "")
        ws = Text()
        for w in WS:
            if w in step.ws:
                ws.append(f"{w.upper():>8}  ", style="bold yellow")
                ws.append(safe(step.ws[w]) + "\n")
        self.query_one("#ws", Static).update(ws)
        evidence = self.query_one("#evidence", Static)
        if not step.evidence:
            evidence.update("")
        elif self.show_evidence:
            evidence.update(Text("evidence (e hides)\n", style="bold") + Text("\n".join("  " + safe(e) for e in step.evidence)))
        else:
            evidence.update(Text(f"evidence: {len(step.evidence)} lines hidden (e shows)", style="bold"))

    def _show_timeline(self) -> None:
        self.query_one("#title", Static).update(Text("timeline (µs since the program was started)", style="bold"))
        self._table(("t (µs)", "gap", "what", "source"),
                    [(f"{e.time_us:.1f}", f"+{e.gap_us:.1f}", Text(safe(e.what)), Text(safe(e.source)))
                     for e in self.journey.timeline])
        for widget in ("#derivations", "#ws", "#evidence"):
            self.query_one(widget, Static).update("")


CELL_PADDING = 2      # DataTable's cell_padding: one column each side


def fit_widths(columns: tuple[str, ...], rows: list[tuple], available: int) -> list[int]:
    """Content widths for the columns so that, padding included, they fill at most `available` columns.

    Each column wants its longest cell (or heading); while they do not fit, the widest column gives up
    width, never below a floor (12 columns where the screen allows, less on a narrow one; a column's
    want, if smaller): a long source no longer pushes the others off the screen, and a long value wraps
    rather than hiding the source.
    """
    def length(cell) -> int:
        text = cell.plain if isinstance(cell, Text) else str(cell)
        return max((len(line) for line in text.splitlines()), default=0)

    wants = [max([len(c)] + [length(r[i]) for r in rows]) for i, c in enumerate(columns)]
    widths = list(wants)
    budget = available - CELL_PADDING * len(columns)
    floor = [min(w, max(4, min(12, budget // len(columns)))) for w in wants]
    while sum(widths) > budget:
        i = max(range(len(widths)), key=lambda k: widths[k] - floor[k])
        if widths[i] <= floor[i]:
            break
        widths[i] -= 1
    return widths


def run_tui(journey: Journey, redact: bool = False) -> None:
    if redact:
        from ..journey.redact import redact_journey
        journey = redact_journey(journey)[0]
    JourneyApp(journey).run()
