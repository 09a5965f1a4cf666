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
    # without DT_RUNPATH the name it holds finds no file: only the run shows where the function is
    lost = d / "dlopen_host_no_runpath"
    subprocess.run([cc, "-O1", "-g", "-o", str(lost), str(C_DIR / "dlopen_host.c"), "-ldl"], check=True)
    return host, lib, other, lost


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
    host, _lib, _other, _lost = built
    values = chosen(*journey(tmp_path, at, [host]))
    assert values["where"]["value"].startswith("libpfplugin.so:pf_plugin_touch"), values["where"]
    assert "not loaded at start (a dlopen)" in values["selector"]["value"], values["selector"]


def test_a_library_named_at_run_time_is_picked_by_its_path(built, tmp_path):
    host, _lib, other, _lost = built
    values = chosen(*journey(tmp_path, f"{other}:pf_plugin_touch", [host, other]))
    assert values["where"]["value"].startswith("libpfother.so:pf_plugin_touch"), values["where"]


def test_a_miss_names_what_the_dlopened_library_faulted(built, tmp_path):
    """The program maps libpfother.so, not the libpfplugin.so it names: --at libpfplugin.so:pf_plugin_touch
    matches nothing, and the faults seen instead include those of the library it did map (from its MMAP2)."""
    host, _lib, other, _lost = built
    r, _out = journey(tmp_path, "libpfplugin.so:pf_plugin_touch", [host, other])
    assert r.returncode == 4, r.stderr
    m = re.search(r"libpfother\.so:pf_plugin_touch \(([\d,]+)\)", r.stderr)
    assert m and int(m.group(1).replace(",", "")) >= 64, r.stderr


def test_a_function_found_only_in_a_library_mapped_during_the_run_is_named_with_its_selector(built, tmp_path):
    """The program dlopen()s a library by a path it is given, and holds no name that leads to it: the function is
    in nothing known before the run, so the program runs (it calls dlopen), and the miss names the library it
    mapped that has the function, with the --at that picks it."""
    _host, _lib, other, lost = built
    r, _out = journey(tmp_path, "pf_plugin_touch", [lost, other])
    assert r.returncode == 4, r.stderr
    assert REGION.search(r.stdout), "the program did not run"
    assert f"pf_plugin_touch is in libpfother.so ({other})" in r.stderr, r.stderr
    assert f"--at {other}:pf_plugin_touch picks it" in r.stderr, r.stderr
    # and that selector does pick it
    values = chosen(*journey(tmp_path, f"{other}:pf_plugin_touch", [lost, other]))
    assert values["where"]["value"].startswith("libpfother.so:pf_plugin_touch"), values["where"]
