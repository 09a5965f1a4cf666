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


# --- the CFI lookups and the CFA expressions, on this machine's libc (no process needed) ---

LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"


def _libc_sections():
    from elftools.elf.elffile import ELFFile
    if not os.path.exists(LIBC):
        pytest.skip("no x86-64 glibc here")
    with open(LIBC, "rb") as f:
        elf = ELFFile(f)
        text, plt = elf.get_section_by_name(".text"), elf.get_section_by_name(".plt")
        return (text["sh_addr"], text["sh_size"]), (plt["sh_addr"], plt["sh_size"]) if plt else None


def test_fdes_found_through_eh_frame_hdr_are_the_ones_a_full_parse_finds():
    import random

    from elftools.dwarf.callframe import FDE
    from elftools.elf.elffile import ELFFile

    from pagefault.symbols.cfi_unwind import CfiTable
    (start, size), _ = _libc_sections()
    with open(LIBC, "rb") as f:
        every = [(e.header["initial_location"], e.header["address_range"])
                 for e in ELFFile(f).get_dwarf_info(relocate_dwarf_sections=False).EH_CFI_entries()
                 if isinstance(e, FDE)]
    table = CfiTable(LIBC)
    assert not table.error and len(table.starts) == len(every)
    rng = random.Random(29)
    for vaddr in (rng.randrange(start, start + size) for _ in range(300)):
        want = next(((s, n) for s, n in every if s <= vaddr < s + n), None)
        fde, _ = table.fde(vaddr)
        got = (fde.header["initial_location"], fde.header["address_range"]) if fde is not None else None
        assert got == want, hex(vaddr)
    # only the FDEs looked up were parsed, not the thousands in the file
    assert len(table.fdes) <= 300 < len(every)


def test_the_plt_cfa_expression_is_evaluated_as_the_linkers_wrote_it():
    from pagefault.symbols.cfi_unwind import CfiTable, evaluate
    _, plt = _libc_sections()
    if plt is None or plt[1] < 0x30:
        pytest.skip("libc has no .plt with entries")
    table = CfiTable(LIBC)
    entry = plt[0] + 0x10                     # the first PLT entry after PLT0
    rule = table.row(entry)["cfa"]
    assert rule.expr is not None              # DW_CFA_def_cfa_expression
    rsp = 0x7FFE_0000_1000
    # RSP + 8, plus 8 more once the entry's push has run: ((RIP & 15) >= 11) << 3
    for rip_low, cfa in ((0x0, rsp + 8), (0x6, rsp + 8), (0xA, rsp + 8), (0xB, rsp + 16), (0xF, rsp + 16)):
        value, _ = evaluate(rule.expr, {7: rsp, 16: (entry & ~15) + rip_low}, lambda a: None)
        assert value == cfa, rip_low
    value, why = evaluate([0x96], {7: rsp}, lambda a: None)       # DW_OP_nop is not among those evaluated
    assert value is None and "0x96" in why
    value, why = evaluate([0x77], {7: rsp}, lambda a: None)       # breg7 without its operand
    assert value is None and "ends inside" in why


def test_a_walk_goes_through_a_plt_entry():
    """A fault sampled in a PLT stub (a lazy-binding jump): the CFA is an expression, RSP + 8, and the caller's
    return address is at RSP; the walk goes on into the caller instead of ending there."""
    from pagefault.symbols.cfi_unwind import unwind
    (text, _), plt = _libc_sections()
    if plt is None or plt[1] < 0x30:
        pytest.skip("libc has no .plt with entries")
    base = 0x7F00_0000_0000                  # libc "mapped" at its ELF addresses plus base

    def place(pc):
        return (LIBC, None, pc - base) if base <= pc < base + text + 0x200000 else None
    caller = base + text + 0x100             # a return address inside libc's .text
    rsp = 0x7FFE_0000_1000
    stack = struct.pack("<Q", caller) + bytes(64)
    result = unwind(base + plt[0] + 0x16, rsp, 0, stack, place)
    assert len(result.frames) >= 2 and result.frames[1] == caller, result.ended
    assert "CFA expression" not in result.ended


def test_a_recording_unwinds_each_distinct_stack_copy_once(monkeypatch):
    """Faults with the same registers, stack bytes and frame-pointer chain are unwound once; a copy that
    differs by one byte is unwound again."""
    from pagefault.journey import fault_stacks
    from pagefault.symbols.cfi_unwind import Unwound
    calls = []

    def counted(ip, sp, bp, stack, place, refusal, rules=None):
        calls.append(stack)
        return Unwound([ip])
    monkeypatch.setattr(fault_stacks, "eh_frame_unwind", counted)
    sym = fault_stacks.Symbolizer([], None)
    copy = (0x1000, 0x7FFE0000, 0x401000, bytes(8192))
    first = sym.eh_frame_frames(copy, [])
    assert sym.eh_frame_frames(copy, []) == first and len(calls) == 1
    sym.eh_frame_frames(copy[:3] + (b"\1" + bytes(8191),), [])
    assert len(calls) == 2
