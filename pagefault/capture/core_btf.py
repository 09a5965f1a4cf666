"""Each compiled object's own slice of the running kernel's BTF, kept for the boot: what libbpf relocates the object's
CO-RE accesses against instead of the whole of /sys/kernel/btf/vmlinux.

Why: to relocate an object, libbpf searches the kernel's BTF (~130,000 types on 6.18) for the candidates of every
type the object names, on every load; that search was ~15 ms of fault_count.bpf.o's ~35 ms load here. bpftool's
``gen min_core_btf`` (BTFGen, made for kernels without BTF) writes, from the kernel's BTF, just the types and
members the object's relocations use (3 KB for fault_count); libbpf takes it as ``btf_custom_path``, and the same
relocations come out (tests/test_core_btf.py compares every patched instruction of every object). The kernel's
BTF is still read where a program attaches by BTF (tp_btf, fentry): only the relocation is shortened.

Kept, per object, in the effective user's private cache (safe_paths.private_cache_dir), named by this boot's ID
(the kernel's BTF cannot change within a boot; one made in another boot is never taken, and is removed when a
new one is written) and by the object file's identity (a rebuilt object gets its own). Made once per boot and object,
after the object first loaded with the whole BTF (``bpftool`` as a child that dies with the tool, ~40 ms here).
Nothing is made where no cache can be kept (the matrix guests' read-only home: the fresh directory would be
thrown away at exit), nor where bpftool is missing: the whole BTF is used, as before. A slice that libbpf or
the kernel refuses (a failed load whose warnings name BTF or CO-RE) is tried with the whole BTF, and removed if
that load succeeds (libbpf.BpfObject.load).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..kernel.boot import boot_id
from .safe_paths import UnsafePathError, kept_private_cache_dir, path_problem, trusted_executable

KERNEL_BTF = Path("/sys/kernel/btf/vmlinux")
SUBDIR = "core-btf"
# where bpftool is looked for: the distribution's directories only, never a PATH entry another user may hold
BPFTOOL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def _slice_name(obj: Path, boot: str) -> str | None:
    """The slice's file name: this boot's ID, and the object file's identity (device, inode, size, modification
    time). The object is root's alone (BpfObject refuses one another user could write), and a rebuild writes a
    new file (build-bpf.sh renames a fresh one over it): a new identity. A stat, where a SHA-256 of the object
    imported hashlib (OpenSSL, ~3.5 ms of every start)."""
    try:
        st = os.stat(obj)
    except OSError:
        return None
    # (an object rewritten in place by root with its size and modification time kept, to the nanosecond, would
    # keep its name: then a type its slice lacks makes the object's CO-RE existence checks say "absent" where
    # the whole BTF has it; build-bpf.sh never does that)
    return f"{boot}-{obj.stem}-{st.st_dev:x}-{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}.btf"


def _kept_dir() -> Path | None:
    """The cache's directory where a kept one can be had (nothing made in its place: a throw-away directory would
    go at exit with what was written in it); None otherwise."""
    folder, _why_not = kept_private_cache_dir()
    return folder / SUBDIR if folder is not None else None


def kept_slice(obj: Path) -> Path | None:
    """The slice of the kernel's BTF made for `obj` in this boot, if one is kept and safe to hand to libbpf (a
    regular file of the effective user's, under directories nobody else can write).

    :returns: its path, or None (then the whole kernel BTF is used); raises nothing."""
    boot = boot_id()
    folder = _kept_dir() if boot else None
    if folder is None or not boot:
        return None
    name = _slice_name(obj, boot)
    if name is None:
        return None
    kept = folder / name
    if not kept.is_file() or path_problem(kept, private=True):
        return None
    return kept


def make_slice(obj: Path) -> Path | None:
    """Write `obj`'s slice of the kernel's BTF for this boot (bpftool gen min_core_btf), and remove the slices of
    other boots and the object's own older ones. Called once the object loaded with the whole BTF.

    :returns: the slice's path, or None when none was made (no kept cache, no bpftool, no kernel BTF, or bpftool
        failed: the whole BTF keeps being used); raises nothing."""
    boot = boot_id()
    folder = _kept_dir() if boot else None
    if folder is None or not boot or not KERNEL_BTF.is_file():
        return None
    name = _slice_name(obj, boot)
    try:
        bpftool = trusted_executable("bpftool", search_path=BPFTOOL_PATH)
    except UnsafePathError:   # a bpftool found where another user could have put it is not run
        return None
    if name is None or bpftool is None:
        return None
    import subprocess

    from .runner import run_child
    part = folder / f".{name}.{os.getpid()}.part"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        if path_problem(folder, private=True):
            return None
        for old in folder.glob("*.btf"):   # other boots' slices, and this object's from before a rebuild
            if not old.name.startswith(boot) or old.name.startswith(f"{boot}-{obj.stem}-"):
                old.unlink(missing_ok=True)
        for left in folder.glob(".*.part"):   # a run killed while bpftool wrote (a concurrent one's: it just fails)
            left.unlink(missing_ok=True)
        done = run_child([bpftool, "gen", "min_core_btf", str(KERNEL_BTF), str(part), str(obj)], timeout=5)
        if done.returncode != 0 or not part.is_file():
            return None
        os.chmod(part, 0o600)
        os.replace(part, folder / name)
    except (OSError, subprocess.SubprocessError):   # a cache only: not kept (a full disk, a timeout), nothing else
        return None
    finally:
        discard(part)   # never raises: on a read-only file system even the unlink of a name not there fails (EROFS)
    return folder / name


def discard(kept: Path) -> None:
    """Remove a slice libbpf or the kernel refused, or one bpftool was writing; raises nothing."""
    try:
        kept.unlink(missing_ok=True)
    except OSError:
        pass
