"""A file system with no room left, for the tests of what a writer does on ENOSPC."""
from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

FILLER = "filler"   # the one file a full tmpfs holds before the test writes


@contextlib.contextmanager
def full_tmpfs(mnt: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs mounted on the empty directory `mnt` (root only), filled to the last block by FILLER;
    unmounted on the way out."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(mnt)], check=True)
    try:
        fd = os.open(mnt / FILLER, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * 512):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
