"""Offline: every saved capture in tests/fixtures/evidence/ (one folder per kernel) builds its journey
again, with the values and provenance the live kernel gave, on any machine, as any user.

These tests need neither root nor tracefs; test_offline_as_nobody_without_tracefs runs this very file
again as nobody with tracefs unmounted to prove it.
"""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pagefault.core import JourneyUsageError, journey_from_evidence, replay
from pagefault.decode.pagemap import PM_PFN_MASK
from pagefault.decode.pte import decode_pte
from pagefault.evidence.file import load_evidence

from live_helpers.fixtures import matching_capture, saved_capture

FIXTURES = Path(__file__).parent / "fixtures" / "evidence"
JOURNEYS = sorted(FIXTURES.glob("*/journey-*.json.gz"))
SCENARIOS = sorted(FIXTURES.glob("*/scenario-*.json.gz"))
PROGRAMS = sorted(FIXTURES.glob("*/program-*.json.gz"))
ARM64 = sorted(FIXTURES.glob("*/arm64-*.json.gz"))
ids = lambda p: f"{p.parent.name}/{p.name.split('.')[0]}"  # noqa: E731


def test_there_are_fixtures_for_every_tier_and_scenario():
    from pagefault.model.scenarios import SCENARIOS as LIBRARY
    assert JOURNEYS and SCENARIOS
    for kernel in {p.parent for p in JOURNEYS}:
        tiers = {p.name.split(".")[0].split("-")[1] for p in kernel.glob("journey-*.json.gz")}
        assert {"bpf", "perf"} <= tiers, kernel
        names = {p.name.split(".")[0].split("-", 1)[1] for p in kernel.glob("scenario-*.json.gz")}
        assert names == {s.name for s in LIBRARY}, kernel


def _value(journey, key, label):
    step = next(s for s in journey.steps if s.key == key)
    return step.value(label)


@pytest.mark.parametrize("path", JOURNEYS, ids=ids)
def test_replayed_journey_has_the_kernels_values_and_their_provenance(path):
    ev = load_evidence(path).evidence
    j = replay(path)
    assert j.replayed_from.startswith(f"replayed from {path}, captured on kernel {ev.kernel_release} (host ")
    assert j.notes[0] == j.replayed_from and j.tier == ev.tier and j.complete
    assert [s.number for s in j.steps] == list(range(1, 12))

    # the trap: the address the kernel reported is the mapping plus the offset written
    cr2 = _value(j, "trap", "faulting address (CR2)")
    assert cr2.provenance == "observed" and cr2.value == ev.vaddr + ev.options.offset
    assert _value(j, "trap", "mapping start + offset written").provenance == "derived"

    # the RIP step comes from the ELF facts saved with the capture, not from a file on this machine
    assert _value(j, "rip", "file offset").value == ev.rip.file_offset
    assert _value(j, "rip", "function").value.startswith("main+")
    assert _value(j, "rip", "instruction").provenance == "derived"

    # the walk: one index per level of this kernel's paging
    walk_labels = [v.label for v in next(s for s in j.steps if s.key == "walk").values]
    levels = ["PGD", "P4D", "PUD", "PMD", "PTE"] if ev.paging_levels == 5 else ["PGD", "PUD", "PMD", "PTE"]
    assert [f"{lv} index" for lv in levels] == [lbl for lbl in walk_labels if lbl.endswith(" index")]
    for lv in levels:
        shift = 12 + 9 * (len(levels) - 1 - levels.index(lv))
        assert _value(j, "walk", f"{lv} index").value == (cr2.value >> shift) & 0x1FF

    pagemap = ev.snapshots["touched"].pagemap
    assert _value(j, "pagemap", "pagemap entry").value == pagemap and pagemap >> 63
    if ev.tier in ("bpf", "perf"):
        pfn = _value(j, "alloc", "PFN")
        assert pfn.provenance == "observed" and pfn.source.startswith("tracepoint kmem:mm_page_alloc")
        assert pfn.value == pagemap & PM_PFN_MASK, "mm_page_alloc and pagemap name the same frame"
        assert _value(j, "flags", "flags").provenance == "derived"
    if ev.tier == "bpf":
        read = _value(j, "pte", "PTE (read)")
        # captured by the compiled walk (libbpf), or by the bpftrace scripts of the captures saved before it
        assert read.provenance == "observed" and ("libbpf" in read.source or "bpftrace" in read.source), read.source
        assert _value(j, "pte", "PTE (derived)").value == read.value
        assert decode_pte(read.value, "PTE").pfn == pagemap & PM_PFN_MASK
        assert j.walk is not None and [lv.level for lv in j.walk.levels] == levels
        for lv in levels:
            assert _value(j, "walk", f"{lv} entry before").provenance == "observed"
    else:
        assert _value(j, "pte", "PTE (read)").provenance == "unavailable"
    if ev.tier == "user":
        assert _value(j, "trap", "error code").provenance == "unavailable"


@pytest.mark.parametrize("path", SCENARIOS, ids=ids)
def test_replayed_scenario_keeps_its_live_faults_and_the_models_verdict(path):
    ev = load_evidence(path).evidence
    j = replay(path)
    ops = [s for s in j.steps if s.key.startswith("op")]
    assert [s.title for s in ops] == [f"Operation {i}: {op}" for i, op in enumerate(ev.ops)]
    verdict = next(s for s in j.steps if s.key == "model").value("model agrees with the kernel")
    assert verdict.provenance == "derived" and verdict.value is True, verdict.derivation
    faults = [v for s in ops for v in s.values if v.label.startswith("fault on page")]
    live_faults = sum(len(ev.region_faults(i)) for i in range(len(ev.snapshots)))
    assert len(faults) == live_faults and all(v.provenance == "observed" for v in faults)


def test_every_view_renders_a_replay(tmp_path):
    from pagefault.views import journey_view
    from pagefault.views.html import render_html
    from pagefault.views.perfetto import dumps, journey_trace
    j = replay(JOURNEYS[0])
    assert "replayed from" in journey_view.to_markdown(j)
    assert json.loads(journey_view.to_json(j))["replayed_from"].startswith("replayed from")
    assert "replayed from" in render_html(j)
    assert json.loads(dumps(journey_trace(j)))


def test_the_cli_replays_and_sets_exercises_on_a_replay(tmp_path):
    cli = [sys.executable, "-m", "pagefault"]
    r = subprocess.run(cli + ["journey", "--replay", str(JOURNEYS[0]), "--format", "json"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["replayed_from"].startswith(f"replayed from {JOURNEYS[0]}")
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path))
    r = subprocess.run(cli + ["exercise", "indices", "--replay", str(JOURNEYS[0])], input="", capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == 0 and "pagefault exercise" in r.stdout, r.stderr
    r = subprocess.run(cli + ["journey", "--replay", str(JOURNEYS[0]), "--model"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "--replay builds the journey from the saved file" in r.stderr


def test_building_needs_nothing_of_the_machine():
    """journey/ and evidence/ with pagefault.capture, .kernel and .symbols made unimportable: every fixture builds."""
    code = f"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[:2] in (["pagefault", "capture"], ["pagefault", "kernel"], ["pagefault", "symbols"]):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
from pathlib import Path
from pagefault.core import journey_from_evidence
from pagefault.evidence.file import load_evidence
from pagefault.views.journey_view import to_markdown
from pagefault.views.html import render_html
n = 0
for p in sorted(Path({str(FIXTURES)!r}).glob("*/*.json.gz")):
    j = journey_from_evidence(load_evidence(p).evidence)
    to_markdown(j); render_html(j)
    n += 1
print("built", n)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"built {len(JOURNEYS) + len(SCENARIOS) + len(PROGRAMS) + len(ARM64)}"


@pytest.mark.skipif(os.geteuid() != 0 or os.environ.get("PAGEFAULT_OFFLINE_INNER"),
                    reason="needs root to unshare a mount namespace and drop to nobody (or this is that run)")
def test_offline_as_nobody_without_tracefs():
    import shutil
    import tempfile
    tmp_path = Path(tempfile.mkdtemp(prefix="pf-offline-", dir="/tmp"))
    os.chmod(tmp_path, 0o777)
    inner = (f"umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug/tracing 2>/dev/null; "
             f"test ! -e /sys/kernel/tracing/events || exit 99; "
             f"exec setpriv --reuid=nobody --regid=nogroup --clear-groups {sys.executable} -m pytest -q -p no:cacheprovider "
             f"{__file__} -k 'not offline_as_nobody and not the_cli_replays and not needs_nothing_of_the_machine "
             f"and not replay_path_loads_no'")
    # (those two start a second interpreter, which nobody cannot exec here: it lives under root's 0700 home)
    env = dict(os.environ, PAGEFAULT_OFFLINE_INNER="1", HOME=str(tmp_path), XDG_STATE_HOME=str(tmp_path))
    try:
        r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", inner], capture_output=True,
                           text=True, timeout=120, env=env, cwd=tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "failed" not in r.stdout


def _shape(doc):
    """The keys of the evidence, recursively, with list items and data-named keys merged."""
    if isinstance(doc, dict):
        return {k: _shape(v) for k, v in doc.items()}
    if isinstance(doc, list):
        merged = {}
        for item in doc:
            s = _shape(item)
            if isinstance(s, dict):
                merged.update(s)
        return [merged] if merged else []
    return type(doc).__name__ if doc is not None else None


def test_damaged_evidence_is_one_line(tmp_path):
    good = gzip.decompress(JOURNEYS[0].read_bytes())
    cases = {"truncated.json": good[: len(good) // 2], "empty.json": b"", "list.json": b"[]",
             "version.json": good.replace(b'"version":1', b'"version":99'),
             "kind.json": good.replace(b'"kind":"journey"', b'"kind":"other"'),
             "gz.json.gz": gzip.compress(good)[:-20], "binary": os.urandom(300)}
    doc = json.loads(good)
    for name, position in (("bomb70.json", 2**70), ("bomb62.json", 2**62)):   # 1 << position must never run
        doc["evidence"]["gfp_table"] = {"__GFP_IO": position}
        cases[name] = json.dumps(doc).encode()
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(JourneyUsageError) as info:
            replay(p)
        assert "\n" not in str(info.value) and str(p) in str(info.value)


@pytest.mark.parametrize("fixture", [JOURNEYS[0], next(p for p in SCENARIOS if "fork" in p.name)], ids=ids)
def test_fuzz_the_evidence_loader(tmp_path_factory, fixture):
    from hypothesis import HealthCheck, given, settings, strategies as st
    doc = json.loads(gzip.decompress(fixture.read_bytes()))
    paths = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + [k])
        elif isinstance(node, list):
            for i, v in enumerate(node[:3]):
                walk(v, path + [i])
        paths.append(path)
    walk(doc["evidence"], [])
    d = tmp_path_factory.mktemp("fuzz-evidence")
    values = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.text(max_size=6),
                       st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(paths), values, st.booleans())
    def check(path, value, delete):
        mutated = json.loads(json.dumps(doc))
        node = mutated["evidence"]
        for k in path[:-1]:
            node = node[k]
        if path:
            if delete and isinstance(node, dict):
                node.pop(path[-1], None)
            else:
                node[path[-1]] = value
        p = d / "e.json"
        p.write_text(json.dumps(mutated))
        try:
            replay(p)
        except JourneyUsageError as exc:
            assert "\n" not in str(exc)
    check()


def test_a_fresh_capture_has_the_fixtures_shape(can_trace, tmp_path):
    """The format cannot rot unnoticed: today's live evidence has exactly the keys of a saved fixture of the
    same shape (architecture and paging levels, the nearest kernel version), whatever this kernel's build string."""
    out = tmp_path / "fresh.json.gz"
    r = subprocess.run([sys.executable, "-m", "pagefault", "journey", "--no-pause", "-q", "--tier", "bpf",
                        "--save-evidence", str(out), "--format", "json", "-o", str(tmp_path / "j.json")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    fresh = json.loads(gzip.decompress(out.read_bytes()))
    ev = fresh["evidence"]
    fixture = matching_capture("journey-bpf.json.gz", arch=str(ev.get("arch") or "x86_64"),
                               paging_levels=ev["paging_levels"], kernel_version=tuple(ev["kernel_version"])).path
    saved = json.loads(gzip.decompress(fixture.read_bytes()))
    assert fresh["version"] == saved["version"]
    for key in ("snapshots", "bpf", "rip", "options", "program"):
        assert _shape(fresh["evidence"][key]) == _shape(saved["evidence"][key]), (key, fixture)
    assert set(fresh["evidence"]) == set(saved["evidence"])
    assert _shape(fresh["evidence"]["events"][0]).keys() == _shape(saved["evidence"]["events"][0]).keys()
    journey_from_evidence(load_evidence(out).evidence)


@pytest.mark.parametrize("path", JOURNEYS, ids=ids)
@pytest.mark.parametrize("release", ["same", "unknown build", "unknown version"])
def test_the_fixture_for_a_capture_depends_on_its_shape_not_its_build_string(path, release):
    """The seam the fresh-capture test goes through: a kernel of a fixture's shape finds a fixture of that
    shape, under the fixture's own version, under another build string of it, and under a version no
    fixture has; it finds the fixture itself when its version is the nearest."""
    mine = saved_capture(path)
    version = {"same": mine.kernel_version, "unknown build": mine.kernel_version, "unknown version": (9, 99)}[release]
    found = matching_capture(path.name, arch=mine.arch, paging_levels=mine.paging_levels, kernel_version=version)
    assert (found.arch, found.paging_levels) == (mine.arch, mine.paging_levels)
    if release != "unknown version":
        assert found.kernel_version == mine.kernel_version
    with pytest.raises(LookupError, match="no saved"):
        matching_capture(path.name, arch=mine.arch, paging_levels=3, kernel_version=version)


def test_the_cli_replay_path_loads_no_capture_kernel_or_symbol_code(tmp_path):
    """`journey --replay` on a machine that cannot trace (macOS, no root): only the portable output-file
    helpers of capture/ are imported (safe_paths, and signal_deferral: the signal module only), never
    perf_event_open, tracefs, kallsyms or ELF readers."""
    code = f"""
import sys, importlib.abc
ALLOWED = {{"pagefault.capture", "pagefault.capture.safe_paths", "pagefault.capture.signal_deferral"}}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[:2] in (["pagefault", "capture"], ["pagefault", "kernel"], ["pagefault", "symbols"]) \\
                and name not in ALLOWED:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
from pagefault.cli import main
for fmt in ("html", "markdown", "json", "perfetto"):
    assert main(["journey", "--replay", {str(JOURNEYS[-1])!r}, "--format", fmt, "-o", {str(tmp_path)!r} + "/out." + fmt]) == 0
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


@pytest.mark.parametrize("path", JOURNEYS, ids=ids)
def test_the_vma_count_is_the_kernels_map_count_not_the_maps_lines(path):
    """/proc/PID/maps shows the gate area [vsyscall], which is no VMA of the mm: mm->map_count is one less."""
    ev = load_evidence(path).evidence
    lines = ev.snapshots["ready"].maps
    v = _value(replay(path), "process", "VMAs at the first phase (mm->map_count)")
    assert v.provenance == "derived"
    assert v.value == len([m for m in lines if m.path != "[vsyscall]"])
    if any(m.path == "[vsyscall]" for m in lines):
        assert v.value == len(lines) - 1 and "[vsyscall]" in v.derivation[0]


@pytest.mark.parametrize("path", JOURNEYS, ids=ids)
def test_values_that_mix_clocks_or_assume_say_so(path):
    """A time since the spawn mixes a tracepoint stamp with pagefault's own clock: derived, both inputs named.
    CR3 is the PGD's address only with the PCID bits clear. The flags name what was taken from the source."""
    ev = load_evidence(path).evidence
    j = replay(path)
    t = _value(j, "trap", "time")
    assert t.provenance == "derived" and "pagefault's CLOCK_MONOTONIC" in t.source
    assert str(ev.spawned_ns) in t.derivation[0]
    if ev.tier != "user":
        cr3 = _value(j, "process", "PGD physical address (CR3 while it runs)")
        assert any("PCID" in line for line in cr3.derivation)
        assert "taken from the kernel source, not observed" in _value(j, "flags", "flags").source
