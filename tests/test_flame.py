"""Page-fault flame graphs: folded and speedscope files that their viewers open as they are (issue 16)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pagefault.journey.fault_classes import FaultClass

pytestmark = pytest.mark.live
CLI = [sys.executable, "-m", "pagefault"]
SCHEMA = Path(__file__).parent / "fixtures" / "schemas" / "speedscope-file-format.schema.json"
# flamegraph-textual (PyPI) pins textual 0.37, which pagefault's textual cannot share a venv with: it gets its own
LOADER = """
import json, sys
from flamegraph_textual.parsers import parse
for path, kind in zip(sys.argv[1::2], sys.argv[2::2]):
    profile = parse(open(path, "rb").read(), path, kind)
    roots = profile.root_stack.children
    print(json.dumps({"kind": kind, "total": sum(r.values[0] for r in roots),
                      "roots": sorted({r.name for r in roots})}))
"""


@pytest.fixture(scope="module")
def flame_files(can_trace, cbin, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flame")
    exe = cbin("fault_kinds")
    r = subprocess.run(CLI + ["trace", "-g", "-q", "--no-summary", "-o", str(tmp / "t.pfrec"), "--", str(exe), str(tmp)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    faults = json.loads(subprocess.run(CLI + ["report", str(tmp / "t.pfrec"), "--json"], capture_output=True,
                                       text=True, check=True).stdout)["faults"]
    for fmt in ("folded", "speedscope"):
        r = subprocess.run(CLI + ["report", str(tmp / "t.pfrec"), "--format", fmt, "-o", str(tmp / f"f.{fmt}")],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "one root per class" in r.stderr, r.stderr
    return tmp, faults


def test_folded_lines_weigh_every_fault_once_under_its_class(flame_files):
    tmp, faults = flame_files
    classes = {c.value for c in FaultClass}
    total = 0
    for line in (tmp / "f.folded").read_text().splitlines():
        stack, count = line.rsplit(" ", 1)
        frames = stack.split(";")
        assert frames[0] in classes and len(frames) >= 2 and int(count) > 0, line
        total += int(count)
    assert total == faults


def test_speedscope_file_follows_the_file_format(flame_files):
    jsonschema = pytest.importorskip("jsonschema")
    tmp, faults = flame_files
    doc = json.loads((tmp / "f.speedscope").read_text())
    jsonschema.validate(doc, json.loads(SCHEMA.read_text()))
    profile = doc["profiles"][0]
    assert sum(profile["weights"]) == faults == profile["endValue"]
    assert len(profile["samples"]) == len(profile["weights"])
    assert all(0 <= i < len(doc["shared"]["frames"]) for stack in profile["samples"] for i in stack)


def test_a_flame_graph_library_from_pypi_loads_both_files(flame_files, tmp_path_factory):
    tmp, faults = flame_files
    venv = tmp_path_factory.mktemp("flamegraph-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                        "flamegraph-textual==0.1.2"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"pip could not install flamegraph-textual: {r.stderr[-500:]}"
    r = subprocess.run([str(venv / "bin" / "python"), "-c", LOADER, str(tmp / "f.folded"), "stackcollapse",
                        str(tmp / "f.speedscope"), "speedscope"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-800:]
    loaded = [json.loads(line) for line in r.stdout.splitlines()]
    classes = {c.value for c in FaultClass}
    for result in loaded:
        assert result["total"] == faults, result
        assert set(result["roots"]) <= classes and "anonymous new page" in result["roots"], result


def test_perfetto_trace_carries_the_call_stacks(flame_files):
    tmp, _faults = flame_files
    out = tmp / "p.json"
    subprocess.run(CLI + ["report", str(tmp / "t.pfrec"), "--format", "perfetto", "-o", str(out)], check=True,
                   capture_output=True)
    trace = json.loads(out.read_text())
    frames = trace["stackFrames"]
    with_stack = [e for e in trace["traceEvents"] if "sf" in e]
    assert with_stack and all(e["sf"] in frames for e in with_stack)
    assert all("parent" not in f or f["parent"] in frames for f in frames.values())


# --- trace -g counted in the kernel (capture/bpf/fault_stacks.bpf.c) ------------------------------------------

def _root_and_engine():
    import os
    if os.geteuid() != 0:
        pytest.skip("counting stacks in the kernel needs root")
    from pagefault.capture.kernel_counts import engine_problem
    problem = engine_problem("fault_stacks")
    if problem:
        pytest.skip(problem)


def _program_stacks(text: str) -> set[str]:
    """The stacks through the program's own code, without their class and without the frame-pointer walk's
    truncation mark (both depend on what the recording's and the count's classifiers and walks saw)."""
    out = set()
    for line in text.splitlines():
        stack = line.rsplit(" ", 1)[0].split(";", 1)[1].replace("[truncated: no frame pointer];", "")
        if "fault_kinds:" in stack:
            out.add(stack)
    return out


def test_trace_g_counted_in_the_kernel_writes_the_recordings_flame_graph(flame_files, can_trace, cbin, tmp_path):
    """trace -g without -o counts each fault's stacks in the kernel (no event streamed) and writes the same
    folded flame graph as report --format folded of a -g recording: one root per class, every fault once (as
    many as the kernel's own page-faults count), and the same stacks through the program's own code."""
    _root_and_engine()
    recorded, _faults = flame_files
    exe = cbin("fault_kinds")
    r = subprocess.run(CLI + ["trace", "-g", "-q", "--folded", str(tmp_path / "k.folded"), "--json", "--summary",
                              str(tmp_path / "s.json"), "--", str(exe), str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "one root per class" in r.stderr, r.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["tier"] == "bpf-counts"
    text = (tmp_path / "k.folded").read_text()
    classes = {c.value for c in FaultClass}
    by_class: dict[str, int] = {}
    for line in text.splitlines():
        stack, count = line.rsplit(" ", 1)
        frames = stack.split(";")
        assert frames[0] in classes and len(frames) >= 2 and int(count) > 0, line
        by_class[frames[0]] = by_class.get(frames[0], 0) + int(count)
    assert sum(by_class.values()) == summary["faults"] == summary["kernel_counts"]["page-faults"]
    assert by_class["stack growth"] == 24 and by_class["THP"] == 1, by_class
    assert _program_stacks(text) == _program_stacks((recorded / "f.folded").read_text())
    # the summary names each fault's call site from its stacks, as the recording's summary names it from the
    # fault's ip: each row of 3 faults or more the count kept is one of the recording's rows (all of them: --top),
    # by class, mapping and site; the counts of the program's own sites agree within a fault (a COW reuse is 7 in
    # one run and 8 in another: the two are separate runs), its 24 stack-growth faults exactly
    recorded_summary = json.loads(subprocess.run(CLI + ["report", str(recorded / "t.pfrec"), "--json", "--top",
                                                        "1000"], capture_output=True, text=True, check=True).stdout)
    counted, seen = _sites(summary["class_breakdown"]), _sites(recorded_summary["class_breakdown"], least=1)
    assert len(counted) >= 6 and all(key in seen and abs(seen[key] - n) <= 1 for key, n in counted.items()), \
        (counted, seen)
    growth = [n for (cls, label, site), n in counted.items() if cls == "stack growth" and site.startswith("fault_kinds:")]
    assert growth == [24], counted
    assert not any("not counted" in site for _c, _l, site, _n in summary["class_breakdown"])


def _sites(rows, least: int = 3) -> dict[tuple[str, str, str], int]:
    """A summary's breakdown rows of `least` faults or more, by (class, mapping, site), the program's own temporary
    file named alike in both runs (each made its own; a recording's name of it may say it was deleted)."""
    out: dict[tuple[str, str, str], int] = {}
    for cls, label, site, n in rows:
        if n >= least:
            label = re.sub(r"^(fault_kinds|read_into_fresh)\.\w+( \(deleted\))?$", r"\1.<temporary>", label)
            out[(cls, label, site)] = out.get((cls, label, site), 0) + n
    return out


def test_a_kernel_mode_faults_call_site_is_the_kernel_instruction_in_both_modes(can_trace, cbin, tmp_path):
    """read() into a fresh buffer faults inside the system call's copy: the site a -g count names from the
    interrupted frame of the fault's kernel stack is the instruction a recording's summary names from the
    fault's ip, "kernel: function+0xoff", with every one of those faults."""
    _root_and_engine()
    exe = str(cbin("read_into_fresh"))
    r = subprocess.run(CLI + ["trace", "-g", "-q", "--no-summary", "-o", str(tmp_path / "t.pfrec"), "--", exe,
                              str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    recorded = json.loads(subprocess.run(CLI + ["report", str(tmp_path / "t.pfrec"), "--json"], capture_output=True,
                                         text=True, check=True).stdout)
    r = subprocess.run(CLI + ["trace", "-g", "-q", "--json", "--summary", str(tmp_path / "s.json"), "--", exe,
                              str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    counted = json.loads((tmp_path / "s.json").read_text())
    kernel_rows = {k: n for k, n in _sites(counted["class_breakdown"]).items() if k[2].startswith("kernel: ")}
    assert kernel_rows and kernel_rows == {k: n for k, n in _sites(recorded["class_breakdown"]).items()
                                           if k[2].startswith("kernel: ")}
    pages = int(re.search(r"pages=(\d+)", r.stdout).group(1))
    assert sum(kernel_rows.values()) >= pages >= 1, (kernel_rows, pages)


def test_a_chain_shared_by_many_faults_is_decoded_once_and_weighs_them_all(flame_files, monkeypatch):
    # report --format folded of a -g recording decoded and named each fault's chain on its own (seconds for the
    # bench's 262,144 faults); alike faults are now grouped first: the chains split are the distinct samples, not
    # the faults, and the counts are the same
    from pagefault.capture.recording import load_recording
    from pagefault.journey import fault_stacks
    tmp, faults = flame_files
    split = []
    real_split = fault_stacks.split_callchain
    monkeypatch.setattr(fault_stacks, "split_callchain", lambda chain: split.append(1) or real_split(chain))
    samples, chains = fault_stacks.fault_samples(load_recording(tmp / "t.pfrec"))
    assert chains and sum(samples.values()) == faults
    assert len(samples) <= len(split) < faults, (len(split), len(samples), faults)   # before: one per fault
