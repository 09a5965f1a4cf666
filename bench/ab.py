#!/usr/bin/env python3
"""Commands side by side, interleaved: each one's median wall time and median CPU time (its own and its children's
user + system, from getrusage), over ROUNDS rounds, after one run of each thrown away (bytecode cached).

CPU time is the comparison to trust on a busy machine: other work on the CPUs stretches a command's wall time, not
its CPU time. Arguments are separated by @@ within a command, e.g. to compare main's checkout with a branch's:

    sudo python3 bench/ab.py 15 "/work/main/.venv/bin/python@@-m@@pagefault@@trace@@--summary-only@@-q@@--json@@--@@/bin/true" \\
                                "/work/wt/B/.venv/bin/python@@-m@@pagefault@@trace@@--summary-only@@-q@@--json@@--@@/bin/true"

Run it from a directory outside both checkouts (an editable install finds its own code wherever it is run from).
"""

import os
import resource
import statistics
import subprocess
import sys
import time


def main() -> int:
    if len(sys.argv) < 3 or not sys.argv[1].isdigit():
        sys.exit("usage: ab.py ROUNDS CMD@@ARG... [CMD@@ARG...] (see its docstring)")
    rounds = int(sys.argv[1])
    commands = [c.split("@@") for c in sys.argv[2:]]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}   # bytecode cached, as a user's
    wall: list[list[float]] = [[] for _ in commands]
    cpu: list[list[float]] = [[] for _ in commands]
    for command in commands:
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    for _ in range(rounds):
        for i, command in enumerate(commands):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
            wall[i].append(time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if done.returncode:
                sys.exit(f"ab: {' '.join(command)} failed: {done.stderr.decode(errors='replace')[-300:]}")
            cpu[i].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} CPUs; medians of {rounds} rounds:")
    for i, command in enumerate(commands):
        print(f"  wall {statistics.median(wall[i]) * 1000:7.1f} ms  CPU {statistics.median(cpu[i]) * 1000:7.1f} ms "
              f"(least {min(cpu[i]) * 1000:6.1f})  {' '.join(command)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
