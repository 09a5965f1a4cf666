"""The step catalogue and the one builder, and the Arch interface the builders ask.

The catalogue's promises are checked on every saved capture's journey and the simulator's journeys:
steps in the catalogue's order, numbered from 1, titled as the catalogue tells them for that source and
architecture. The Arch interface is checked against the decoders it wraps, and each architecture's
syndrome against the flags it must give.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pagefault.core import journey_from_evidence
from pagefault.decode.address import join_virtual_address
from pagefault.decode.arch import Arch
from pagefault.decode.arch_interface import arch_interface
from pagefault.decode.arm64_address import join_arm64_address
from pagefault.decode.esr import ExceptionClass, derive_esr, encode_esr
from pagefault.decode.fault_flags import fallback_fault_flag_values
from pagefault.evidence import Arm64FaultEvidence, JourneyEvidence, ProgramFaultEvidence
from pagefault.evidence.file import load_evidence
from pagefault.journey.catalogue import CATALOGUE, STEP_DEFS, STEP_WS, Missing, assemble
from pagefault.journey.model_journey import build_model_journey
from pagefault.journey.scenario_check import model_config
from pagefault.journey.steps import Provenance, Step, observed
from pagefault.journey.vocabulary import Source, Stage, StepKey, W, seven_ws
from pagefault.model.kernel import VM_MAYREAD, VM_MAYWRITE, VM_READ, VM_WRITE
from pagefault.model.scenarios import SCENARIOS, run_in_model

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "evidence"
ORDER = [d.key for d in CATALOGUE]


def _fill_pid(s: Step) -> None:
    s.values.append(observed("PID", 42, "a test"))


def test_assemble_numbers_titles_and_says_why_a_step_is_missing() -> None:
    steps = assemble({StepKey.RETURN: _fill_pid, StepKey.PROCESS: _fill_pid,
                      StepKey.RIP: Missing("the simulator runs no machine code")}, Source.MODEL, Arch.ARM64)
    assert [s.key for s in steps] == [StepKey.PROCESS, StepKey.RIP, StepKey.RETURN]   # the catalogue's order
    assert [s.number for s in steps] == [1, 2, 3]
    assert steps[1].title == arch_interface(Arch.ARM64).step_titles[StepKey.RIP]
    assert steps[0].stage == Stage.READY and steps[2].stage == Stage.TOUCHED
    (missing,) = steps[1].values
    assert missing.label == STEP_DEFS[StepKey.RIP].missing_label
    assert missing.provenance is Provenance.UNAVAILABLE and missing.source == "the simulator runs no machine code"


def test_a_source_that_reads_after_the_run_sets_every_stage() -> None:
    steps = assemble({StepKey.TRAP: _fill_pid, StepKey.PTE: _fill_pid}, Source.PROGRAM, stage=Stage.DONE)
    assert {s.stage for s in steps} == {Stage.DONE}
    assert steps[0].title == STEP_DEFS[StepKey.TRAP].told_as[Source.PROGRAM]


def test_seven_ws_refuses_a_misspelt_w() -> None:
    assert list(seven_ws(which="a", what="b")) == [W.WHICH, W.WHAT]
    with pytest.raises(ValueError):
        seven_ws(wat="a typo a view would silently drop")


def _journeys():
    for path in sorted(FIXTURES.glob("*/*.json.gz")):
        ev = load_evidence(path).evidence
        if isinstance(ev, (JourneyEvidence, ProgramFaultEvidence, Arm64FaultEvidence)):
            source = {JourneyEvidence: Source.EXERCISE, ProgramFaultEvidence: Source.PROGRAM,
                      Arm64FaultEvidence: Source.ARM64_EXERCISE}[type(ev)]
            arch = Arch.ARM64 if isinstance(ev, Arm64FaultEvidence) else Arch.X86_64
            yield f"{path.parent.name}/{path.name}", journey_from_evidence(ev), source, arch
    for scenario in SCENARIOS:
        for arch in Arch:
            run = run_in_model(scenario, model_config(None, 4, arch))
            yield f"model/{arch.value}/{scenario.name}", build_model_journey(run), Source.MODEL, arch


@pytest.mark.parametrize("name,journey,source,arch", list(_journeys()), ids=lambda x: x if isinstance(x, str) else "")
def test_every_journey_follows_the_catalogue(name, journey, source, arch) -> None:
    steps = [s for s in journey.steps if s.key in STEP_DEFS]       # the simulator adds one step per operation after
    assert steps, name
    assert [s.number for s in steps] == list(range(1, len(steps) + 1))
    positions = [ORDER.index(StepKey(s.key)) for s in steps]
    assert positions == sorted(positions), f"{name}: steps out of the catalogue's order"
    for s in steps:
        assert s.title == STEP_DEFS[StepKey(s.key)].title_for(source, arch), (name, s.key)
        assert set(s.ws) <= set(W), (name, s.key, set(s.ws) - set(W))


# --- the Arch interface -----------------------------------------------------------------------------------

FLAGS, FLAGS_SOURCE = fallback_fault_flag_values((6, 18))


def _flag_names(value: int) -> set[str]:
    return {n.removeprefix("FAULT_FLAG_") for n, bit in FLAGS.items() if value & bit}


def test_x86_error_code_and_arm64_esr_give_the_same_flags_for_a_user_write() -> None:
    x86, arm64 = arch_interface(Arch.X86_64), arch_interface(Arch.ARM64)
    esr = derive_esr(write=True, instruction=False, user=True, fault_level=3).value
    for arch, code in ((x86, 0x6), (arm64, esr)):
        meaning = arch.decode_syndrome(code)
        assert meaning.write and not meaning.present, (arch.arch, meaning)
        value, how = arch.fault_flags(code, FLAGS, FLAGS_SOURCE, vma_lock=True)
        assert {"WRITE", "USER"} <= _flag_names(value), (arch.arch, hex(value), how)
        assert "INSTRUCTION" not in _flag_names(value)


def test_a_read_and_a_permission_fault_read_as_such() -> None:
    x86, arm64 = arch_interface(Arch.X86_64), arch_interface(Arch.ARM64)
    read = derive_esr(write=False, instruction=False, user=True, fault_level=3).value
    assert not arm64.decode_syndrome(read).write and not x86.decode_syndrome(0x4).write
    permission = encode_esr(ExceptionClass.DABT_LOW, 0x0F, write=True)      # permission fault, level 3
    assert arm64.decode_syndrome(permission).present and x86.decode_syndrome(0x7).present
    assert "WRITE" not in _flag_names(arm64.fault_flags(read, FLAGS, FLAGS_SOURCE, vma_lock=True)[0])


@pytest.mark.parametrize("arch,levels,va_bits,granule,address", [
    (Arch.X86_64, 4, 48, 4096, 0x7F949C434100), (Arch.X86_64, 5, 57, 4096, 0xFF7F949C434100),
    (Arch.ARM64, 4, 48, 4096, 0xFFFF8C2A1100), (Arch.ARM64, 3, 47, 16384, 0x7FFF8C2A5100)])
def test_an_address_splits_into_indices_that_join_back(arch, levels, va_bits, granule, address) -> None:
    iface = arch_interface(arch, levels, va_bits=va_bits, granule=granule)
    indices, how = iface.split(address)
    assert how
    offset = address & (granule - 1)
    for i in indices:
        assert i.index == (address >> i.shift) & i.mask
    values = [i.index for i in indices]
    joined = (join_virtual_address(values, offset, levels) if arch is Arch.X86_64
              else join_arm64_address(values, offset, va_bits, granule))
    assert joined == address


def test_entries_decode_to_their_frames() -> None:
    x86 = arch_interface(Arch.X86_64)
    assert x86.describe_entry(0x800000013A875067, "PTE").pfn == 0x13A875     # seen here, DESIGN.md
    assert x86.describe_entry(0, "PTE").pfn is None
    assert x86.leaf_frame(0x800000013A8000E7, "PMD") == (0x13A800, 2 << 20)  # PSE: a 2 MiB leaf
    flags = VM_READ | VM_WRITE | VM_MAYREAD | VM_MAYWRITE
    for pa_bits in (48, 52):
        arm64 = arch_interface(Arch.ARM64, 4, pa_bits=pa_bits)
        built = arm64.derive_anonymous_entry(0x12345, flags, True, (6, 12))
        assert arm64.describe_entry(built.value, "PTE", (6, 12)).pfn == 0x12345, hex(built.value)
        assert arm64.leaf_frame(built.value, "PTE", (6, 12)) == (0x12345, 4096)
    derived = x86.derive_anonymous_entry(0x13A875, flags, True, (6, 18))
    assert x86.describe_entry(derived.value, "PTE").pfn == 0x13A875


def test_a_steps_ws_are_the_sources_telling_and_the_fillers_own_in_w_order() -> None:
    def fill(s: Step) -> None:
        s.ws = seven_ws(which="PFN 0x1234", what="an order-0 page")

    (step,) = assemble({StepKey.ALLOC: fill}, Source.EXERCISE)
    told = STEP_WS[StepKey.ALLOC][Source.EXERCISE]
    assert list(step.ws) == [w for w in W if w in told or w in (W.WHAT, W.WHICH)]
    assert step.ws[W.WHICH] == "PFN 0x1234" and step.ws[W.WHY] == told[W.WHY]
    (bare,) = assemble({StepKey.ALLOC: Missing("no allocation seen")}, Source.EXERCISE)
    assert bare.ws == told                          # the explanation stands when the values are unavailable
    (model,) = assemble({StepKey.ALLOC: Missing("x")}, Source.MODEL)
    assert not model.ws                             # a source tells only what it tells


def _saved(name: str):
    return load_evidence(next(FIXTURES.glob(f"6.18*/{name}"))).evidence


def test_live_evidence_without_a_steps_inputs_gives_the_catalogues_unavailable_step() -> None:
    ev = _saved("journey-perf.json.gz")
    ev.events = [e for e in ev.events if e.name != "kmem:mm_page_alloc"]     # as a tier without the tracepoint
    ev.unavailable["kmem:mm_page_alloc"] = "no allocation tracepoint here"
    step = next(s for s in journey_from_evidence(ev).steps if s.key == StepKey.ALLOC)
    (value,) = step.values
    assert (value.label, value.provenance, value.source) == (STEP_DEFS[StepKey.ALLOC].missing_label,
                                                             Provenance.UNAVAILABLE, "no allocation tracepoint here")
    assert step.ws == STEP_WS[StepKey.ALLOC][Source.EXERCISE]


def test_a_program_fault_without_bpf_reads_says_why_its_walk_is_missing() -> None:
    ev = _saved("program-own.json.gz")
    ev.bpf = None
    ev.unavailable["bpf"] = "bpftrace is not installed"
    walk = next(s for s in journey_from_evidence(ev).steps if s.key == StepKey.WALK)
    assert [(v.label, v.provenance, v.source) for v in walk.values] == [
        (STEP_DEFS[StepKey.WALK].missing_label, Provenance.UNAVAILABLE, "bpftrace is not installed")]


# --- a scenario's steps -----------------------------------------------------------------------------------

def _scenario_journeys():
    from pagefault.evidence import ScenarioEvidence
    for path in sorted(FIXTURES.glob("*/scenario-*.json.gz")):
        ev = load_evidence(path).evidence
        assert isinstance(ev, ScenarioEvidence), path
        yield f"{path.parent.name}/{path.name}", ev, journey_from_evidence(ev)


@pytest.mark.parametrize("name,ev,journey", list(_scenario_journeys()), ids=lambda x: x if isinstance(x, str) else "")
def test_a_live_scenario_journey_is_the_catalogues_scenario_steps(name, ev, journey) -> None:
    from pagefault.journey.catalogue import SCENARIO_DEFS
    keys = [s.key for s in journey.steps]
    assert keys == ["scenario"] + [f"op{snap.index}" for snap in ev.snapshots] + ["model"], name
    assert [s.number for s in journey.steps] == list(range(1, len(keys) + 1))
    first, *ops, verdict = journey.steps
    assert first.stage == SCENARIO_DEFS[StepKey.SCENARIO].stage and first.title.startswith(f"Scenario {ev.scenario}: ")
    assert verdict.title == SCENARIO_DEFS[StepKey.VERDICT].title
    for s, snap in zip(ops, ev.snapshots):
        assert s.title == f"Operation {snap.index}: {snap.op}" and s.stage == SCENARIO_DEFS[StepKey.OPERATION].stage
    # the trap is shown as the architecture lets it be seen: the error code on x86, the handler's flags on arm64
    traps = [v.display for s in ops for v in s.values if v.label.startswith("fault on page")]
    assert traps or "populate" in name, name     # MAP_POPULATE faults the pages in inside mmap: no trap
    word = "error code 0x" if ev.arch is Arch.X86_64 else "handle_mm_fault"
    assert all(str(t).startswith(word) for t in traps), (name, traps)
