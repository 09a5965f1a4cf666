"""Red team, second round (issue 28, classes 2 and 5): paths a file names, and where outputs go.

Class 2, new cases: a recording another user could have written may claim this boot and the exact identity
(device, inode, size, time: all readable by stat) of any file, so that `report`, as root, opens a file of the
writer's choosing to symbolise; such a recording symbolises from its own saved symbols only."""

from __future__ import annotations

import os
import pwd
import shutil

import pytest
from test_recorded_symbols import _names, recorded  # noqa: F401  (the recording of memset_line, traced once)


def _opened_files(monkeypatch) -> list[str]:
    from pagefault.symbols import elf
    elf.load_image.cache_clear()
    opened: list[str] = []
    real = elf.open_mapped_file

    def noting(path, inode=None):
        opened.append(path)
        return real(path, inode)
    monkeypatch.setattr(elf, "open_mapped_file", noting)
    return opened


@pytest.mark.parametrize("how", ["owned by nobody", "writable by others"])
def test_a_recording_another_user_could_write_opens_no_file_it_names(recorded,  # noqa: F811
                                                                     tmp_path, monkeypatch, how):
    from pagefault.capture.recording import load_recording
    exe, out, _rec = recorded
    own = load_recording(out)
    opened = _opened_files(monkeypatch)
    here = _names(own)
    assert any(str(exe) == p for p in opened), opened     # ours (root's, 0600): the capture's files are read
    copy = tmp_path / "theirs.pfrec"
    shutil.copy(out, copy)
    if how == "owned by nobody":
        os.chown(copy, pwd.getpwnam("nobody").pw_uid, -1)
    else:
        os.chmod(copy, 0o666)
    theirs = load_recording(copy)
    assert "another user" in theirs.meta["origin"]["distrusted"]
    opened.clear()
    assert _names(theirs) == here          # the same names, from the recording's saved symbols
    assert opened == [], opened            # and not one file opened for them
