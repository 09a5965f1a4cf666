"""The one-line progress report on stderr that long work gives (compiling, attaching, recording)."""

from __future__ import annotations

import sys


def stderr_progress(message: str) -> None:
    """Overwrite one line on a terminal; one line each elsewhere (logs, CI)."""
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K" + message)
    else:
        sys.stderr.write(message + "\n")
    sys.stderr.flush()
