"""The one-line progress report on stderr that long work gives (compiling, attaching, recording)."""

from __future__ import annotations

import sys

from .safe_text import escape_controls


def stderr_progress(message: str) -> None:
    """Overwrite one line on a terminal; one line each elsewhere (logs, CI). The message can name the
    program or its files: its control characters are shown escaped, its newlines too (one line)."""
    message = escape_controls(message)
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K" + message)
    else:
        sys.stderr.write(message + "\n")
    sys.stderr.flush()
