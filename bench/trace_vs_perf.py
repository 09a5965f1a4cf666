#!/usr/bin/env python3
"""pagefault trace vs perf record, side by side in one run, on a 1 GiB first-touch loop (262,144 faults).

Each round runs, interleaved: perf record of the two tracepoints, and pagefault trace -o FILE with the summary it
prints by default and with --no-summary; then the same three with call chains (-g). Prints, for both tools: events
seen and lost, and the faults inside the program's 1 GiB region (exactly 262,144 are made there); each pagefault
variant's wall and CPU time (the command and its children, the target included) as a ratio to perf record's
(targets, with the summary: wall ≤ 0.8, CPU ≤ 1.0, with and without -g; medians of ROUNDS interleaved rounds,
default 7); and the time to decode and symbolise the recording, `pagefault report --events` against `perf script`
printing every event's decoded fields and symbolised ip, one line per event each (target: pagefault ≥ 3x faster).
The target is linked statically so that both tools see the same number of loader faults run after run. Needs root
and a C compiler; installs perf (linux-perf) with apt-get when it is missing.

    sudo ROUNDS=7 .venv/bin/python bench/trace_vs_perf.py
"""

import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from peers import PF, build_loop, freed_memory_kept, machine_note, peers, verdict  # noqa: E402

from pagefault.capture.recording import load_recording  # noqa: E402
from pagefault.capture.records import parse_stream, raw_field  # noqa: E402

EVENTS = ("exceptions:page_fault_user", "kmem:mm_page_alloc")
PERF_SCRIPT_FIELDS = "comm,tid,cpu,time,event,ip,sym,trace"
REGION = re.compile(r"region=0x([0-9a-f]+) size=0x([0-9a-f]+)")


CPU: list[float] = []   # CPU seconds (user + system) of the last timed() command and all its children


def timed(cmd, stdout=subprocess.PIPE):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    if r.returncode != 0:
        sys.exit(f"bench: {' '.join(map(str, cmd))} failed: {r.stderr.strip()[-400:]}")
    return elapsed, r


def region_of(stdout: str) -> tuple[int, int]:
    m = REGION.search(stdout)
    if not m:
        sys.exit(f"bench: the target did not print its region: {stdout[-200:]!r}")
    start = int(m.group(1), 16)
    return start, start + int(m.group(2), 16)


def perf_counts(perf: str, data: Path, region: tuple[int, int]) -> tuple[Counter, int]:
    r = subprocess.run([perf, "script", "-i", str(data), "-F", "event,trace"], capture_output=True, text=True)
    events: Counter = Counter()
    inside = 0
    for line in r.stdout.splitlines():
        name, _, rest = line.strip().partition(": ")
        events[name] += 1
        if name == EVENTS[0]:
            addr = int(rest.split("address=", 1)[1].split()[0], 16)
            inside += region[0] <= addr < region[1]
    return events, inside


def pagefault_counts(path: Path, region: tuple[int, int]) -> tuple[Counter, int, int]:
    rec = load_recording(path)
    stream = parse_stream(rec.data, rec.meta["sample_type"])
    ids = {f"{e['system']}:{e['name']}": int(i) for i, e in rec.meta["events"].items()}
    events = Counter({name: int(np.sum(stream.samples.event_type == ids[name])) for name in EVENTS})
    mask = stream.samples.event_type == ids[EVENTS[0]]
    off, size, signed = rec.meta["events"][str(ids[EVENTS[0]])]["fields"]["address"]
    addr = raw_field(stream.data, stream.samples.raw_offset[mask], off, size, bool(signed))
    inside = int(np.sum((addr >= region[0]) & (addr < region[1])))
    return events, inside, stream.lost


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("bench: needs root (tracepoints); run: sudo .venv/bin/python bench/trace_vs_perf.py")
    perf = peers("perf")["perf"]
    rounds = int(os.environ.get("ROUNDS", "7"))
    work = Path(tempfile.mkdtemp(prefix="pf-bench-"))
    exe = build_loop(work)
    plain = statistics.median(timed([str(exe)])[0] for _ in range(3))
    print(f"first-touch of 1 GiB untraced: {plain:.2f} s (median of 3); {machine_note()}")

    def perf_record(g: list[str], out: str) -> list[str]:
        return [perf, "record", "-q", *g, "-o", str(work / out), "-e", EVENTS[0], "-e", EVENTS[1], "--", str(exe)]

    def pagefault(g: list[str], summary: list[str], out: str) -> list[str]:
        return PF + ["trace", "-q", *g, *summary, "--force", "-o", str(work / out), "--", str(exe)]
    variants = {
        "perf record": perf_record([], "perf.data"),
        "pagefault": pagefault([], [], "pf.pfrec"),
        "pagefault --no-summary": pagefault([], ["--no-summary"], "pf-n.pfrec"),
        "perf record -g": perf_record(["-g"], "perf-g.data"),
        "pagefault -g": pagefault(["-g"], [], "pf-g.pfrec"),
        "pagefault -g --no-summary": pagefault(["-g"], ["--no-summary"], "pf-gn.pfrec"),
    }
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    regions: dict[str, tuple[int, int]] = {}
    for i in range(rounds):  # interleaved so all see the same machine state
        for name, cmd in variants.items():
            t, r = timed(cmd)
            wall[name].append(t)
            cpu[name].append(CPU[-1])
            regions[name] = region_of(r.stdout)
        print(f"round {i + 1}: " + ", ".join(f"{n} {wall[n][-1]:.2f} s ({cpu[n][-1]:.2f} s CPU)" for n in variants),
              flush=True)
    print(machine_note())
    perf_region, pf_region = regions["perf record"], regions["pagefault"]

    # like for like: both print every event of the same kind of recording, decoded and symbolised, one line each
    perf_script = [timed([perf, "script", "-i", str(work / "perf.data"), "-F", PERF_SCRIPT_FIELDS],
                         stdout=subprocess.DEVNULL)[0] for _ in range(3)]
    pf_report = [timed(PF + ["report", "--events", str(work / "pf.pfrec")], stdout=subprocess.DEVNULL)[0]
                 for _ in range(3)]
    _t, perf_lines = timed([perf, "script", "-i", str(work / "perf.data"), "-F", PERF_SCRIPT_FIELDS])
    _t, pf_lines = timed(PF + ["report", "--events", str(work / "pf.pfrec")])
    perf_lines, pf_lines = perf_lines.stdout.count("\n"), pf_lines.stdout.count("\n")

    p_events, p_inside = perf_counts(perf, work / "perf.data", perf_region)
    _t, stats = timed([perf, "report", "--stats", "-i", str(work / "perf.data")])
    m = re.search(r"LOST events:\s+(\d+)", stats.stdout)
    perf_lost = int(m.group(1)) if m else 0
    f_events, f_inside, pf_lost = pagefault_counts(work / "pf.pfrec", pf_region)

    print(f"\n{'(last round)':30}{'perf record':>14}{'pagefault':>14}")
    for name in EVENTS:
        print(f"{name + ' events':30}{p_events[name]:>14,}{f_events[name]:>14,}")
    print(f"{'faults inside the 1 GiB region':30}{p_inside:>14,}{f_inside:>14,}   (the program makes 262,144)")
    print(f"{'events lost':30}{perf_lost:>14,}{pf_lost:>14,}")
    print(f"{'traced run wall (median)':30}{statistics.median(wall['perf record']):>13.2f}s"
          f"{statistics.median(wall['pagefault']):>13.2f}s")
    print(f"{'decode + symbolise (median)':30}{statistics.median(perf_script):>13.2f}s"
          f"{statistics.median(pf_report):>13.2f}s   (perf script -F {PERF_SCRIPT_FIELDS} vs pagefault report --events)")
    print(f"{'lines printed (last round)':30}{perf_lines:>14,}{pf_lines:>14,}   (one per event: the same work)")
    print(f"page_fault_user counts equal: {p_events[EVENTS[0]] == f_events[EVENTS[0]]}; "
          f"region faults equal (262,144 both): {p_inside == f_inside == 262144}; "
          f"none lost: {perf_lost == 0 and pf_lost == 0}")
    diff = f_events[EVENTS[1]] - p_events[EVENTS[1]]
    print(f"mm_page_alloc counts differ by {diff:+d}" + (" (allocations the kernel makes for itself in the target's "
          "context, such as slab refills, vary from run to run; the two runs are separate processes)" if diff else ""))
    print(f"{'(medians of ' + str(rounds) + ' rounds)':30}{'wall':>10}{'CPU':>10}{'wall / perf':>14}{'CPU / perf':>12}")
    for name in variants:
        peer = "perf record -g" if "-g" in name else "perf record"
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        w0, c0 = statistics.median(wall[peer]), statistics.median(cpu[peer])
        print(f"{name:30}{w:>9.2f}s{c:>9.2f}s{w / w0:>14.2f}{c / c0:>12.2f}")
    for name, peer in (("pagefault", "perf record"), ("pagefault -g", "perf record -g")):
        w = statistics.median(wall[name]) / statistics.median(wall[peer])
        c = statistics.median(cpu[name]) / statistics.median(cpu[peer])
        print(f"{name} (with its summary) / {peer}: wall {w:.2f} (target ≤ 0.8: {verdict(w <= 0.8)}), "
              f"CPU {c:.2f} (target ≤ 1.0: {verdict(c <= 1.0)})")
        # perf record's wall is two-valued here: its exit sometimes takes a second more at the same CPU (1.18 or
        # 2.18 s seen), so the median of a few rounds lands on either; beside the target, both sides' best rounds
        fastest = min(wall[name]) / min(wall[peer])
        print(f"  (beside it, not the target: {peer}'s walls {sorted(round(x, 2) for x in wall[peer])}; best round "
              f"against best round, wall {fastest:.2f})")
    speed = statistics.median(perf_script) / statistics.median(pf_report)
    print(f"decode speed-up perf script/pagefault report = {speed:.1f}x "
          f"(target ≥ 3x: {'met' if speed >= 3 else 'NOT met'})")
    shutil.rmtree(work)


if __name__ == "__main__":
    with freed_memory_kept():
        main()
