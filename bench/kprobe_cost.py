#!/usr/bin/env python3
"""The latency tier's cost per fault, side by side in one run, on the first-touch loop (1 GiB: 262,144 faults).

The same statically linked loop, run alone and under each tool, interleaved over rounds. The loop times
itself (clock_gettime around the writes, printed as loop_ns), so each tool's cost per fault is the loop's
extra time under it divided by the faults, with no start-up, load or tear-down in it:
  plain            the loop alone
  perf record      perf record -e exceptions:page_fault_user (the tracepoint, every event streamed)
  bpftrace kprobe  a plain bpftrace kprobe/kretprobe script on handle_mm_fault with a hist of durations:
                   bpftrace's own idiom, the peer the target names (left out where bpftrace is not installed)
  bpftrace kfunc   the same script on fentry/fexit (kfunc/kretfunc), where the kernel offers them
  ours             pagefault trace --latency: the compiled object (capture/bpf/latency.bpf.c) with fentry
                   where the kernel takes it, else kprobes; it does more per fault than either script: the
                   handler probes, the histograms by outcome and by VMA, the VMAs named
  ours, kprobes    pagefault trace --latency --probes kprobe

Prints each tool's median extra ns per fault, ours against bpftrace's kprobe script (target ≤ 1.0) and the
others, and the tier's start-up (the object's load + attach, as its note says). Each command's whole wall
time (start-up included) is printed beside it. Needs fentry or kprobes on handle_mm_fault, so it runs where
they work (Debian's 6.1 and 6.12 under QEMU in the kernel matrix: there only the ratios count, TCG is
10-30x slower). Elsewhere it says why and exits 0: a benchmark is not a test.

    sudo .venv/bin/python bench/kprobe_cost.py [--size BYTES] [--rounds N]
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
sys.path.insert(0, str(HERE.parent))
PF = [sys.executable, "-m", "pagefault"]
LOOP_NS = re.compile(rb"loop_ns=(\d+)")
LOAD_MS = re.compile(r"loaded and attached in (\d+) ms")


def run(cmd: list[str], cwd: Path) -> tuple[float, int | None, str, bytes]:
    """(whole wall time, the loop's own ns or None, the error if the command failed, its standard output)."""
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)
    elapsed = time.perf_counter() - t
    if r.returncode != 0:
        # pagefault's error is one line ("pagefault: ..."); bpftrace's starts "ERROR:" and its source follows
        lines = r.stderr.decode(errors="replace").strip().splitlines()
        error = next((line for line in reversed(lines) if line.startswith(("pagefault:", "ERROR"))), lines[-1] if lines else "")
        return elapsed, None, error or f"exit status {r.returncode}", r.stdout
    m = LOOP_NS.search(r.stdout)
    return elapsed, int(m.group(1)) if m else None, "" if m else "the loop printed no loop_ns", r.stdout


def start_up(stdout: bytes) -> tuple[str, float] | None:
    """(hook, load + attach ms) from ours' JSON summary (after the loop's own line), or None."""
    text = stdout.decode(errors="replace")
    try:
        notes = json.loads(text[text.index("{"):])["notes"]
    except (ValueError, KeyError):
        return None
    for note in notes:
        m = LOAD_MS.search(note)
        if note.startswith("handle_mm_fault hooked with") and m:
            return note.split(":", 1)[0].rsplit(" ", 1)[-1], float(m.group(1))
    return None


def bpftrace_pair(exe: str, entry: str, ret: str, loop: list[str]) -> list[str]:
    script = (f"{entry}:handle_mm_fault /pid == cpid/ {{ @t[tid] = nsecs; }} "
              f"{ret}:handle_mm_fault /@t[tid]/ {{ @ns = hist(nsecs - @t[tid]); delete(@t[tid]); }}")
    return [exe, "-q", "-e", script, "-c", " ".join(loop)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1 << 30)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    bpftrace, perf = shutil.which("bpftrace"), shutil.which("perf")
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        print("bench kprobe_cost: needs a C compiler")
        return 0
    work = Path(tempfile.mkdtemp(prefix="pagefault-bench-"))
    exe = work / "first_touch"
    subprocess.run([cc, "-O1", "-static", "-o", str(exe), str(HERE / "c" / "first_touch.c")], check=True)
    loop = [str(exe), str(args.size)]
    faults = args.size // 4096
    ours = PF + ["trace", "--latency", "-q", "--json", "--summary", "-", "--"]
    # the tier on a short loop first: where neither fentry nor kprobes work it refuses, and says why
    _t, ns, error, _out = run(ours + [str(exe), "4096"], work)
    if ns is None:
        shutil.rmtree(work, ignore_errors=True)
        print(f"bench kprobe_cost: not run here: {error}. The kernel matrix runs it in a guest that has them.")
        return 0
    variants = {"plain": loop, "ours": ours + loop,
                "ours, kprobes": PF + ["trace", "--latency", "--probes", "kprobe", "-q", "--json", "--summary", "-",
                                       "--"] + loop}
    if bpftrace:
        variants["bpftrace kprobe"] = bpftrace_pair(bpftrace, "kprobe", "kretprobe", loop)
        variants["bpftrace kfunc"] = bpftrace_pair(bpftrace, "kfunc", "kretfunc", loop)
    if perf:
        variants["perf record"] = [perf, "record", "-q", "-o", str(work / "perf.data"), "-e",
                                   "exceptions:page_fault_user", "--"] + loop
    loop_ns: dict[str, list[int]] = {k: [] for k in variants}
    wall: dict[str, list[float]] = {k: [] for k in variants}
    failed: dict[str, str] = {}
    starts: dict[str, list[tuple[str, float]]] = {"ours": [], "ours, kprobes": []}
    # one loop first, its time thrown away: the first run in a fresh guest touches QEMU's memory for the
    # first time and took twice as long as every later one
    run(loop, work)
    for r in range(args.rounds):
        for name, cmd in variants.items():
            if name in failed:
                continue
            elapsed, ns, error, out = run(cmd, work)
            if name in starts and ns is not None:
                seen = start_up(out)
                if seen:
                    starts[name].append(seen)
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
    for n, seen in starts.items():
        if seen:
            print(f"  {n:16s} hooked with {seen[0][0]}, loaded and attached in {statistics.median(ms for _h, ms in seen):.0f} ms "
                  f"(median of {len(seen)}; target in the TCG guests ≤ 5000 ms)")
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
