"""The one way into core from the command line: the subcommand's module, imported when it runs."""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import Outcome

# subcommand → its module in core/ (each has run(args) -> Outcome)
COMMAND_MODULES = {"decode": "decode", "doctor": "doctor", "trace": "trace", "report": "report",
                   "journey": "journey_command", "scenarios": "scenarios", "exercise": "exercise"}


def run_command(args: argparse.Namespace) -> Outcome:
    """Runs the parsed subcommand ``args.command`` (None: no subcommand was given → Outcome.NO_COMMAND).

    Before it, the privilege rule of trace and journey for the command after --: under sudo it runs as the
    user who ran sudo unless --as-root asks for root (capture/runner.py), set only where capture code is
    loaded or --as-root was given, so a replay or a decode imports no capture code.

    :raises: whatever the command raises: UsageError, CannotTrace, NothingMatched (core.errors), OutputError,
        OutputWriteFailed (capture.safe_paths), OSError.
    """
    command = getattr(args, "command", None)
    if command not in COMMAND_MODULES:
        return Outcome.NO_COMMAND
    module = importlib.import_module(f"{__package__}.{COMMAND_MODULES[command]}")
    as_root = bool(getattr(args, "as_root", False))   # trace and journey: whom the command after -- runs as
    if as_root or "pagefault.capture.runner" in sys.modules:
        from ..capture.runner import keep_root_for_commands
        keep_root_for_commands(as_root)
    outcome: Outcome = module.run(args)
    return outcome
