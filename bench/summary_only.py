#!/usr/bin/env python3
"""Summary-only `pagefault trace` (faults counted in the kernel) against its peers, side by side in one run,
on the 1 GiB first-touch loop (262,144 faults).

Each round runs these, interleaved. The loop times itself (clock_gettime around the writes, printed as
loop_ns), so two costs are shown: the loop's own time under each tool (what tracing costs the program, per
fault) and the whole command's wall time (start-up, load, attach and tear-down included):
  untraced     the loop alone
  pagefault    pagefault trace --summary-only -q --json --summary - (classes, kinds and mappings counted in BPF maps by
               the compiled counter, capture/bpf/fault_count.bpf.c, loaded through libbpf)
  floor        bench/floor.py: a Python process that loads, through pagefault's libbpf binding, empty programs on the
               counter's two busiest hooks (page_fault_user, mm_page_alloc) and runs the loop: what any Python tool
               on these hooks pays before doing any work (bench/c/floor.bpf.c)
  perf record  perf record -e exceptions:page_fault_user -e kmem:mm_page_alloc (every event streamed)
  perf trace   perf trace -F all --no-syscalls (perf's own page-fault summary)
  bpftrace     a bpftrace script counting faults by error code on one probe, bpftrace's idiom
and, on /bin/true (the commands' fixed costs): pagefault and the floor; and, in its own process each round, the
counter's object opened, loaded, attached to its hooks, detached and closed (the fixed cost pagefault adds to a
command; ms).

Prints each median, the targets (whole command ≤ 1.3× untraced and ≤ 0.5× bpftrace's; load + attach +
detach ≤ 100 ms; added cost per fault ≤ bpftrace's) met or not, pagefault's ratio to each peer, and the floor.
Needs root, the built objects (bash scripts/setup.sh) and a C compiler; installs bpftrace and perf (linux-perf)
with apt-get when they are missing.

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
from pathlib import Path

from peers import ENV, PF, build_floor, build_loop, floor_command, freed_memory_kept, loop_cpu_ns, machine_note, peers, run, verdict

HERE = Path(__file__).resolve().parent
# the counter's fixed cost, timed in a fresh process (as the command pays it): open, load, attach, detach, close
LOAD_CYCLE = """
import os, time
from pagefault.capture.kernel_counts import _settings, choose_hooks
from pagefault.capture.bpf import object_path
from pagefault.capture.libbpf import BpfObject, lib
lib()
t = time.perf_counter()
choices = choose_hooks()   # which variant of each hook this kernel takes (BTF and tracefs read): part of the load
chosen = time.perf_counter()
with BpfObject(object_path("fault_count")) as obj:
    for c in choices:
        obj.set_autoload(c.hook.btf_program, c.program == c.hook.btf_program)
        obj.set_autoload(c.hook.tracepoint_program, c.program == c.hook.tracepoint_program)
    obj.set_rodata(_settings(os.getpid(), False))
    obj.load()
    for c in choices:
        if c.program:
            obj.attach(c.program)
    attached = time.perf_counter()
print(f"load_attach_ms={(attached - t) * 1000:.2f} detach_ms={(time.perf_counter() - attached) * 1000:.2f} "
      f"choose_ms={(chosen - t) * 1000:.2f}")
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1 << 30)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: needs root; run: sudo .venv/bin/python bench/summary_only.py")
    tools = peers("perf", "bpftrace")
    perf, bpftrace = tools["perf"], tools["bpftrace"]
    work = Path(tempfile.mkdtemp(prefix="pf-bench-"))
    loop = [str(build_loop(work)), str(args.size)]
    floor = build_floor(work)
    faults = args.size // 4096
    summary_only = PF + ["trace", "--summary-only", "-q", "--json", "--summary", "-", "--"]
    variants = {
        "untraced": loop,
        "pagefault": summary_only + loop,
        "floor": floor_command(floor, "empty", loop),
        "perf record": [perf, "record", "-q", "-o", str(work / "perf.data"), "-e", "exceptions:page_fault_user",
                        "-e", "kmem:mm_page_alloc", "--"] + loop,
        "perf trace": [perf, "trace", "-F", "all", "--no-syscalls", "-o", str(work / "perf-trace.txt"), "--"] + loop,
        "bpftrace": [bpftrace, "-q", "-e", "tracepoint:exceptions:page_fault_user /pid == cpid/ "
                     "{ @[args->error_code] = count(); }", "-c", " ".join(loop)],
        # the fixed costs: the same commands on a program that does nothing
        "pagefault /bin/true": summary_only + ["/bin/true"],
        "floor /bin/true": floor_command(floor, "empty", ["/bin/true"]),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    loops: dict[str, list[int]] = {k: [] for k in variants}
    loop_cpu: dict[str, list[int]] = {k: [] for k in variants}
    cycles: list[tuple[float, float]] = []
    choose: list[float] = []
    counted = 0
    run(loop, work)   # one loop first, its time thrown away: the first touch of fresh memory is slower
    run(variants["pagefault"], work)   # and pagefault once: its bytecode cached, as after any first run
    env = {**ENV, "PYTHONPATH": str(HERE.parent)}
    print(f"before: {machine_note()}", flush=True)
    for r in range(args.rounds):
        for name, cmd in variants.items():
            t, loop_ns, out, _cpu = run(cmd, work)
            times[name].append(t)
            loops[name].append(loop_ns)
            loop_cpu[name].append(loop_cpu_ns(out))
            if name == "pagefault":
                counted = json.loads(out[out.index("{\n"):])["faults"]
        done = subprocess.run([sys.executable, "-c", LOAD_CYCLE], capture_output=True, text=True, env=env, cwd=work)
        m = re.search(r"load_attach_ms=([\d.]+) detach_ms=([\d.]+) choose_ms=([\d.]+)", done.stdout)
        if not m:
            sys.exit(f"bench: the counter's load cycle failed: {done.stderr.strip()[-400:]}")
        cycles.append((float(m.group(1)), float(m.group(2))))
        choose.append(float(m.group(3)))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {t[-1]:.2f} s" + (f" (loop {loops[n][-1] / 1e9:.2f} s)"
                                                                                  if loops[n][-1] else "")
                                                            for n, t in times.items())
              + f", counter load+attach {cycles[-1][0]:.1f} ms, detach {cycles[-1][1]:.1f} ms", flush=True)
    print(f"after: {machine_note()}")
    med = {n: statistics.median(t) for n, t in times.items()}
    lp = {n: statistics.median(v) for n, v in loops.items()}
    print(f"\n{faults:,} faults made in the region; pagefault counted {counted:,} faults of the program in all")
    print(f"  {'':20s} {'the loop':>22s}   {'the whole command':>28s}   (medians of {args.rounds} rounds)")
    for n in med:
        loop_text = f"{lp[n] / 1e9:6.3f} s {lp[n] / lp['untraced']:5.2f}x untraced" if lp[n] else f"{'':22s}"
        print(f"  {n:20s} {loop_text}   {med[n]:6.2f} s {med[n] / med['untraced']:5.2f}x untraced")

    whole = med["pagefault"] / med["untraced"]
    print(f"pagefault summary-only / untraced, the whole command = {whole:.2f} (target ≤ 1.3: {verdict(whole <= 1.3)}); "
          f"the loop under it {lp['pagefault'] / lp['untraced']:.2f}")
    vs_bpftrace = med["pagefault"] / med["bpftrace"]
    print(f"pagefault summary-only / bpftrace's one-probe count, the whole command = {vs_bpftrace:.2f} "
          f"(target ≤ 0.5: {verdict(vs_bpftrace <= 0.5)})")
    # the whole-command ratio against bpftrace cannot reach 0.5 unless bpftrace takes more than twice the untraced
    # time: pagefault's whole command includes the untraced program's own time. The time each tool adds is shown
    # beside it, as a second view, not as the target
    added = (med["pagefault"] - med["untraced"]) / (med["bpftrace"] - med["untraced"])
    print(f"  (the whole-command ratio above is the target's; bpftrace's whole command is "
          f"{med['bpftrace'] / med['untraced']:.2f}x untraced, so 0.5 of it is {0.5 * med['bpftrace'] / med['untraced']:.2f}x "
          f"untraced. Beside it, not the target: the time added to the untraced command, pagefault's / bpftrace's "
          f"= {added:.2f})")
    load_ms = statistics.median(a for a, _d in cycles)
    detach_ms = statistics.median(d for _a, d in cycles)
    cycle_ms = statistics.median(a + d for a, d in cycles)
    print(f"the counter's load + attach + detach = {cycle_ms:.1f} ms (load + attach {load_ms:.1f}, of which choosing "
          f"the hooks {statistics.median(choose):.1f}; detach {detach_ms:.1f}; target ≤ 100: {verdict(cycle_ms <= 100)})")
    per_fault = (lp["pagefault"] - lp["untraced"]) / faults
    per_fault_bpftrace = (lp["bpftrace"] - lp["untraced"]) / faults
    per_fault_floor = (lp["floor"] - lp["untraced"]) / faults
    print(f"added cost per fault: pagefault's counter {per_fault:.0f} ns (every hook: the fault, its allocation, "
          f"...), bpftrace's one-probe count {per_fault_bpftrace:.0f} ns (target: pagefault ≤ bpftrace: "
          f"{verdict(per_fault <= per_fault_bpftrace)}); empty programs on the two busiest hooks {per_fault_floor:.0f} ns")
    print(f"the floor: empty programs on the hooks, loaded from Python, the whole command = "
          f"{med['floor'] / med['untraced']:.2f}x untraced; its fixed cost (on /bin/true) {med['floor /bin/true']:.3f} s "
          f"against pagefault's {med['pagefault /bin/true']:.3f} s; pagefault / the floor, the whole command = "
          f"{med['pagefault'] / med['floor']:.2f}")
    cpu = {n: statistics.median(v) for n, v in loop_cpu.items() if all(v)}
    if "untraced" in cpu:
        # the loop's CPU time (getrusage in first_touch.c) is not swollen by other tasks' time on a busy machine,
        # where its wall time is: the per-fault costs again, from it
        print("added CPU per fault (the loop's own user + system time, medians): " + ", ".join(
            f"{n} {(cpu[n] - cpu['untraced']) / faults:.0f} ns" for n in ("pagefault", "floor", "bpftrace", "perf record")
            if n in cpu) + f"; untraced {cpu['untraced'] / faults:.0f} ns a fault")
    for peer in ("perf record", "perf trace", "bpftrace"):
        print(f"pagefault / {peer}: the loop {lp['pagefault'] / lp[peer]:.2f}, "
              f"the whole command {med['pagefault'] / med[peer]:.2f}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    with freed_memory_kept():
        sys.exit(main())
