"""The direct map's base is derived once per boot and kept in a cache file under $XDG_STATE_HOME/pagefault.
Where that directory exists but cannot be written (a read-only home: the kernel matrix's guests see the
host's root file system read-only), the cache's write raised OutputError and `journey --kind/--at -- CMD` ended
with "cannot write in …; fix: choose another place with -o FILE", an -o that had nothing to do with it. A cache
that cannot be kept is now only not kept."""

from __future__ import annotations

import os
import subprocess
import tempfile

import pytest

pytestmark = pytest.mark.live


@pytest.fixture
def read_only_state_home():
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only file system needs root")
    # under /run (root's, 0755): root only takes a state directory whose ancestors no other user can write
    home = tempfile.mkdtemp(prefix="pf-ro-state-", dir="/run")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", home]).returncode != 0:
        os.rmdir(home)
        pytest.skip("cannot mount a tmpfs here")
    try:
        os.mkdir(os.path.join(home, "pagefault"), 0o700)     # it exists, as in the guests: mkdir passes, the write fails
        subprocess.run(["mount", "-o", "remount,ro", home], check=True)
        yield home
    finally:
        subprocess.run(["umount", home])
        os.rmdir(home)


def test_a_direct_map_cache_that_cannot_be_written_is_not_an_error(can_trace, read_only_state_home, monkeypatch):
    from pagefault.capture.journey_capture import walk_engine_problem
    if walk_engine_problem():
        pytest.skip(walk_engine_problem())
    from pagefault.capture.program_fault import direct_map_base
    from pagefault.capture.safe_paths import root_safe_state_dir
    monkeypatch.setenv("XDG_STATE_HOME", read_only_state_home)
    assert str(root_safe_state_dir()).startswith(read_only_state_home)
    base, how = direct_map_base(lambda _line: None)
    assert base > 0 and "derived this boot" in how
    assert os.listdir(os.path.join(read_only_state_home, "pagefault")) == []
