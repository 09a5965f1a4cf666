"""A recording symbolises from the files themselves only when they are provably the files its capture saw
(the same boot, the same device, inode, size and time), else from the symbols it saved, else not at all
(issue 28: an inode number means nothing under another boot)."""

import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.live
CLI = [sys.executable, "-m", "pagefault"]


@pytest.fixture(scope="module")
def recorded(can_trace, cbin, tmp_path_factory):
    """tests/c/memset_line.c traced, from a private copy of the executable (the tests change it)."""
    from pagefault.capture.recording import load_recording
    d = tmp_path_factory.mktemp("rec")
    exe = d / "memset_line"
    shutil.copy(cbin("memset_line"), exe)
    out = d / "r.pfrec"
    r = subprocess.run(CLI + ["trace", "-q", "-g", "-o", str(out), "--", str(exe)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return exe, out, load_recording(out)


def _names(rec):
    from pagefault.journey.fault_stacks import fault_stacks
    stacks, _chains = fault_stacks(rec)
    return {f for frames in stacks for f in frames}


def _no_file_opened(monkeypatch):
    from pagefault.symbols import elf
    elf.load_image.cache_clear()

    def refuse(path, inode=None):
        raise AssertionError(f"{path} was opened")
    monkeypatch.setattr(elf, "open_mapped_file", refuse)


def test_the_recording_names_its_boot_and_its_files(recorded):
    from pagefault.capture.recording_identity import boot_id
    exe, _out, rec = recorded
    assert rec.meta["origin"]["boot_id"] == boot_id() != ""
    ident = rec.meta["files"][str(exe)]
    st = exe.stat()
    assert (ident["inode"], ident["size"], ident["mtime_ns"]) == (st.st_ino, st.st_size, st.st_mtime_ns)
    saved = rec.meta["symbols"][str(exe)]
    assert any(name == "main" for _a, _s, name in saved["functions"])


def test_same_boot_same_file_is_read_and_another_boot_uses_the_saved_symbols(recorded, monkeypatch):
    import copy
    _exe, _out, rec = recorded
    here = _names(rec)
    # libc's functions (its debug file's names) and the executable's own
    assert any(n.startswith("libc.so.6:__memset_") for n in here) and "memset_line:_start" in here, sorted(here)
    elsewhere = copy.copy(rec)
    elsewhere.meta = {**rec.meta, "origin": {"boot_id": "0" * 36}}
    _no_file_opened(monkeypatch)      # not one file is opened: the names come from the recording alone
    assert _names(elsewhere) == here


def test_another_boot_without_saved_symbols_names_no_function(recorded, monkeypatch):
    import copy
    exe, _out, rec = recorded
    bare = copy.copy(rec)
    bare.meta = {**rec.meta, "origin": {"boot_id": "0" * 36}, "symbols": {}}
    _no_file_opened(monkeypatch)
    names = _names(bare)
    assert not any(n.startswith("memset_line:") for n in names)
    assert any(n.startswith("memset_line+0x") for n in names), sorted(names)[:20]


def test_a_file_changed_in_place_is_not_read(recorded, tmp_path):
    """Same boot, same path and inode, other contents (rewritten in place): the file is not read."""
    exe, _out, _rec = recorded
    from pagefault.capture.recording_identity import _identity, boot_id
    from pagefault.symbols.recorded import RecordedFiles
    mine = tmp_path / "copy"            # a private copy: the recording's own executable stays as it was
    shutil.copy(exe, mine)
    inode = mine.stat().st_ino
    meta = {"origin": {"boot_id": boot_id()}, "files": {str(mine): _identity(str(mine), inode)}}
    assert RecordedFiles(meta).refusal(str(mine), inode) == ""
    with open(mine, "r+b") as f:      # the same inode, longer: what another build written over it would be
        f.seek(0, 2)
        f.write(b"\0" * 4096)
    assert mine.stat().st_ino == inode
    assert "size" in RecordedFiles(meta).refusal(str(mine), inode)
