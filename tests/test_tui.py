"""pagefault journey --tui: Textual's Pilot drives the app headless through every step, forward and back."""

import asyncio

import pytest
from rich.text import Text
from textual.widgets import DataTable, ListView, Static

from pagefault.journey.model_journey import build_model_journey
from pagefault.journey.redact import redact_journey
from pagefault.model.scenarios import find_scenario, run_in_model
from pagefault.views.tui import TIMELINE, JourneyApp


def cell_text(cell) -> str:
    return cell.plain if isinstance(cell, Text) else str(cell)


def shown_rows(app) -> list[list[str]]:
    table = app.query_one("#values", DataTable)
    return [[cell_text(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def static_text(app, selector: str) -> str:
    content = app.query_one(selector, Static).render()
    return content.plain if hasattr(content, "plain") else str(content)


async def walk_every_page(journey):
    """Press n through every page and b back to the start; return what each page showed."""
    app = JourneyApp(journey)
    seen = []
    async with app.run_test(size=(160, 50)) as pilot:
        for i, page in enumerate(app.pages):
            await pilot.pause()
            assert app.index == i
            assert app.query_one("#steps", ListView).index == i
            seen.append((page, static_text(app, "#title"), shown_rows(app), static_text(app, "#evidence"),
                         static_text(app, "#derivations")))
            await pilot.press("n")
        await pilot.press("n")                      # past the end stays on the last page
        await pilot.pause()
        assert app.index == len(app.pages) - 1
        for _ in app.pages:
            await pilot.press("b")
        await pilot.pause()
        assert app.index == 0
        await pilot.press("end")
        await pilot.pause()
        assert app.index == len(app.pages) - 1
        await pilot.press("q")
    return seen


def check_pages(journey, seen):
    assert len(seen) == len(journey.steps) + (1 if journey.timeline else 0)
    for step, (page, title, rows, evidence, derivations) in zip(journey.steps, seen):
        assert page is step
        assert title.startswith(f"step {step.number}/{len(journey.steps)}: {step.title}")
        assert rows == [[v.label, v.display, f" {v.provenance} ", v.source] for v in step.values]
        for line in step.evidence:
            assert line in evidence
        for v in step.values:
            for d in v.derivation:
                assert d in derivations


def test_pilot_walks_every_step_of_a_model_journey():
    j = build_model_journey(run_in_model(find_scenario("fork-then-write")))
    check_pages(j, asyncio.run(walk_every_page(j)))


def test_brackets_in_target_strings_are_shown_not_read_as_markup():
    j = build_model_journey(run_in_model(find_scenario("stack-growth")))
    j, _ = redact_journey(j)          # brings "[PFN]" and "[physical address]" into the values
    seen = asyncio.run(walk_every_page(j))
    shown = [cell for _p, _t, rows, _e, _d in seen for row in rows for cell in row]
    assert any("[PFN]" in c for c in shown) and any("[stack]" in c for c in shown)


async def _evidence_toggle_and_timeline(journey):
    app = JourneyApp(journey)
    async with app.run_test(size=(160, 50)) as pilot:
        first = journey.steps[0]
        assert first.evidence and first.evidence[0] in static_text(app, "#evidence")
        await pilot.press("e")
        await pilot.pause()
        assert static_text(app, "#evidence") == f"evidence: {len(first.evidence)} lines hidden (e shows)"
        await pilot.press("t")
        await pilot.pause()
        assert app.pages[app.index] == TIMELINE
        rows = shown_rows(app)
        assert [r[2] for r in rows] == [e.what for e in journey.timeline]
        await pilot.press("home")
        await pilot.pause()
        assert app.index == 0


@pytest.mark.live
def test_pilot_on_a_live_journey_shows_the_observed_values_and_the_timeline(can_trace):
    from pagefault.capture.exercise import ExerciseOptions
    from pagefault.capture.journey_capture import LiveJourney
    from pagefault.journey.build import build_journey
    live = LiveJourney(ExerciseOptions())
    try:
        live.run_all()
    finally:
        live.close()
    j = build_journey(live.ev)
    seen = asyncio.run(walk_every_page(j))
    check_pages(j, seen)
    assert seen[-1][0] == TIMELINE and len(seen[-1][2]) == len(j.timeline)
    trap = next(rows for page, _t, rows, _e, _d in seen if page is not TIMELINE and page.key == "trap")
    assert [f"0x{j.walk.address:x}", " observed "] == trap[0][1:3]
    asyncio.run(_evidence_toggle_and_timeline(j))


def test_cli_refuses_tui_without_a_terminal_or_with_a_file_and_says_what_to_do():
    import subprocess
    import sys
    cli = [sys.executable, "-m", "pagefault", "journey", "--model", "--tui"]
    r = subprocess.run(cli, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert r.returncode == 2 and "--tui needs a terminal (it works over ssh -t)" in r.stderr
    r = subprocess.run(cli + ["--format", "json", "-o", "/dev/null"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "leave out --format and -o" in r.stderr
    assert "Traceback" not in r.stderr


async def _list_keys(journey):
    app = JourneyApp(journey)
    async with app.run_test(size=(160, 50)) as pilot:
        app.query_one("#steps", ListView).focus()
        await pilot.press("down", "down", "down")
        await pilot.pause()
        assert app.index == 3
        assert static_text(app, "#title").startswith(f"step 4/{len(journey.steps)}: {journey.steps[3].title}")
        await pilot.press("up")
        await pilot.pause()
        assert app.index == 2 and shown_rows(app)[0][0] == journey.steps[2].values[0].label


def test_up_and_down_in_the_list_of_steps_show_that_step():
    asyncio.run(_list_keys(build_model_journey(run_in_model(find_scenario("file-read")))))


async def _table_widths(journey, size):
    app = JourneyApp(journey)
    seen = []
    async with app.run_test(size=size) as pilot:
        for _ in app.pages:
            await pilot.pause()
            table = app.query_one("#values")
            widths = {str(c.label.plain): c.get_render_width(table) for c in table.columns.values()}
            tall = max((table.rows[k].height for k in table.rows), default=1)
            seen.append((table.virtual_size.width, table.region.width, widths, tall))
            await pilot.press("n")
    return seen


@pytest.mark.parametrize("size", [(140, 50), (100, 40)])
def test_the_values_table_fits_the_screen_and_long_cells_wrap(size):
    from pathlib import Path

    from pagefault.core import replay
    saved = sorted(Path(__file__).parent.glob("fixtures/evidence/*/journey-bpf.json.gz"))[-1]
    pages = asyncio.run(_table_widths(replay(saved), size))
    for virtual, region, widths, _tall in pages:
        assert virtual <= region, (size, virtual, region, widths)       # nothing cut at the screen's edge
        assert min(widths.values()) >= 3 + 2, widths                     # no column squeezed to a sliver
    assert any(tall > 1 for *_rest, tall in pages)                       # long cells wrapped onto more lines
