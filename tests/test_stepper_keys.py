"""The stepper at a terminal: one key acts at once (no Enter after q or b), and whatever is printed after
the prompt starts on a line of its own. Driven through a pseudo-terminal, on the simulator's journey (no
root needed)."""

from __future__ import annotations

import os
import pty
import select
import sys
import time

import pytest

CLI = [sys.executable, "-m", "pagefault"]


class Terminal:
    def __init__(self, argv: list[str]):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execvp(argv[0], argv)
        self.out = b""

    def read_until(self, marker: bytes, since: int = 0, timeout: float = 60) -> int:
        """Read until `marker` appears after `since`; where it starts."""
        deadline = time.monotonic() + timeout
        while marker not in self.out[since:]:
            assert time.monotonic() < deadline, self.out[-1500:].decode(errors="replace")
            ready, _, _ = select.select([self.fd], [], [], 0.5)
            if ready:
                try:
                    self.out += os.read(self.fd, 65536)
                except OSError:
                    break
        return self.out.index(marker, since)

    def finish(self, timeout: float = 30) -> int:
        """Read to the end; the exit status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                self.out += chunk
        done, status = os.waitpid(self.pid, os.WNOHANG)
        while not done and time.monotonic() < deadline:   # the terminal's end comes before the process's
            time.sleep(0.05)
            done, status = os.waitpid(self.pid, os.WNOHANG)
        if not done:
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
            raise AssertionError("the stepper did not end: " + self.out[-800:].decode(errors="replace"))
        return os.waitstatus_to_exitcode(status)


def test_q_alone_quits_and_b_alone_goes_back():
    term = Terminal(CLI + ["journey", "--model"])
    one = term.read_until(b"step 1/")
    os.write(term.fd, b"\r")                       # Enter, typed ahead of the prompt: kept, step 2
    first = term.read_until(b"[q] quit", one)
    two = term.read_until(b"step 2/", first)
    prompt = term.read_until(b"[q] quit", two)
    os.write(term.fd, b"b")                        # b alone, no Enter: back to step 1
    back = term.read_until(b"step 1/", prompt)
    prompt = term.read_until(b"[q] quit", back)
    os.write(term.fd, b"q")                        # q alone, no Enter: the stepper ends
    assert term.finish() == 0
    assert b"Traceback" not in term.out
    # the prompt's line was ended before the stepper's next words (no "quit step 1/…" run together)
    after = term.out[term.out.index(b"[q] quit", prompt):]
    assert after.split(b"\n", 1)[0].strip().endswith(b"quit"), after[:200]


def _saved_exercise():
    from pathlib import Path
    return Path(__file__).parent / "fixtures" / "evidence" / "6.18.44-fc-v669" / "journey-bpf.json.gz"


def test_the_stepper_header_says_the_walk_has_not_read_yet_rather_than_none():
    """At the stepper's first screen the bpf tier's walk has read nothing yet: "none" read as if it never would."""
    import dataclasses

    from pagefault.evidence.file import load_evidence
    from pagefault.journey.build import observation_means
    ev = load_evidence(_saved_exercise()).evidence
    assert ev.tier == "bpf" and ev.bpf is not None
    at_start = dataclasses.replace(ev, bpf=None, stage="ready", unavailable={})
    line = next(x for x in observation_means(at_start) if x.startswith("BPF reads"))
    assert line.startswith("BPF reads: not yet"), line
    refused = dataclasses.replace(at_start, unavailable={"bpf": "the walk could not load"})
    assert "BPF reads: none (the walk could not load)" in observation_means(refused)


def test_the_stepper_fits_step_1_on_a_50_row_screen():
    """Step 1 of a saved exercise journey (24 maps lines of evidence) was 61 rows at 140 columns, 86 at 100."""
    from rich.console import Console

    from pagefault.core import replay
    from pagefault.views.journey_view import step_renderable
    j = replay(_saved_exercise())
    for width in (100, 140):
        screen = Console(width=width, height=50, file=open(os.devnull, "w"))
        lines = screen.render_lines(step_renderable(j.steps[0], 11, fit=screen), screen.options, pad=False)
        text = "\n".join("".join(seg.text for seg in line) for line in lines)
        assert len(lines) <= 48, (width, len(lines))
        # the values and the Ws are whole; the evidence says how much of it is not shown, and where it is
        assert all(v.label.split()[0] in text for v in j.steps[0].values) and "WHICH" in text
        assert "more lines (all of them: --no-pause" in text


@pytest.mark.parametrize("width", [80, 120])
def test_every_step_of_the_saved_journeys_fits_a_50_row_screen(width):
    """Steps 5, 6 and 9 of a saved exercise journey were 78, 85 and 89 rows at 80 columns (their derivations:
    the maple tree's pivots); every step now fits 50 rows, with every value shown and what was cut said."""
    from pathlib import Path

    from rich.console import Console

    from pagefault.core import replay
    from pagefault.views.journey_view import step_renderable
    saved = sorted((Path(__file__).parent / "fixtures" / "evidence").glob("*/journey-*.json.gz"))
    assert saved
    for path in saved:
        j = replay(path)
        for step in j.steps:
            screen = Console(width=width, height=50, file=open(os.devnull, "w"))
            lines = screen.render_lines(step_renderable(step, len(j.steps), fit=screen), screen.options, pad=False)
            text = "\n".join("".join(seg.text for seg in line) for line in lines)
            assert len(lines) <= 48, (path.parent.name, path.name, step.number, len(lines))
            # each value's name is there (a long one folds: its first 12 characters on one row)
            assert all(v.label.split()[0][:12] in text for v in step.values), (path.name, step.number)
            if len(step.all_derivations()) > 40:
                assert "more lines (all of them: --no-pause" in text
