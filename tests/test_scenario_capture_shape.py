"""What a live scenario asks of the machine, decided by its Arch interface (not by `uname -m`): an arm64
machine (no trap tracepoint) needs kprobes and records the software page-fault event; an x86 one needs neither.
The machine is stood in for (its shape, its kprobes); nothing here traces."""

import pytest

from pagefault.capture import scenario_capture
from pagefault.capture.tracer import CaptureError
from pagefault.decode.arch import Arch
from pagefault.decode.arch_interface import arch_interface
from pagefault.evidence import Program


def _machine(monkeypatch, arch: Arch, levels: int, kprobes: bool, page_size: int = 4096):
    monkeypatch.setattr(scenario_capture.facts, "model_shape", lambda: (arch, levels, arch is Arch.ARM64, "stood in"))
    monkeypatch.setattr(scenario_capture, "kprobe_support", lambda: (kprobes, "" if kprobes else "no kprobe PMU"))
    monkeypatch.setattr(scenario_capture.os, "sysconf", lambda name: page_size)


def test_an_arm64_machine_without_kprobes_is_refused_with_the_reason(monkeypatch):
    _machine(monkeypatch, Arch.ARM64, 4, kprobes=False)
    with pytest.raises(CaptureError, match=r"on arm64 a live scenario reads each fault from handle_mm_fault's "
                                           r"kprobe \(no kprobe PMU\)"):
        scenario_capture._machine_for_scenarios()


def test_an_x86_machine_without_kprobes_runs_the_scenario_from_its_tracepoint(monkeypatch):
    _machine(monkeypatch, Arch.X86_64, 5, kprobes=False)
    here, lpa2, kprobes, why = scenario_capture._machine_for_scenarios()
    assert (here.arch, here.paging_levels, here.syndrome_traced, lpa2, kprobes, why) == \
        (Arch.X86_64, 5, True, False, False, "no kprobe PMU")


def test_a_kernel_whose_pages_are_not_4k_is_refused(monkeypatch):
    _machine(monkeypatch, Arch.ARM64, 3, kprobes=True, page_size=16384)
    with pytest.raises(CaptureError, match="this kernel's pages are 16384 bytes"):
        scenario_capture._machine_for_scenarios()


@pytest.mark.parametrize("arch, levels, sources", [
    (Arch.X86_64, 4, {"exceptions:page_fault_user", "kmem:mm_page_alloc"}),
    (Arch.ARM64, 3, {"page-faults", "kmem:mm_page_alloc"})])
def test_the_evidence_says_its_architecture_and_where_its_faults_come_from(arch, levels, sources, monkeypatch):
    monkeypatch.setattr(scenario_capture.facts, "capture_origin", lambda: ("2026-12-04T00:00:00Z", "h"))
    traced = scenario_capture.SCENARIO_TRACEPOINTS if arch is Arch.X86_64 else \
        scenario_capture.UNTRACED_TRAP_TRACEPOINTS
    events = [scenario_capture.EventSpec(f"{s}:{n}", 0, 0, 0) for s, n, _required in traced]
    here = arch_interface(arch, levels)
    ev = scenario_capture._scenario_evidence(["touch 0"], Program("/p", "/p.c", "cc", ""), "first-touch", here,
                                             arch is Arch.ARM64, events)
    assert (ev.arch, ev.paging_levels, ev.lpa2, set(ev.event_sources)) == (arch, levels, arch is Arch.ARM64, sources)
