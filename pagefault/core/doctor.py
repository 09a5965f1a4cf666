"""`pagefault doctor`: which capture tier works here, and the fix for what is missing."""

from __future__ import annotations

import argparse
import json

from ..views.terminal import print_json
from .errors import Outcome
from .output import terminal_console


def run(args: argparse.Namespace) -> Outcome:
    """Prints the diagnosis (JSON with args.json). Any user may run it: without root it says which tiers that
    leaves and the fix (sudo) for the others; it never raises for what the machine lacks."""
    from ..capture.doctor import diagnose
    from ..views.trace_view import render_doctor
    d = diagnose()
    if args.json:
        from ..decode.bits import to_jsonable
        print_json(json.dumps(to_jsonable(d), indent=2))
    else:
        render_doctor(d, terminal_console())
    return Outcome.DONE
