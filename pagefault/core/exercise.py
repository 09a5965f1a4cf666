"""`pagefault exercise`: the person derives the numbers of a real fault themselves; answers are checked and
progress is kept (views/exercise_view.py's Progress, in the user's own state directory).

The fault is a fresh live one as root, a saved one (--replay), or the simulator's (--model, or said on
stderr where this user cannot trace).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..views.terminal import say
from .errors import Outcome, UsageError
from .output import terminal_console


def run(args: argparse.Namespace) -> Outcome:
    """Takes the parsed arguments (names, all, list, reset, model, replay, quiet).

    :raises UsageError: an exercise's name is unknown, or the progress file cannot be used.
    :raises CannotTrace: the live fault's capture failed after it started.
    """
    from ..views.exercise_view import Progress, ProgressError
    try:
        return _exercise(args, Progress())
    except ProgressError as exc:
        raise UsageError(str(exc)) from None


def live_or_model_journey(args: argparse.Namespace, progress):
    """The journey the exercises are set on: a saved one (--replay), a fresh live fault, or the
    simulator's (said on stderr) where this machine cannot trace.

    :returns: the Journey. A caller without root gets the simulator's, with a note on stderr saying why.
    :raises CannotTrace: a live capture was asked for and cannot run (from core.journey.start_live).
    :raises EvidenceError: --replay names a file that is not a readable evidence file."""
    from ..kernel.facts import is_root
    from . import journey as core
    if args.replay:
        return core.replay(Path(args.replay))
    if args.model:
        return core.model_journey(None)
    if not is_root():
        note = ("the exercises need root for the error code, the PFN and the PTE (fix: sudo); "
                "these use the simulator's fault instead")
        say(f"note: {note}")
        return core.model_journey(None, note)
    request = core.JourneyRequest(progress=progress)
    live = core.start_live(request)
    if live is None:
        return core.stand_in_journey(request, "the exercises use the simulator's fault instead")
    return core.finish_live(live, request)


def _exercise(args: argparse.Namespace, progress) -> Outcome:
    from ..journey.exercises import ORDER
    if progress.warning:
        say(f"note: {progress.warning}")
    if args.reset:
        progress.reset()
        say(f"progress reset ({progress.path})", sys.stdout)
        return Outcome.DONE
    if args.list:
        say("\n".join(progress.checklist()), sys.stdout)
        say(f"progress kept in {progress.path}", sys.stdout)
        return Outcome.DONE
    unknown = [n for n in args.names if n not in ORDER]
    if unknown:
        raise UsageError(f"no exercise {', '.join(unknown)}; the exercises are: {', '.join(ORDER)}")
    wanted = args.names or ([k for k in ORDER if not progress.done(k)] if not args.all else list(ORDER))
    if not wanted:
        say("\n".join(progress.checklist()), sys.stdout)
        print("every exercise is done; pagefault exercise --all sets them all again on a new fault")
        return Outcome.DONE
    _set_exercises(args, progress, wanted)
    return Outcome.DONE


def _set_exercises(args: argparse.Namespace, progress, wanted: list[str]) -> None:
    """The wanted exercises asked one by one on a fault, each answer read from standard input."""
    from rich.markup import escape as escape_markup

    from ..journey.exercises import build_exercises
    from ..views.exercise_view import run_exercises
    from ..views.progress import stderr_progress
    journey = live_or_model_journey(args, None if args.quiet else stderr_progress)
    exercises = [e for e in build_exercises(journey) if e.key in wanted]
    console = terminal_console(highlight=False)
    where = ("the simulator's fault (scenario first-touch)" if journey.tier == "model" else
             f"PID {journey.pid}'s fault at 0x{journey.walk.address:x}, kernel {journey.kernel}" if journey.walk
             else f"PID {journey.pid}, kernel {journey.kernel}")
    console.print(f"[bold]pagefault exercise[/bold] on {escape_markup(where)}; answer each question, Enter after each "
                  "(end of input stops, keeping what is finished)")

    def ask(prompt: str) -> str | None:
        try:
            return input(prompt)
        except EOFError:
            return None
    run_exercises(exercises, ask, console, progress, where)
