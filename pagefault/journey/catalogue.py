"""The step catalogue: every step of a journey defined once, and the one builder that assembles them.

A step's definition holds its key, its title (and how a source or an architecture tells it in its own
words), the phase the live exercise is paused at while it is read, the evidence it needs, and the label
of the value that stands in for it when a source lacks that evidence. Each source (the live exercise,
a fault in any program, the simulator, the arm64 exercise) gives the builder a filler per step it has
evidence for, or a ``Missing`` with the reason it has none; the builder numbers the steps in the
catalogue's order, titles them, and turns each ``Missing`` into the step's "unavailable, because …".

The closed vocabularies it uses (step keys, phases, the 7 Ws, the sources) are journey/vocabulary.py's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..decode.arch import Arch
from .steps import Step, unavailable
from .vocabulary import Source, Stage, StepKey


@dataclass(frozen=True)
class StepDef:
    key: StepKey
    title: str
    stage: Stage                    # the phase the live exercise is paused at while the step is read
    needs: str                      # the evidence the step is built from
    missing_label: str              # the value that says why, when a source lacks that evidence
    told_as: Mapping[Source | Arch, str] = field(default_factory=dict)   # a source's (or arch's) own title

    def title_for(self, source: Source, arch: Arch) -> str:
        return self.told_as.get(source) or self.told_as.get(arch) or self.title


_T = Stage.TOUCHED
CATALOGUE: tuple[StepDef, ...] = (
    StepDef(StepKey.PROCESS, "The process and its mm exist before main() runs", Stage.READY,
            "the exec and its PGD allocation", "PID"),
    StepDef(StepKey.SELECTED, "Which fault: chosen in the kernel while the program ran at full speed", Stage.DONE,
            "the selector and the chosen fault", "selector"),
    StepDef(StepKey.MMAP, "mmap() creates a VMA: a promise of memory, no page yet", Stage.MAPPED,
            "the mmap call and the VMA it made", "VMA"),
    StepDef(StepKey.TRAP, "The CPU traps: #PF with the faulting address, RIP and error code", _T,
            "the trap's address, instruction pointer and syndrome", "trap",
            {Arch.ARM64: "The CPU takes a data abort from EL0: FAR (the address), ELR (the PC) and ESR_EL1",
             Source.PROGRAM: "The CPU traps: address, RIP, error code"}),
    StepDef(StepKey.RIP, "RIP proven: the faulting instruction, found in the file", _T,
            "the faulting instruction's bytes", "instruction",
            {Arch.ARM64: "The PC proven: the faulting instruction, disassembled",
             Source.PROGRAM: "The instruction that faulted"}),
    StepDef(StepKey.FLAGS, "Fault flags: what do_user_addr_fault() hands to handle_mm_fault()", _T,
            "the syndrome and enum fault_flag", "flags",
            {Arch.ARM64: "Fault flags: what do_page_fault() hands to handle_mm_fault()",
             Source.PROGRAM: "The flags handle_mm_fault() gets"}),
    StepDef(StepKey.VMA, "The VMA lookup: is the address legal, and is a write allowed?", _T,
            "the VMA that holds the address", "VMA",
            {Source.PROGRAM: "The VMA that holds the address"}),
    StepDef(StepKey.WALK, "The page-table walk: one index per level", _T,
            "the page-table entries at each level", "walk",
            {Arch.ARM64: "The page-table walk: TTBR0_EL1 → one descriptor per level",
             Source.PROGRAM: "The page-table walk, before and after"}),
    StepDef(StepKey.ALLOC, "The buddy allocator hands out a page", _T,
            "the page allocations inside the fault", "allocation",
            {Source.PROGRAM: "The page the fault got"}),
    StepDef(StepKey.CLASS, "What kind of fault it was", _T, "the events inside the fault", "class"),
    StepDef(StepKey.PAGEMAP, "The PFN confirmed in /proc/PID/pagemap", _T,
            "the page's pagemap entry", "pagemap entry"),
    StepDef(StepKey.PTE, "The PTE that lets the retried instruction succeed", _T,
            "the leaf entry after the fault", "PTE after",
            {Arch.ARM64: "The page descriptor that lets the retried instruction succeed",
             Source.PROGRAM: "The PTE after, and the page behind it"}),
    StepDef(StepKey.RETURN, "Return: the instruction retried", _T,
            "what happened after the handler returned", "outcome",
            {Source.PROGRAM: "Back to the program"}),
)
STEP_DEFS: dict[StepKey, StepDef] = {d.key: d for d in CATALOGUE}


@dataclass(frozen=True)
class Missing:
    """A source lacks a step's evidence: the step is shown, its catalogue value unavailable with this reason."""

    reason: str


Filler = Callable[[Step], None]


def assemble(fillers: Mapping[StepKey, Filler | Missing], source: Source, arch: Arch = Arch.X86_64,
             stage: Stage | None = None) -> list[Step]:
    """The journey's steps: one per key given, in the catalogue's order, numbered from 1.

    Each step is the catalogue's (title as ``source`` and ``arch`` tell it; the catalogue's phase, or
    ``stage`` for a source that reads every step after the program ran), filled by its filler, or holding
    the catalogue's unavailable value when the source gave a ``Missing``.
    """
    steps: list[Step] = []
    for d in CATALOGUE:
        if d.key not in fillers:
            continue
        s = Step(len(steps) + 1, d.key, d.title_for(source, arch), stage or d.stage)
        filler = fillers[d.key]
        if isinstance(filler, Missing):
            s.values.append(unavailable(d.missing_label, filler.reason))
        else:
            filler(s)
        steps.append(s)
    return steps



# The live exercise's steps, in order (the stepper counts them).
EXERCISE_KEYS = (StepKey.PROCESS, StepKey.MMAP, StepKey.TRAP, StepKey.RIP, StepKey.FLAGS, StepKey.VMA, StepKey.WALK,
                 StepKey.ALLOC, StepKey.PAGEMAP, StepKey.PTE, StepKey.RETURN)
STEP_CATALOGUE = {k: STEP_DEFS[k] for k in EXERCISE_KEYS}
