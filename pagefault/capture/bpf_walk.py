"""The bpf tier: the raw page-table entries of one address, read by bpftrace from the task's mm->pgd.

bpftrace follows each entry's frame through the kernel's direct map. The direct map's base
(page_offset_base) is randomised at boot and, without CONFIG_KALLSYMS_ALL, not in
/proc/kallsyms; so it is derived, never assumed: base = mm->pgd (read here) − the PGD page's
physical address (the pfn of the pgd_alloc allocation that perf saw during exec). A base that
is not 1 GiB aligned (as the kernel's KASLR keeps it) is refused.

Entries are read twice: when the fault enters the kernel (tracepoint exceptions:page_fault_user,
before the handler) and at the target's next system call (the write that reports the next phase),
after the handler installed the PTE.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import time
from typing import Callable

from ..decode.address import LEVEL_NAMES, level_shift
from ..evidence import BpfWalk, WalkRead
from .runner import start_child
from .safe_paths import UnsafePathError, trusted_executable

FRAME_MASK = 0x000F_FFFF_FFFF_F000
_LINE = re.compile(r"^(before|after) (\w+) ([0-9a-f]+)(?: ([0-9a-f]+))?$")
_LINE_ANY = re.compile(r"^([0-9a-f]+) (\w+) ([0-9a-f]+)(?: ([0-9a-f]+))?$")


class BpfError(Exception):
    """bpftrace could not be used; the message says why and the fix."""


def _walk_block(when: str, address: int, levels: int) -> str:
    """bpftrace statements that read one entry per level, stopping at a non-present or huge entry."""
    names = LEVEL_NAMES[levels]
    lines = [f'$t = (uint64)curtask->mm->pgd; printf("{when} pgdv %lx\\n", $t);']
    indent = ""
    for pos, name in enumerate(names):
        idx = (address >> level_shift(levels, pos)) & 0x1FF
        lines.append(f'{indent}$e = *(uint64 *)($t + {idx * 8}); '
                     f'printf("{when} {name} %lx %lx\\n", $e, $t - $base);')
        if pos < len(names) - 1:
            huge_stop = name in ("PUD", "PMD")
            cond = "($e & 1)" + (" && !($e & 0x80)" if huge_stop else "")
            lines.append(f"{indent}if ({cond}) {{ $t = $base + ($e & {FRAME_MASK:#x});")
            indent += "  "
    lines.append("}" * (len(names) - 1))
    return "\n    ".join(lines)


def bpftrace_script(pid: int, page: int, pgd_physical: int, levels: int, tool_pid: int) -> str:
    """Before: at the fault on `page`. After: at the target's next syscall. Then exit."""
    base = f"$base = (uint64)curtask->mm->pgd - {pgd_physical:#x};"
    return f"""
tracepoint:exceptions:page_fault_user /pid == {pid} && (args->address & ~0xfff) == {page:#x} && @state == 0/ {{
    {base}
    printf("before base %lx\\n", $base);
    {_walk_block("before", page, levels)}
    @state = 1;
}}
tracepoint:raw_syscalls:sys_enter /pid == {pid} && @state == 1/ {{
    {base}
    {_walk_block("after", page, levels)}
    @state = 2;
    exit();
}}
tracepoint:exceptions:page_fault_user /pid == {tool_pid} && @armedf == 0/ {{ printf("armed fault\\n"); @armedf = 1; }}
tracepoint:raw_syscalls:sys_enter /pid == {tool_pid} && @armed == 0/ {{ printf("armed syscall\\n"); @armed = 1; }}
"""


class BpfTracer:
    """A running bpftrace for one address; armed() returns once its probes fire."""

    def __init__(self, pid: int, address: int, pgd_physical: int, levels: int):
        try:
            exe = trusted_executable("bpftrace")
        except UnsafePathError as exc:
            raise BpfError(str(exc)) from None
        if not exe:
            raise BpfError("bpftrace is not installed; fix: as root, bash scripts/setup.sh (or apt-get install bpftrace)")
        self.page = address & ~0xFFF
        self.pgd_physical = pgd_physical
        self.script = bpftrace_script(pid, self.page, pgd_physical, levels, os.getpid())
        self.proc = start_child([exe, "-B", "line", "-e", self.script], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self._partial = b""

    def _read_lines(self, timeout: float) -> bool:
        """Read what bpftrace has printed (raw reads: a buffered reader would hide lines from select)."""
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return False
        chunk = os.read(fd, 65536)
        if not chunk:
            return False
        *whole, self._partial = (self._partial + chunk).split(b"\n")
        self.lines.extend(l.decode(errors="replace").strip() for l in whole)
        return True

    def arm(self, bound: float = 600.0, progress=None) -> None:
        """Make our own fault and syscall until both probes report: then the target's are live too.

        A handshake, not a guess: bpftrace's own "armed" lines say its probes fire. Compiling and
        attaching takes about a second here and tens of seconds under QEMU's TCG, so the only limit is
        a generous outer ``bound`` (for a bpftrace that hangs), with a progress line every few seconds.
        """
        import mmap
        started = time.monotonic()
        last_said = started
        seen: set[str] = set()
        while seen != {"armed fault", "armed syscall"}:
            if self.proc.poll() is not None:
                raise BpfError("bpftrace stopped: " + _last_error(self.proc.stderr.read().decode(errors="replace")))
            now = time.monotonic()
            if now - started > bound:
                self.stop()
                raise BpfError(f"bpftrace did not attach its probes within {bound:.0f} s (it is still compiling or "
                               "hung); fix: check that bpftrace -e 'BEGIN { exit() }' works")
            if progress and now - last_said > 5:
                progress(f"waiting for bpftrace to attach its probes ({now - started:.0f} s so far)")
                last_said = now
            page = mmap.mmap(-1, 4096)
            page[0] = 1          # a fresh page: one page fault of ours
            page.close()
            os.getppid()         # one system call of ours
            while self._read_lines(0.05):
                seen.update(l for l in self.lines if l.startswith("armed"))
        self.lines = [l for l in self.lines if not l.startswith("armed")]

    def result(self, timeout: float = 120.0) -> BpfWalk:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise BpfError("bpftrace saw no fault on the page within the time allowed") from None
        self.lines += [l.decode(errors="replace").strip() for l in (self._partial + out).splitlines()]
        err = err.decode(errors="replace")
        reads: dict[str, WalkRead] = {}
        base = None
        for line in self.lines:
            if line.startswith("armed"):
                continue
            parts = line.split()
            if len(parts) == 3 and parts[1] == "base":
                base = int(parts[2], 16)
                continue
            if len(parts) == 3 and parts[1] == "pgdv":
                reads.setdefault(parts[0], WalkRead(parts[0])).pgd_virtual = int(parts[2], 16)
                continue
            m = _LINE.match(line)
            if m:
                r = reads.setdefault(m.group(1), WalkRead(m.group(1)))
                r.entries[m.group(2)] = int(m.group(3), 16)
                if m.group(4):
                    r.table_physical[m.group(2)] = int(m.group(4), 16)
        if base is None or "before" not in reads:
            raise BpfError("bpftrace saw no fault on the page: " + (_last_error(err) or "no output"))
        if base & ((1 << 30) - 1):
            raise BpfError(f"derived direct-map base 0x{base:x} is not 1 GiB aligned: the PGD allocation "
                           "seen was not this mm's PGD")
        return BpfWalk(base, self.pgd_physical, reads, self.script, err)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _last_error(stderr: str) -> str:
    lines = [l for l in stderr.strip().splitlines() if "RLIMIT_MEMLOCK" not in l and l.strip()]
    return lines[-1] if lines else ""


def entries_at_syscall(pid: int, pages: list[int], direct_map_base: int, levels: int, syscall_nr: int,
                       poke: Callable[[], None], timeout: float = 120.0) -> dict[int, dict[str, int]]:
    """The raw entries of each page of `pid`, read when it next enters system call `syscall_nr`.

    direct_map_base: page_offset_base, derived by a bpf-tier journey (it is fixed for the boot).
    poke: makes the target enter that system call; it is called once bpftrace is attached. Each page's
    walk stops below a non-present or huge entry, as the journey's walk does. Raises BpfError.
    """
    exe = trusted_executable("bpftrace")
    if not exe:
        raise BpfError("bpftrace is not installed; fix: as root, bash scripts/setup.sh")
    blocks = []
    for page in pages:
        blocks.append(f"$base = {direct_map_base:#x};")
        blocks.append(_walk_block(f"{page:x}", page, levels).replace('printf("' + f"{page:x}" + ' pgdv %lx\\n", $t);', ""))
    script = (f"tracepoint:raw_syscalls:sys_enter /pid == {pid} && args->id == {syscall_nr}/ {{\n    "
              + "\n    ".join(blocks) + "\n    exit();\n}\n"
              f'tracepoint:raw_syscalls:sys_enter /pid == {os.getpid()} && @armed == 0/ {{ printf("armed\\n"); @armed = 1; }}\n')
    proc = start_child([exe, "-B", "line", "-e", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        started = time.monotonic()
        out = b""
        while b"armed" not in out:
            if proc.poll() is not None or time.monotonic() - started > timeout:
                raise BpfError("bpftrace did not attach: " + _last_error(proc.stderr.read().decode(errors="replace")))
            os.getppid()
            ready, _, _ = select.select([proc.stdout], [], [], 0.05)
            if ready:
                out += os.read(proc.stdout.fileno(), 65536)
        poke()
        rest, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BpfError(f"the target did not enter system call {syscall_nr} within {timeout:.0f} s") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    entries: dict[int, dict[str, int]] = {}
    for line in (out + rest).decode(errors="replace").splitlines():
        m = _LINE_ANY.match(line.strip())
        if m:
            entries.setdefault(int(m.group(1), 16), {})[m.group(2)] = int(m.group(3), 16)
    return entries
