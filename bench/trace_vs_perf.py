#!/usr/bin/env python3
"""pagefault trace vs perf record, side by side in one run, on a 1 GiB first-touch loop (262,144 faults).

Prints, for both tools: events seen and lost, and the faults inside the program's 1 GiB region
(exactly 262,144 are made there); the traced run's wall time as a ratio to perf record's
(target ≤ 1.0, median of interleaved rounds); and the time to decode and symbolise the recording,
`pagefault report --events` against `perf script` printing every event's decoded fields and symbolised ip,
one line per event each (target: pagefault ≥ 3x faster). The target is linked statically so that both tools see the same
number of loader faults run after run. Needs root, perf (linux-perf) and a C compiler.
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
from pagefault.capture.recording import load_recording  # noqa: E402
from pagefault.capture.records import parse_stream, raw_field  # noqa: E402

PF = [sys.executable, "-m", "pagefault"]
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
    perf = shutil.which("perf")
    if not perf:
        sys.exit("bench: perf is not installed; fix: apt-get install linux-perf")
    rounds = int(os.environ.get("ROUNDS", "5"))
    work = Path(tempfile.mkdtemp(prefix="pf-bench-"))
    exe = work / "first_touch"
    build = subprocess.run(["cc", "-O2", "-static", "-o", str(exe), str(HERE / "c" / "first_touch.c")])
    if build.returncode != 0:
        sys.exit("bench: cannot link the target statically; fix: apt-get install libc6-dev")
    plain = statistics.median(timed([str(exe)])[0] for _ in range(rounds))
    print(f"first-touch of 1 GiB untraced: {plain:.2f} s (median of {rounds})")

    perf_wall, pf_wall, perf_cpu, pf_cpu = [], [], [], []
    g_wall: dict[str, list[float]] = {"perf": [], "pf": []}
    g_cpu: dict[str, list[float]] = {"perf": [], "pf": []}
    for i in range(rounds):  # interleaved so both see the same machine state
        t, r = timed([perf, "record", "-q", "-o", str(work / "perf.data"), "-e", EVENTS[0], "-e", EVENTS[1],
                      "--", str(exe)])
        perf_wall.append(t)
        perf_cpu.append(CPU[-1])
        perf_region = region_of(r.stdout)
        t, r = timed(PF + ["trace", "-q", "--no-summary", "--force", "-o", str(work / "pf.pfrec"), "--", str(exe)])
        pf_wall.append(t)
        pf_cpu.append(CPU[-1])
        pf_region = region_of(r.stdout)
        # the same with call chains (-g): perf record -g against pagefault trace -g
        t, _r = timed([perf, "record", "-q", "-g", "-o", str(work / "perf-g.data"), "-e", EVENTS[0], "-e", EVENTS[1],
                       "--", str(exe)])
        g_wall["perf"].append(t)
        g_cpu["perf"].append(CPU[-1])
        t, _r = timed(PF + ["trace", "-q", "-g", "--no-summary", "--force", "-o", str(work / "pf-g.pfrec"), "--",
                            str(exe)])
        g_wall["pf"].append(t)
        g_cpu["pf"].append(CPU[-1])
        print(f"round {i + 1}: perf record {perf_wall[-1]:.2f} s ({perf_cpu[-1]:.2f} s CPU), pagefault trace "
              f"{pf_wall[-1]:.2f} s ({pf_cpu[-1]:.2f} s CPU); with -g: perf {g_wall['perf'][-1]:.2f} s, "
              f"pagefault {g_wall['pf'][-1]:.2f} s", flush=True)

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
    print(f"{'traced run wall (median)':30}{statistics.median(perf_wall):>13.2f}s{statistics.median(pf_wall):>13.2f}s")
    print(f"{'decode + symbolise (median)':30}{statistics.median(perf_script):>13.2f}s"
          f"{statistics.median(pf_report):>13.2f}s   (perf script -F {PERF_SCRIPT_FIELDS} vs pagefault report --events)")
    print(f"{'lines printed (last round)':30}{perf_lines:>14,}{pf_lines:>14,}   (one per event: the same work)")
    print(f"page_fault_user counts equal: {p_events[EVENTS[0]] == f_events[EVENTS[0]]}; "
          f"region faults equal (262,144 both): {p_inside == f_inside == 262144}; "
          f"none lost: {perf_lost == 0 and pf_lost == 0}")
    diff = f_events[EVENTS[1]] - p_events[EVENTS[1]]
    print(f"mm_page_alloc counts differ by {diff:+d}" + (" (allocations the kernel makes for itself in the target's "
          "context, such as slab refills, vary from run to run; the two runs are separate processes)" if diff else ""))
    ratio = statistics.median(pf_wall) / statistics.median(perf_wall)
    print(f"wall-time ratio pagefault/perf record = {ratio:.2f} (target ≤ 0.8: {'met' if ratio <= 0.8 else 'NOT met'})")
    cpu = statistics.median(pf_cpu) / statistics.median(perf_cpu)
    print(f"CPU-time ratio pagefault/perf record = {cpu:.2f} (the target included; target ≤ 1.0: "
          f"{'met' if cpu <= 1.0 else 'NOT met'})")
    g_ratio = statistics.median(g_wall["pf"]) / statistics.median(g_wall["perf"])
    g_cpu_ratio = statistics.median(g_cpu["pf"]) / statistics.median(g_cpu["perf"])
    print(f"with -g: wall-time ratio {g_ratio:.2f} (target ≤ 0.8: {'met' if g_ratio <= 0.8 else 'NOT met'}), "
          f"CPU-time ratio {g_cpu_ratio:.2f} (target ≤ 1.0: {'met' if g_cpu_ratio <= 1.0 else 'NOT met'})")
    speed = statistics.median(perf_script) / statistics.median(pf_report)
    print(f"decode speed-up perf script/pagefault report = {speed:.1f}x "
          f"(target ≥ 3x: {'met' if speed >= 3 else 'NOT met'})")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
