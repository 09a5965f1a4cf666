"""How a command ends, in words cli.py maps to exit statuses: the outcomes of a command that ran, and the
exceptions of one that could not. Kept free of imports, so that every command can raise them cheaply."""

from __future__ import annotations

import enum


class Outcome(enum.Enum):
    """How a command that ran to its end went."""

    DONE = "done"
    PARTIAL = "partial"      # the work stopped early (a full disk); what was done is kept, and said
    NO_COMMAND = "no command"   # no subcommand was given: the help is printed


class UsageError(Exception):
    """A request that cannot be carried out as given (a user mistake or a refusal): one line with the fix
    (exit 2)."""


# the name core's journey functions have always raised; the same class, so one `except` catches both
JourneyUsageError = UsageError


class CannotTrace(Exception):
    """This machine (or user) cannot trace what was asked for (exit 3); the message says why and the fix."""


class NothingMatched(Exception):
    """The capture ran, but no fault matched the selector, or the one picked was not of the kind asked for
    (exit 4); the message says what was seen instead."""
