"""No string from an evidence file, a recording or a traced program reaches root's terminal as a control
sequence (issue 28, item 1): an OSC 52 clipboard write, C1 controls and bidi overrides put in every string
field come out escaped (\\x1b, \\u202e) in the text, Markdown, TUI, report, report --events and folded
output, and in the one-line errors and notes on stderr.
"""

import asyncio
import collections
import copy
import gzip
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pagefault import cli
from pagefault.capture.recording import RecordingWriter
from pagefault.views.safe_text import escape_controls, escape_controls_in_bytes, escape_controls_in_lines

FIXTURES = Path(__file__).parent / "fixtures" / "evidence"
# A clipboard write (OSC 52, ended by ST), then a C1 CSI, a bidi override and DEL: what a terminal acts on;
# and rich markup for a hyperlink, which rich itself would turn into an OSC 8 sequence if it read it as markup.
OSC52 = "\x1b]52;c;UFdO\x1b\\"
HOSTILE = OSC52 + "\x9b2J\u202e\x7f[link=https://evil.example]x[/link]"
SHOWN = "\\x1b]52;c;UFdO\\x1b\\"          # how the payload reads once escaped
# Written independently of the sanitizer: every character a terminal could act on, but newline and tab;
# rich's own colour codes (SGR, "\x1b[…m") are taken out before the check.
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
SGR = re.compile(r"\x1b\[[0-9;]*m")


def raw_controls(text: str) -> list[str]:
    return RAW_CONTROL.findall(SGR.sub("", text))


# --- the sanitizer ------------------------------------------------------------------------------------

def test_every_dangerous_class_is_shown_escaped_and_the_rest_kept():
    assert escape_controls("a\x1bb\x07c\x00d") == "a\\x1bb\\x07c\\x00d"
    assert escape_controls("\x7f\x85\x9b") == "\\x7f\\x85\\x9b"
    assert escape_controls("x\u202ey\u2066z\u2069") == "x\\u202ey\\u2066z\\u2069"
    assert escape_controls("dir\nname\t\r") == "dir\\nname\\t\\r"       # one string stays one line
    assert escape_controls("/usr/lib/libc.so.6 µs → 😀 é") == "/usr/lib/libc.so.6 µs → 😀 é"
    assert escape_controls_in_lines("a\x1b\nb\tc\r\n") == "a\\x1b\nb\tc\\r\n"   # whole output: lines kept
    # bytes: controls escaped, valid UTF-8 kept, a lone 0x9B (CSI to an 8-bit terminal) escaped too
    assert escape_controls_in_bytes(b"\x1b[2J \xc2\x9b \x9b \xe2\x86\x92\n") == b"\\x1b[2J \\x9b \\x9b \xe2\x86\x92\n"


# --- evidence files -----------------------------------------------------------------------------------

def _string_leaves(node, path=()):
    if isinstance(node, str):
        yield path
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _string_leaves(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _string_leaves(value, path + (i,))


def _field_shapes(evidence: dict) -> dict[tuple, list[tuple]]:
    """String leaves grouped by field (list positions folded): every `maps[].path` is one field."""
    shapes = collections.defaultdict(list)
    for path in _string_leaves(evidence):
        shapes[tuple("[]" if isinstance(p, int) else p for p in path)].append(path)
    return shapes


def _injected(evidence: dict, shapes: dict, chosen: list) -> dict:
    ev = copy.deepcopy(evidence)
    for shape in chosen:
        for path in shapes[shape]:
            node = ev
            for p in path[:-1]:
                node = node[p]
            node[path[-1]] = node[path[-1]] + HOSTILE
    return ev


def _builds(doc: dict) -> bool:
    from pagefault.core import journey_from_evidence
    from pagefault.evidence.file import CONVERTER, KINDS, _out_of_range
    try:
        ev = CONVERTER.structure(doc["evidence"], KINDS[doc["kind"]])
        return not _out_of_range(ev) and journey_from_evidence(ev) is not None
    except Exception:
        return False


def _hostile_evidence(fixture: Path) -> tuple[dict, int, int]:
    """The fixture with the payload appended to every string field it can take and still build a journey
    (a field the builder must match, such as a scenario's name, refuses any change: found by halving).
    → (document, fields injected, string fields in all)."""
    doc = json.loads(gzip.open(fixture).read())
    shapes = _field_shapes(doc["evidence"])

    def ok(chosen):
        return _builds(dict(doc, evidence=_injected(doc["evidence"], shapes, chosen)))

    def usable(chosen):
        if not chosen or ok(chosen):
            return chosen
        if len(chosen) == 1:
            return []
        half = len(chosen) // 2
        return usable(chosen[:half]) + usable(chosen[half:])
    chosen = usable(list(shapes))
    assert ok(chosen)
    return dict(doc, evidence=_injected(doc["evidence"], shapes, chosen)), len(chosen), len(shapes)


# one fixture of every kind of evidence: the journey in each tier, a program of one's own, a scenario, arm64
EVIDENCE = ["6.18.44-fc-v669/journey-bpf.json.gz", "6.18.44-fc-v669/journey-user.json.gz",
            "6.1.0-56-amd64/journey-perf.json.gz", "6.18.44-fc-v669/program-own.json.gz",
            "6.18.44-fc-v669/scenario-file-read.json.gz", "6.12.95+deb12-arm64/arm64-fault.json.gz"]


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory):
    made = {}
    for name in EVIDENCE:
        doc, injected, fields = _hostile_evidence(FIXTURES / name)
        assert injected >= 0.9 * fields, f"{name}: only {injected} of {fields} string fields took the payload"
        path = tmp_path_factory.mktemp("hostile") / Path(name).name.replace(".gz", "")
        path.write_text(json.dumps(doc))
        made[name] = path
    return made


def _run(argv, capsys, monkeypatch) -> tuple[int, str, str]:
    monkeypatch.setenv("FORCE_COLOR", "1")   # rich styles its output as on a terminal: its own codes are stripped
    monkeypatch.setenv("COLUMNS", "160")
    status = cli.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("name", EVIDENCE)
@pytest.mark.parametrize("fmt", ["text", "markdown", "json"])
def test_hostile_evidence_reaches_the_terminal_escaped(name, fmt, hostile_files, capsys, monkeypatch):
    argv = ["journey", "--replay", str(hostile_files[name]), "--format", fmt]
    status, out, err = _run(argv + (["--no-pause"] if fmt == "text" else []), capsys, monkeypatch)
    assert status == 0, err
    assert raw_controls(out) == [] and raw_controls(err) == []
    if fmt == "json":
        json.loads(out)    # DEL escaped the JSON way: still the same document
        assert "\\u001b]52;c;UFdO" in out
    else:
        assert "x1b]52;c;UFdO" in out     # shown, escaped (Markdown adds its own backslashes)


@pytest.mark.parametrize("name", [EVIDENCE[0], EVIDENCE[3]])
def test_hostile_evidence_in_the_tui_is_escaped(name, hostile_files):
    """Every page as Textual draws it (its screen, exported) carries no payload raw."""
    from pagefault.core import replay
    from pagefault.views.tui import JourneyApp
    journey = replay(hostile_files[name])
    screens: list[str] = []

    async def walk():
        app = JourneyApp(journey)
        async with app.run_test(size=(200, 80)) as pilot:
            for _ in app.pages:
                await pilot.pause()
                screens.append(app.export_screenshot())
                await pilot.press("n")
            await pilot.press("q")
    asyncio.run(walk())
    drawn = "".join(screens)
    assert "x1b]52;c;UFdO" in drawn
    assert raw_controls(drawn) == []


def test_a_hostile_error_line_is_escaped(tmp_path, capsys, monkeypatch):
    """A file name is part of the one-line error: the name's controls are shown escaped there too."""
    missing = tmp_path / f"no{OSC52}such"
    status, out, err = _run(["journey", "--replay", str(missing)], capsys, monkeypatch)
    assert status == 2 and err.count("\n") == 1 and SHOWN in err and raw_controls(err) == []


# --- recordings ---------------------------------------------------------------------------------------

SAMPLE_TYPE = 1 | 2 | 4 | 128 | 1024        # ip, tid, time, cpu, raw
FAULT_ID, ALLOC_ID, PID = 101, 102, 4242
RECORD_COMM = 3


def _sample(event_id: int, time: int, payload: bytes) -> bytes:
    raw = struct.pack("<HBBi", event_id, 0, 0, PID) + payload
    raw += b"\0" * (-(len(raw) + 4) % 8)
    body = struct.pack("<QIIQII", 0x401000, PID, PID, time, 0, 0) + struct.pack("<I", len(raw)) + raw
    return struct.pack("<IHH", 9, 2, 8 + len(body)) + body


def _comm(name: str) -> bytes:
    text = name.encode() + b"\0"
    text += b"\0" * (-len(text) % 8)
    return struct.pack("<IHH", RECORD_COMM, 0, 8 + 8 + len(text)) + struct.pack("<II", PID, PID) + text


def hostile_recording(path: Path) -> Path:
    """A perf-tier recording whose every string names the payload: the command, the event and field names,
    the comm (PERF_RECORD_COMM), the mapping's path, the exit text, the notes, the kernel release."""
    h = HOSTILE
    events = {str(FAULT_ID): {"system": "exceptions", "name": "page_fault_user", "print_fmt": h,
                              "fields": {"common_type": [0, 2, 0], "address": [8, 8, 0], "ip": [16, 8, 0],
                                         "error_code": [24, 8, 0]}},
              str(ALLOC_ID): {"system": "kmem", "name": "mm_page_alloc", "print_fmt": h,
                              "fields": {"common_type": [0, 2, 0], "pfn": [8, 8, 0], "order": [16, 4, 0],
                                         "gfp_flags": [20, 4, 0], "migratetype": [24, 4, 1]}}}
    head = {"format": 3, "command": ["./prog" + h, "--name", h], "pid": PID, "spawned": True, "tier": "perf",
            "callchain": False, "sample_type": SAMPLE_TYPE, "events": events, "notes": ["a note " + h],
            "kernel": {"release": "6.18" + h}, "gfp_bits": {"__GFP_ZERO" + h: 8, "__GFP_COMP" + h: 18},
            "started": 0.0}
    records = _comm("prog" + h)
    for i in range(20):
        records += _sample(FAULT_ID, 1000 + 2 * i, struct.pack("<QQQ", 0x7F0000000000 + i * 4096, 0x401000, 6))
        records += _sample(ALLOC_ID, 1001 + 2 * i, struct.pack("<QIIi", 0x100000 + i, 0, 0x140dca, 1))
    w = RecordingWriter(path, head, force=True)
    w.add(records)
    w.close({"exit": "exited " + h, "duration": 0.5, "event_counts": {}, "maps": [
        {"start": 0x7F0000000000, "end": 0x7F0000100000, "offset": 0, "perms": "rw-p", "path": "/tmp/map" + h},
        {"start": 0x400000, "end": 0x402000, "offset": 0, "perms": "r-xp", "path": "/tmp/prog" + h}]})
    return path


@pytest.mark.parametrize("extra", [[], ["--events"], ["--format", "folded"], ["--format", "speedscope"],
                                   ["--json"], ["--top", "3"]])
def test_hostile_recording_reaches_the_terminal_escaped(extra, tmp_path, capsys, monkeypatch):
    rec = hostile_recording(tmp_path / "r.pfrec")
    status, out, err = _run(["report", str(rec), *extra], capsys, monkeypatch)
    assert status == 0, err
    assert raw_controls(out) == [] and raw_controls(err) == []
    if extra in ([], ["--events"]):
        assert "\\x1b]52" in out, out[:2000]


def test_folded_output_keeps_one_stack_per_line(tmp_path, capsys, monkeypatch):
    """A newline in the comm must not start a stack of its own in folded output."""
    rec = hostile_recording(tmp_path / "r.pfrec")
    status, out, err = _run(["report", str(rec), "--format", "folded"], capsys, monkeypatch)
    assert status == 0
    assert all(re.fullmatch(r".* \d+", line) for line in out.splitlines()), out


# --- live: the traced program names itself and its file ---------------------------------------------------

HOSTILE_PROGRAM = Path(__file__).parent / "c" / "hostile_names.c"


def _can_trace() -> str | None:
    if os.geteuid() != 0:
        return "needs root to trace"
    if not shutil.which("cc"):
        return "needs a C compiler"
    if not (Path("/sys/kernel/tracing/events").exists() or Path("/sys/kernel/debug/tracing/events").exists()):
        return "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)"
    return None


@pytest.mark.live
@pytest.mark.skipif(_can_trace() is not None, reason=str(_can_trace()))
def test_live_hostile_comm_and_file_name_are_escaped(tmp_path):
    prog = tmp_path / "hostile_names"
    subprocess.run(["cc", "-O1", "-o", str(prog), str(HOSTILE_PROGRAM)], check=True)
    os.chmod(tmp_path, 0o755)
    cli_cmd = [sys.executable, "-m", "pagefault"]
    env = dict(os.environ, COLUMNS="200", FORCE_COLOR="1")
    runs = [cli_cmd + ["trace", "--", str(prog), str(tmp_path)],
            cli_cmd + ["trace", "-o", str(tmp_path / "t.pfrec"), "--", str(prog), str(tmp_path)]]
    outputs = []
    for argv in runs:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=180, env=env)
        assert r.returncode == 0, r.stderr
        outputs.append(r.stdout + r.stderr)
    for extra in ([], ["--events"], ["--format", "folded"]):
        r = subprocess.run(cli_cmd + ["report", str(tmp_path / "t.pfrec"), *extra], capture_output=True, text=True,
                           timeout=180, env=env)
        assert r.returncode == 0, r.stderr
        outputs.append(r.stdout + r.stderr)
    for text in outputs:
        assert raw_controls(text) == [], [c for c in raw_controls(text)][:5]
    everything = "".join(outputs)
    # the names are shown, escaped: the comm (in report --events) and the mapped file's name (in the summary)
    assert "\\x1b]0;PWN\\x07" in everything
    assert "\\x1b[2J" in everything


def test_progress_lines_are_escaped_and_stay_one_line(capsys):
    """A progress line can name the program or its files (`compiling …`, `attaching to …`)."""
    from pagefault.views.progress import stderr_progress
    stderr_progress(f"attaching to ./prog{HOSTILE}\nsecond line")
    err = capsys.readouterr().err
    assert raw_controls(err) == [] and err.count("\n") == 1 and "\\x1b]52" in err
