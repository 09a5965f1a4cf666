"""The evidence a journey is built from: plain data, captured live or loaded from a file.

This package touches nothing on the machine. capture/ fills these records; journey/ builds steps
from them; pagefault.evidence.file saves and loads them, so a journey captured as root on one machine
can be opened anywhere Python runs.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .records import (
                          Arm64FaultEvidence,
                          Arm64WalkRead,
                          BpfWalk,
                          ExerciseError,
                          ExerciseOptions,
                          JourneyEvidence,
                          KprobeFault,
                          KprobeMmap,
                          MapleStep,
                          Mapping,
                          MapsLine,
                          MemorySettings,
                          OpSnapshot,
                          Program,
                          ProgramFaultEvidence,
                          RipFacts,
                          ScenarioEvidence,
                          Snapshot,
                          TraceEvent,
                          WalkRead,
                          parse_maps,
    )


def __getattr__(name: str) -> object:
    """The records, imported at their first use: `pagefault trace` needs only evidence.maps, and records.py's
    dataclasses (with the decoders they use) cost it tens of milliseconds at every start."""
    if name in __all__:
        from . import records
        return getattr(records, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Arm64FaultEvidence", "Arm64WalkRead",
           "BpfWalk", "ExerciseError", "ExerciseOptions", "JourneyEvidence", "KprobeFault", "KprobeMmap", "Mapping",
           "MapsLine", "MemorySettings", "OpSnapshot", "Program", "ProgramFaultEvidence", "RipFacts",
           "ScenarioEvidence", "Snapshot", "TraceEvent", "WalkRead", "MapleStep", "parse_maps"]
