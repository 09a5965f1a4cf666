#!/usr/bin/env python3
"""Wall time of `pagefault journey --no-pause` after the first compile. Target: ≤ 3 s on these machines.

The first run builds the exercise program (and is timed apart); then ROUNDS runs (default 5) of the
whole live journey — spawn, perf_event_open, bpftrace in the bpf tier, /proc snapshots, every step
built and rendered — are timed end to end as a person would start them. Needs root for the bpf and
perf tiers.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PF = [sys.executable, "-m", "pagefault", "journey", "--no-pause", "-q"]
TARGET = 3.0


def run(extra: list[str]) -> float:
    t = time.perf_counter()
    r = subprocess.run(PF + extra, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"bench: pagefault journey failed: {r.stderr.strip()[-400:]}")
    return elapsed


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("bench: needs root for the live journey; run: sudo .venv/bin/python bench/journey.py")
    rounds = int(os.environ.get("ROUNDS", "5"))
    out = Path(tempfile.mkdtemp(prefix="pf-journey-")) / "j.json"
    first = run(["--format", "json", "-o", str(out), "--force"])
    tier = __import__("json").loads(out.read_text())["tier"]
    print(f"first run (may include compiling the exercise program): {first:.2f} s; tier {tier}")
    for fmt in ("text", "json"):
        extra = ["--format", fmt] + (["-o", str(out), "--force"] if fmt == "json" else [])
        times = [run(extra) for _ in range(rounds)]
        med = statistics.median(times)
        print(f"journey --no-pause --format {fmt}: median {med:.2f} s, best {min(times):.2f} s, worst {max(times):.2f} s "
              f"over {rounds} runs (target ≤ {TARGET:.0f} s: {'met' if med <= TARGET else 'NOT met'})")


if __name__ == "__main__":
    main()
