"""Live: the journey of one page fault, checked against what the kernel did."""

import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest

from pagefault.capture.exercise import ExerciseOptions
from pagefault.capture.journey_capture import LiveJourney
from pagefault.decode import decode_pte, split_virtual_address
from pagefault.journey.build import build_journey
from pagefault.journey.steps import PROVENANCES

pytestmark = pytest.mark.live
CLI = [sys.executable, "-m", "pagefault"]


@pytest.fixture(scope="module")
def journey_json(can_trace, tmp_path_factory):
    out = tmp_path_factory.mktemp("journey") / "j.json"
    r = subprocess.run(CLI + ["journey", "--no-pause", "-q", "--format", "json", "-o", str(out)],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    return json.loads(out.read_text())


def steps_by_key(j):
    return {s["key"]: s for s in j["steps"]}


def value(step, label):
    return next(v for v in step["values"] if v["label"] == label)


def test_journey_has_all_eleven_steps_and_every_value_has_provenance(journey_json):
    assert [s["number"] for s in journey_json["steps"]] == list(range(1, 12))
    assert journey_json["complete"]
    for s in journey_json["steps"]:
        assert set(s["ws"]) == {"what", "why", "where", "who", "when", "without", "which"}, s["key"]
        for v in s["values"]:
            assert v["provenance"] in PROVENANCES, v
            assert v["source"], v
            if v["provenance"] == "unavailable":
                assert v["value"] is None and ("fix" in v["source"] or "stopped" in v["source"]), v


def test_fault_address_is_vma_start_plus_offset_with_error_code_6(journey_json):
    st = steps_by_key(journey_json)
    vaddr = value(st["mmap"], "return value")["value"]
    assert value(st["trap"], "faulting address (CR2)")["value"] == vaddr + 0x100
    assert value(st["trap"], "faulting address (CR2)")["provenance"] == "observed"
    assert value(st["trap"], "error code")["value"] == 0x6
    vma = value(st["vma"], "VMA holding the address")["value"]
    start, end = (int(x, 16) for x in vma.split()[0].split("-"))
    assert start <= vaddr + 0x100 < end


def test_walk_indices_match_the_address(journey_json):
    st = steps_by_key(journey_json)
    addr = value(st["trap"], "faulting address (CR2)")["value"]
    levels = value(st["walk"], "paging levels")["value"]
    split = split_virtual_address(addr, levels)
    for i in split.indices:
        assert value(st["walk"], f"{i.level} index")["value"] == (addr >> i.shift) & 0x1FF == i.index


def test_one_pfn_from_allocator_pagemap_and_pte(journey_json):
    st = steps_by_key(journey_json)
    pfn = value(st["alloc"], "PFN")["value"]
    assert value(st["alloc"], "PFN")["provenance"] == "observed"
    entry = value(st["pagemap"], "pagemap entry")["value"]
    assert entry >> 63 and entry & ((1 << 55) - 1) == pfn
    assert "do_anonymous_page" in value(st["alloc"], "kernel call chain")["value"]
    assert "handle_mm_fault" in value(st["alloc"], "kernel call chain")["value"]
    if journey_json["tier"] != "bpf":
        pytest.skip("raw PTE needs the bpf tier (the compiled walk)")
    raw = value(st["pte"], "PTE (read)")
    assert raw["provenance"] == "observed"
    pte = decode_pte(raw["value"])
    assert pte.pfn == pfn
    assert pte.present and pte.writable and pte.user and pte.no_execute
    assert value(st["pte"], "PTE (derived)")["value"] == raw["value"]


def test_raw_walk_before_the_fault_leads_to_an_empty_pte(journey_json):
    if journey_json["tier"] != "bpf":
        pytest.skip("raw entries need the bpf tier (the compiled walk)")
    st = steps_by_key(journey_json)
    walk = st["walk"]
    assert value(walk, "PTE entry before")["value"] == 0
    for level in ("PGD", "PUD", "PMD"):
        e = value(walk, f"{level} entry before")
        assert e["provenance"] == "observed" and e["value"] & 1, e
    base = value(walk, "direct-map base (page_offset_base)")["value"]
    assert base % (1 << 30) == 0 and base >> 47 == 0x1FFFF  # a kernel-half address, 1 GiB aligned


def test_every_set_fault_flag_is_named(journey_json):
    st = steps_by_key(journey_json)
    flags = value(st["flags"], "flags")["value"]
    named = [v for v in st["flags"]["values"] if v["label"].startswith("FAULT_FLAG_")]
    assert sum(v["value"] for v in named) == flags
    assert {v["label"] for v in named} >= {"FAULT_FLAG_WRITE", "FAULT_FLAG_USER"}


def test_rip_is_a_store_in_main_of_the_exercise_program(journey_json):
    st = steps_by_key(journey_json)
    rip = st["rip"]
    assert value(rip, "function")["value"].startswith("main+")
    insn = value(rip, "instruction")["value"]
    assert insn.startswith("mov") and "[" in insn.split(",")[0]
    assert value(rip, "source line")["value"].startswith("exercise.c:")


def test_string_read_back_and_one_minor_fault(journey_json):
    st = steps_by_key(journey_json)
    assert value(st["return"], "string read back")["value"] == "offset world"
    assert value(st["return"], "faults taken by the write")["value"] >= 1
    assert value(st["return"], "faults on the page")["value"] == 1


def test_custom_offset_and_text_through_libc(can_trace):
    live = LiveJourney(ExerciseOptions(offset=0x880, size=8192, text="hello page"), tier="perf")
    try:
        ev = live.run_all()
    finally:
        live.close()
    j = build_journey(ev)
    st = {s.key: s for s in j.steps}
    addr = st["trap"].value("faulting address (CR2)").value
    assert ev.vaddr <= addr < ev.vaddr + 8192 and (addr & ~0xFFF) == ((ev.vaddr + 0x880) & ~0xFFF)
    assert st["return"].value("string read back").value == "hello page"
    assert st["pagemap"].value("same PFN as mm_page_alloc").value is True


def test_stepper_pauses_the_target_at_each_phase(can_trace):
    """Drive the interactive stepper through a terminal: the target waits while the person reads."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(CLI[0], CLI + ["journey", "--tier", "perf", "-q"])
    out = b""

    def read_until(marker: bytes, timeout: float = 60, since: int = 0) -> None:
        nonlocal out
        deadline = time.monotonic() + timeout
        while marker not in out[since:]:
            assert time.monotonic() < deadline, out[-2000:].decode(errors="replace")
            r, _, _ = select.select([fd], [], [], 1)
            if r:
                try:
                    out += os.read(fd, 65536)
                except OSError:
                    break

    read_until(b"[Enter] next")
    assert b"step 1/11" in out and b"paused at phase 'ready'" in out
    target = int(out.split(b"PID ")[1].split()[0])
    maps_before = open(f"/proc/{target}/maps").read()
    os.write(fd, b"\n")
    read_until(b"step 2/11")
    read_until(b"paused at phase 'mapped'")
    assert len(open(f"/proc/{target}/maps").read().splitlines()) >= len(maps_before.splitlines())
    mark = len(out)
    os.write(fd, b"b\n")
    read_until(b"step 1/11", 30, since=mark)
    mark = len(out)
    os.write(fd, b"\n")
    os.write(fd, b"\n")
    read_until(b"step 3/11", 60, since=mark)
    read_until(b"[Enter] next", 30, since=out.index(b"step 3/11", mark))
    start3 = out.index(b"step 3/11", mark)
    step3 = out[start3:out.index(b"[Enter] next", start3)]
    # the stepper builds the trap from evidence drained at this phase: the fault is there, observed
    assert b"unavailable" not in step3 and b"0x6" in step3, step3.decode(errors="replace")
    for _ in range(10):
        os.write(fd, b"\n")
        time.sleep(0.2)
    read_until(b"the journey is complete", 60)
    os.waitpid(pid, 0)
    assert b"Traceback" not in out


def test_unprivileged_journey_labels_what_it_cannot_see(can_trace):
    import shutil
    import tempfile
    from pathlib import Path
    if not shutil.which("setpriv"):
        pytest.skip("setpriv is not installed")
    tmp_path = Path(tempfile.mkdtemp(prefix="pf-nobody-", dir="/tmp"))
    os.chmod(tmp_path, 0o777)
    out = tmp_path / "user.json"
    r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *CLI, "journey", "--no-pause",
                        "-q", "--format", "json", "-o", str(out)], capture_output=True, text=True, timeout=180,
                       cwd=tmp_path, env={**os.environ, "HOME": str(tmp_path)})
    if "perf_event_paranoid" in r.stderr:
        pytest.skip(f"unprivileged perf is off here: {r.stderr.strip()}")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    j = json.loads(out.read_text())
    assert j["tier"] == "user"
    st = steps_by_key(j)
    vaddr = value(st["mmap"], "return value")["value"]
    assert value(st["trap"], "faulting address (CR2)")["value"] == vaddr + 0x100
    assert value(st["trap"], "error code")["provenance"] == "unavailable"
    assert "run as root" in value(st["trap"], "error code")["source"]
    pm = value(st["pagemap"], "PFN")
    assert pm["provenance"] == "unavailable" and "fix" in pm["source"]
    shutil.rmtree(tmp_path)


def test_a_write_that_straddles_two_pages_shows_both_faults(can_trace, tmp_path):
    """--offset near the end of a page: the write takes a fault on each page, each allocating its own frame;
    the second is shown with its own address, indices, PFN and PTE, and is not called part of the first."""
    from pagefault.journey.redact import redact_journey
    from pagefault.core import replay
    out, ev_file = tmp_path / "j.json", tmp_path / "ev.json.gz"
    r = subprocess.run(CLI + ["journey", "--no-pause", "-q", "--offset", "0xffa", "--size", "8192", "--text",
                              "0123456789", "--format", "json", "-o", str(out), "--save-evidence", str(ev_file)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    steps = steps_by_key(json.loads(out.read_text()))
    trap_addr = value(steps["trap"], "faulting address (CR2)")["value"]
    second = value(steps["return"], "fault 2 of the write: address")
    assert second["provenance"] == "observed"
    assert second["value"] >> 12 == (trap_addr >> 12) + 1, "the second fault is on the next page"
    pfn2 = value(steps["return"], "fault 2: PFN allocated")["value"]
    entry2 = value(steps["return"], "fault 2: pagemap entry")["value"]
    assert entry2 >> 63 and entry2 & ((1 << 55) - 1) == pfn2, "mm_page_alloc and pagemap name the same frame"
    assert decode_pte(value(steps["return"], "fault 2: PTE (derived)")["value"], "PTE").pfn == pfn2
    pfn1 = value(steps["alloc"], "PFN")["value"]
    assert pfn1 != pfn2
    assert not any(v["label"].startswith("also allocated") and v["value"] == pfn2 for v in steps["alloc"]["values"])
    assert value(steps["return"], "faults taken by the write")["value"] == 2
    assert steps["return"]["ws"]["which"].startswith("2 faults, one per page the write covers (2 pages)")
    redacted = json.dumps(json.loads(__import__("pagefault.views.journey_view", fromlist=["to_json"]).to_json(
        redact_journey(replay(ev_file))[0])))
    assert f"0x{pfn2:x}" not in redacted and str(pfn2) not in redacted


def test_kernel_objects_read_with_bpf_agree_with_proc(journey_json):
    """map_count, the VMA struct, the maple-tree search and the struct page, read through BTF by the compiled walk,
    against what /proc says of the same things (issue 15: BPF reads of kernel objects)."""
    if journey_json["tier"] != "bpf":
        pytest.skip("the struct reads need the bpf tier")
    vma, page = steps_by_key(journey_json)["vma"], steps_by_key(journey_json)["pagemap"]
    for label in ("vm_start, vm_end", "vm_flags (struct)", "vm_page_prot", "mm->map_count"):
        v = value(vma, label)
        assert v["provenance"] == "observed" and v["derivation"][-1].endswith("the same"), (label, v)
    maple = value(vma, "maple tree search (read)")
    assert maple["provenance"] == "observed" and maple["derivation"][-1].endswith("is inside"), maple
    base = value(page, "vmemmap_base")
    assert base["value"] % (1 << 30) == 0 and base["provenance"] == "derived"
    for label, provenance in (("struct page's PFN", "derived"), ("page mapcount", "observed")):
        v = value(page, label)
        assert v["provenance"] == provenance and v["derivation"][-1].endswith("the same"), (label, v)
    assert "KASLR" in base["derivation"][-1]
    assert value(page, "page refcount")["value"] >= 1
    assert "PG_swapbacked" in value(page, "page flags")["display"]
