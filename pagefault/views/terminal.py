"""Plain lines and whole texts bound for stdout and stderr, escaped by safe_text on the way: with the
rich SafeConsole (safe_console.py) these are the only writers of terminal text, so a hostile name shows
as ``\\x1b]52;…`` and never reaches the terminal as a sequence it would act on.
"""

from __future__ import annotations

import sys
from typing import TextIO

from .safe_text import escape_controls_in_lines, has_unsafe_controls


def say(message: str, file: TextIO | None = None) -> None:
    """One line (a note, an error, where a file was written) on stderr, or on ``file``."""
    out = file if file is not None else sys.stderr
    out.write(escape_controls_in_lines(message) + "\n")


def write_text(text: str, file: TextIO | None = None) -> None:
    """Text made for a file (Markdown, folded stacks) written to stdout, where it meets a terminal."""
    out = file if file is not None else sys.stdout
    out.write(escape_controls_in_lines(text))


def print_json(text: str, file: TextIO | None = None) -> None:
    """JSON from json.dumps on stdout. It is safe as it is (ensure_ascii, the default, writes every control
    character, DEL and the bidi overrides as \\u escapes), so it is checked, not changed: text that would
    not parse back to the same values is never written."""
    out = file if file is not None else sys.stdout
    if has_unsafe_controls(text):
        raise ValueError("JSON for the terminal must be written with ensure_ascii")
    out.write(text + "\n")
