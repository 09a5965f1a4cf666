#!/usr/bin/env python3
"""Summary-only `pagefault trace` (faults counted in the kernel) against its peers, side by side in one run,
on the 1 GiB first-touch loop (262,144 faults).

Each round runs these, interleaved. The loop times itself (clock_gettime around the writes, printed as
loop_ns), so two costs are shown: the loop's own time under each tool (what tracing costs the program, per
fault) and the whole command's wall time (start-up, compile, attach and tear-down included):
  untraced     the loop alone
  pagefault    pagefault trace --summary-only -q --json (classes, kinds and mappings counted in BPF maps)
  perf record  perf record -e exceptions:page_fault_user -e kmem:mm_page_alloc (every event streamed)
  perf trace   perf trace -F all --no-syscalls (perf's own page-fault summary)
  bpftrace     a bpftrace script counting faults by error code, bpftrace's idiom

Prints each median and its ratio to the untraced run (target for pagefault: ≤ 1.5×), both ways, and
pagefault's ratio to each peer. Needs root, bpftrace, perf (linux-perf) and a C compiler.

    sudo .venv/bin/python bench/summary_only.py [--size BYTES] [--rounds N]
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
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PF = [sys.executable, "-m", "pagefault"]
LOOP_NS = re.compile(r"loop_ns=(\d+)")


def run(cmd, cwd) -> tuple[float, int, str]:
    """(whole wall time, the loop's own ns, standard output)."""
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    elapsed = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"bench: {' '.join(map(str, cmd))} failed: {r.stderr.strip()[-400:]}")
    m = LOOP_NS.search(r.stdout)
    if not m:
        sys.exit(f"bench: {' '.join(map(str, cmd))} printed no loop_ns")
    return elapsed, int(m.group(1)), r.stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1 << 30)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: needs root; run: sudo .venv/bin/python bench/summary_only.py")
    perf, bpftrace = shutil.which("perf"), shutil.which("bpftrace")
    if not perf or not bpftrace:
        sys.exit("bench: needs perf (linux-perf) and bpftrace; fix: bash scripts/setup.sh")
    work = Path(tempfile.mkdtemp(prefix="pf-bench-"))
    exe = work / "first_touch"
    if subprocess.run(["cc", "-O2", "-static", "-o", str(exe), str(HERE / "c" / "first_touch.c")]).returncode:
        sys.exit("bench: cannot link the target statically; fix: apt-get install libc6-dev")
    loop = [str(exe), str(args.size)]
    faults = args.size // 4096
    variants = {
        "untraced": loop,
        "pagefault": PF + ["trace", "--summary-only", "-q", "--json", "--"] + loop,
        "perf record": [perf, "record", "-q", "-o", str(work / "perf.data"), "-e", "exceptions:page_fault_user",
                        "-e", "kmem:mm_page_alloc", "--"] + loop,
        "perf trace": [perf, "trace", "-F", "all", "--no-syscalls", "-o", str(work / "perf-trace.txt"), "--"] + loop,
        "bpftrace": [bpftrace, "-q", "-e", "tracepoint:exceptions:page_fault_user /pid == cpid/ "
                     "{ @[args->error_code] = count(); }", "-c", " ".join(loop)],
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    loops: dict[str, list[int]] = {k: [] for k in variants}
    counted = 0
    run(loop, work)   # one loop first, its time thrown away: the first touch of fresh memory is slower
    for r in range(args.rounds):
        for name, cmd in variants.items():
            t, loop_ns, out = run(cmd, work)
            times[name].append(t)
            loops[name].append(loop_ns)
            if name == "pagefault":
                counted = json.loads(out[out.index("{\n"):])["faults"]
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {t[-1]:.2f} s (loop {loops[n][-1] / 1e9:.2f} s)"
                                                            for n, t in times.items()), flush=True)
    med = {n: statistics.median(t) for n, t in times.items()}
    loop = {n: statistics.median(v) for n, v in loops.items()}
    print(f"\n{faults:,} faults made in the region; pagefault counted {counted:,} faults in all (the loader's too)")
    print(f"  {'':12s} {'the loop':>22s}   {'the whole command':>28s}")
    for n in med:
        print(f"  {n:12s} {loop[n] / 1e9:6.3f} s {loop[n] / loop['untraced']:5.2f}x untraced   "
              f"{med[n]:6.2f} s {med[n] / med['untraced']:5.2f}x untraced")
    per_fault = (loop["pagefault"] - loop["untraced"]) / faults
    for what, ratio in (("the loop under it", loop["pagefault"] / loop["untraced"]),
                        ("the whole command", med["pagefault"] / med["untraced"])):
        print(f"pagefault summary-only / untraced, {what} = {ratio:.2f} "
              f"(target ≤ 1.5: {'met' if ratio <= 1.5 else 'NOT met'})")
    print(f"counting costs the program {per_fault:.0f} ns per fault; bpftrace's one-map count script "
          f"{(loop['bpftrace'] - loop['untraced']) / faults:.0f} ns")
    for peer in ("perf record", "perf trace", "bpftrace"):
        print(f"pagefault / {peer}: the loop {loop['pagefault'] / loop[peer]:.2f}, "
              f"the whole command {med['pagefault'] / med[peer]:.2f}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
