"""A process with four kinds of page-table entry, read live: shared by the live test and the kernel matrix.

A child makes, in one anonymous mapping: page 0 present, page 1 PROT_NONE (written first, so it has a
frame), page 2 a guard region (a PTE marker, Linux 6.13+), page 3 paged out to swap (where swap is
on). bpftrace reads each page's raw PTE through the direct map; pagemap says what the kernel thinks
of each page.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass

CHILD = textwrap.dedent("""
    import ctypes, os, sys
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
GETPPID = 110  # x86-64


@dataclass
class EntryKinds:
    pages: list[int]
    ptes: list[int]
    pagemaps: list[int]
    guard_installed: bool
    paged_out: bool


def read_entry_kinds(direct_map_base: int, levels: int) -> EntryKinds:
    from pagefault.capture import procfs
    from pagefault.capture.bpf_walk import entries_at_syscall
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        base_text, guard_ok, pageout_ok = child.stdout.readline().split()
        base = int(base_text, 16)
        pages = [base + i * 4096 for i in range(4)]
        pagemaps = [procfs.pagemap_entry(child.pid, p) for p in pages]
        ptes = _ptes_at_getppid(child, pages, lambda poke: entries_at_syscall(child.pid, pages, direct_map_base,
                                                                              levels, GETPPID, poke))
    finally:
        child.kill()
        child.wait()
    return EntryKinds(pages, ptes, pagemaps, guard_ok == "1", pageout_ok == "1")


def _ptes_at_getppid(child: subprocess.Popen, pages: list[int], read) -> list[int]:
    """Each page's PTE as read(poke) returns them: bpftrace's walk when the child, released by poke(), next
    calls getppid(). AssertionError naming the pages it read no PTE for."""
    def poke():
        child.stdin.write("\n")
        child.stdin.flush()
    entries = read(poke)
    missing = [hex(p) for p in pages if "PTE" not in entries.get(p, {})]
    if missing:
        raise AssertionError(f"bpftrace read no PTE for {missing}: {entries}")
    return [entries[p]["PTE"] for p in pages]


def check_entry_kinds(seen: EntryKinds, version: tuple[int, int], levels: int, config) -> tuple[list[str], list[str]]:
    """What the decoders say of each entry against what pagemap says: (problems, kinds checked)."""
    from pagefault.decode.pagemap import decode_pagemap_entry
    from pagefault.decode.pte import EntryKind, decode_pte
    from pagefault.decode.swap_entry import SwapEntryKind
    present, prot_none, guard, swapped = (decode_pte(v, "PTE", kernel=version, swap_config=config, paging_levels=levels)
                                          for v in seen.ptes)
    pm = [decode_pagemap_entry(v, version, config) for v in seen.pagemaps]
    problems, checked = [], []

    def expect(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)
    # a present page: the PTE's frame is pagemap's PFN
    expect(present.kind is EntryKind.PRESENT and bool(pm[0].pfn) and present.pfn == pm[0].pfn,
           f"present page: PTE 0x{seen.ptes[0]:x} PFN {present.pfn} vs pagemap {pm[0].summary}")
    checked.append("present")
    # PROT_NONE: the MMU sees nothing, the kernel a present page whose frame is stored inverted
    expect(prot_none.kind is EntryKind.PROT_NONE and not prot_none.present and pm[1].present
           and prot_none.pfn == pm[1].pfn,
           f"PROT_NONE page: PTE 0x{seen.ptes[1]:x} decoded {prot_none.kind.value} PFN {prot_none.pfn} "
           f"vs pagemap {pm[1].summary}")
    checked.append("PROT_NONE")
    if seen.guard_installed:
        ok = (guard.kind is EntryKind.SWAP_FORMAT and guard.swap.kind is SwapEntryKind.PTE_MARKER
              and guard.swap.marker.names == ["PTE_MARKER_GUARD"]
              and pm[2].swap_kind is SwapEntryKind.PTE_MARKER and pm[2].swap_type == guard.swap.swap_type)
        expect(ok, f"guard page: PTE 0x{seen.ptes[2]:x} decoded {guard.points_to}; pagemap {pm[2].summary}")
        checked.append("guard marker")
    else:
        expect(version < (6, 13), "MADV_GUARD_INSTALL failed on a kernel that has it")
        expect(guard.kind is EntryKind.EMPTY, f"page 2 without a guard: PTE 0x{seen.ptes[2]:x} is not empty")
    if seen.paged_out and pm[3].swapped:
        ok = (swapped.kind is EntryKind.SWAP_FORMAT and swapped.swap.kind is SwapEntryKind.SWAP
              and (swapped.swap.swap_type, swapped.swap.offset) == (pm[3].swap_type, pm[3].swap_offset)
              and swapped.pfn is None and pm[3].swap_kind is SwapEntryKind.SWAP)
        expect(ok, f"swapped page: PTE 0x{seen.ptes[3]:x} decoded {swapped.points_to}; pagemap {pm[3].summary}")
        checked.append("swap")
    return problems, checked


# --- arm64: a present page and a PROT_NONE page, read through the linear map --------------------------

CHILD_ARM64 = textwrap.dedent("""
    import ctypes, mmap, os, sys
    page = mmap.PAGESIZE
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    base = libc.mmap(None, 2 * page, 3, 0x22, -1, 0)
    ctypes.memset(base, 0x5a, 2 * page)
    assert libc.mprotect(base + page, page, 0) == 0
    print(hex(base), flush=True)
    sys.stdin.readline()
    os.getppid()
    sys.stdin.readline()
""")
GETPPID_ARM64 = 173   # include/uapi/asm-generic/unistd.h


def read_entry_kinds_arm64(linear_offset: int, va_bits: int, page_size: int, lpa2: bool) -> EntryKinds:
    """The PTEs of a present and a PROT_NONE page of a child, read by the compiled arm64 walk at its getppid(),
    with pagemap's."""
    from pagefault.capture import procfs
    from pagefault.capture.arm64_fault import walk_at_syscall
    child = subprocess.Popen([sys.executable, "-c", CHILD_ARM64], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        base = int(child.stdout.readline(), 16)
        pages = [base, base + page_size]
        pagemaps = [procfs.pagemap_entry(child.pid, p) for p in pages]
        ptes = _ptes_at_getppid(child, pages, lambda poke: walk_at_syscall(
            child.pid, pages, linear_offset, GETPPID_ARM64, poke))
    finally:
        child.kill()
        child.wait()
    return EntryKinds(pages, ptes, pagemaps, False, False)


def check_entry_kinds_arm64(seen: EntryKinds, version: tuple[int, int], va_bits: int, page_size: int,
                            lpa2: bool) -> tuple[list[str], list[str]]:
    """The arm64 decoder on a present and a PROT_NONE PTE against pagemap: (problems, kinds checked)."""
    from pagefault.decode.arm64_descriptor import DescriptorKind, decode_arm64_descriptor
    from pagefault.decode.pagemap import decode_pagemap_entry
    present, prot_none = (decode_arm64_descriptor(v, "PTE", version, va_bits, page_size, 52 if lpa2 else 48)
                          for v in seen.ptes)
    pm = [decode_pagemap_entry(v, version) for v in seen.pagemaps]
    problems = []
    if not (present.kind is DescriptorKind.PAGE and pm[0].pfn and present.pfn == pm[0].pfn):
        problems.append(f"present page: PTE 0x{seen.ptes[0]:x} {present.kind.value} PFN {present.pfn} vs pagemap "
                        f"{pm[0].summary}")
    if not (prot_none.kind is DescriptorKind.PROT_NONE and prot_none.present and not prot_none.valid
            and pm[1].present and prot_none.pfn == pm[1].pfn):
        problems.append(f"PROT_NONE page: PTE 0x{seen.ptes[1]:x} {prot_none.kind.value} PFN {prot_none.pfn} vs "
                        f"pagemap {pm[1].summary}")
    return problems, ["present", "PROT_NONE"]
