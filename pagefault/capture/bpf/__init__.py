"""pagefault's compiled BPF programs: C sources here (NAME.bpf.c, NAME.h, pagefault.bpf.h), built once by
scripts/build-bpf.sh (run by scripts/setup.sh) into CO-RE objects under build/<machine>/, loaded through
the system's libbpf (capture/libbpf.py). Nothing is compiled when pagefault runs.

This module finds an object and chooses, per hook, which of its program variants this kernel takes:
the raw tracepoint (BTF-typed, ``tp_btf/EVENT``, or plain, ``raw_tp/EVENT``: the hook's ``raw_kind``, a HookVariant) where
the kernel's BTF has ``btf_trace_EVENT``, else the classic tracepoint (``tracepoint/SYSTEM/EVENT``) where
tracefs has the event (and, for a context struct declared from tracefs's format, where the format still
matches it). The choice and its reason are returned, to be shown.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from ...kernel.btf import BTF_MAGIC, VMLINUX_BTF

HERE = Path(__file__).resolve().parent
SETUP_FIX = "fix: as root, bash scripts/setup.sh (it installs clang, libbpf-dev and bpftool and builds the objects)"


class BpfObjectMissing(Exception):
    """The object is not built (or older than its source); the message says how to build it."""


def object_path(name: str) -> Path:
    """The built object NAME.bpf.o for this machine's architecture.

    :raises BpfObjectMissing: not built, or its source is newer (then it could disagree with the Python
        mirror of its structs): the message names the fix."""
    obj = HERE / "build" / os.uname().machine / f"{name}.bpf.o"
    if not obj.exists():
        raise BpfObjectMissing(f"the BPF object {obj} is not built; {SETUP_FIX}")
    # its own source and every header, as scripts/build-bpf.sh decides what to rebuild (another object's
    # newer .bpf.c must not make this one stale: the build would never rebuild it)
    newest = max(p.stat().st_mtime for p in HERE.iterdir() if p.suffix == ".h" or p.name == f"{name}.bpf.c")
    if obj.stat().st_mtime < newest:
        raise BpfObjectMissing(f"the BPF object {obj} is older than its sources; {SETUP_FIX}")
    return obj


class HookVariant(StrEnum):
    """Which program of a hook this kernel takes (a StrEnum: it prints and compares as its word)."""

    TP_BTF = "tp_btf"            # a BTF-typed raw tracepoint: attached by its BTF id, found in the kernel's whole BTF
    RAW_TP = "raw_tp"            # a raw tracepoint attached by name, its arguments read through CO-RE (an object
                                 # with RAW_TRACEPOINTS, pagefault.bpf.h's RAW_HOOK)
    TRACEPOINT = "tracepoint"    # the classic tracepoint (tracefs's record)
    NONE = "none"                # neither: the hook is not taken here


@dataclass(frozen=True)
class Hook:
    """One kernel event a program needs, with its two program variants in the object."""

    system: str
    event: str
    btf_program: str            # SEC("tp_btf/EVENT") or SEC("raw_tp/EVENT"), as raw_kind says
    tracepoint_program: str     # SEC("tracepoint/SYSTEM/EVENT")
    required: bool = True
    # for a classic context struct declared by hand (not in BTF): field → (offset, size) it expects
    layout: dict[str, tuple[int, int]] = field(default_factory=dict)
    raw_kind: HookVariant = HookVariant.TP_BTF   # its raw-tracepoint program's kind: TP_BTF or RAW_TP


@dataclass(frozen=True)
class HookChoice:
    hook: Hook
    program: str | None         # the program to load, None: neither variant here
    variant: HookVariant
    reason: str


def _btf_strings(btf_path: Path) -> bytes:
    """The string section of the BTF at `btf_path` (read alone: less than half of the file), or the whole file
    when it does not start with a BTF header (its names are then searched all the same).

    Mapped where the kernel lets /sys/kernel/btf/vmlinux be mapped (6.16 on; ~1 ms), else read (~4 ms here:
    sysfs hands it out 4 KiB a read)."""
    import mmap
    with open(btf_path, "rb") as f:
        head = f.read(24)
        if len(head) == 24 and struct.unpack_from("<H", head)[0] == BTF_MAGIC:
            header_len = struct.unpack_from("<I", head, 4)[0]
            _type_off, _type_len, str_off, str_len = struct.unpack_from("<IIII", head, 8)
            start = header_len + str_off
            try:
                with mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ) as mapped:
                    strings = mapped[start:start + str_len]
            except (OSError, ValueError):   # not mappable (before 6.16: EACCES; a pipe or an empty file)
                f.seek(start)
                strings = f.read(str_len)
            if len(strings) == str_len:
                return b"\0" + strings   # the section starts with its empty name; a \0 before the first, to be sure
        f.seek(0)
        return f.read()


class KernelHooks:
    """What this kernel offers, read once: BTF's raw-tracepoint typedefs and tracefs's events."""

    def __init__(self, btf_path: Path = VMLINUX_BTF, tracefs: Path | None = None):
        try:
            # the names of BTF types sit in its string section; a btf_trace_EVENT typedef is what makes
            # tp_btf/EVENT attachable. The section is read once (_btf_strings: ~1 ms mapped, ~4 ms read),
            # and each hook's name is looked for in it whole, between its NULs (~0.05 ms a hook, where a regex
            # collecting every btf_trace_ name took ~2 ms, a search of the whole 5 MB blob ~1.3 ms a hook and
            # parsing every type ~1 s).
            self._strings = _btf_strings(btf_path)
            self.btf_problem = ""
        except OSError as exc:
            self._strings = b""
            self.btf_problem = f"{btf_path}: {exc.strerror}"
        self._tracefs = tracefs

    def has_btf_tracepoint(self, event: str) -> bool:
        return b"\0btf_trace_" + event.encode() + b"\0" in self._strings

    def tracefs_format(self, system: str, event: str) -> str | None:
        """The event's format file, or None where tracefs (mounted here if it is not) lacks it."""
        from ...kernel.tracefs import TracefsError, find_tracefs
        if self._tracefs is None:
            try:
                self._tracefs = find_tracefs()
            except TracefsError:
                return None
        try:
            return (self._tracefs / "events" / system / event / "format").read_text()
        except OSError:
            return None

    def choose(self, hook: Hook) -> HookChoice:
        name = f"{hook.system}:{hook.event}"
        if self.has_btf_tracepoint(hook.event):   # the raw tracepoint is there (a raw_tp needs no more of BTF)
            return HookChoice(hook, hook.btf_program, hook.raw_kind,
                              f"the kernel's BTF has btf_trace_{hook.event}")
        why = f"no btf_trace_{hook.event} in the kernel's BTF" + (f" ({self.btf_problem})" if self.btf_problem else "")
        fmt = self.tracefs_format(hook.system, hook.event)
        if fmt is None:
            return HookChoice(hook, None, HookVariant.NONE, f"{why}, and tracefs has no {name}")
        if hook.layout:
            from ...kernel.tracefs import parse_format
            fields = parse_format(fmt, hook.system, hook.event).fields
            wrong = [f for f, (off, size) in hook.layout.items()
                     if f not in fields or (fields[f].offset, fields[f].size) != (off, size)]
            if wrong:
                return HookChoice(hook, None, HookVariant.NONE, f"{why}, and tracefs's {name} format differs from the "
                                  f"program's at {', '.join(wrong)}")
        return HookChoice(hook, hook.tracepoint_program, HookVariant.TRACEPOINT, f"{why}; tracefs has {name}")
