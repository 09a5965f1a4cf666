"""Opening a file the user named, for reading, only if it is a regular file.

A module of its own, with nothing else imported: the recordings' reader (capture/recording.py) opens its input
with it, and importing evidence.file for it brought cattrs and every decoder (~65 ms of each `pagefault report`
and of the summary `trace -o` prints)."""

from __future__ import annotations

import os
import stat
from pathlib import Path


class NotARegularInput(OSError):
    """An input path that names a FIFO, a device, a socket or a directory: never read (a FIFO blocks forever,
    /dev/zero never ends, a device's open may act)."""


def open_input_file(path: Path | str):
    """Open a file the user named for reading, only if it is a regular file (symlinks to one are fine): the
    open cannot block (O_NONBLOCK) and a FIFO or device is refused before any read.

    :returns: a binary file object.
    :raises NotARegularInput: it is not a regular file; OSError: it cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
            raise NotARegularInput(f"{path} is {what}, not a regular file: give the path of a file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
