#!/usr/bin/env python3
"""Events lost by a --dwarf recording of a fast-faulting program, pagefault against perf, side by side in one run.

Each fault of a `trace --dwarf -o FILE` recording carries its registers and 8 KiB of its user stack (as perf
--call-graph dwarf's do), so a program that faults fast makes ~3 GB/s of records; whatever the reader does not
write out in time is lost. The program is Python building a list of SIZE pages (`[0] * (SIZE * 512)`), each round
interleaved:
  pagefault    pagefault trace --dwarf -q --no-summary -o FILE (lost: the kernel's event counts against the
               samples received, as `pagefault report --json` gives them)
  perf record  perf record --call-graph dwarf -e exceptions:page_fault_user (lost: LOST_SAMPLES, perf report --stats)
Prints each round and the medians (target: none lost), with the load average: other work on the machine's CPUs
takes the reader's time and shows here.

    sudo .venv/bin/python bench/dwarf_lost.py [--pages N] [--rounds N] [--buffer-mb N]
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from peers import ENV, PF, machine_note, peers, verdict


def pagefault_lost(work: Path, program: list[str], buffer_mb: int) -> int:
    out = work / "d.pfrec"
    subprocess.run(PF + ["trace", "--dwarf", "-q", "--no-summary", "--force", "--buffer-mb", str(buffer_mb), "-o",
                         str(out), "--"] + program, check=True, capture_output=True, env=ENV, cwd=work)
    done = subprocess.run(PF + ["report", "--json", str(out)], check=True, capture_output=True, text=True, env=ENV,
                          cwd=work)
    out.unlink()
    return int(json.loads(done.stdout)["lost"] or 0)


def perf_lost(perf: str, work: Path, program: list[str]) -> int:
    data = work / "perf.data"
    subprocess.run([perf, "record", "-q", "--call-graph", "dwarf", "-e", "exceptions:page_fault_user", "-o", str(data),
                    "--"] + program, check=True, capture_output=True, cwd=work)
    stats = subprocess.run([perf, "report", "-i", str(data), "--stats"], capture_output=True, text=True).stdout
    data.unlink()
    return sum(int(n) for n in re.findall(r"LOST_SAMPLES events:\s+(\d+)", stats))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pages", type=int, default=60_000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--buffer-mb", type=int, default=8)
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: needs root; run: sudo .venv/bin/python bench/dwarf_lost.py")
    perf = peers("perf")["perf"]
    python = shutil.which("python3") or sys.executable
    program = [python, "-c", f"x = [0] * ({args.pages} * 512)"]
    work = Path(tempfile.mkdtemp(prefix="pf-bench-"))
    lost: dict[str, list[int]] = {"pagefault": [], "perf record": []}
    print(f"before: {machine_note()}", flush=True)
    for r in range(args.rounds):
        lost["pagefault"].append(pagefault_lost(work, program, args.buffer_mb))
        lost["perf record"].append(perf_lost(perf, work, program))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} lost {v[-1]:,}" for n, v in lost.items())
              + f" ({machine_note()})", flush=True)
    print(f"after: {machine_note()}")
    med = {n: statistics.median(v) for n, v in lost.items()}
    print(f"a Python list of {args.pages:,} pages, recorded with user stacks (--dwarf, {args.buffer_mb} MiB a CPU): "
          f"events lost, medians of {args.rounds} rounds: pagefault {med['pagefault']:,.0f}, perf record --call-graph "
          f"dwarf {med['perf record']:,.0f} (target: none lost: {verdict(med['pagefault'] == 0)})")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
