#!/usr/bin/env python3
"""Vectorised pagemap decode rate for 1,000,000 entries. Target: ≥ 10 million entries per second."""

import time

import numpy as np

from pagefault.decode import decode_pagemap_entry
from pagefault.decode.vectorised import decode_pagemap_array

N = 1_000_000
TARGET = 10_000_000


def main() -> None:
    rng = np.random.default_rng(1)
    entries = rng.integers(0, 1 << 63, size=N, dtype=np.uint64) | np.uint64(1 << 63)
    decode_pagemap_array(entries[:1000])
    best = min(_timed(lambda: decode_pagemap_array(entries)) for _ in range(5))
    rate = N / best
    sample = 20_000
    scalar = _timed(lambda: [decode_pagemap_entry(int(v)) for v in entries[:sample]])
    print(f"vectorised: {N:,} pagemap entries in {best * 1e3:.1f} ms = {rate / 1e6:.1f} M entries/s "
          f"(target ≥ {TARGET / 1e6:.0f} M/s: {'met' if rate >= TARGET else 'NOT met'})")
    print(f"scalar decoder: {sample / scalar / 1e3:.0f} k entries/s; vectorised is {rate / (sample / scalar):.0f}x faster")


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
