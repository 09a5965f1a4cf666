#!/usr/bin/env python3
"""The latency tier's cost per fault, side by side in one run, on the first-touch loop (1 GiB: 262,144 faults).

The same statically linked loop, run alone and under each tool, interleaved over rounds. The loop times
itself (clock_gettime around the writes, printed as loop_ns), so each tool's cost per fault is the loop's
extra time under it divided by the faults, with no start-up, compile or tear-down in it:
  plain            the loop alone
  perf record      perf record -e exceptions:page_fault_user (the tracepoint, every event streamed)
  bpftrace kprobe  a plain bpftrace kprobe/kretprobe script on handle_mm_fault with a hist of durations:
                   bpftrace's own idiom, the peer the target names
  bpftrace kfunc   the same script on fentry/fexit (kfunc/kretfunc), where the kernel offers them
  ours             pagefault trace --latency (auto: fentry where it attaches, else kprobes), which does more
                   per fault than either script: the handler probes and histograms by outcome and by VMA
  ours, kprobes    pagefault trace --latency --probes kprobe

Prints each tool's median extra ns per fault and ours against bpftrace's kprobe script (target ≤ 1.0) and
the others. Each command's whole wall time (start-up included) is printed beside it. Needs kprobes or
fentry, so it runs where they work (Debian's 6.1 and 6.12 under QEMU in the kernel matrix: there only
the ratios count, TCG is 10-30x slower). Elsewhere it says why and exits 0: a benchmark is not a test.

    sudo .venv/bin/python bench/kprobe_cost.py [--size BYTES] [--rounds N]
"""

import argparse
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
sys.path.insert(0, str(HERE.parent))
from pagefault.capture.kprobes import kprobe_support  # noqa: E402

PF = [sys.executable, "-m", "pagefault"]
LOOP_NS = re.compile(rb"loop_ns=(\d+)")


def run(cmd: list[str], cwd: Path) -> tuple[float, int | None, str]:
    """(whole wall time, the loop's own ns or None, the error if the command failed)."""
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)
    elapsed = time.perf_counter() - t
    if r.returncode != 0:
        return elapsed, None, r.stderr.decode(errors="replace").strip()[-300:]
    m = LOOP_NS.search(r.stdout)
    return elapsed, int(m.group(1)) if m else None, "" if m else "the loop printed no loop_ns"


def bpftrace_pair(exe: str, entry: str, ret: str, loop: list[str]) -> list[str]:
    script = (f"{entry}:handle_mm_fault /pid == cpid/ {{ @t[tid] = nsecs; }} "
              f"{ret}:handle_mm_fault /@t[tid]/ {{ @ns = hist(nsecs - @t[tid]); delete(@t[tid]); }}")
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
    variants = {"plain": loop,
                "bpftrace kprobe": bpftrace_pair(bpftrace, "kprobe", "kretprobe", loop),
                "bpftrace kfunc": bpftrace_pair(bpftrace, "kfunc", "kretfunc", loop),
                "ours": PF + ["trace", "--latency", "-q", "--json", "--summary", "-", "--"] + loop,
                "ours, kprobes": PF + ["trace", "--latency", "--probes", "kprobe", "-q", "--json", "--summary", "-", "--"]
                + loop}
    if perf:
        variants["perf record"] = [perf, "record", "-q", "-o", str(work / "perf.data"), "-e",
                                   "exceptions:page_fault_user", "--"] + loop
    loop_ns: dict[str, list[int]] = {k: [] for k in variants}
    wall: dict[str, list[float]] = {k: [] for k in variants}
    failed: dict[str, str] = {}
    # one loop first, its time thrown away: the first run in a fresh guest touches QEMU's memory for the
    # first time and took twice as long as every later one
    run(loop, work)
    for r in range(args.rounds):
        for name, cmd in variants.items():
            if name in failed:
                continue
            elapsed, ns, error = run(cmd, work)
            if ns is None:
                failed[name] = error
                print(f"  {name}: left out, it failed: {error}", flush=True)
                continue
            wall[name].append(elapsed)
            loop_ns[name].append(ns)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} loop {v[-1] / 1e9:.2f} s"
                                                            for n, v in loop_ns.items() if v), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    if "plain" in failed:
        sys.exit(f"bench: the plain loop failed: {failed['plain']}")
    plain = statistics.median(loop_ns["plain"])
    extra = {n: (statistics.median(v) - plain) / faults for n, v in loop_ns.items() if v and n != "plain"}
    print(f"\nkernel {os.uname().release}, {faults:,} faults, median of {args.rounds} rounds; the plain loop "
          f"{plain / 1e9:.3f} s ({plain / faults:.0f} ns per fault)")
    for n in extra:
        print(f"  {n:16s} loop {statistics.median(loop_ns[n]) / 1e9:7.3f} s, {extra[n]:8.0f} ns per fault over the "
              f"plain loop (whole command {statistics.median(wall[n]):6.2f} s, start-up and tear-down included)")
    if "ours" in extra and "bpftrace kprobe" in extra:
        ratio = extra["ours"] / extra["bpftrace kprobe"]
        print(f"ratio ours / bpftrace's kprobe script (extra ns per fault): {ratio:.2f} "
              f"(target ≤ 1.0: {'met' if ratio <= 1.0 else 'NOT met'})")
    for peer in ("bpftrace kfunc", "perf record", "ours, kprobes"):
        if "ours" in extra and peer in extra:
            print(f"ratio ours / {peer}: {extra['ours'] / extra[peer]:.2f}")
    if "ours, kprobes" in extra and "bpftrace kprobe" in extra:
        print(f"ratio ours with kprobes / bpftrace's kprobe script: "
              f"{extra['ours, kprobes'] / extra['bpftrace kprobe']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
