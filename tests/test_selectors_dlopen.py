"""Live: --at reaches a library the program dlopen()s after its start (issue 29), not only the executable and
the libraries it loads at start.

tests/c/dlopen_host.c dlopen()s libpfplugin.so (a name it holds as a string, found through its DT_RUNPATH) or,
given a path, that library (a name made at run time), and calls its pf_plugin_touch, which writes the pages
of a fresh region. Both are built here into a root-owned temporary directory. `--at pf_plugin_touch` and
`--at libpfplugin.so:pf_plugin_touch` pick a fault of that function; a library whose name the program makes
at run time is named by its path (`--at /path/lib.so:FUNCTION`), and a miss says what was faulted instead,
in the libraries the program mapped later too."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.live
CLI = [sys.executable, "-m", "pagefault"]
C_DIR = Path(__file__).parent / "c"
REGION = re.compile(r"^region start=0x([0-9a-f]+) pages=(\d+)", re.M)


@pytest.fixture(scope="module")
def built(can_trace, tmp_path_factory):
    from pagefault.capture.journey_capture import walk_engine_problem
    problem = walk_engine_problem()
    if problem:
        pytest.skip(problem)
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler on this machine")
    d = tmp_path_factory.mktemp("dlopen")
    assert d.stat().st_uid == os.geteuid() == 0
    os.chmod(d, 0o755)
    lib = d / "libpfplugin.so"
    subprocess.run([cc, "-O1", "-g", "-shared", "-fPIC", "-o", str(lib), str(C_DIR / "dlopen_plugin.c")], check=True)
    host = d / "dlopen_host"
    subprocess.run([cc, "-O1", "-g", "-o", str(host), str(C_DIR / "dlopen_host.c"), "-ldl", "-Wl,-rpath,$ORIGIN"],
                   check=True)
    other = d / "libpfother.so"       # the same code under a name the program is given at run time
    shutil.copy(lib, other)
    return host, lib, other


def journey(tmp_path, at, argv):
    out = tmp_path / "j.json"
    r = subprocess.run(CLI + ["journey", "-q", "--format", "json", "-o", str(out), "--at", at, "--", *map(str, argv)],
                       capture_output=True, text=True, timeout=300)
    return r, out


def chosen(r, out) -> dict:
    assert r.returncode == 0, r.stderr[-2000:]
    assert REGION.search(r.stdout), r.stdout
    return {v["label"]: v for s in json.loads(out.read_text())["steps"] for v in s["values"]}


@pytest.mark.parametrize("at", ["pf_plugin_touch", "libpfplugin.so:pf_plugin_touch", "libpfplugin:pf_plugin_touch"])
def test_at_a_function_of_a_dlopened_library_picks_its_fault(built, tmp_path, at):
    host, _lib, _other = built
    values = chosen(*journey(tmp_path, at, [host]))
    assert values["where"]["value"].startswith("libpfplugin.so:pf_plugin_touch"), values["where"]
    assert "not loaded at start (a dlopen)" in values["selector"]["value"], values["selector"]


def test_a_library_named_at_run_time_is_picked_by_its_path(built, tmp_path):
    host, _lib, other = built
    values = chosen(*journey(tmp_path, f"{other}:pf_plugin_touch", [host, other]))
    assert values["where"]["value"].startswith("libpfother.so:pf_plugin_touch"), values["where"]


def test_a_miss_names_what_the_dlopened_library_faulted(built, tmp_path):
    """The program maps libpfother.so, not the libpfplugin.so it names: --at libpfplugin.so:pf_plugin_touch
    matches nothing, and the faults seen instead include those of the library it did map (from its MMAP2)."""
    host, _lib, other = built
    r, _out = journey(tmp_path, "libpfplugin.so:pf_plugin_touch", [host, other])
    assert r.returncode == 4, r.stderr
    m = re.search(r"libpfother\.so:pf_plugin_touch \(([\d,]+)\)", r.stderr)
    assert m and int(m.group(1).replace(",", "")) >= 64, r.stderr
