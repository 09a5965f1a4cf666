"""Live: --at reaches every object a program runs, not only its executable (issue 29).

tests/c/memset_line.c memsets a fresh anonymous region from main: the faults' RIPs are in libc's memset
(an IFUNC: the code is one of its __memset_* implementations), the call is on the line marked MEMSET LINE.
Each selector must pick a fault inside that region (the program prints where it is), and a miss must say
what was faulted instead."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.live
CLI = [sys.executable, "-m", "pagefault"]
SOURCE = Path(__file__).parent / "c" / "memset_line.c"
REGION = re.compile(r"^region start=0x([0-9a-f]+) pages=(\d+)", re.M)


def line_of(marker: str) -> int:
    return next(n for n, text in enumerate(SOURCE.read_text().splitlines(), 1) if marker in text)


@pytest.fixture(scope="module")
def exe(can_trace, cbin):
    from pagefault.capture.journey_capture import walk_engine_problem
    problem = walk_engine_problem()
    if problem:
        pytest.skip(problem)
    from pagefault.symbols.objects import find_function, loaded_objects
    path = cbin("memset_line")
    found = find_function(loaded_objects(str(path)), "libc.so.6:memset", 8)
    if found is None or not found.ranges:
        pytest.skip("this libc names no memset implementation (no .symtab: install libc6-dbg)")
    return path


def journey(tmp_path, exe, at):
    out = tmp_path / "j.json"
    r = subprocess.run(CLI + ["journey", "-q", "--format", "json", "-o", str(out), "--at", at, "--", str(exe)],
                       capture_output=True, text=True, timeout=300)
    return r, out


def chosen(r, out):
    assert r.returncode == 0, r.stderr[-2000:]
    m = REGION.search(r.stdout)
    start, pages = int(m.group(1), 16), int(m.group(2))
    values = {v["label"]: v for s in json.loads(out.read_text())["steps"] for v in s["values"]}
    address = values["faulting address (CR2)"]["value"]
    return values, start <= address < start + pages * 4096


@pytest.mark.parametrize("at", ["memset", "libc.so.6:memset", "libc:memset"])
def test_at_a_library_function_picks_its_fault(exe, tmp_path, at):
    values, _in_region = chosen(*journey(tmp_path, exe, at))
    # the RIP is in one of memset's implementations in libc (the first such fault may be libc's own, before main)
    assert values["where"]["value"].startswith("libc.so.6:__memset_"), values["where"]
    assert "IFUNC" in values["selector"]["value"]


def test_at_file_line_matches_through_the_call_chain(exe, tmp_path):
    values, _in_region = chosen(*journey(tmp_path, exe, f"memset_line.c:{line_of('MEMSET LINE')}"))
    # the RIP is in libc, not on the line: the line is the caller's, found on the user stack (the call's first
    # fault is mostly the region's first page, sometimes a page of libc's own that memset reads first)
    assert values["where"]["value"].startswith("libc.so.6:__memset_"), values["where"]
    assert "call chain" in values["selector"]["value"]


def test_a_line_that_never_faults_says_what_faulted_instead(exe, tmp_path):
    r, _out = journey(tmp_path, exe, f"memset_line.c:{line_of('NO FAULT LINE')}")
    assert r.returncode == 4, r.stderr
    # most faults were memset's: 256 pages of the region at least
    m = re.search(r"libc\.so\.6:__memset_\w+ \(([\d,]+)\)", r.stderr)
    assert m and int(m.group(1).replace(",", "")) >= 256, r.stderr


def test_an_unknown_function_names_the_nearest_ones(exe, tmp_path):
    r, _out = journey(tmp_path, exe, "memsett")
    assert r.returncode == 4 and "nearest names: libc.so.6:memset" in r.stderr, r.stderr


def test_a_function_of_another_object_is_not_taken_for_it(exe, tmp_path):
    r, _out = journey(tmp_path, exe, "libz.so.1:memset")
    assert r.returncode == 4 and "no function 'libz.so.1:memset'" in r.stderr, r.stderr


@pytest.mark.parametrize("variant", ("tp_btf", "tracepoint"))
@pytest.mark.parametrize("ranges, chain", [([(0x1000, 0x2000, 1234), (0x3000, 0x4000, 0)], 0),
                                           ([(0x1000, 0x2000, 0)], 1), ([(0x1000, 0x2000, 99)], 1)])
def test_the_walk_loads_with_library_ranges_and_the_call_chain_check(can_trace, variant, ranges, chain):
    """The verifier sees the settings as constants and checks only the branches they leave: the library and
    call-chain branches are loaded here, with each hook variant this kernel offers."""
    import os

    from pagefault.capture import bpf_walk as bw
    from pagefault.capture.bpf import KernelHooks
    from pagefault.capture.journey_capture import walk_engine_problem
    from pagefault.capture.program_fault import _range_settings
    problem = walk_engine_problem()
    if problem:
        pytest.skip(problem)
    kernel = KernelHooks()
    if variant == "tracepoint":
        kernel.has_btf_tracepoint = lambda event: False
    hooks = (bw.FAULT_HOOK, bw.SYSCALL_HOOK, bw.EXEC_HOOK, bw.EXIT_HOOK)
    if any(kernel.choose(h).variant != variant for h in hooks):
        pytest.skip(f"this kernel does not offer every hook as {variant}")
    settings = dict(_range_settings(ranges, 0x1000), chain=chain, target_tgid=os.getpid(), levels=4,
                    mode=bw.MODE_PROGRAM, stack_reach=bw.STACK_REACH)
    obj = bw.WalkObject(settings, hooks, 4, kernel=kernel)
    try:
        assert len(obj.obj.links) == len(hooks) + obj.lru
    finally:
        obj.close()


def test_at_file_line_of_a_library_with_a_debug_file_picks_its_fault(exe, tmp_path):
    """A line of libc's own source (its debug file's line table, libc6-dbg): the line of the RIP that --at
    memset chose is given back as FILE:LINE, and picks a fault whose RIP is on it, in libc's memset."""
    from elftools.elf.elffile import ELFFile

    from pagefault.symbols.debug_files import debug_file_for
    from pagefault.symbols.elf import load_image, source_line
    values, _ = chosen(*journey(tmp_path, exe, "memset"))
    func, _, offset = values["where"]["value"].removeprefix("libc.so.6:").partition("+")
    libc = next(p for p in ("/usr/lib/x86_64-linux-gnu/libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6")
                if Path(p).exists())
    with open(libc, "rb") as f:
        debug = debug_file_for(ELFFile(f))
    if debug is None:
        pytest.skip("no debug file for libc (libc6-dbg)")
    where = source_line(debug, load_image(libc).functions_by_name()[func][0] + int(offset or "0", 16))
    assert where is not None
    (tmp_path / "line").mkdir()
    r, out = journey(tmp_path / "line", exe, f"{where[0]}:{where[1]}")
    values, _ = chosen(r, out)
    assert values["where"]["value"].startswith("libc.so.6:__memset_"), values["where"]
    assert "debug file" in values["selector"]["value"] and "file offsets" in values["selector"]["value"]
