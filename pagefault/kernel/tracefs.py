"""Finding (and, as root, mounting) tracefs; reading tracepoint ids and formats."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


class TracefsError(Exception):
    pass


def _mounted_tracefs() -> Path | None:
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "tracefs":
            return Path(parts[1])
    return None


def _has_events(root: Path) -> bool:
    """True if root/events is a directory; raises TracefsError when tracefs is there but closed to us."""
    try:
        return (root / "events").is_dir()
    except PermissionError:
        raise TracefsError(f"tracefs at {root} is not readable by uid {os.geteuid()} (mode 0700 is the kernel's "
                           "default); fix: run as root (sudo)") from None


def find_tracefs(mount: bool = True) -> Path:
    """The tracefs directory; mounts it at /sys/kernel/tracing when missing and we are root.

    :raises TracefsError: tracefs is not mounted (and we may not mount it), or is not readable by
        this user (a non-root caller on a default kernel gets this, with the fix).
    """
    found = _mounted_tracefs()
    if found and _has_events(found):
        return found
    for cand in CANDIDATES:
        if _has_events(cand):
            return cand
    if mount and os.geteuid() == 0:
        import ctypes
        import ctypes.util
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        target = CANDIDATES[0]
        if libc.mount(b"nodev", str(target).encode(), b"tracefs", 0, None) != 0:
            err = ctypes.get_errno()
            raise TracefsError(f"cannot mount tracefs at {target}: {os.strerror(err)}; "
                               f"fix: mount -t tracefs nodev {target}")
        return target
    raise TracefsError("tracefs is not mounted; fix: as root, mount -t tracefs nodev /sys/kernel/tracing")


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    size: int
    signed: bool
    type: str


@dataclass(frozen=True)
class EventFormat:
    system: str
    name: str
    id: int
    fields: dict[str, Field]
    print_fmt: str


_FIELD_RE = re.compile(r"field:(?P<decl>[^;]+);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);\s*signed:(?P<signed>\d);")


def parse_format(text: str, system: str = "", name: str = "") -> EventFormat:
    ev_id = None
    fields: dict[str, Field] = {}
    print_fmt = ""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("ID:"):
            ev_id = int(s.split(":", 1)[1])
        elif s.startswith("name:") and not name:
            name = s.split(":", 1)[1].strip()
        elif s.startswith("print fmt:"):
            print_fmt = s.split(":", 1)[1].strip()
        else:
            m = _FIELD_RE.search(s)
            if m:
                decl = m.group("decl").strip()
                fname = re.sub(r"\[.*\]$", "", decl.split()[-1]).lstrip("*")
                ftype = decl[: decl.rfind(decl.split()[-1])].strip()
                fields[fname] = Field(fname, int(m.group("off")), int(m.group("size")),
                                      m.group("signed") == "1", ftype)
    if ev_id is None:
        raise TracefsError(f"format of {system}:{name} has no ID line")
    return EventFormat(system, name, ev_id, fields, print_fmt)


def read_event_format(system: str, name: str, root: Path | None = None) -> EventFormat:
    root = root or find_tracefs()
    path = root / "events" / system / name / "format"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise TracefsError(f"tracepoint {system}:{name} does not exist on this kernel ({path} is missing)") from None
    except PermissionError:
        raise TracefsError(f"cannot read {path}: permission denied; fix: run as root") from None
    return parse_format(text, system, name)
