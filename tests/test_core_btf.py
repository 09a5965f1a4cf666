"""Each object's slice of the kernel's BTF (capture/core_btf.py): the same relocations as the whole BTF, for every
object built for this machine, on this kernel; kept per boot and object, made once, never taken from another boot,
and a slice that cannot be loaded is dropped for the whole BTF."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pagefault.capture import core_btf
from pagefault.capture.bpf import HERE
from pagefault.capture.libbpf import BpfObject, LibbpfError, lib

BUILD = HERE / "build" / os.uname().machine
OBJECTS = sorted(BUILD.glob("*.bpf.o"))
# libbpf's record of each CO-RE relocation it applied (relo_core.c: "patched insn", or a poisoned one)
PATCHED = re.compile(r"prog '([^']+)': relo #(\d+): (patched insn #\d+ .*|substituting insn #\d+ .*)")

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not OBJECTS or not shutil.which("bpftool")
                                or not core_btf.KERNEL_BTF.is_file(),
                                reason="needs root, the built objects, bpftool and the kernel's BTF "
                                       "(bash scripts/setup.sh test)")


def relocations(obj_path: Path, slice_path: Path | None) -> list[tuple[str, int, str]]:
    """Every relocation libbpf applies to every program of the object (all programs on: the relocations are made
    before any program is loaded, so a program this kernel refuses, an fentry here, still has its own)."""
    obj = BpfObject(obj_path, core_btf=False, keep_log=True)
    try:
        if slice_path is not None:
            lib().bpf_object__close(obj._obj)
            obj._obj = obj._open(slice_path)
        for name in obj.programs():
            obj.set_autoload(name, True)
        try:
            obj.load()
        except LibbpfError:
            pass
        found = [PATCHED.search(line) for line in obj.log]
        return sorted((m.group(1), int(m.group(2)), m.group(3)) for m in found if m)
    finally:
        obj.close()


@pytest.mark.parametrize("obj_path", OBJECTS, ids=[p.name for p in OBJECTS])
def test_an_objects_slice_relocates_it_as_the_kernels_whole_btf_does(obj_path, tmp_path):
    slice_path = tmp_path / "slice.btf"
    subprocess.run(["bpftool", "gen", "min_core_btf", str(core_btf.KERNEL_BTF), str(slice_path), str(obj_path)],
                   check=True, capture_output=True)
    assert slice_path.stat().st_size < core_btf.KERNEL_BTF.stat().st_size / 100
    whole = relocations(obj_path, None)
    sliced = relocations(obj_path, slice_path)
    assert len(whole) >= 3, f"too few relocations seen in {obj_path.name}'s log to compare: {whole}"
    assert sliced == whole


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A private cache of the test's own: $XDG_CACHE_HOME/pagefault."""
    home = tmp_path / "cache"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home / "pagefault" / core_btf.SUBDIR


COUNTER = BUILD / "fault_count.bpf.o"


def load_counter() -> BpfObject:
    from pagefault.capture.kernel_counts import _settings, choose_hooks
    obj = BpfObject(COUNTER)
    for c in choose_hooks():
        obj.set_autoload(c.hook.btf_program, c.program == c.hook.btf_program)
        obj.set_autoload(c.hook.tracepoint_program, c.program == c.hook.tracepoint_program)
    obj.set_rodata(_settings(os.getpid(), False))
    obj.load()
    return obj


def test_the_first_load_of_a_boot_uses_the_whole_btf_and_keeps_a_slice_that_the_next_load_uses(cache):
    first = load_counter()
    assert first.core_btf is None
    first.close()
    kept = list(cache.glob("*.btf"))
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert len(kept) == 1 and kept[0].name.startswith(boot), kept
    assert kept[0].stat().st_mode & 0o777 == 0o600
    second = load_counter()
    try:
        assert second.core_btf == kept[0]
    finally:
        second.close()
    assert list(cache.glob("*.btf")) == kept   # made once


def test_a_slice_of_another_boot_or_build_is_never_taken_and_goes_when_this_ones_is_made(cache):
    cache.mkdir(parents=True, mode=0o700)
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    other_boot = cache / "00000000-0000-0000-0000-000000000000-fault_count.bpf-fe00-1-2-3.btf"
    older_build = cache / f"{boot}-fault_count.bpf-fe00-1-2-3.btf"     # this boot, the object before a rebuild
    for stale in (other_boot, older_build):
        stale.write_bytes(b"not BTF")
        os.chmod(stale, 0o600)
    obj = load_counter()
    assert obj.core_btf is None
    obj.close()
    assert not other_boot.exists() and not older_build.exists()
    assert len(list(cache.glob("*.btf"))) == 1


def test_a_slice_libbpf_refuses_is_removed_and_the_object_loads_with_the_whole_btf(cache):
    load_counter().close()
    (kept,) = cache.glob("*.btf")
    kept.write_bytes(b"\x9f\xeb\x01\x00 a damaged slice")
    obj = load_counter()
    try:
        assert obj.core_btf is None
        assert any("loading again with the kernel's whole BTF" in line for line in obj.log)
        # loaded again with the choices and settings made before the reopen: the programs switched off stay off
        # (a fresh open has every one on), and .rodata holds this test's settings, not zeros
        from pagefault.capture.kernel_counts import _settings, choose_hooks
        off = [name for c in choose_hooks() for name in (c.hook.btf_program, c.hook.tracepoint_program)
               if name != c.program]
        assert off and not any(lib().bpf_program__autoload(obj._program(name)) for name in off)
        rodata = obj.map(".rodata").lookup(bytes(4))
        assert rodata is not None and rodata.startswith(_settings(os.getpid(), False))
    finally:
        obj.close()
    # the damaged one is gone; the close made a good one again
    (again,) = cache.glob("*.btf")
    assert again.read_bytes()[:2] == b"\x9f\xeb" and b"damaged" not in again.read_bytes()


def test_no_slice_is_made_where_no_cache_can_be_kept(cache, monkeypatch):
    from pagefault.capture import runner, safe_paths
    monkeypatch.setenv("XDG_CACHE_HOME", "/proc/no-such-place")
    monkeypatch.setenv("HOME", "/proc/no-such-place")
    monkeypatch.setattr(safe_paths, "_home_of_effective_user", lambda: None)
    ran: list = []
    monkeypatch.setattr(runner, "run_child", lambda *a, **k: ran.append(a))
    fresh_before = list(safe_paths._fresh_dirs)
    obj = load_counter()
    assert obj.core_btf is None
    obj.close()
    assert ran == []                                  # bpftool never started
    assert safe_paths._fresh_dirs == fresh_before     # and no throw-away directory made in the cache's place


def test_the_hook_choices_btf_names_are_the_kernels_string_section_mapped_or_read(tmp_path, monkeypatch):
    # capture/bpf reads BTF's string section through a mapping where the kernel allows one (6.16 on), else read():
    # both must give the section itself; a copy of the file (mappable anywhere) is checked the same way
    import struct

    from pagefault.capture.bpf import _btf_strings
    data = core_btf.KERNEL_BTF.read_bytes()
    header_len = struct.unpack_from("<I", data, 4)[0]
    str_off, str_len = struct.unpack_from("<II", data, 16)
    section = b"\0" + data[header_len + str_off:header_len + str_off + str_len]
    copy = tmp_path / "vmlinux.btf"
    copy.write_bytes(data)
    assert _btf_strings(core_btf.KERNEL_BTF) == section == _btf_strings(copy)
    # a kernel that refuses the mapping (before 6.16: EACCES): the section is read instead
    import errno
    import mmap

    def refused(*_args, **_kwargs):
        raise OSError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(mmap, "mmap", refused)
    assert _btf_strings(core_btf.KERNEL_BTF) == section
    assert b"\0btf_trace_page_fault_user\0" in section or os.uname().machine != "x86_64"
