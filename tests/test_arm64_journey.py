"""The arm64 journey, replayed from evidence captured live in the kernel matrix's arm64 guest
(Debian 6.1.0-50-arm64 under qemu-system-aarch64, scripts/kernel-matrix.sh arm64).

The live capture itself runs only on arm64 (the matrix row asserts the same checks there); these tests
hold the builder and the checks to that capture, and show that each check can fail. (The compiled capture's
records → evidence: tests/test_arm64_walk_bpf.py.)
"""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path

import pytest

from pagefault import core
from pagefault.decode.arm64_address import split_arm64_address
from pagefault.decode.arm64_descriptor import decode_arm64_descriptor
from pagefault.evidence import Arm64FaultEvidence
from pagefault.evidence.file import EvidenceError, load_evidence
from pagefault.journey.arm64_journey import arm64_checks, build_arm64_journey, derived_pte, first_invalid_level
from pagefault.views.html import render_html

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "evidence").glob("*/arm64-fault.json.gz"))
# 6.1 (4 KiB pages, 48-bit: 4 levels), 6.12 (4 KiB, 52-bit with LPA2: 5 levels), 6.12-16k (16 KiB, 52-bit: 4 levels)
FIXTURE = next(p for p in FIXTURES if p.parent.name == "6.1.0-50-arm64")


@pytest.fixture(scope="module", params=FIXTURES, ids=lambda p: p.parent.name)
def ev(request) -> Arm64FaultEvidence:
    loaded = load_evidence(request.param)
    assert loaded.kind == "arm64-fault"
    return loaded.evidence


def test_the_fixtures_cover_three_walk_shapes():
    shapes = {(e.va_bits, e.page_size, e.lpa2, len(e.walk_after))
              for e in (load_evidence(p).evidence for p in FIXTURES)}
    assert {(48, 4096, False, 4), (52, 4096, True, 5), (52, 16384, True, 4)} <= shapes


def test_every_source_agreed_in_the_guest(ev):
    checks = {c.name: c for c in arm64_checks(ev)}
    assert all(c.ok for c in checks.values()), [c for c in checks.values() if not c.ok]
    assert ev.address == ev.mapping_start + ev.offset
    leaf = next(r for r in ev.walk_after if r.level == "PTE")
    entry = decode_arm64_descriptor(leaf.value, kernel=tuple(ev.kernel_version), va_bits=ev.va_bits,
                                    granule=ev.page_size, pa_bits=52 if ev.lpa2 else 48)
    assert entry.pfn == ev.alloc_pfn == ev.pagemap & ((1 << 55) - 1) and not entry.suspicions
    assert derived_pte(ev) == leaf.value


def test_the_trap_is_a_translation_fault_at_the_first_invalid_level(ev):
    # the walk at the trap: valid table descriptors down to the first invalid one, where it stopped
    before = ev.walk_before
    assert all(r.value & 3 == 3 for r in before[:-1]) and before[-1].value & 1 == 0
    level = first_invalid_level(ev)
    assert level == 3 - (len(ev.walk_after) - len(before))
    j = build_arm64_journey(ev)
    esr = next(s for s in j.steps if s.key == "trap").value("ESR_EL1")
    assert esr.provenance == "derived" and esr.value == 0x92000044 | level      # DABT from EL0, WnR, level


def test_journey_steps_and_provenance(ev):
    j = build_arm64_journey(ev)
    assert j.complete and [s.key for s in j.steps] == ["mmap", "trap", "rip", "flags", "walk", "alloc", "pagemap",
                                                       "pte", "return"]
    rip = next(s for s in j.steps if s.key == "rip")
    assert rip.value("instruction").value.startswith("str")         # the exercise's store, by capstone's arm64 mode
    pte = next(s for s in j.steps if s.key == "pte")
    assert pte.value("page descriptor").value == pte.value("derived descriptor").value
    assert pte.value("derived descriptor").provenance == "modelled"
    assert j.walk.root_register == "TTBR0_EL1" and j.walk.frame_pfn == ev.alloc_pfn
    assert j.walk.cr3 == ev.pgd_virtual - ev.linear_offset
    trap = next(s for s in j.steps if s.key == "trap")
    assert "do_page_fault" in trap.ws["which"] and "el0_da" in trap.ws["which"]


def test_replay_through_core_and_html(ev):
    j = core.replay(FIXTURE)
    html = render_html(j)
    assert "TTBR0_EL1" in html and "CR3" not in html.split('id="walk"')[1].split("</svg>")[0]
    assert "→ the next table" in html and "→ the page frame" in html


@pytest.mark.parametrize("field,change,failing", [
    ("address", 0x1000, {"fault address", "perf = kprobe"}),
    ("flags", -1, {"fault flags"}),
    ("alloc_pfn", 1, {"alloc = pagemap"}),
    ("perf_ip", 4, {"perf = kprobe"}),
])
def test_each_check_can_fail(ev, field, change, failing):
    bad = copy.deepcopy(ev)
    setattr(bad, field, getattr(bad, field) + change)
    assert {c.name for c in arm64_checks(bad) if not c.ok} == failing


def test_perf_saw_the_same_fault(ev):
    assert (ev.perf_address, ev.perf_ip) == (ev.address, ev.pc) and ev.perf_user_chain[0] == ev.pc
    assert "perf = kprobe" in {c.name for c in arm64_checks(ev)}


def test_a_different_descriptor_fails_both_descriptor_checks(ev):
    bad = copy.deepcopy(ev)
    leaf = next(r for r in bad.walk_after if r.level == "PTE")
    frame_bit = 1 << (ev.page_size.bit_length() - 1)
    leaf.value ^= frame_bit        # another frame
    assert {c.name for c in arm64_checks(bad) if not c.ok} == {"descriptor = pagemap", "derived = read"}
    leaf.value ^= frame_bit | (1 << 55)    # the right frame, not software-dirty
    assert {c.name for c in arm64_checks(bad) if not c.ok} == {"derived = read"}


def test_damaged_arm64_evidence_is_refused(tmp_path, ev):
    doc = json.loads(gzip.decompress(FIXTURE.read_bytes()))
    doc["evidence"]["page_size"] = 8192
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(EvidenceError, match="arm64 pages are 4, 16 or 64 KiB"):
        load_evidence(path)
    doc["evidence"]["page_size"] = 4096
    doc["evidence"]["va_bits"] = 47
    path.write_text(json.dumps(doc))
    with pytest.raises(EvidenceError, match="VA_BITS"):
        load_evidence(path)


def test_exercises_on_the_arm64_fault(ev):
    from pagefault.journey.exercises import build_exercises
    j = build_arm64_journey(ev)
    by_key = {e.key: e for e in build_exercises(j)}
    indices = [q.answer for q in by_key["indices"].questions]
    split = split_arm64_address(ev.address, ev.va_bits, ev.page_size)
    assert indices == [i.index for i in split.indices] + [ev.address & (ev.page_size - 1)]
    assert [r.level for r in ev.walk_after] == [i.level for i in split.indices]
    assert by_key["pfn"].questions[1].answer == ev.alloc_pfn
    assert by_key["pte"].questions[0].answer == next(r.value for r in ev.walk_after if r.level == "PTE")
    assert "arm64" in by_key["rip"].unavailable and "ESR_EL1" in by_key["flags"].unavailable
