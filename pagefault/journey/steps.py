"""The journey's shape: steps of values, each value with its provenance.

observed    read on this machine; `source` says where (tracepoint, /proc file, the BPF walk's read)
derived     computed from observed values; `source` says how, the arithmetic is in `derivation`
modelled    from knowledge of the kernel source for a named version; `source` says which
unavailable could not be had here; `source` gives the reason and the fix
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from ..decode.arch import Arch
from ..decode.arch_interface import ArchInterface, arch_interface
from .vocabulary import Stage, StepKey, W


class Provenance(enum.StrEnum):
    """Where a value came from: the closed vocabulary of the provenance rule (a StrEnum, so it prints,
    compares and serialises as its word)."""

    OBSERVED = "observed"
    DERIVED = "derived"
    MODELLED = "modelled"
    UNAVAILABLE = "unavailable"


PROVENANCES = tuple(p.value for p in Provenance)


WS = tuple(W)    # the 7 Ws in the order they are shown


@dataclass
class Value:
    label: str
    value: Any                 # an int, a string, or None when unavailable
    provenance: Provenance | str   # given as a member (or its word); kept as the member
    source: str
    derivation: list[str] = field(default_factory=list)
    display: str = ""          # how to show it (hex for addresses); filled from value when empty

    def __post_init__(self) -> None:
        if self.provenance not in PROVENANCES:
            raise ValueError(f"unknown provenance {self.provenance!r}")
        self.provenance = Provenance(self.provenance)   # given as a word, kept as the enum member
        if not self.display:
            if self.value is None:
                self.display = "unavailable"
            elif isinstance(self.value, bool):
                self.display = "yes" if self.value else "no"
            elif isinstance(self.value, int):
                self.display = f"0x{self.value:x}" if self.value > 9 else str(self.value)
            else:
                self.display = str(self.value)


def observed(label: str, value: Any, source: str, display: str = "", derivation: list[str] | None = None) -> Value:
    return Value(label, value, Provenance.OBSERVED, source, list(derivation or []), display)


def derived(label: str, value: Any, how: str, derivation: list[str] | None = None, display: str = "") -> Value:
    return Value(label, value, Provenance.DERIVED, how, list(derivation or []), display)


def modelled(label: str, value: Any, model: str, derivation: list[str] | None = None, display: str = "") -> Value:
    return Value(label, value, Provenance.MODELLED, model, list(derivation or []), display)


def unavailable(label: str, reason: str) -> Value:
    return Value(label, None, Provenance.UNAVAILABLE, reason)


@dataclass
class Step:
    number: int
    key: StepKey | str                  # a catalogue step's StepKey; the simulator's operations are op0, op1, …
    title: str
    stage: Stage | str                  # the phase the target is paused at while this step is read
    values: list[Value] = field(default_factory=list)
    derivations: list[str] = field(default_factory=list)
    ws: dict[str, str] = field(default_factory=dict)
    evidence: list[str] = field(default_factory=list)   # raw lines: call chains, maps lines, entries

    def all_derivations(self) -> list[str]:
        """The values' derivations, then the step's own."""
        return [d for v in self.values for d in v.derivation] + self.derivations

    def value(self, label: str) -> Value:
        for v in self.values:
            if v.label == label:
                return v
        raise KeyError(label)


@dataclass
class TimelineEntry:
    time_us: float                      # since the target was spawned
    gap_us: float                       # since the previous entry
    what: str
    source: str


@dataclass
class WalkLevel:
    """One level of the page-table walk: the table, the entry at the address's index in it."""

    level: str                          # PGD, P4D, PUD, PMD, PTE
    index: int
    table: int | None                   # physical address of this level's table (None: not known here)
    entry: int | None                   # the entry once the fault was handled (None: not read)
    entry_before: int | None            # the entry at the trap (None: not read)
    provenance: Provenance              # of the entries
    source: str


@dataclass
class PageWalk:
    """The walk drawn in the HTML report: CR3 (TTBR0_EL1) → each level's table and entry → the page frame."""

    address: int
    cr3: int | None                     # the PGD's physical address
    cr3_source: str
    levels: list[WalkLevel] = field(default_factory=list)
    frame_pfn: int | None = None        # from the leaf entry's frame field
    page_size: int = 4096
    frame_source: str = "unavailable: no present entry was read"
    root_register: str = "CR3"          # the register holding the PGD's address: CR3, or TTBR0_EL1 on arm64
    architecture: str = "x86_64"
    va_bits: int = 48                   # arm64: the virtual-address size the walk's levels follow

    def set_frame(self, arch: ArchInterface | None = None, kernel: tuple[int, int] | None = None) -> None:
        """The frame and page size from the last entry read, when it maps one (a PMD or PUD leaf is huge on
        x86; arm64's drawing keeps its granule), decoded by ``arch`` (default: this walk's, in its shape)."""
        leaf = next((lv for lv in reversed(self.levels) if lv.entry is not None), None)
        if leaf is None or leaf.entry is None:
            return
        arch = arch or arch_interface(Arch(self.architecture), len(self.levels), va_bits=self.va_bits,
                                      granule=self.page_size)
        frame = arch.leaf_frame(leaf.entry, leaf.level, kernel)
        if frame is not None:
            self.frame_pfn, self.page_size = frame
            kind = Provenance.DERIVED if leaf.provenance == Provenance.OBSERVED else leaf.provenance
            self.frame_source = f"{kind}: {arch.frame_field(leaf.level)}"


@dataclass
class Area:
    """One VMA of the process, as /proc/PID/maps (or the simulator) shows it."""

    start: int
    end: int
    perms: str
    path: str
    holds_address: bool = False


@dataclass
class Journey:
    tier: str
    kernel: str
    pid: int
    command: list[str]
    program: str
    steps: list[Step] = field(default_factory=list)
    timeline: list[TimelineEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    complete: bool = False
    walk: PageWalk | None = None
    layout: list[Area] = field(default_factory=list)    # the VMAs when the fault was handled
    layout_source: str = ""
    fault_flag_table: dict[str, int] = field(default_factory=dict)   # enum fault_flag used for the flags step
    fault_flag_source: str = ""
    replayed_from: str = ""             # "replayed from FILE, captured on kernel K (host H) at T", or ""
    observed_with: list[str] = field(default_factory=list)   # the means of observation used, one line each


def timeline_from(items: list[tuple[int, str, str]], start_ns: int) -> list[TimelineEntry]:
    """(time in ns, what, source) items, sorted, as entries in µs since start_ns with the gap to the previous one."""
    out: list[TimelineEntry] = []
    prev: float | None = None
    for t, what, src in sorted(items):
        us = (t - start_ns) / 1000
        out.append(TimelineEntry(round(us, 1), round(us - prev, 1) if prev is not None else 0.0, what, src))
        prev = us
    return out
