#!/usr/bin/env python3
"""The simulator's first-touch fault rate, side by side with the real kernel's on the same loop.

The loop: mmap 1 GiB of private anonymous memory (no THP) and write one byte to each 4 KiB page,
262,144 first-touch faults. The kernel's rate is the loop's own time inside bench/c/first_touch.c
(clock_gettime around the loop, faults counted by getrusage). The simulator runs the same loop with
SimulatedKernel.write_loop() (each fault: MMU check, a page from the simulated buddy allocator, the
PTE); the one-access-at-a-time path with a full Fault record per fault is timed too. Medians of
interleaved rounds. Target: ≥ 500,000 simulated faults per second. Needs a C compiler.
"""

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
from pagefault.model import kernel as mk  # noqa: E402

SIZE = 1 << 30
PAGES = SIZE // 4096
ROUNDS = 5
TARGET = 500_000


def kernel_round(exe: Path) -> tuple[float, int]:
    out = subprocess.run([str(exe), hex(SIZE)], capture_output=True, text=True, check=True).stdout
    m = re.search(r"loop_ns=(\d+) minflt=(\d+)", out)
    return int(m.group(1)) / 1e9, int(m.group(2))


def model_round(fast: bool, pages: int = PAGES) -> tuple[float, int]:
    k = mk.SimulatedKernel(mk.ModelConfig(thp_enabled="never", memory_mib=2048))
    p = k.exec("first_touch")
    start = k.mmap(p, pages * 4096, mk.PROT_READ | mk.PROT_WRITE, mk.MAP_PRIVATE | mk.MAP_ANONYMOUS)
    t = time.perf_counter()
    if fast:
        faults = k.write_loop(p, start, pages).count
    else:
        faults = sum(1 for i in range(pages) if k.access(p, start + i * 4096, write=True) is not None)
    return time.perf_counter() - t, faults


def main() -> int:
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        print("needs a C compiler for the kernel's side: apt-get install gcc", file=sys.stderr)
        return 2
    exe = Path(tempfile.mkdtemp(prefix="pf-bench-")) / "first_touch"
    subprocess.run([cc, "-O2", "-o", str(exe), str(HERE / "c" / "first_touch.c")], check=True)
    kernel, model, scalar = [], [], []
    for r in range(ROUNDS):
        kernel.append(kernel_round(exe))
        model.append(model_round(True))
        scalar.append(model_round(False, PAGES // 8))
        print(f"round {r + 1}/{ROUNDS}: kernel {kernel[-1][1] / kernel[-1][0]:,.0f}/s, "
              f"simulator {model[-1][1] / model[-1][0]:,.0f}/s", file=sys.stderr)
    k_rate = statistics.median(f / t for t, f in kernel)
    m_rate = statistics.median(f / t for t, f in model)
    s_rate = statistics.median(f / t for t, f in scalar)
    print(f"first-touch loop over 1 GiB ({PAGES:,} pages), median of {ROUNDS} interleaved rounds")
    print(f"  real kernel         : {k_rate:>12,.0f} faults/s  ({statistics.median(f for _t, f in kernel):,.0f} "
          "minor faults in the loop, getrusage)")
    print(f"  simulator write_loop: {m_rate:>12,.0f} faults/s  ({model[0][1]:,} simulated faults)")
    print(f"  simulator access()  : {s_rate:>12,.0f} faults/s  (one Fault record each, {PAGES // 8:,} pages)")
    print(f"  ratio simulator / kernel: {m_rate / k_rate:.2f}")
    ok = m_rate >= TARGET
    print(f"  target ≥ {TARGET:,} simulated faults/s: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
