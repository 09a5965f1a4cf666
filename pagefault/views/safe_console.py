"""The rich Console every text view prints through: it escapes control characters (views/safe_text.py)."""

from __future__ import annotations

from typing import Iterable

from rich.console import Console
from rich.segment import Segment
from rich.text import Text

from .safe_text import escape_controls_in_lines


class SafeConsole(Console):
    """A rich Console whose text never carries a control character of its own.

    Strings are escaped before rich lays them out (render_str: print(str) and table cells), so columns
    keep their width; every segment is escaped again as it is written, which catches Text objects built
    elsewhere. rich's own styling and cursor control are added after that, and pass as they are.

    _render_buffer is rich's own (private) method, the one every write passes through (rich 15 here);
    tests/test_terminal_safety.py fails if a rich release stops calling it.
    """

    def render_str(self, text: str, **kwargs) -> Text:
        return super().render_str(escape_controls_in_lines(text), **kwargs)

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        return super()._render_buffer(
            segment if segment.control else Segment(escape_controls_in_lines(segment.text), segment.style)
            for segment in buffer)


def terminal_console(**kwargs) -> SafeConsole:
    """The Console for stdout (or ``file=``) that every text view prints through."""
    return SafeConsole(**kwargs)
