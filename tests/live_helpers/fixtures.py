"""Choosing a saved capture by what a test needs, never by the exact kernel build string.

Two machines of the same kind run the same kernel version under different build strings
(`6.18.44-fc-v669`, `6.18.44-fc-v1147`): a fixture looked up by `uname -r` is found on one and
silently replaced by an arbitrary one on the other. A test that compares a fresh capture with a
saved one asks instead for the saved one that can have its shape: the same architecture and paging
levels (a 5-level walk has a P4D entry a 4-level one lacks), and among those the nearest kernel version.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "evidence"


@dataclass(frozen=True)
class SavedCapture:
    path: Path
    arch: str                   # "x86_64" or "arm64", as the evidence says (x86 journeys predate the field)
    paging_levels: int
    kernel_version: tuple[int, int]
    kernel_release: str


def saved_capture(path: Path) -> SavedCapture:
    """What a fixture file says of the kernel it was captured on (read from the file, not its folder's name)."""
    ev = json.loads(gzip.decompress(path.read_bytes()))["evidence"]
    version = tuple(ev["kernel_version"])[:2]
    return SavedCapture(path, str(ev.get("arch") or "x86_64"), int(ev["paging_levels"]), (int(version[0]), int(version[1])),
                        str(ev["kernel_release"]))


def matching_capture(pattern: str, *, arch: str, paging_levels: int, kernel_version: tuple[int, int],
                     root: Path = FIXTURES) -> SavedCapture:
    """The saved capture named `pattern` (e.g. ``journey-bpf.json.gz``) with this architecture and paging
    levels, of the kernel version nearest to `kernel_version` (ties: the newer kernel).

    :raises LookupError: no saved capture of that name has this architecture and paging levels (the
        message says which shapes there are, so a new machine's shape is added as a fixture, not skipped).
    """
    candidates = [saved_capture(p) for p in sorted(root.glob(f"*/{pattern}"))]
    fitting = [c for c in candidates if c.arch == arch and c.paging_levels == paging_levels]
    if not fitting:
        shapes = sorted({(c.arch, c.paging_levels, c.kernel_release) for c in candidates})
        raise LookupError(f"no saved {pattern} for {arch} with {paging_levels}-level paging; saved: {shapes}")

    def distance(c: SavedCapture) -> tuple[int, int]:
        major, minor = c.kernel_version
        gap = abs((major * 1000 + minor) - (kernel_version[0] * 1000 + kernel_version[1]))
        return gap, -(major * 1000 + minor)
    return min(fitting, key=distance)
