#!/usr/bin/env python3
"""`pagefault trace -g` with each fault's stacks counted in the kernel, against its peers, side by side in one run,
on the 1 GiB first-touch loop (262,144 faults).

Each round runs these, interleaved. The loop times itself (clock_gettime around the writes, printed as loop_ns),
so two costs are shown: the loop's own time under each tool (what taking every fault's stacks costs the program)
and the whole command's wall time (start-up, load, attach, reading the maps, symbolising and writing the flame
graph included):
  untraced        the loop alone
  pagefault -g    pagefault trace -g -q --folded FILE (stacks counted in BPF maps by capture/bpf/fault_stacks.bpf.c:
                  a BPF_MAP_TYPE_STACK_TRACE map and counts keyed by stack ids; nothing streamed)
  perf record -g  perf record -g -e exceptions:page_fault_user -e exceptions:page_fault_kernel (every fault streamed
                  with its call chains; no flame graph is made: perf script and stackcollapse would come on top)
  recording -g    pagefault trace -g -o FILE --no-summary, then pagefault report FILE --format folded (the flame graph
                  from a recording of every event, as before the in-kernel count)
  floor stacks    bench/floor.py: a Python process that loads, through pagefault's libbpf binding, one program on
                  page_fault_user that reads the faulting thread's user stack with bpf_get_stack and keeps nothing
                  (bench/c/floor.bpf.c), and runs the loop: what reading every fault's stack costs any tool
The loop is run twice: as built by `cc -O2` (no frame pointers: the user stack walk reads data as frames, and
each such read of an unmapped page is a fault of its own, fixed up) and with -fno-omit-frame-pointer.

Prints each median, pagefault -g's whole command against untraced (target ≤ 1.5×) and against perf record -g, and
checks that the flame graph weighs every fault of the region. Needs root, the built objects (bash
scripts/setup.sh) and a C compiler; installs perf (linux-perf) with apt-get when it is missing.

    sudo .venv/bin/python bench/flame.py [--size BYTES] [--rounds N]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from peers import PF, build_floor, floor_command, freed_memory_kept, machine_note, peers
from peers import run as run_timed

HERE = Path(__file__).resolve().parent


def run(cmd, cwd) -> tuple[float, int]:
    """(whole wall time, the loop's own ns)."""
    t, loop_ns, _out, _cpu = run_timed(cmd, cwd)
    return t, loop_ns


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1 << 30)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: needs root; run: sudo .venv/bin/python bench/flame.py")
    perf = peers("perf")["perf"]
    work = Path(tempfile.mkdtemp(prefix="pf-bench-flame-"))
    floor = build_floor(work)
    faults = args.size // 4096
    try:
        for label, flags in (("cc -O2", []), ("cc -O2 -fno-omit-frame-pointer", ["-fno-omit-frame-pointer"])):
            exe = work / "first_touch"
            if subprocess.run(["cc", "-O2", "-static", *flags, "-o", str(exe), str(HERE / "c" / "first_touch.c")]).returncode:
                sys.exit("bench: cannot link the target statically; fix: apt-get install libc6-dev")
            loop = [str(exe), str(args.size)]
            folded = work / "f.folded"
            rec = work / "t.pfrec"
            variants = {
                "untraced": [loop],
                "pagefault -g": [PF + ["trace", "-g", "-q", "--folded", str(folded), "--force", "--summary",
                                       str(work / "s.txt"), "--"] + loop],
                "perf record -g": [[perf, "record", "-q", "-g", "-o", str(work / "perf.data"), "-e",
                                    "exceptions:page_fault_user", "-e", "exceptions:page_fault_kernel", "--"] + loop],
                "recording -g": [PF + ["trace", "-g", "-q", "--no-summary", "--force", "-o", str(rec), "--"] + loop,
                                 PF + ["report", str(rec), "--format", "folded", "-o", str(work / "r.folded"),
                                       "--force"]],
                "floor stacks": [floor_command(floor, "stack", loop)],
            }
            times: dict[str, list[float]] = {k: [] for k in variants}
            loops: dict[str, list[int]] = {k: [] for k in variants}
            run(loop, work)                        # the first touch of fresh memory is slower: thrown away
            run(variants["pagefault -g"][0], work)   # and pagefault once: its bytecode cached
            print(f"\n{label}: {machine_note()}", flush=True)
            for r in range(args.rounds):
                for name, cmds in variants.items():
                    total, loop_ns = 0.0, 0
                    for cmd in cmds:
                        t, ns = run(cmd, work)
                        total += t
                        loop_ns = loop_ns or ns
                    times[name].append(total)
                    loops[name].append(loop_ns)
                in_region = 0
                for line in folded.read_text().splitlines():
                    stack, n = line.rsplit(" ", 1)
                    if stack.startswith("anonymous new page;") and ":main;" in stack:
                        in_region += int(n)
                print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {t[-1]:.2f} s (loop {loops[n][-1] / 1e9:.2f} s)"
                                                                    for n, t in times.items())
                      + f"; the flame graph has {in_region:,} new-page faults under main", flush=True)
                if in_region < faults:
                    sys.exit(f"bench: the flame graph weighs {in_region} faults under main, not the loop's {faults}")
            med = {n: statistics.median(t) for n, t in times.items()}
            lp = {n: statistics.median(v) for n, v in loops.items()}
            print(f"  {'':15s} {'the loop':>24s}   {'the whole command':>26s}   (medians of {args.rounds} rounds)")
            for n in med:
                print(f"  {n:15s} {lp[n] / 1e9:6.3f} s {lp[n] / lp['untraced']:5.2f}x untraced   "
                      f"{med[n]:6.2f} s {med[n] / med['untraced']:5.2f}x untraced")
            whole = med["pagefault -g"] / med["untraced"]
            print(f"pagefault trace -g / untraced, the whole command = {whole:.2f} (target ≤ 1.5: "
                  f"{'met' if whole <= 1.5 else 'NOT met'}); the loop under it {lp['pagefault -g'] / lp['untraced']:.2f}; "
                  f"added per fault {(lp['pagefault -g'] - lp['untraced']) / faults:.0f} ns "
                  f"(perf record -g's {(lp['perf record -g'] - lp['untraced']) / faults:.0f} ns)")
            print(f"the floor: reading the user stack at each fault, from Python, the whole command = "
                  f"{med['floor stacks'] / med['untraced']:.2f}x untraced, added per fault "
                  f"{(lp['floor stacks'] - lp['untraced']) / faults:.0f} ns; pagefault trace -g / the floor, the whole "
                  f"command = {med['pagefault -g'] / med['floor stacks']:.2f}")
            for peer in ("perf record -g", "recording -g"):
                print(f"pagefault trace -g / {peer}: the loop {lp['pagefault -g'] / lp[peer]:.2f}, "
                      f"the whole command {med['pagefault -g'] / med[peer]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    with freed_memory_kept():
        sys.exit(main())
