"""The ctypes binding over libbpf (capture/libbpf.py): the ring buffer and the shared globals, against a
small test object compiled here (tests/bpf/syscall_ids.bpf.c) and run on this kernel."""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from pagefault.capture.bpf import HERE
from pagefault.capture.libbpf import BpfObject, LibbpfError, RingBuffer

SOURCE = Path(__file__).parent / "bpf" / "syscall_ids.bpf.c"
TARGETS = {"x86_64": "x86", "aarch64": "arm64"}


class Globals(ctypes.Structure):
    _fields_ = [("target_tgid", ctypes.c_uint32), ("_pad", ctypes.c_uint32), ("seen", ctypes.c_uint64)]


@pytest.fixture(scope="module")
def test_object(tmp_path_factory) -> Path:
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")
    clang = shutil.which("clang")
    machine = os.uname().machine
    headers = HERE / "build" / machine
    if not clang or not (headers / "vmlinux.h").exists():
        pytest.skip("clang or the build's vmlinux.h is missing: bash scripts/setup.sh test")
    out = tmp_path_factory.mktemp("bpfobj")
    os.chmod(out, 0o755)
    obj = out / "syscall_ids.bpf.o"
    subprocess.run([clang, "-O2", "-g", "-target", "bpf", f"-D__TARGET_ARCH_{TARGETS[machine]}", f"-I{headers}",
                    "-c", str(SOURCE), "-o", str(obj)], check=True)
    return obj


def test_the_ring_buffer_hands_over_each_record_in_order_and_globals_are_shared(test_object):
    with BpfObject(test_object) as obj:
        obj.load()
        settings = Globals.from_buffer(obj.global_data(".bss"))
        obj.attach("on_enter")
        records: list[int] = []
        with RingBuffer(obj.map("events"), lambda b: records.append(struct.unpack("<Q", b)[0])) as ring:
            settings.target_tgid = os.getpid()      # written through the shared mapping: the program sees it
            os.getppid()
            os.getuid()
            settings.target_tgid = 0
            got = 0
            for _ in range(20):
                got += ring.poll(50)
                if len(records) >= 2:
                    break
        del settings
    # the first two system calls after the setting are ours, in order; the count is the kernel's
    assert records[:2] == [_nr("getppid"), _nr("getuid")]
    assert got == len(records)


def _nr(name: str) -> int:
    return {"x86_64": {"getppid": 110, "getuid": 102}, "aarch64": {"getppid": 173, "getuid": 174}}[os.uname().machine][name]


def test_the_globals_count_what_the_program_saw(test_object):
    with BpfObject(test_object) as obj:
        obj.load()
        settings = Globals.from_buffer(obj.global_data(".bss"))
        obj.attach("on_enter")
        settings.target_tgid = os.getpid()
        for _ in range(5):
            os.getppid()
        settings.target_tgid = 0
        seen = settings.seen
        del settings
    assert seen >= 5     # our five, and perhaps a write of pytest's between


def test_an_exception_in_the_callback_is_raised_from_poll(test_object):
    with BpfObject(test_object) as obj:
        obj.load()
        settings = Globals.from_buffer(obj.global_data(".bss"))
        obj.attach("on_enter")

        def refuse(_record: bytes) -> None:
            raise ValueError("a record the reader refuses")

        with RingBuffer(obj.map("events"), refuse) as ring:
            settings.target_tgid = os.getpid()
            os.getppid()
            settings.target_tgid = 0
            with pytest.raises(ValueError, match="refuses"):
                for _ in range(20):
                    ring.poll(50)
        del settings


def test_globals_before_load_and_wrong_sized_writes_are_one_line_errors(test_object):
    with BpfObject(test_object) as obj:
        with pytest.raises(LibbpfError, match="not loaded"):
            obj.global_data(".bss")
        obj.load()
        with pytest.raises(LibbpfError, match="no .data globals"):
            obj.global_data(".data")
        with pytest.raises(LibbpfError, match="4-byte keys"):
            obj.map(".bss").update(b"\0" * 8, b"\0" * 16)
