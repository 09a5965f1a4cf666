"""The .eh_frame unwinder (symbols/cfi_unwind.py) on a stack whose call chain is known: tests/c/deep_chain.c
built with -O2 -fomit-frame-pointer, stopped inside delta (ptrace), its registers and the top of its stack
read as the kernel hands them over. A frame-pointer walk of the same stack does not find the chain."""

import ctypes
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from pagefault.capture.procfs import read_maps
from pagefault.symbols.cfi_unwind import unwind
from pagefault.symbols.elf import load_image

PTRACE_GETREGS, PTRACE_ATTACH, PTRACE_DETACH = 12, 16, 17
REGS = ("r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags rsp ss fs_base gs_base "
        "ds es fs gs").split()
STACK_COPY = 8192        # what perf --call-graph dwarf copies by default


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """(registers, stack copy, maps) of deep_chain spinning in delta."""
    if os.geteuid() != 0 or os.uname().machine != "x86_64":
        pytest.skip("ptrace of a child and x86-64 registers: run as root on x86-64")
    cc = shutil.which("cc")
    if not cc:
        pytest.skip("no C compiler")
    exe = tmp_path_factory.mktemp("cfi") / "deep_chain"
    subprocess.run([cc, "-O2", "-fomit-frame-pointer", "-g", "-o", str(exe),
                    str(Path(__file__).parent / "c" / "deep_chain.c")], check=True)
    proc = subprocess.Popen([str(exe)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(0.05)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        assert libc.ptrace(PTRACE_ATTACH, proc.pid, None, None) == 0, os.strerror(ctypes.get_errno())
        os.waitpid(proc.pid, 0)
        buf = (ctypes.c_ulonglong * len(REGS))()
        assert libc.ptrace(PTRACE_GETREGS, proc.pid, None, ctypes.byref(buf)) == 0
        regs = dict(zip(REGS, buf))
        maps = read_maps(proc.pid)
        stack_end = next(m.end for m in maps if m.start <= regs["rsp"] < m.end)
        with open(f"/proc/{proc.pid}/mem", "rb") as mem:
            mem.seek(regs["rsp"])
            stack = mem.read(min(STACK_COPY, stack_end - regs["rsp"]))
        libc.ptrace(PTRACE_DETACH, proc.pid, None, None)
    finally:
        proc.kill()
        proc.wait()
    return regs, stack, maps


def placer(maps):
    def place(pc):
        m = next((m for m in maps if m.start <= pc < m.end and "x" in m.perms and m.path.startswith("/")), None)
        if m is None:
            return None
        vaddr = load_image(m.path).offset_to_vaddr(pc - m.start + m.offset)
        return (m.path, None, vaddr) if vaddr is not None else None
    return place


def names(maps, frames):
    out = []
    for k, pc in enumerate(frames):
        where = placer(maps)(pc - (k > 0))
        found = load_image(where[0]).symbolize(where[2]) if where else None
        out.append(found[0] if found else f"0x{pc:x}")
    return out


def test_eh_frame_unwinds_code_built_without_frame_pointers(stopped):
    regs, stack, maps = stopped
    result = unwind(regs["rip"], regs["rsp"], regs["rbp"], stack, placer(maps))
    got = names(maps, result.frames)
    assert got[:5] == ["delta", "charlie", "bravo", "alpha", "main"], (got, result.ended)
    assert result.unwinder == "eh_frame"
    # on into libc's start code, to the outermost frame (or the copy's end), never through a non-code address
    assert all(placer(maps)(pc - 1) for pc in result.frames[1:])


def test_a_frame_pointer_walk_of_the_same_stack_misses_the_chain(stopped):
    regs, stack, maps = stopped
    frames, bp = [regs["rip"]], regs["rbp"]
    for _ in range(8):
        off = bp - regs["rsp"]
        if not 0 <= off <= len(stack) - 16:
            break
        bp, ret = struct.unpack_from("<QQ", stack, off)
        frames.append(ret)
    assert names(maps, frames)[:5] != ["delta", "charlie", "bravo", "alpha", "main"]


def test_a_stack_copy_too_short_ends_the_stack_as_truncated(stopped):
    regs, stack, maps = stopped
    result = unwind(regs["rip"], regs["rsp"], regs["rbp"], stack[:64], placer(maps))
    assert result.truncated and "stack copy" in result.ended and len(result.frames) < 5


def test_a_return_address_outside_code_ends_the_stack(stopped):
    regs, stack, maps = stopped
    result = unwind(regs["rip"], regs["rsp"], regs["rbp"], stack, placer(maps))
    # the same walk, with charlie's return address (into bravo) overwritten by a data address
    ra_index = result.frames.index(result.frames[2])
    data = next(m.start for m in maps if "x" not in m.perms) + 16
    raw = bytearray(stack)
    pos = raw.find(struct.pack("<Q", result.frames[ra_index]))
    raw[pos:pos + 8] = struct.pack("<Q", data)
    bad = unwind(regs["rip"], regs["rsp"], regs["rbp"], bytes(raw), placer(maps))
    assert bad.truncated and "does not point into executable code" in bad.ended
    assert data not in bad.frames and len(bad.frames) == ra_index


@pytest.mark.live
def test_trace_dwarf_records_stack_copies_and_report_unwinds_them(can_trace, tmp_path):
    """trace --dwarf of deep_chain's 64 faults in delta: report's flame graph has the whole chain, unwound
    with .eh_frame and saying so; trace -g's frame-pointer stacks of the same program stop at delta."""
    import sys
    cc = shutil.which("cc")
    exe = tmp_path / "deep_chain"
    subprocess.run([cc, "-O2", "-fomit-frame-pointer", "-g", "-o", str(exe),
                    str(Path(__file__).parent / "c" / "deep_chain.c")], check=True)
    stacks = {}
    for how in ("--dwarf", "-g"):
        rec = tmp_path / f"r{how}.pfrec"
        r = subprocess.run([sys.executable, "-m", "pagefault", "trace", "-q", how, "-o", str(rec), "--", str(exe),
                            "fault"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-1500:]
        r = subprocess.run([sys.executable, "-m", "pagefault", "report", "--format", "folded", str(rec)],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-1500:]
        stacks[how] = {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1]) for line in r.stdout.splitlines()}
    chain = "deep_chain:main;deep_chain:alpha;deep_chain:bravo;deep_chain:charlie;deep_chain:delta;"
    dwarf = {s: n for s, n in stacks["--dwarf"].items() if chain in s}
    assert sum(dwarf.values()) == 64, stacks["--dwarf"]
    assert all(s.startswith("anonymous new page;[unwound: eh_frame];") for s in dwarf)
    # every user stack of the --dwarf recording names its unwinder
    assert all(s.split(";")[1].startswith("[unwound: ") for s in stacks["--dwarf"] if "deep_chain" in s)
    assert not any(chain in s for s in stacks["-g"])
    assert sum(n for s, n in stacks["-g"].items() if s.startswith("anonymous new page;deep_chain:delta;")) == 64
