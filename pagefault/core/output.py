"""Where a command's text goes: the terminal's console, with what it prints made safe."""

from __future__ import annotations


def terminal_console(**kwargs):
    """The rich Console of every text view: control characters in what it prints are shown escaped.
    rich is imported here, on the first call, not before: a JSON or counted summary never loads it.

    :returns: a rich Console (``kwargs`` as rich takes them); raises nothing of its own."""
    from ..views.safe_console import terminal_console as safe_console
    return safe_console(**kwargs)
