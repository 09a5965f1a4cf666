"""The journey's closed vocabularies, each defined once: step keys, phases, the 7 Ws, the sources.

StrEnums, so each prints, compares, hashes and serialises as its word: a journey's JSON is the same
whether a step was keyed by the member or by the word.
"""

from __future__ import annotations

import enum


class StepKey(enum.StrEnum):
    PROCESS = "process"
    SELECTED = "selected"
    MMAP = "mmap"
    TRAP = "trap"
    RIP = "rip"
    FLAGS = "flags"
    VMA = "vma"
    WALK = "walk"
    ALLOC = "alloc"
    CLASS = "class"
    PAGEMAP = "pagemap"
    PTE = "pte"
    RETURN = "return"
    # a scenario's own steps: the scenario, one per operation (keyed op0, op1, …), the simulator's verdict
    SCENARIO = "scenario"
    OPERATION = "op"
    VERDICT = "model"


class Stage(enum.StrEnum):
    """The phase the exercise program is paused at (its handshake's words); DONE: read after it ran."""

    READY = "ready"
    MAPPED = "mapped"
    TOUCHED = "touched"
    DONE = "done"


class W(enum.StrEnum):
    """The 7 Ws each step answers, in the order they are shown."""

    WHAT = "what"
    WHY = "why"
    WHERE = "where"
    WHO = "who"
    WHEN = "when"
    WITHOUT = "without"
    WHICH = "which"


def seven_ws(**answers: str) -> dict[str, str]:
    """A step's 7 Ws; a key that is not one of them (a typo) raises ValueError here, not in a view."""
    return {W(k): v for k, v in answers.items()}


class Source(enum.StrEnum):
    """Where a journey's evidence came from: each tells the same steps, some in its own words."""

    EXERCISE = "exercise"           # the live exercise program, paused at each phase (x86-64)
    ARM64_EXERCISE = "arm64 exercise"
    PROGRAM = "program"             # one fault of any program (journey -- CMD, -p PID)
    MODEL = "model"                 # the simulator


class FaultKind(enum.StrEnum):
    """The kinds of fault `pagefault journey --kind` picks (at the fault's entry, from its PTE and VMA; the
    classes its events may then show are program_journey.KIND_CLASSES). KERNEL: a fault on a user address
    taken in kernel mode, inside a system call (read() copying into a fresh buffer); a kind, not a separate
    --mode, because it is what a user asks for in one word ("show me a fault the kernel took for me"), and
    the other kinds stay what they were: faults the program's own instructions took, in user mode."""

    ANON = "anon"
    ZERO = "zero"
    COW = "cow"
    FILE = "file"
    MAJOR = "major"
    SWAP = "swap"
    THP = "thp"
    STACK = "stack"
    SEGV = "segv"
    KERNEL = "kernel"
