"""The compiled objects as the tests read them: a struct's layout and the named types from an object's own BTF
(bpftool), for the tests that hold each Python mirror to its object; and the journey walk of one written page
of a child process, as its live tests drive it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest


def _bpftool() -> str:
    bpftool = shutil.which("bpftool")
    if not bpftool:
        pytest.skip("bpftool is not installed (bash scripts/setup.sh installs it)")
    return bpftool


def btf_types(obj: Path) -> dict[str, dict]:
    """The object's named BTF types (`bpftool btf dump file OBJ -j`), by name."""
    out = subprocess.run([_bpftool(), "btf", "dump", "file", str(obj), "-j"], capture_output=True, text=True,
                         check=True).stdout
    return {t["name"]: t for t in json.loads(out)["types"] if t.get("name")}


def btf_struct(obj: Path, name: str) -> tuple[int, dict[str, tuple[int, int]]]:
    """Struct `name`'s (size, member → (byte offset, byte size)), from `bpftool btf dump file OBJ`."""
    text = subprocess.run([_bpftool(), "btf", "dump", "file", str(obj)], capture_output=True, text=True,
                          check=True).stdout
    types: dict[int, dict] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"\[(\d+)\] (\w+) '([^']*)'(.*)", line)
        if m:
            attrs = dict(re.findall(r"(\w+)=(\d+)", m.group(4)))
            current = types[int(m.group(1))] = {"kind": m.group(2), "name": m.group(3), "attrs": attrs, "members": []}
            continue
        m = re.match(r"\s+'([^']*)' type_id=(\d+) bits_offset=(\d+)", line)
        if m and current is not None:
            current["members"].append((m.group(1), int(m.group(2)), int(m.group(3))))

    def size(tid: int) -> int:
        t = types[tid]
        if t["kind"] in ("INT", "STRUCT", "UNION", "ENUM"):
            return int(t["attrs"]["size"])
        if t["kind"] == "ARRAY":
            return size(int(t["attrs"]["type_id"])) * int(t["attrs"]["nr_elems"])
        return size(int(t["attrs"]["type_id"]))     # TYPEDEF, CONST, VOLATILE

    t = next(t for t in types.values() if t["kind"] == "STRUCT" and t["name"] == name)
    return int(t["attrs"]["size"]), {n: (bits // 8, size(tid)) for n, tid, bits in t["members"]}


def dtype_layout(dtype) -> tuple[int, dict[str, tuple[int, int]]]:
    """A numpy mirror's (size, field → (offset, size)), to compare with btf_struct()."""
    return dtype.itemsize, {n: (dtype.fields[n][1], dtype.fields[n][0].itemsize) for n in dtype.names}


# ---- the journey walk of one written page of a child (tests/test_journey_walk_bpf.py) ----

GETPPID = 110             # x86-64


def poke(child) -> None:
    """Let the child past its next stdin.readline()."""
    child.stdin.write("\n")
    child.stdin.flush()


def pgd_at_getppid(child, page: int, base: int, levels: int) -> int:
    """The child's mm->pgd, read by the walk (MODE_SYSCALL) at its getppid(); its PTE of `page` is still 0."""
    from pagefault.capture import bpf_walk as bw
    obj = bw.WalkObject({"target_tgid": child.pid, "levels": levels, "mode": bw.MODE_SYSCALL, "direct_map_base": base,
                         "syscall_nr": GETPPID, "nranges": 1, "range_lo": [page] + [0] * (bw.WALK_RANGES - 1)},
                        (bw.SYSCALL_HOOK,), levels, lru=False)
    try:
        poke(child)
        deadline = time.monotonic() + 10
        while not obj.walked.at_syscall and time.monotonic() < deadline:
            obj.poll(50)
    finally:
        obj.close()
    rec = obj.walked.at_syscall[0]
    read = bw.walk_read(rec, "at syscall", levels)
    assert read.entries.get("PTE", 0) == 0 and int(rec["address"]) == page
    return read.pgd_virtual


def walk_written_page(child, page: int, base: int, levels: int, kernel=None):
    """The journey's walk (BpfTracer) of the child's write to `page` + 5: its PGD read at a getppid() first,
    then the walk loaded, the child let go to write and make its next system call, the reads before and
    after the fault gathered (the BpfWalk)."""
    from pagefault.capture import bpf_walk as bw
    pgd_virtual = pgd_at_getppid(child, page, base, levels)
    tracer = bw.BpfTracer(child.pid, levels, kernel=kernel)
    try:
        tracer.set_page(page + 5, pgd_virtual - base)
        tracer.arm()
        poke(child)
        deadline = time.monotonic() + 10
        while "after" not in tracer.obj.walked.reads and time.monotonic() < deadline:
            tracer.obj.poll(50)
        return tracer.result()
    finally:
        tracer.stop()
