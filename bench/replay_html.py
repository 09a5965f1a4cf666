#!/usr/bin/env python3
"""Replay-to-HTML time: `pagefault journey --replay FILE --format html -o OUT`, end to end as a person
starts it (interpreter start-up included), for every journey fixture. Target: ≤ 0.5 s.

Side by side, the in-process part alone (load the evidence, build the journey, render the page), so the
start-up share is visible. No root needed: a replay reads nothing but the file.
"""

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TARGET = 0.5
ROUNDS = 5


def main() -> None:
    from pagefault.core import replay
    from pagefault.views.html import render_html
    fixtures = sorted((ROOT / "tests" / "fixtures" / "evidence").glob("*/journey-*.json.gz"))
    if not fixtures:
        sys.exit("bench: no evidence fixtures under tests/fixtures/evidence (scripts/capture_fixtures.py makes them)")
    out = Path(tempfile.mkdtemp(prefix="pf-replay-")) / "j.html"
    worst = 0.0
    print(f"{'fixture':<44} {'CLI median s':>12} {'in-process ms':>14}")
    for f in fixtures:
        cli = []
        for _ in range(ROUNDS):
            t = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "pagefault", "journey", "--replay", str(f), "--format", "html",
                                "-o", str(out), "--force"], capture_output=True, text=True, cwd=ROOT)
            cli.append(time.perf_counter() - t)
            if r.returncode != 0:
                sys.exit(f"bench: replay of {f} failed: {r.stderr.strip()[-300:]}")
        inproc = []
        for _ in range(ROUNDS):
            t = time.perf_counter()
            render_html(replay(f))
            inproc.append(time.perf_counter() - t)
        med = statistics.median(cli)
        worst = max(worst, med)
        print(f"{f.parent.name + '/' + f.name:<44} {med:>12.3f} {statistics.median(inproc) * 1000:>14.1f}")
    print(f"replay to HTML: worst median {worst:.3f} s (target ≤ {TARGET} s): "
          f"{'met' if worst <= TARGET else 'NOT met'}")


if __name__ == "__main__":
    main()
