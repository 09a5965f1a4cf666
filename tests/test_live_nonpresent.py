"""Entries that are not plain present pages, read live from the kernel and decoded as what they are.

A child process makes four kinds of page in one mapping: present, PROT_NONE, a guard region
(a PTE marker, Linux 6.13+) and, where swap can be turned on, a page swapped out. bpftrace reads
each raw PTE through the direct map; pagemap says what the kernel thinks of each page. The
decoders must agree with both.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from pagefault.decode.pagemap import decode_pagemap_entry
from pagefault.decode.pte import EntryKind, decode_pte
from pagefault.decode.swap_entry import SwapEntryKind
from pagefault.kernel import facts

CHILD = textwrap.dedent("""
    import ctypes, mmap, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    base = libc.mmap(None, 4 * 4096, 3, 0x22, -1, 0)
    for i in (0, 1, 3):
        ctypes.memset(base + i * 4096, 0x5a, 4096)
    assert libc.mprotect(base + 4096, 4096, 0) == 0
    guard = libc.madvise(base + 2 * 4096, 4096, 102) == 0       # MADV_GUARD_INSTALL (6.13+)
    pageout = libc.madvise(base + 3 * 4096, 4096, 21) == 0      # MADV_PAGEOUT
    print(hex(base), int(guard), int(pageout), flush=True)
    sys.stdin.readline()
    os.getppid()
    sys.stdin.readline()
""")

GETPPID = 110  # x86-64 syscall number


@pytest.fixture(scope="module")
def direct_map_base(can_trace):
    """The direct map's base, derived by one bpf-tier journey (it is fixed for the boot)."""
    if not shutil.which("bpftrace"):
        pytest.skip("bpftrace is not installed")
    from pagefault.capture.journey_capture import LiveJourney
    from pagefault.evidence import ExerciseOptions
    live = LiveJourney(ExerciseOptions(), tier="bpf")
    try:
        ev = live.run_all()
    finally:
        live.close()
    if ev.bpf is None:
        pytest.skip(f"the bpf tier read no walk: {ev.unavailable.get('bpf')}")
    return ev.bpf.direct_map_base


@pytest.fixture(scope="module")
def swap_on():
    """A small swap file for the test's life, if this machine lets us turn one on."""
    if os.geteuid() != 0 or not shutil.which("mkswap") and not Path("/sbin/mkswap").exists():
        yield False
        return
    d = tempfile.mkdtemp(prefix="pagefault-swaptest-", dir="/var/tmp")
    path = Path(d) / "swap"
    on = False
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", "count=32"], check=True, capture_output=True)
        path.chmod(0o600)
        subprocess.run(["/sbin/mkswap", str(path)], check=True, capture_output=True)
        on = subprocess.run(["/sbin/swapon", str(path)], capture_output=True).returncode == 0
        yield on
    finally:
        if on:
            subprocess.run(["/sbin/swapoff", str(path)], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def _walk_script(pid: int, pages: list[int], base: int, levels: int) -> str:
    from pagefault.capture.bpf_walk import FRAME_MASK
    from pagefault.decode.address import LEVEL_NAMES, level_shift
    body = []
    for page in pages:
        body.append(f"$t = (uint64)curtask->mm->pgd;")
        for pos, name in enumerate(LEVEL_NAMES[levels]):
            idx = (page >> level_shift(levels, pos)) & 0x1FF
            body.append(f'$e = *(uint64 *)($t + {idx * 8}); printf("{page:x} {name} %lx\\n", $e);')
            body.append(f"$t = {base:#x} + ($e & {FRAME_MASK:#x});")
    return (f"tracepoint:raw_syscalls:sys_enter /pid == {pid} && args->id == {GETPPID}/ {{\n  "
            + "\n  ".join(body) + "\n  exit();\n}")


def test_prot_none_guard_and_swap_entries_decode_as_the_kernel_keeps_them(direct_map_base, swap_on):
    version = facts.kernel_version()
    levels, _why = facts.paging_levels()
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        base_text, guard_ok, pageout_ok = child.stdout.readline().split()
        base = int(base_text, 16)
        pages = [base + i * 4096 for i in range(4)]
        from pagefault.capture import procfs
        pagemaps = [procfs.pagemap_entry(child.pid, p) for p in pages]
        script = _walk_script(child.pid, pages, direct_map_base, levels)
        tracer = subprocess.Popen([shutil.which("bpftrace"), "-B", "line", "-e", script],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)  # bpftrace attaches in about a second here
        child.stdin.write("\n")
        child.stdin.flush()
        out, err = tracer.communicate(timeout=60)
        ptes = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] == "PTE":
                ptes[int(parts[0], 16)] = int(parts[2], 16)
        assert len(ptes) == 4, f"bpftrace read {len(ptes)} PTEs: {out!r} {err!r}"
    finally:
        child.kill()
        child.wait()

    present, prot_none, guard, swapped = (decode_pte(ptes[p], "PTE", kernel=version, paging_levels=levels)
                                          for p in pages)
    pm = [decode_pagemap_entry(v, version) for v in pagemaps]
    # a present page: the PTE's frame is pagemap's PFN
    assert present.kind is EntryKind.PRESENT and present.pfn == pm[0].pfn and pm[0].pfn
    # PROT_NONE: the MMU sees nothing, the kernel a present page whose frame is stored inverted
    assert prot_none.kind is EntryKind.PROT_NONE and not prot_none.present
    assert ptes[pages[1]] & 0x100 and not ptes[pages[1]] & 1
    assert pm[1].present and prot_none.pfn == pm[1].pfn, (hex(ptes[pages[1]]), pm[1].summary)
    # the guard region is a PTE marker whose offset carries PTE_MARKER_GUARD
    if guard_ok == "1":
        assert guard.kind is EntryKind.SWAP_FORMAT and guard.swap.kind is SwapEntryKind.PTE_MARKER, guard.swap
        assert guard.swap.marker.names == ["PTE_MARKER_GUARD"]
        # pagemap shows the same entry, type and offset packed low, named with the same table
        assert pm[2].swap_kind is SwapEntryKind.PTE_MARKER and pm[2].swap_type == guard.swap.swap_type
    else:
        assert version < (6, 13), "MADV_GUARD_INSTALL failed on a kernel that has it"
    # a page paged out to swap: the PTE's type and offset are the ones pagemap reports
    if swap_on and pageout_ok == "1" and pm[3].swapped:
        assert swapped.kind is EntryKind.SWAP_FORMAT and swapped.swap.kind is SwapEntryKind.SWAP
        assert (swapped.swap.swap_type, swapped.swap.offset) == (pm[3].swap_type, pm[3].swap_offset)
        assert swapped.pfn is None and pm[3].swap_kind is SwapEntryKind.SWAP
    elif swap_on:
        assert pm[3].present, "MADV_PAGEOUT neither swapped the page out nor left it present"
