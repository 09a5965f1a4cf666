#!/usr/bin/env python3
"""Summary-only `pagefault trace` (faults counted in the kernel) against its peers, side by side in one run,
on the 1 GiB first-touch loop (262,144 faults).

Each round runs, interleaved, and takes the wall time of the whole command (start-up included):
  untraced     the loop alone
  pagefault    pagefault trace --summary-only -q --json (classes, kinds and mappings counted in BPF maps)
  perf record  perf record -e exceptions:page_fault_user -e kmem:mm_page_alloc (every event streamed)
  perf trace   perf trace -F all --no-syscalls (perf's own page-fault summary)
  bpftrace     a bpftrace script counting faults by error code, bpftrace's idiom

Prints each median and its ratio to the untraced run (target for pagefault: ≤ 1.5×), and pagefault's
ratio to each peer. Needs root, bpftrace, perf (linux-perf) and a C compiler.

    sudo .venv/bin/python bench/summary_only.py [--size BYTES] [--rounds N]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PF = [sys.executable, "-m", "pagefault"]


def run(cmd, cwd) -> tuple[float, str]:
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    elapsed = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"bench: {' '.join(map(str, cmd))} failed: {r.stderr.strip()[-400:]}")
    return elapsed, r.stdout


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
    counted = 0
    for r in range(args.rounds):
        for name, cmd in variants.items():
            t, out = run(cmd, work)
            times[name].append(t)
            if name == "pagefault":
                counted = json.loads(out[out.index("{\n"):])["faults"]
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()), flush=True)
    med = {n: statistics.median(t) for n, t in times.items()}
    print(f"\n{faults:,} faults made in the region; pagefault counted {counted:,} faults in all (the loader's too)")
    for n, t in med.items():
        print(f"  {n:12s} {t:6.2f} s   {t / med['untraced']:5.2f}x the untraced run")
    ratio = med["pagefault"] / med["untraced"]
    print(f"pagefault summary-only / untraced = {ratio:.2f} (target ≤ 1.5: {'met' if ratio <= 1.5 else 'NOT met'})")
    for peer in ("perf record", "perf trace", "bpftrace"):
        print(f"pagefault / {peer} = {med['pagefault'] / med[peer]:.2f}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
