"""The evidence a journey is built from: plain data, captured live or loaded from a file.

This package touches nothing on the machine. capture/ fills these records; journey/ builds steps
from them; pagefault.evidence.file saves and loads them, so a journey captured as root on one machine
can be opened anywhere Python runs.
"""

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

__all__ = ["Arm64FaultEvidence", "Arm64WalkRead",
           "BpfWalk", "ExerciseError", "ExerciseOptions", "JourneyEvidence", "KprobeFault", "KprobeMmap", "Mapping",
           "MapsLine", "MemorySettings", "OpSnapshot", "Program", "ProgramFaultEvidence", "RipFacts",
           "ScenarioEvidence", "Snapshot", "TraceEvent", "WalkRead", "MapleStep", "parse_maps"]
