#!/usr/bin/env python3
"""The kprobe tier's cost per fault, side by side in one run, on the first-touch loop (1 GiB: 262,144 faults).

Four runs of the same statically linked loop, interleaved over rounds (median wall time):
  plain      the loop alone
  perf       perf record -e exceptions:page_fault_user (the tracepoint, streamed)
  bpftrace   a plain bpftrace kprobe/kretprobe script on handle_mm_fault that aggregates in the kernel
             (hist of durations), bpftrace's own idiom
  ours       pagefault trace --latency (kprobe/kretprobe and the handler kprobes, one record per fault)

Prints the extra time per fault over the plain loop for each, less each tool's own start-up and tear-down
(measured on the same program making one fault), and ours as a ratio to bpftrace's and to perf's
(target: ours ≤ bpftrace's script). Needs kprobes, so it runs where they work (Debian's 6.1 and
6.12 under QEMU in the kernel matrix: there only the ratios count, TCG is 10-30x slower). Elsewhere it
says why and exits 0: a benchmark is not a test.

    sudo .venv/bin/python bench/kprobe_cost.py [--size BYTES] [--rounds N]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from pagefault.capture.kprobes import kprobe_support  # noqa: E402

PF = [sys.executable, "-m", "pagefault"]


def run(cmd, **kw) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    elapsed = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"bench: {' '.join(map(str, cmd))} failed: {r.stderr.strip()[-400:]}")
    return elapsed


def bpftrace_plain(exe: str, loop: list[str]) -> list[str]:
    script = ("kprobe:handle_mm_fault /pid == cpid/ { @t[tid] = nsecs; } "
              "kretprobe:handle_mm_fault /@t[tid]/ { @ns = hist(nsecs - @t[tid]); delete(@t[tid]); }")
    return [exe, "-q", "-e", script, "-c", " ".join(loop)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1 << 30)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    ok, why = kprobe_support()
    if not ok:
        print(f"bench kprobe_cost: not run here: {why}. The kernel matrix runs it in a guest with kprobes.")
        return 0
    bpftrace, perf = shutil.which("bpftrace"), shutil.which("perf")
    cc = shutil.which("cc") or shutil.which("gcc")
    if not bpftrace or not cc:
        print("bench kprobe_cost: needs bpftrace and a C compiler")
        return 0
    work = Path(tempfile.mkdtemp(prefix="pagefault-bench-"))
    exe = work / "first_touch"
    subprocess.run([cc, "-O1", "-static", "-o", str(exe), str(HERE / "c" / "first_touch.c")], check=True)
    loop = [str(exe), str(args.size)]
    faults = args.size // 4096
    variants = {"plain": loop, "bpftrace": bpftrace_plain(bpftrace, loop),
                "ours": PF + ["trace", "--latency", "-q", "--json", "--"] + loop}
    if perf:
        variants["perf"] = [perf, "record", "-q", "-o", str(work / "perf.data"), "-e", "exceptions:page_fault_user",
                            "--"] + loop
    # each tool once more on a program that makes no fault of note: its start-up and tear-down, to subtract
    idle = [str(exe), "4096"]
    startup_variants = {"plain": idle, "bpftrace": bpftrace_plain(bpftrace, idle),
                        "ours": PF + ["trace", "--latency", "-q", "--json", "--"] + idle}
    if perf:
        startup_variants["perf"] = variants["perf"][:-2] + idle
    times: dict[str, list[float]] = {k: [] for k in variants}
    startup: dict[str, list[float]] = {k: [] for k in startup_variants}
    for r in range(args.rounds):
        for name, cmd in variants.items():
            times[name].append(run(cmd, cwd=work))
            startup[name].append(run(startup_variants[name], cwd=work))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {t[-1]:.2f} s (start-up {startup[n][-1]:.2f} s)"
                                                            for n, t in times.items()), flush=True)
    med = {n: statistics.median(t) for n, t in times.items()}
    base = {n: statistics.median(t) for n, t in startup.items()}
    # per fault: the loop's extra time over the plain loop, less the tool's own start-up and tear-down
    extra = {n: ((med[n] - base[n]) - (med["plain"] - base["plain"])) / faults * 1e9 for n in med if n != "plain"}
    print(f"kernel {os.uname().release}, {faults} faults, median of {args.rounds} rounds")
    for n, ns in extra.items():
        print(f"  {n:9s} {med[n]:7.2f} s in all, {base[n]:6.2f} s of it start-up and tear-down; "
              f"{ns:8.0f} ns per fault over the plain loop")
    print(f"ratio ours / bpftrace's script (extra time per fault): {extra['ours'] / extra['bpftrace']:.2f} "
          "(target ≤ 1.0)")
    if "perf" in extra:
        print(f"ratio ours / perf record (extra time per fault): {extra['ours'] / extra['perf']:.2f}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
