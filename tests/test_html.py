"""The HTML report and --redact: hand-checked masks, escaping, a property test, and the live journey's report
opened in headless Chromium (Debian's, installed by scripts/setup.sh test) with a screenshot."""

import io
import json
import os
import re
import shutil

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pagefault.decode.pte import decode_pte
from pagefault.journey.model_journey import build_model_journey
from pagefault.journey.redact import Redactor, mask_entry, mask_pagemap, redact_journey
from pagefault.journey.steps import Area, Journey, PageWalk, Step, WalkLevel, observed
from pagefault.model.scenarios import find_scenario, run_in_model
from pagefault.views.html import layout_rows, render_html

CHROMIUM = shutil.which("chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]


def tiny_journey(command="prog", path="/bin/prog") -> Journey:
    """A journey with one hand-made step and walk: PFN 0x128d76 behind PTE 0x8000000128d76067."""
    j = Journey("perf", "6.18", 42, [command], f"{command} built from {path}")
    s = Step(1, "pte", "The PTE", "touched")
    s.values += [observed("PFN", 0x128D76, "mm_page_alloc"),
                 observed("PTE (read)", 0x8000000128D76067, "bpftrace", display="0x8000000128d76067"),
                 observed("pagemap entry", 0x8100000000128D76, "pagemap", display="0x8100000000128d76"),
                 observed("direct-map base", 0xFFFF888000000000, "mm->pgd − physical"),
                 observed("PTE index", 73, "bits 20..12", display="73")]
    s.derivations.append("frame: 0x8000000128d76067 & 0xffffffffff000 = 0x128d76000; PFN = 0x128d76")
    s.evidence.append(f"7f00-7f01 rw-p 0 00:00 0 {path}")
    j.steps.append(s)
    j.walk = PageWalk(0x7F3B9F249100, 0x10F040000, "test", [
        WalkLevel("PGD", 254, 0x10F040000, 0x104AAC067, 0x104AAC067, "observed", "t"),
        WalkLevel("PUD", 238, 0x104AAC000, 0x104AAD067, 0x104AAD067, "observed", "t"),
        WalkLevel("PMD", 249, 0x104AAD000, 0x104AAE067, 0x104AAE067, "observed", "t"),
        WalkLevel("PTE", 73, 0x104AAE000, 0x8000000128D76067, 0, "observed", "t")], frame_pfn=0x128D76)
    j.layout = [Area(0x7F3B9F200000, 0x7F3B9F249000, "r--p", path),
                Area(0x7F3B9F249000, 0x7F3B9F24A000, "rw-p", "", True),
                Area(0x7F3B9F300000, 0x7F3B9F301000, "r-xp", "[vdso]")]
    j.layout_source = "test"
    return j


# --- redaction, hand-checked ---------------------------------------------------------------------------

def test_masks_keep_the_flag_bits_and_hide_the_frame():
    assert mask_entry(0x8000000128D76067) == "0x800xxxxxxxxxx067"
    assert mask_entry(0x104AAC067) == "0x000xxxxxxxxxx067"
    assert mask_pagemap(0x8100000000128D76) == "0x810xxxxxxxxxxxxx"   # bits 63 (present) and 56 (exclusive)


def test_redactor_hides_pfns_physical_and_kernel_addresses_in_any_text():
    r = Redactor(tiny_journey())
    assert r.text("PFN 0x128d76 at physical 0x128d76000") == "PFN [PFN] at physical [physical address]"
    assert r.text("PTE 0x8000000128d76067 read") == "PTE 0x800xxxxxxxxxx067 read"
    assert r.text("table at 0x104aad000") == "table at [physical address]"
    assert r.text("base 0xffff888000000000, stack ffffc90000123456") == "base [kernel address], stack [kernel address]"
    # user addresses, indices and small numbers stay
    assert r.text("0x7f3b9f249100 index 73 offset 0x100") == "0x7f3b9f249100 index 73 offset 0x100"
    assert r.text("a PFN named by words: frame 0xabcdef") == "a PFN named by words: frame [PFN]"


def test_redacted_journey_json_holds_no_pfn_in_any_form():
    j, _r = redact_journey(tiny_journey())
    from pagefault.decode.bits import to_jsonable
    text = json.dumps(to_jsonable(j))
    for n in (0x128D76, 0x128D76000, 0x104AAC000, 0x10F040000, 0x8000000128D76067, 0xFFFF888000000000):
        assert f"{n:x}" not in text and str(n) not in text, hex(n)
    v = {v.label: v for v in j.steps[0].values}
    assert v["PTE index"].value == 73 and v["PFN"].display == "[PFN]"


@given(pfn=st.integers(0x1000, (1 << 40) - 1), flags=st.integers(0, 0xFFF), nx=st.booleans())
def test_property_a_redacted_entry_never_shows_its_pfn_and_keeps_its_flags(pfn, flags, nx):
    entry = (1 << 63 if nx else 0) | pfn << 12 | flags
    j = Journey("perf", "6.18", 1, ["p"], "p")
    s = Step(1, "pte", "t", "touched")
    s.values.append(observed("PTE (read)", entry, "t", display=f"0x{entry:016x}"))
    j.steps.append(s)
    out = Redactor(j).text(f"entry 0x{entry:016x} = 0x{entry:x}; PFN 0x{pfn:x}; at 0x{pfn << 12:x}")
    assert f"{pfn:x}" not in out
    assert out.startswith(f"entry {mask_entry(entry)} = {mask_entry(entry)}; PFN [PFN]; at ")
    assert f"0x{pfn << 12:x}" not in out    # hidden (as an entry, when the flags are 0 and both are equal)


@given(st.text(max_size=200))
def test_property_redactor_never_fails_and_is_stable_on_any_text(text):
    r = Redactor(tiny_journey())
    once = r.text(text)
    assert r.text(once) == once


# --- the HTML ------------------------------------------------------------------------------------------

def test_target_strings_are_escaped_and_nothing_is_fetched():
    evil = "<script>alert(1)</script>"
    html = render_html(tiny_journey(command=evil, path=f"/tmp/{evil}&x"))
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&amp;x" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<link" not in html and "@import" not in html and "url(http" not in html


def test_layout_shows_the_areas_around_the_address_highest_first_with_the_gaps():
    rows = layout_rows(tiny_journey().layout)   # gap: 0x7f3b9f300000 − 0x7f3b9f24a000 = 0xb6000 = 182 pages
    assert [r.get("path") or r.get("gap") for r in rows] == ["[vdso]", "728 KiB", "[anonymous]", "/bin/prog"]
    assert rows[2]["here"] and rows[2]["size"] == "4 KiB"


def test_redacted_html_keeps_the_walk_shape_and_hides_its_numbers():
    html = render_html(tiny_journey(), redact=True)
    assert html.count('class="walk-level"') == 4
    for n in ("128d76", "104aac", "10f040", "ffff888"):
        assert n not in html, n
    assert "0x800xxxxxxxxxx067" in html and "entry [73] (+0x248)" in html


def test_model_journey_renders_with_its_modelled_walk():
    j = build_model_journey(run_in_model(find_scenario("huge-page")))
    html = render_html(j)
    assert j.walk.levels[-1].level == "PMD" and html.count('class="walk-level"') == 3   # the PMD is the leaf
    assert "2 MiB page" in html and 'class="badge modelled"' in html


# --- live, in Chromium ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM:
        if os.geteuid() == 0:
            pytest.fail("chromium is missing although scripts/setup.sh test installs it as root; run it again")
        pytest.skip("Debian's chromium is not installed (as root, bash scripts/setup.sh test installs it)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def live_journey(can_trace):
    from pagefault.capture.exercise import ExerciseOptions
    from pagefault.capture.journey_capture import LiveJourney
    from pagefault.journey.build import build_journey
    live = LiveJourney(ExerciseOptions(offset=0x100, size=4096))
    try:
        live.run_all()
    finally:
        live.close()
    return build_journey(live.ev)


def _value(j, key, label):
    step = next(s for s in j.steps if s.key == key)
    return step.value(label).value


@pytest.mark.live
def test_live_walk_is_consistent_with_the_kernel(live_journey):
    j = live_journey
    w = j.walk
    assert w.address == _value(j, "mmap", "return value") + 0x100
    expected = {4: ["PGD", "PUD", "PMD", "PTE"], 5: ["PGD", "P4D", "PUD", "PMD", "PTE"]}
    assert [lv.level for lv in w.levels] == expected[_value(j, "walk", "paging levels")]
    assert [lv.index for lv in w.levels] == [_value(j, "walk", f"{lv.level} index") for lv in w.levels]
    if j.tier != "bpf":
        pytest.skip(f"tier {j.tier}: the raw entries need bpftrace")
    assert w.cr3 == _value(j, "process", "PGD physical address (CR3 while it runs)")
    for upper, lower in zip(w.levels, w.levels[1:]):      # each entry's frame is the next table
        assert decode_pte(upper.entry, upper.level).physical_address == lower.table
    assert w.levels[-1].entry == _value(j, "pte", "PTE (read)")
    assert w.frame_pfn == _value(j, "alloc", "PFN") == int(_value(j, "pagemap", "pagemap entry")) & ((1 << 55) - 1)


@pytest.mark.live
def test_live_report_in_chromium(live_journey, browser, tmp_path):
    from PIL import Image
    j = live_journey
    plain, redacted = tmp_path / "j.html", tmp_path / "r.html"
    plain.write_text(render_html(j))
    redacted.write_text(render_html(j, redact=True))
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.goto(plain.as_uri())
    text = page.inner_text("body")
    addr = j.walk.address
    assert f"The page-table walk of 0x{addr:x}" in text
    assert f"Step 11/11: {j.steps[-1].title}" in text
    assert "the faulting address is here" in text
    levels = page.locator("svg#walk-svg g.walk-level")
    assert levels.count() == len(j.walk.levels) == _value(j, "walk", "paging levels")
    for i, lv in enumerate(j.walk.levels):                   # one node per level, each with its index
        assert f"entry [{lv.index}]" in levels.nth(i).text_content()
    pfn = j.walk.frame_pfn
    frame = page.locator("svg#walk-svg g.walk-frame").text_content()
    assert f"PFN 0x{pfn:x}" in frame and "byte at +0x100" in frame
    shot = page.locator("svg#walk-svg").screenshot(path=str(tmp_path / "walk.png"))
    img = Image.open(io.BytesIO(shot)).convert("RGB")
    assert img.width > 800 and len(set(img.get_flattened_data())) > 20   # drawn boxes, arrows and text, not a blank box
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)

    page.goto(redacted.as_uri())
    rtext = page.inner_text("body") + page.content()
    assert page.locator("svg#walk-svg g.walk-level").count() == len(j.walk.levels)
    assert f"0x{pfn:x}" not in rtext and f"{pfn:x}" not in rtext
    assert "[PFN]" in rtext and not re.search(r"ffff[89a-f][0-9a-f]{11}", rtext)
    assert f"0x{addr:x}" in rtext                               # user addresses stay
    page.close()


def test_cli_html_needs_a_file_and_writes_one_for_the_model(tmp_path):
    import subprocess
    import sys
    cli = [sys.executable, "-m", "pagefault", "journey", "--model", "--format", "html"]
    r = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--format html needs -o FILE" in r.stderr
    out = tmp_path / "m.html"
    r = subprocess.run(cli + ["--redact", "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "html, redacted" in r.stderr
    html = out.read_text()
    assert html.count('class="walk-level"') == 4 and "Redacted for sharing" in html
    pfn = build_model_journey(run_in_model(find_scenario("first-touch"))).walk.frame_pfn
    assert f"PFN 0x{pfn:x}" in render_html(build_model_journey(run_in_model(find_scenario("first-touch"))))
    assert f"0x{pfn:x}" not in html and "PFN [PFN]" in html


@pytest.mark.live
def test_live_scenario_redacted_holds_none_of_its_pfns(can_trace):
    from pagefault.core import check_scenario
    from pagefault.decode.bits import to_jsonable
    from pagefault.journey.scenario_check import build_scenario_journey
    scenario = find_scenario("fork-then-write")
    model, live, agreement, ev, _run = check_scenario(scenario)
    j = build_scenario_journey(scenario, ev, live, model, agreement)
    pfns = {e.fields["pfn"] for e in ev.events if e.name == "kmem:mm_page_alloc" and e.pid in (ev.pid, ev.child_pid)}
    pfns |= {pm & ((1 << 55) - 1) for snap in ev.snapshots for entries in snap.pagemaps.values() for pm in entries
             if pm >> 63}
    shown = json.dumps(to_jsonable(j))
    named = [p for p in pfns if f"0x{p:x}" in shown]
    assert named, "the plain journey names the PFNs it saw (else this test checks nothing)"
    redacted = json.dumps(to_jsonable(redact_journey(j)[0])) + render_html(j, redact=True)
    leaked = [hex(p) for p in pfns if re.search(rf"(?<![0-9a-f])(0x)?0*{p:x}(?![0-9a-f])", redacted)]
    assert not leaked and "[PFN]" in redacted


def _fixture_journeys():
    """The model's journey and a replayed live one (the newest x86-64 exercise capture saved)."""
    from pathlib import Path

    from pagefault.core import replay
    saved = sorted(Path(__file__).parent.glob("fixtures/evidence/*-amd64/journey-bpf.json.gz")) + \
        sorted(Path(__file__).parent.glob("fixtures/evidence/*-fc-*/journey-bpf.json.gz"))
    program = Path(__file__).parent / "fixtures/evidence/6.18.44-fc-v1147/program-memset-line.json.gz"
    return [("model", build_model_journey(run_in_model(find_scenario("first-touch"))))] + \
        [(p.parent.name, replay(p)) for p in saved[-1:]] + [("program", replay(program))]


def _long_path_copy(tmp_path, saved):
    """The fixture again, from a path as long as a deep checkout's: the file's path is shown, unbroken"""
    deep = tmp_path / ("a-rather-long-directory-name-" * 3) / ("and-another-one-below-it-" * 3)
    deep.mkdir(parents=True)
    copy = deep / saved.name
    copy.write_bytes(saved.read_bytes())
    return copy


@pytest.mark.parametrize("width", [390, 1300])
def test_nothing_overflows_and_the_walk_scrolls_instead_of_shrinking(browser, tmp_path, width):
    from pathlib import Path

    from pagefault.core import replay
    saved = sorted(Path(__file__).parent.glob("fixtures/evidence/*/journey-bpf.json.gz"))[-1]
    for name, j in _fixture_journeys() + [("deep", replay(_long_path_copy(tmp_path, saved)))]:
        html = tmp_path / f"{name}.html"
        html.write_text(render_html(j))
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.goto(html.as_uri())
        page.evaluate("document.fonts.ready.then(() => true)")   # measured once the fonts are laid out
        # the page itself never scrolls sideways: wide tables and the walk scroll inside their own boxes
        page_width = page.evaluate("document.scrollingElement.scrollWidth")
        widest = page.evaluate("""(() => { let w = null; for (const e of document.body.querySelectorAll('*')) {
            const r = e.getBoundingClientRect(); if (r.right > innerWidth && (!w || r.right > w[1]))
            w = [e.tagName + (e.id ? '#' + e.id : '') + ' ' + (e.textContent || '').slice(0, 60), r.right]; } return w; })()""")
        assert page_width <= width, f"{name} at {width} px: the page is {page_width} px wide; widest: {widest}"
        # the walk keeps a readable size: at least 80 % of its drawing's own width, whatever the screen
        drawn = page.evaluate("document.getElementById('walk-svg').getBoundingClientRect().width")
        view_box = float(page.get_attribute("svg#walk-svg", "viewBox").split()[2])
        assert drawn >= 0.8 * view_box - 1, f"{name} at {width} px: the walk shrank to {drawn} of {view_box} px"
        box = page.evaluate("(() => { const b = document.getElementById('walk-box'); "
                            "return [b.scrollWidth, b.clientWidth]; })()")
        assert (box[0] > box[1]) == (0.8 * view_box > width - 40), (name, width, box)   # it scrolls when it must
        page.screenshot(path=str(tmp_path / f"{name}-{width}.png"), full_page=True)
        page.close()


# --- the journey of a program's fault (journey -- CMD, -p PID) ------------------------------------------------

PROGRAM_FIXTURE = "fixtures/evidence/6.18.44-fc-v1147/program-memset-line.json.gz"


def _program_evidence():
    import gzip
    from pathlib import Path
    return json.loads(gzip.decompress((Path(__file__).parent / PROGRAM_FIXTURE).read_bytes()))["evidence"]


def test_a_programs_journey_draws_its_walk_address_space_and_timeline():
    """tests/c/memset_line.c's fault chosen by --at memset_line.c:20 (saved): the drawing holds the walk's
    entries as the compiled walk read them after the fault, /proc's maps and the fault's allocations."""
    from pathlib import Path

    from pagefault.core import replay
    ev = _program_evidence()
    after = ev["bpf"]["reads"]["after"]["entries"]
    html = render_html(replay(Path(__file__).parent / PROGRAM_FIXTURE))
    assert "No page-table walk is drawn" not in html
    nodes = re.findall(r'<g class="walk-level" data-level="(\w+)">(.*?)</g>', html, re.S)
    assert [level for level, _ in nodes] == list(after)
    for level, body in nodes:
        assert f"0x{after[level]:016x}" in body, (level, body)
    pfn = after["PTE"] >> 12 & ((1 << 40) - 1)
    assert f"PFN 0x{pfn:x}" in re.search(r'<g class="walk-frame">(.*?)</g>', html, re.S).group(1)
    assert "the faulting address is here" in html
    here = next(m for m in ev["maps"] if m["start"] <= ev["address"] < m["end"])
    assert f"<tr class=\"here\"><td class=\"v\">0x{here['start']:x}</td>" in html
    allocs = [e for e in ev["events"] if e["name"] == "kmem:mm_page_alloc" and e["fields"]["pfn"] == pfn]
    assert allocs and f"page allocated, PFN 0x{pfn:x} order 0: the fault&#39;s page (movable)" in html
    assert f"the chosen fault (number {ev['nth']}) at 0x{ev['address']:x}" in html


@pytest.mark.live
@pytest.mark.parametrize("how", ["command", "pid"])
def test_live_programs_journey_in_chromium_at_both_widths(can_trace, cbin, browser, tmp_path, how):
    """journey -- CMD and journey -p PID write the walk, the address space and the timeline; at 390 px
    nothing overflows and the walk scrolls in its box; screenshots at 390 and 1300 px are drawn, not blank."""
    import subprocess
    import sys
    import time

    from PIL import Image

    from pagefault.capture.journey_capture import walk_engine_problem
    problem = walk_engine_problem()
    if problem:
        pytest.skip(problem)
    out = tmp_path / "p.html"
    cli = [sys.executable, "-m", "pagefault", "journey", "-q", "--format", "html", "-o", str(out)]
    if how == "command":
        r = subprocess.run(cli + ["--at", "memset_line.c:20", "--", str(cbin("memset_line"))], capture_output=True,
                           text=True, timeout=300)
    else:
        loop = subprocess.Popen([sys.executable, "-c", "import mmap, time\nwhile True:\n    m = mmap.mmap(-1, 1 << 20, "
                                 "flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)\n"
                                 "    for i in range(0, 1 << 20, 4096): m[i] = 1\n    time.sleep(0.05)\n"])
        try:
            time.sleep(0.5)
            r = subprocess.run(cli + ["--kind", "anon", "--timeout", "60", "-p", str(loop.pid)], capture_output=True,
                               text=True, timeout=300)
        finally:
            loop.kill()
            loop.wait()
    assert r.returncode == 0, r.stderr[-2000:]
    html = out.read_text()
    assert "No page-table walk is drawn" not in html and 'id="layout-table"' in html and 'id="timeline"' in html
    for width in (390, 1300):
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.goto(out.as_uri())
        page.evaluate("document.fonts.ready.then(() => true)")
        assert page.locator("svg#walk-svg g.walk-level").count() >= 4
        assert page.evaluate("document.scrollingElement.scrollWidth") <= width
        view_box = float(page.get_attribute("svg#walk-svg", "viewBox").split()[2])
        assert page.evaluate("document.getElementById('walk-svg').getBoundingClientRect().width") >= 0.8 * view_box - 1
        box = page.evaluate("(() => { const b = document.getElementById('walk-box'); return [b.scrollWidth, b.clientWidth]; })()")
        assert (box[0] > box[1]) == (width == 390), (width, box)
        shot = page.screenshot(path=str(tmp_path / f"{how}-{width}.png"), full_page=True)
        img = Image.open(io.BytesIO(shot)).convert("RGB")
        assert img.width == width and len(set(img.get_flattened_data())) > 20
        page.close()
