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


def test_an_ifuncs_implementations_merge_across_the_smallest_gaps_to_fit_the_selector():
    from pagefault.symbols.objects import _merge_to
    spans = [(0, 10), (12, 20), (100, 110), (1000, 1010)]
    # the 2-byte gap goes first, then the 80-byte one; the 890-byte one stays
    assert _merge_to(spans, 3) == [(0, 20), (100, 110), (1000, 1010)]
    assert _merge_to(spans, 2) == [(0, 110), (1000, 1010)]
    assert _merge_to(spans, 8) == spans


def test_a_debug_file_someone_else_could_have_written_is_not_used(tmp_path):
    """The debug file is found by build ID under a root-owned tree: one owned by another user is refused."""
    import os
    import shutil
    import subprocess

    from elftools.elf.elffile import ELFFile

    from pagefault.symbols.debug_files import build_id, debug_file_for
    cc = shutil.which("cc")
    if not cc:
        pytest.skip("no C compiler")
    exe = tmp_path / "p"
    (tmp_path / "p.c").write_text("int main(void){return 0;}\n")
    subprocess.run([cc, "-Wl,--build-id", "-o", str(exe), str(tmp_path / "p.c")], check=True)
    with open(exe, "rb") as f:
        elf = ELFFile(f)
        bid = build_id(elf)
        root = tmp_path / "debug"
        (root / bid[:2]).mkdir(parents=True)
        os.chmod(tmp_path, 0o755)
        planted = root / bid[:2] / (bid[2:] + ".debug")
        shutil.copy(exe, planted)
        if os.geteuid() != 0:
            pytest.skip("the ownership check needs root to make a root-owned tree")
        assert debug_file_for(elf, str(root)) == str(planted)
        os.chown(planted, 65534, 65534)
        assert debug_file_for(elf, str(root)) is None
        os.chown(planted, 0, 0)
        os.chmod(root / bid[:2], 0o777)
        assert debug_file_for(elf, str(root)) is None
