"""What each command does, apart from how it is asked for (cli.py parses the arguments and maps the
outcomes and core.errors' exceptions to exit statuses).

One module per command — decode, doctor, trace, report, journey_command, exercise, scenarios — each with
``run(args) -> Outcome``, taking the parsed arguments of its subcommand; ``journey`` runs a journey (live,
in the simulator, replayed). Each is imported only when its command runs, so `pagefault trace` loads none
of the journey's code; this package itself imports only core.errors.
"""

from __future__ import annotations

from typing import Any

from .errors import CannotTrace, JourneyUsageError, NothingMatched, Outcome, UsageError

__all__ = ["CannotTrace", "JourneyUsageError", "NothingMatched", "Outcome", "UsageError"]

# core.journey's names, reachable as pagefault.core.NAME (as when core was one module) without importing it
# with the package
_JOURNEY_NAMES = frozenset({
    "JourneyRequest", "model_journey", "complete_evidence", "build_live", "start_live", "stand_in_journey",
    "finish_live", "save_evidence", "program_fault_journey", "check_kind", "arm64_journey", "run_journey",
    "check_scenario", "live_scenario", "replay", "journey_from_evidence", "step_list", "step_through",
})


def __getattr__(name: str) -> Any:
    if name in _JOURNEY_NAMES:
        from . import journey
        return getattr(journey, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
