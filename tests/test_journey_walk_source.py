"""A value's source names the engine and hook that really read it: the compiled walk in a capture made with
it, bpftrace in the older captures that ran a bpftrace script (issue 26: the compiled walk's values were
labelled as bpftrace's)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pagefault.core import journey_from_evidence
from pagefault.evidence.file import load_evidence
from pagefault.journey.walk_source import evidence_walk_source, walk_source

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "evidence"
# The shape of capture/bpf_walk.WalkObject.describe() and of arm64_fault's hooks list.
COMPILED = ("/usr/lib/pagefault/journey_walk.bpf.o (compiled CO-RE object, loaded through libbpf in 41 ms); "
            "programs: fault_btf, syscall_tp, lru_tp; hooks: page_fault_user: tp_btf (BTF has btf_trace_page_fault_user); "
            "sys_enter: tracepoint (the classic tracepoint: tp_btf refused); mm_lru_insertion: tracepoint (vmemmap's "
            "base needs its pfn field)")
ARM64_HOOKS = ["sys_enter: tp_btf (in BTF)", "mm_page_alloc: tracepoint (its record carries the PFN)",
               "handle_mm_fault: fentry (BPF trampolines)"]


def _sources(journey) -> list[str]:
    return [v.source for s in journey.steps for v in s.values] + list(journey.observed_with)


def _evidence(name: str):
    return load_evidence(FIXTURES / name).evidence


def test_a_bpftrace_capture_keeps_its_bpftrace_labels() -> None:
    ev = _evidence("6.18.44-fc-v669/journey-bpf.json.gz")
    sources = _sources(journey_from_evidence(ev))
    assert any(s.startswith("bpftrace at tracepoint exceptions:page_fault_user") for s in sources)
    assert any(s.startswith("bpftrace at tracepoint raw_syscalls:sys_enter") for s in sources)
    assert not any("compiled walk" in s for s in sources)


@pytest.mark.parametrize("name", ["6.18.44-fc-v669/journey-bpf.json.gz", "6.18.44-fc-v669/program-thp.json.gz"])
def test_a_compiled_capture_names_the_compiled_walk_and_each_hooks_variant(name: str) -> None:
    ev = copy.deepcopy(_evidence(name))
    ev.bpf.script = COMPILED
    ev.event_sources["walk"] = COMPILED
    sources = _sources(journey_from_evidence(ev))
    assert not [s for s in sources if "bpftrace" in s]
    assert any(s.startswith("the compiled walk (CO-RE, libbpf) at tp_btf exceptions:page_fault_user") for s in sources)
    # the read after the fault came through the classic tracepoint in this description, not tp_btf
    assert any("at tracepoint raw_syscalls:sys_enter" in s for s in sources)
    assert not any("tp_btf raw_syscalls:sys_enter" in s for s in sources)


def test_an_arm64_capture_with_hooks_names_its_fentry_program() -> None:
    ev = copy.deepcopy(_evidence("6.12.95+deb12-arm64/arm64-fault.json.gz"))
    old = _sources(journey_from_evidence(ev))
    assert any(s.startswith("bpftrace at kprobe handle_mm_fault") for s in old)
    ev.hooks = list(ARM64_HOOKS)
    new = _sources(journey_from_evidence(ev))
    assert not [s for s in new if "bpftrace" in s]
    assert any(s.startswith("the compiled walk (CO-RE, libbpf) at fentry handle_mm_fault") for s in new)
    assert any("fexit handle_mm_fault" in s for s in new)


def test_the_fault_path_variant_comes_from_the_handle_mm_fault_source() -> None:
    ev = copy.deepcopy(_evidence("6.18.44-fc-v669/journey-bpf.json.gz"))
    ev.event_sources["walk"] = COMPILED
    ev.event_sources["handle_mm_fault"] = "fentry programs of the compiled walk on handle_mm_fault and its handlers"
    assert evidence_walk_source(ev).probes == ("fentry", "fexit")
    assert walk_source("tracepoint:exceptions:page_fault_user /pid == 1/ { }").engine == "bpftrace"


@pytest.mark.live
def test_a_live_journey_names_the_compiled_walk(can_trace, tmp_path) -> None:
    out = tmp_path / "j.json"
    r = subprocess.run([sys.executable, "-m", "pagefault", "journey", "--tier", "bpf", "--no-pause", "-q",
                        "--format", "json", "-o", str(out)], capture_output=True, text=True, timeout=180)
    if r.returncode != 0 and "bpf" in r.stderr:
        pytest.skip(f"no bpf tier here: {r.stderr.strip()[-200:]}")
    assert r.returncode == 0, r.stderr
    j = json.loads(out.read_text())
    sources = [v["source"] for s in j["steps"] for v in s["values"]]
    assert not [s for s in sources if "bpftrace" in s]
    walk = next(s for s in j["steps"] if s["key"] == "walk")
    before = [v["source"] for v in walk["values"] if v["label"].endswith("entry before")]
    assert before and all(s.startswith("the compiled walk (CO-RE, libbpf) at ") for s in before)
    assert all("exceptions:page_fault_user" in s for s in before)
