"""`pagefault scenarios`: the scenario library, one line each, or as JSON."""

from __future__ import annotations

import argparse
import json
import sys

from ..views.terminal import print_json, say
from .errors import Outcome


def run(args: argparse.Namespace) -> Outcome:
    """Prints the library (args.json: names, lessons and operations as JSON). Needs nothing of the machine.

    :returns: Outcome.DONE; raises nothing (a closed stdout is the CLI's to handle)."""
    from ..model.scenarios import SCENARIOS
    if args.json:
        print_json(json.dumps([{"name": s.name, "title": s.title, "teaches": s.teaches, "ops": list(s.ops)}
                               for s in SCENARIOS], indent=2))
        return Outcome.DONE
    width = max(len(s.name) for s in SCENARIOS)
    for s in SCENARIOS:
        say(f"{s.name:<{width}}  {s.title}: {s.teaches}", sys.stdout)
    return Outcome.DONE
