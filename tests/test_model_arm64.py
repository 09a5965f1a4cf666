"""The simulator with the architecture as a parameter: arm64's tables, descriptor bits and trap (ESR).

The arm64 entries are held to three things: values worked out by hand from the arm64 headers
(pgtable-hwdef.h, pgtable-prot.h, esr.h), the descriptors read live in the kernel matrix's arm64
guests (tests/fixtures/evidence/*arm64*/arm64-fault.json.gz: the same bits, other addresses), and the
x86 model (the generic fault paths are the same code on both, so every scenario must end the same way).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pagefault.decode.arch import Arch
from pagefault.decode.arm64_descriptor import DescriptorKind, decode_arm64_descriptor, derive_arm64_anonymous_pte
from pagefault.decode.esr import decode_esr
from pagefault.evidence.file import load_evidence
from pagefault.journey.model_journey import build_model_journey
from pagefault.journey.scenario_check import from_model
from pagefault.model import kernel as mk
from pagefault.model.page_tables import Arm64Format
from pagefault.model.scenarios import SCENARIOS, find_scenario, run_in_model

FIXTURES = {p.parent.name: load_evidence(p).evidence
            for p in (Path(__file__).parent / "fixtures" / "evidence").glob("*/arm64-fault.json.gz")}
ADDRESS_BITS = ((1 << 50) - 1) & ~0xFFF        # the output address (LPA2's low part included)


def arm64(levels: int = 4, lpa2: bool = False, **kw) -> mk.ModelConfig:
    return mk.ModelConfig(arch=Arch.ARM64, paging_levels=levels, lpa2=lpa2, **kw)


def first_touch(config: mk.ModelConfig) -> mk.Fault:
    return run_in_model(find_scenario("first-touch"), config).faults_by_op[1][0]


def test_hand_checked_first_touch_on_a_4_level_kernel():
    f = first_touch(arm64(4))
    # a user-mode write (EC 0x24 DABT_LOW, IL, WnR 0x40) into a fresh mm: its PGD entry is empty, so a
    # translation fault at level 0 (DFSC 0b000100)
    assert f.error_code == 0x24 << 26 | 1 << 25 | 0x40 | 0x04 == 0x92000044
    assert [lv for lv, *_ in f.walk_after] == ["PGD", "PUD", "PMD", "PTE"]
    # table descriptors: next table | PXNTable (bit 59) | table | valid
    assert all(e & ~ADDRESS_BITS == 1 << 59 | 3 for *_, e in f.walk_after[:-1])
    # the page: PAGE_READONLY (valid, page, USER, RDONLY, SH inner, AF, nG, PXN, UXN) made dirty and
    # writable: RDONLY cleared, DIRTY (55) and WRITE/DBM (51) set
    leaf = f.walk_after[-1][3]
    assert leaf & ~ADDRESS_BITS == 1 << 55 | 1 << 54 | 1 << 53 | 1 << 51 | 0x800 | 0x400 | 0x300 | 0x40 | 3
    assert leaf == derive_arm64_anonymous_pte(f.pfn, f.vma.flags, True, (6, 18)).value
    assert f.path[:6] == ("el0t_64_sync", "el0t_64_sync_handler", "el0_da", "do_mem_abort", "do_translation_fault",
                          "do_page_fault")


FOUR_K = sorted(name for name, ev in FIXTURES.items() if ev.page_size == 4096)   # the simulator's page size


def test_two_4k_guests_were_captured():
    assert FOUR_K == ["6.1.0-50-arm64", "6.12.95+deb12-arm64"]


@pytest.mark.parametrize("name", FOUR_K)
def test_entries_have_the_bits_the_live_kernel_wrote(name):
    """The model's table and page descriptors carry exactly the non-address bits the guest's kernel wrote
    for the same fault (a write to fresh anonymous memory), in the guest's shape."""
    live = FIXTURES[name]
    f = first_touch(arm64(len(live.walk_after), live.lpa2))
    model_bits = [e & ~ADDRESS_BITS for *_, e in f.walk_after]
    live_bits = [r.value & ~ADDRESS_BITS for r in live.walk_after]
    assert [lv for lv, *_ in f.walk_after] == [r.level for r in live.walk_after]
    assert model_bits == live_bits, [hex(v) for v in model_bits + live_bits]


def test_the_model_and_the_decoder_read_its_entries_alike():
    f = first_touch(arm64(5, lpa2=True))
    level, _t, _i, leaf = f.walk_after[-1]
    d = decode_arm64_descriptor(leaf, level, (6, 18), 52, pa_bits=52)
    assert d.kind is DescriptorKind.PAGE and d.pfn == f.pfn and d.writable and d.dirty and not d.suspicions
    assert decode_esr(f.error_code).fault_level == -1       # LPA2's level −1 PGD was empty


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
@pytest.mark.parametrize("levels", [3, 4, 5])
def test_every_scenario_ends_as_on_x86(scenario, levels):
    a = run_in_model(scenario, arm64(levels, lpa2=levels == 5))
    x = run_in_model(scenario, mk.ModelConfig())
    assert [(f.outcome, f.stack_grown_pages) for fs in a.faults_by_op for f in fs] == \
        [(f.outcome, f.stack_grown_pages) for fs in x.faults_by_op for f in fs]
    assert a.final_states() == x.final_states()
    # what arm64's do_page_fault makes of each ESR, as the live kprobe reports it
    for row in from_model(a).rows:
        assert row.arch is Arch.ARM64
        if row.outcome in (mk.MAPERR, mk.ACCERR):
            assert row.handler_flags == "not called"
        else:
            assert row.handler_flags.startswith("USER")


def test_protection_faults_are_permission_faults_at_the_leaf():
    run = run_in_model(find_scenario("fork-then-write"), arm64(4))
    child_write = run.faults_by_op[4][0]
    syndrome = decode_esr(child_write.error_code)
    assert child_write.outcome == mk.COPY and syndrome.write and syndrome.fault_level == 3
    assert child_write.error_code & 0x3F == 0x0F                 # permission fault, level 3
    assert "do_translation_fault" not in child_write.path       # fault_info[]: permission faults go straight on


def test_mprotect_read_only_keeps_the_dirty_state_in_software():
    run = run_in_model(find_scenario("mprotect-violation"), arm64(4))
    k, proc = run.kernel, run.parent
    entry = k.walk(proc, run.region)[-1][3]
    d = decode_arm64_descriptor(entry, "PTE", (6, 18))
    # pte_modify(): hardware-dirty (DBM, AP[2] clear) saved as PTE_DIRTY, then PAGE_READONLY's bits
    assert entry & 1 << 55 and entry & 1 << 7 and not entry & 1 << 51 and d.dirty and not d.writable
    assert run.faults_by_op[3][0].outcome == mk.ACCERR


def test_an_arm64_shape_that_does_not_exist_is_refused():
    with pytest.raises(ValueError, match="3, 4 or 5"):
        mk.SimulatedKernel(arm64(2))
    with pytest.raises(ValueError, match="4 or 5"):
        mk.SimulatedKernel(mk.ModelConfig(paging_levels=3))


def test_the_model_journey_speaks_arm64():
    j = build_model_journey(run_in_model(find_scenario("first-touch"), arm64(4)))
    trap = next(s for s in j.steps if s.key == "trap")
    labels = {v.label: v for v in trap.values}
    assert labels["ESR_EL1"].value == 0x92000044 and "FAR_EL1" in " ".join(labels)
    assert j.walk.root_register == "TTBR0_EL1" and j.walk.architecture == "arm64"
    pte = next(s for s in j.steps if s.key == "pte")
    assert next(v for v in pte.values if v.label.startswith("derive_arm64_anonymous_pte")).value is True
    flags = next(s for s in j.steps if s.key == "flags")
    # FAULT_FLAG_DEFAULT | USER | WRITE | VMA_LOCK in 6.18's enum
    assert next(v for v in flags.values if v.label == "flags").value == 0x1255


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 15), st.booleans()), min_size=1, max_size=24),
       st.sampled_from([3, 4, 5]))
def test_any_accesses_leave_descriptors_that_decode_to_the_pagemap(accesses, levels):
    """After any reads and writes in an anonymous region: every page descriptor decodes as a valid user
    page whose PFN is pagemap's, writable exactly where a write happened (the zero page elsewhere)."""
    k = mk.SimulatedKernel(arm64(levels, lpa2=levels == 5))
    proc = k.exec()
    region = k.mmap(proc, 16 * 4096, mk.PROT_READ | mk.PROT_WRITE, mk.MAP_PRIVATE | mk.MAP_ANONYMOUS)
    written: set[int] = set()
    for page, write in accesses:
        k.access(proc, region + page * 4096, write=write)
        if write:
            written.add(page)
    fmt = k.fmt
    assert isinstance(fmt, Arm64Format)
    for page in {p for p, _w in accesses}:
        level, _t, _i, entry = k.walk(proc, region + page * 4096)[-1]
        d = decode_arm64_descriptor(entry, level, (6, 18), Arm64Format.VA_BITS[levels],
                                    pa_bits=52 if levels == 5 else 48)
        assert d.kind is DescriptorKind.PAGE and d.valid and not d.suspicions
        assert d.pfn == k.pagemap(proc, region + page * 4096) & ((1 << 55) - 1)
        assert d.writable == (page in written)
        assert (d.pfn == k.zero_pfn) == (page not in written)
        # and the MMU now lets the access through without a fault
        assert k.access(proc, region + page * 4096, write=page in written) is None


def test_the_cli_runs_the_arm64_simulator_on_any_machine(tmp_path):
    import json
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "pagefault", "journey", "--model", "--arch", "arm64", "--scenario",
                        "read-then-write", "--format", "json", "-o", str(tmp_path / "j.json")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    j = json.loads((tmp_path / "j.json").read_text())
    trap = next(s for s in j["steps"] if s["key"] == "trap")
    esr = next(v for v in trap["values"] if v["label"] == "ESR_EL1")
    # the featured fault: the write after the read, a permission fault on the zero page's read-only PTE
    assert esr["value"] == 0x9200004F and esr["provenance"] == "modelled"
    assert any("the simulator follows arm64" in n for n in j["notes"])


# --- the arm64 guests' live scenarios, replayed against the arm64 simulator --------------------------

EVIDENCE = Path(__file__).parent / "fixtures" / "evidence"
ARM64_SCENARIOS = sorted(p for p in EVIDENCE.glob("*arm64*/scenario-*.json.gz"))


def test_both_4k_arm64_guests_ran_every_scenario():
    from pagefault.model.scenarios import SCENARIOS as LIBRARY
    kernels = {p.parent.name for p in ARM64_SCENARIOS}
    assert kernels == {"6.1.0-50-arm64", "6.12.95+deb12-arm64"}
    for kernel in kernels:
        names = {p.name.split(".")[0].split("-", 1)[1] for p in (EVIDENCE / kernel).glob("scenario-*.json.gz")}
        assert names == {s.name for s in LIBRARY}, kernel


@pytest.mark.parametrize("path", ARM64_SCENARIOS, ids=lambda p: f"{p.parent.name}/{p.name.split('.')[0]}")
def test_the_arm64_simulator_agrees_with_the_guest(path):
    from pagefault.journey.scenario_check import cross_check
    ev = load_evidence(path).evidence
    assert ev.arch is Arch.ARM64 and ev.kprobe_faults, "an arm64 scenario needs the kprobes' flags"
    model, live, agreement, run = cross_check(find_scenario(ev.scenario), ev)
    assert run.kernel.config.arch is Arch.ARM64 and run.kernel.config.paging_levels == ev.paging_levels
    assert agreement.agree, agreement.lines
    # every live fault is a software page-fault sample inside the region, with the PC it trapped at
    for i in range(len(ev.snapshots)):
        for e in ev.region_faults(i):
            assert e.name == "page-faults" and e.fields["ip"] and "error_code" not in e.fields
    assert [r.handler_flags for r in live.rows] == [r.handler_flags for r in model.rows]


def _scenario(kernel: str, name: str):
    return load_evidence(EVIDENCE / kernel / f"scenario-{name}.json.gz").evidence


def test_a_fault_whose_flags_lost_write_makes_the_verdict_fail():
    import copy

    from pagefault.journey.scenario_check import cross_check
    ev = copy.deepcopy(_scenario("6.12.95+deb12-arm64", "first-touch"))
    write = ev.fault_flag_table["FAULT_FLAG_WRITE"]
    for kp in ev.kprobe_faults:
        if kp.flags is not None:
            kp.flags &= ~write
    _m, _l, agreement, _r = cross_check(find_scenario("first-touch"), ev)
    assert not agreement.agree
    assert any("handle_mm_fault flags USER → new page" in line and "differs" in line for line in agreement.lines)


def test_without_the_kprobes_every_fault_reads_as_not_passed_on_and_disagrees():
    import copy

    from pagefault.journey.scenario_check import cross_check
    ev = copy.deepcopy(_scenario("6.1.0-50-arm64", "read-then-write"))
    ev.kprobe_faults = []
    _m, live, agreement, _r = cross_check(find_scenario("read-then-write"), ev)
    assert {r.handler_flags for r in live.rows} == {"not called"} and not agreement.agree


def test_a_scenario_capture_says_it_was_arm64_and_replays_with_its_shape():
    from pagefault.core import replay
    path = EVIDENCE / "6.12.95+deb12-arm64" / "scenario-fork-then-write.json.gz"
    j = replay(path)
    verdict = next(s for s in j.steps if s.key == "model")
    assert "arm64, 5 levels" in verdict.values[0].source
    faults = [v for s in j.steps if s.key.startswith("op") for v in s.values if v.label.startswith("fault on page")]
    assert faults and all(v.value.startswith("handle_mm_fault flags USER|WRITE") for v in faults)
    assert all("kprobe handle_mm_fault" in v.source for v in faults)


def test_an_observed_esr_is_held_to_the_models():
    from pagefault.journey.scenario_check import compare_esr
    # mprotect-violation: a write to a read-only page, permission fault at level 3, on both sides
    assert compare_esr(0x9200004F, 0x9200004F)[0]
    # a translation fault at another level: the live process had more tables; the level is not compared
    same, text = compare_esr(0x92000044, 0x92000047)
    assert same and "level: live 3, model 0" in text
    # a read where the model wrote, or a translation fault where it took a permission fault: refused
    assert not compare_esr(0x9200004F, 0x9200000F)[0]
    assert not compare_esr(0x9200004F, 0x92000047)[0]


@pytest.mark.parametrize("kernel", ["6.1.0-50-arm64", "6.12.95+deb12-arm64"])
@pytest.mark.parametrize("name, kind", [("mprotect-violation", "permission"), ("unmapped-access", "translation")])
def test_a_sigsegv_on_arm64_carries_the_real_esr(kernel, name, kind):
    """The scenario program read ESR_EL1 from its signal frame: a data abort from EL0 with WnR set, of the
    kind the model's MMU raised; the verdict compares them."""
    from pagefault.decode.esr import FaultStatusKind
    from pagefault.journey.scenario_check import cross_check
    ev = _scenario(kernel, name)
    snap = next(s for s in ev.snapshots if s.segv_code)
    syndrome = decode_esr(snap.segv_esr)
    assert syndrome.exception_class == 0x24 and syndrome.from_user and syndrome.write
    assert syndrome.fault_status_kind is FaultStatusKind[kind.upper()]
    if kind == "permission":
        assert syndrome.fault_level == 3
    _m, live, agreement, _r = cross_check(find_scenario(name), ev)
    assert live.rows[-1].esr == snap.segv_esr
    assert agreement.agree and any(line.startswith(f"fault {len(live.rows) - 1}: the ESR agrees")
                                   for line in agreement.lines), agreement.lines


HELPERS = ("mkwrite", "mkdirty", "mkyoung", "mkold", "wrprotect", "mkspecial")


@settings(max_examples=200, deadline=None)
@given(st.integers(1, (1 << 36) - 1), st.sampled_from([0x1, 0x3, 0x9, 0xB, 0x0, 0x4 | 0x1]),
       st.lists(st.sampled_from(HELPERS + ("modify",)), max_size=12), st.sampled_from([0x1, 0x3, 0xB]))
def test_the_models_helpers_and_the_decoder_agree_on_every_entry(pfn, vm_flags, steps, new_flags):
    """Any sequence of the model's arm64 pte helpers on any page: the decoder reads the same PFN, the same
    pte_write() and pte_dirty(), and a valid user page whenever the mapping is readable."""
    fmt = Arm64Format(4)
    entry = fmt.mk_pte(pfn, fmt.page_prot(vm_flags))
    for step in steps:
        entry = fmt.modify(entry, fmt.page_prot(new_flags), huge=False) if step == "modify" else \
            getattr(fmt, step)(entry)
    d = decode_arm64_descriptor(entry, "PTE", (6, 18))
    assert fmt.frame(entry) == pfn
    if d.valid:
        assert d.pfn == pfn and d.writable == fmt.write(entry) and d.dirty == fmt.dirty(entry)
        assert d.kind is DescriptorKind.PAGE and entry & 1 << 6     # USER: EL0 may use it
    else:
        # PROT_NONE (no READ, WRITE or EXEC since the last protection change): present to Linux only
        assert d.kind is DescriptorKind.PROT_NONE and d.present and fmt.present(entry)


@pytest.mark.parametrize("field, value, words", [("arch", "sparc", "expected Arch @ evidence.arch"),
                                                 ("paging_levels", 2, "walks 3, 4 or 5 levels"),
                                                 ("paging_levels", "four", "paging_levels")])
def test_a_tampered_arm64_scenario_file_is_refused_in_one_line(tmp_path, field, value, words):
    import gzip
    import json
    import subprocess
    import sys
    source = EVIDENCE / "6.1.0-50-arm64" / "scenario-first-touch.json.gz"
    doc = json.loads(gzip.decompress(source.read_bytes()))
    doc["evidence"][field] = value
    bad = tmp_path / "bad.json.gz"
    bad.write_bytes(gzip.compress(json.dumps(doc).encode()))
    r = subprocess.run([sys.executable, "-m", "pagefault", "journey", "--replay", str(bad), "--format", "json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0


@pytest.mark.parametrize("config", [mk.ModelConfig(), arm64(4), arm64(5, lpa2=True)],
                         ids=["x86_64", "arm64-4", "arm64-5"])
def test_prot_none_keeps_the_page_and_mprotect_back_restores_it(config):
    """A PROT_NONE entry is invalid to the MMU but present to Linux (pte_present): pagemap still shows its
    frame, an access is refused (SEGV_ACCERR), and mprotect back makes it usable with no new page."""
    k = mk.SimulatedKernel(config)
    proc = k.exec()
    region = k.mmap(proc, 4096, mk.PROT_READ | mk.PROT_WRITE, mk.MAP_PRIVATE | mk.MAP_ANONYMOUS)
    k.access(proc, region, write=True)
    frame = k.pagemap(proc, region) & ((1 << 55) - 1)
    allocations = len(k.allocs)
    k.mprotect(proc, region, 4096, 0)
    entry = k.walk(proc, region)[-1][3]
    assert not entry & 1 and k.fmt.present(entry)
    assert k.pagemap(proc, region) == 1 << 63 | 1 << 56 | frame
    assert k.access(proc, region).outcome == mk.ACCERR
    k.mprotect(proc, region, 4096, mk.PROT_READ | mk.PROT_WRITE)
    # exclusive and dirty: MM_CP_TRY_CHANGE_WRITABLE makes it writable at once, so neither access faults
    assert k.access(proc, region, write=True) is None and k.access(proc, region) is None
    assert k.pagemap(proc, region) & ((1 << 55) - 1) == frame and len(k.allocs) == allocations


def test_the_live_kernel_keeps_a_prot_none_page_as_the_model_does():
    """This machine's kernel, on the same steps: pagemap shows the page present, with the same entry, while
    it is PROT_NONE and after mprotect back (the model's test above asserts the same of the model)."""
    import ctypes
    import struct
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    addr = libc.mmap(None, 4096, mk.PROT_READ | mk.PROT_WRITE, mk.MAP_PRIVATE | mk.MAP_ANONYMOUS, -1, 0)
    assert addr not in (None, ctypes.c_void_p(-1).value)

    def pagemap() -> int:
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(addr // 4096 * 8)
            return struct.unpack("<Q", f.read(8))[0]
    try:
        ctypes.memset(addr, 1, 1)
        written = pagemap()
        assert written >> 63
        assert libc.mprotect(addr, 4096, 0) == 0
        assert pagemap() == written
        assert libc.mprotect(addr, 4096, mk.PROT_READ | mk.PROT_WRITE) == 0
        assert pagemap() == written
    finally:
        libc.munmap(addr, 4096)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_every_view_renders_the_arm64_simulators_journey(scenario):
    from pagefault.views import journey_view
    from pagefault.views.html import render_html
    j = build_model_journey(run_in_model(scenario, arm64(5, lpa2=True)))
    assert "TTBR0_EL1" in render_html(j)
    assert "ESR\\_EL1" in journey_view.to_markdown(j)          # Markdown escapes the underscore
    assert '"ESR_EL1"' in journey_view.to_json(j)
