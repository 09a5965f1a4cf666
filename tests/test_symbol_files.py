"""Symbolising opens only the regular file a capture saw mapped (issue 28: `report` opened /etc/shadow and
/dev/zero because a recording named them, and hung forever on a FIFO)."""

import os
import shutil
import threading

import pytest

from pagefault.symbols.elf import NotARegularFile, open_mapped_file, resolve_ip

TRUE = shutil.which("true")


def test_a_fifo_is_not_opened_and_nothing_hangs(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    done = threading.Event()

    def resolve():
        resolve_ip(0x1000, 0x1000, 0, str(fifo), os.stat(fifo).st_ino)
        done.set()
    threading.Thread(target=resolve, daemon=True).start()
    assert done.wait(5), "resolving through a FIFO blocked"
    with pytest.raises(NotARegularFile):
        open_mapped_file(str(fifo))


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/null", "/proc/self"])
def test_devices_and_directories_are_refused_before_any_open(path):
    with pytest.raises(NotARegularFile):
        open_mapped_file(path)
    assert resolve_ip(0x1000, 0x1000, 0, path, os.stat(path).st_ino).symbol is None


def test_a_symlink_at_the_end_is_not_followed(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(TRUE)
    with pytest.raises(NotARegularFile):
        open_mapped_file(str(link))


def test_only_the_file_the_capture_saw_is_read():
    """The same path with another inode (a file put there since, or a recording from elsewhere) is not read;
    0 says the capture did not record it."""
    real = os.path.realpath(TRUE)
    ino = os.stat(real).st_ino
    with open_mapped_file(real, ino) as f:
        assert f.read(4) == b"\x7fELF"
    for wrong in (ino + 1, 0):
        with pytest.raises(NotARegularFile):
            open_mapped_file(real, wrong)
        assert resolve_ip(0x400000, 0x400000, 0, real, wrong).symbol is None
