"""This boot's identity: what a per-boot cache (the direct map's base, each object's slice of the kernel's BTF) and
a recording's origin are keyed by. A module of its own, importing nothing: the counting path reads it at every
start, and its first home (symbols/recorded.py) imports numpy."""

from __future__ import annotations


def boot_id(path: str = "/proc/sys/kernel/random/boot_id") -> str:
    """This boot's ID, a UUID the kernel draws at boot ("" where the kernel does not say).

    :returns: the ID; raises nothing."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""
