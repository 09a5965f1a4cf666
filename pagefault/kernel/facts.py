"""Facts about the running kernel: version, paging mode, privileges, tables read from BTF."""

from __future__ import annotations

import functools
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..decode.arch import Arch, arch_of_machine
from ..decode.arm64_address import lpa2_in_use, translation_levels
from ..decode.fault_flags import fallback_fault_flag_values
from ..decode.gfp import builtin_gfp_bits
from ..evidence import MemorySettings
from .btf import VMLINUX_BTF, BTFError, btf_sections, find_enums, load_vmlinux_btf

if TYPE_CHECKING:   # the interface imports every decoder: only machine_arch()'s callers pay for it
    from ..decode.arch_interface import ArchInterface


def machine_arch() -> ArchInterface:
    """This machine's Arch interface in its usual paging shape, chosen once from `uname -m`: what its trap,
    walk and tables are, and so which captures run here. Reads only uname; any caller may ask.

    :raises DecodeError: the machine is of an architecture pagefault does not know (neither x86-64 nor arm64).
    """
    from ..decode.arch_interface import arch_interface
    return arch_interface(arch_of_machine(os.uname().machine))


def kernel_release() -> str:
    return platform.release()


def parse_kernel_version(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    if not m:
        raise ValueError(f"cannot read a kernel version from {release!r}")
    return int(m.group(1)), int(m.group(2))


def kernel_version() -> tuple[int, int]:
    return parse_kernel_version(kernel_release())


def paging_levels(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[int, str]:
    """4 or 5, and how we know. 5-level needs both the CPU flag la57 and a kernel that enabled it."""
    try:
        text = cpuinfo.read_text()
    except OSError as exc:
        return 4, f"assumed 4-level: cannot read {cpuinfo} ({exc.strerror})"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    if "la57" not in flags:
        return 4, "4-level: the CPU flag la57 is absent from /proc/cpuinfo"
    # The CPU can do it; the kernel uses it only if the address space reaches past 47 bits.
    try:
        maps_top = max(int(line.split("-")[0], 16) for line in Path("/proc/self/maps").read_text().splitlines())
    except (OSError, ValueError):
        maps_top = 0
    if maps_top >= 1 << 47:
        return 5, "5-level: la57 is set and this process has mappings above 128 TiB"
    return 5, "5-level: la57 is set in /proc/cpuinfo (the kernel enables it when it can)"


def is_root() -> bool:
    return os.geteuid() == 0


def perf_event_paranoid() -> int | None:
    try:
        return int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class KernelTable:
    values: dict[str, int]
    source: str


def fault_flag_values() -> KernelTable:
    """enum fault_flag from the running kernel's BTF, else the built-in table for its version."""
    try:
        enum = load_vmlinux_btf().enum("fault_flag")
    except BTFError as exc:
        enum, why = None, str(exc)
    else:
        why = "BTF has no enum fault_flag"
    if enum:
        return KernelTable(dict(enum), "observed: enum fault_flag in /sys/kernel/btf/vmlinux")
    values, source = fallback_fault_flag_values(kernel_version())
    return KernelTable(values, f"modelled: {source} ({why})")


_GFP_BIT_NAME = re.compile(rb"\0(___GFP_\w+_BIT)(?=\0)")
_BTF_KIND_ENUM = 6


def _gfp_bit_enumerators(path: Path = VMLINUX_BTF) -> dict[str, int]:
    """The ___GFP_*_BIT enumerators of the kernel's BTF, found without walking every type (a walk of all
    ~150,000 types in Python costs 0.1-0.2 s, once per recording): the names' offsets in the string section,
    then the enum whose members all point at them, by a search of the type section for those offsets. The enum
    is taken only when its header (kind enum, member count) and every member agree; else {} (the caller then
    walks the types).

    :raises BTFError: the BTF cannot be read or is not BTF."""
    import struct
    types, strings = btf_sections(path)
    names = {m.start(1): m.group(1).decode() for m in _GFP_BIT_NAME.finditer(strings)}
    if not names:
        return {}
    needle = struct.pack("<I", min(names))
    at = types.find(needle)
    while at >= 0:
        first = at
        while first >= 8 and first % 4 == 0 and struct.unpack_from("<I", types, first - 8)[0] in names:
            first -= 8   # back to the enum's first member
        if first >= 12 and first % 4 == 0:
            _name, info, _size = struct.unpack_from("<III", types, first - 12)
            count = info & 0xFFFF
            members = [struct.unpack_from("<II", types, first + 8 * i) for i in range(count)
                       if first + 8 * i + 8 <= len(types)]
            if (info >> 24) & 0x1F == _BTF_KIND_ENUM and count and len(members) == count \
                    and all(name_off in names for name_off, _v in members):
                return {names[name_off]: value for name_off, value in members}
        at = types.find(needle, at + 1)
    return {}


def gfp_bits() -> KernelTable:
    """GFP bit positions from BTF's ___GFP_*_BIT enumerators (Linux 6.10 and later), else the built-in
    table keyed to this kernel's version (gfp.builtin_gfp_bits), labelled modelled with that version."""
    try:
        enumerators = _gfp_bit_enumerators() or load_vmlinux_btf().enumerators
        why = "BTF has no ___GFP_*_BIT: GFP bits are #defines before Linux 6.10"
    except BTFError as exc:
        enumerators, why = {}, str(exc)
    bits = {"__GFP_" + k[len("___GFP_"):-len("_BIT")]: v for k, v in enumerators.items()
            if k.startswith("___GFP_") and k.endswith("_BIT") and k not in ("___GFP_LAST_BIT", "___GFP_UNUSED_BIT")}
    if bits:
        return KernelTable(bits, "observed: enum ___GFP_*_BIT in /sys/kernel/btf/vmlinux")
    version = kernel_version()
    table, what, holds = builtin_gfp_bits(version)
    fit = "which holds for it" if holds else "the nearest built-in table: it may not hold for it"
    return KernelTable(table, f"modelled: built-in table of {what}, for kernel {version[0]}.{version[1]}, {fit} ({why})")


@functools.lru_cache(maxsize=4)
def _kernel_config_text(path: Path = Path("/proc/config.gz")) -> tuple[str | None, str]:
    """The running kernel's configuration and where it was read, or (None, why not). Read once: it cannot
    change while the kernel runs, and swap_config and the arm64 capture ask it for several options."""
    import gzip
    try:
        with gzip.open(path, "rt") as f:
            return f.read(), str(path)
    except OSError:
        boot = Path(f"/boot/config-{kernel_release()}")
        try:
            return boot.read_text(), str(boot)
        except OSError:
            return None, f"neither {path} nor {boot} is readable"


def kernel_config_value(name: str, path: Path = Path("/proc/config.gz")) -> str | None:
    """The value `name` has in the running kernel's configuration ("" if not set); None: unreadable."""
    text, _ = _kernel_config_text(path)
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith(name + "="):
            return line.split("=", 1)[1].strip().strip('"')
    return ""


def kernel_config_flag(name: str, path: Path = Path("/proc/config.gz")) -> bool | None:
    """Whether the running kernel was built with `name` (=y or =m); None: its configuration cannot be read."""
    value = kernel_config_value(name, path)
    return None if value is None else value in ("y", "m")


def arm64_translation() -> tuple[int, int, str]:
    """(VA_BITS in use, page size, how they are known) of the running arm64 kernel.

    CONFIG_ARM64_VA_BITS from the kernel's configuration; the page size from sysconf (the kernel's own
    PAGE_SIZE). A kernel built for 52 bits (Debian's 6.12, with LPA2) runs with 48 on a CPU without
    LPA2/LPA, folding its top level away at boot; which one runs is observed: a mapping asked for above
    256 TiB lands there only when 52-bit addresses are on.
    """
    page_size = os.sysconf("SC_PAGE_SIZE")
    text, where = _kernel_config_text()
    va = None
    if text is not None:
        match = re.search(r"^CONFIG_ARM64_VA_BITS=(\d+)$", text, re.M)
        va = int(match.group(1)) if match else None
    if va is None:
        missing = where if text is None else f"CONFIG_ARM64_VA_BITS is not in {where}"
        return 48, page_size, f"VA_BITS assumed 48 (Debian's and most distributions' choice): {missing}"
    how = f"CONFIG_ARM64_VA_BITS={va} in {where}; page size {page_size} from sysconf"
    if va == 52:
        high = _mapping_above(1 << 50)
        if high is None:
            how += "; 52-bit addresses assumed in use (a mapping above 256 TiB could not be tried)"
        elif high:
            how += "; 52-bit addresses in use (observed: a mapping asked for at 1 PiB was placed above 256 TiB)"
        else:
            va = 48
            how += ("; the CPU runs it with 48 (observed: a mapping asked for at 1 PiB was placed below 256 TiB, "
                    "so the kernel folded its top level away)")
    return va, page_size, how


def model_shape() -> tuple[Arch, int, bool, str]:
    """(architecture, paging levels, LPA2, how chosen) for the simulator to follow this machine.

    The simulator models arm64 with 4 KiB pages only; on a kernel with larger pages it follows a 4 KiB
    kernel with the same VA size instead, and says so."""
    here = machine_arch()
    if not here.shape_beyond_levels:    # the levels are the whole shape (x86-64)
        levels, how = paging_levels()
        return here.arch, levels, False, f"the simulator follows this machine: {here.arch.value}, {how}"
    va_bits, page_size, how = arm64_translation()
    va_4k = va_bits if va_bits in (39, 48, 52) else 48
    levels = translation_levels(va_4k, 4096)
    note = f"the simulator follows this machine: arm64, {va_4k}-bit addresses, {levels} levels ({how})"
    if page_size != 4096:
        note += (f"; this kernel's pages are {page_size} bytes but the simulator models 4 KiB pages only, so it "
                 "follows a 4 KiB-page kernel")
    return here.arch, levels, lpa2_in_use(va_4k, 4096), note


def _mapping_above(hint: int) -> bool | None:
    """Whether mmap places a page asked for at `hint` above 2^48 (None: mmap could not be called)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)   # the libc already loaded: find_library() would run ldconfig
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = os.sysconf("SC_PAGE_SIZE")
    address = libc.mmap(hint, size, 1, 0x22, -1, 0)   # PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS
    if address in (None, ctypes.c_void_p(-1).value):
        return None
    libc.munmap(address, size)
    return address >= 1 << 48


def swap_config():
    """The configuration options that lay out this kernel's special swap types, read from its config."""
    from ..decode.swap_entry import SwapConfig
    options = {name: kernel_config_flag(f"CONFIG_{name.upper()}")
               for name in ("migration", "memory_failure", "device_private", "pte_marker")}
    readable = any(v is not None for v in options.values())
    where = (f"options read from this kernel's configuration (/proc/config.gz or /boot/config-{kernel_release()})"
             if readable else "this kernel's configuration could not be read")
    return SwapConfig(**options, source=where)


def _selected(text: str) -> str | None:
    """The [bracketed] choice of a sysfs multiple-choice file."""
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else None


def migratetype_names() -> tuple[dict[int, str], str]:
    """enum migratetype of this kernel (BTF) as value -> name, and where it came from."""
    try:
        enum = find_enums(("migratetype",)).get("migratetype") or load_vmlinux_btf().enum("migratetype") or {}
    except (BTFError, OSError):
        enum = {}
    if enum:
        return ({v: k for k, v in reversed(list(enum.items()))},
                "observed: enum migratetype in /sys/kernel/btf/vmlinux")
    return ({0: "MIGRATE_UNMOVABLE", 1: "MIGRATE_MOVABLE", 2: "MIGRATE_RECLAIMABLE"},
            "modelled: the first three values of enum migratetype, unchanged since Linux 2.6.24 (no BTF here)")


# Enums a journey names values with; read from the running kernel's BTF at capture time.
JOURNEY_ENUMS = ("maple_type", "pageflags", "vm_fault_reason")


def kernel_enums(names: tuple[str, ...] = JOURNEY_ENUMS) -> tuple[dict[str, dict[int, str]], str]:
    """value → name for each named enum of this kernel's BTF (the first name of aliased values)."""
    try:
        found = find_enums(names)   # the types walked (load_vmlinux_btf) only for an enum not found so
        btf = None if len(found) == len(names) else load_vmlinux_btf()
    except (BTFError, OSError) as exc:
        return {}, f"unavailable: no BTF ({exc})"
    out = {}
    for name in names:
        enum = found.get(name) or (btf.enum(name) if btf else None)
        if enum:
            table: dict[int, str] = {}
            for member, value in enum.items():
                table.setdefault(value, member)
            out[name] = table
    return out, "observed: " + ", ".join(f"enum {n}" for n in out) + " in /sys/kernel/btf/vmlinux"


def capture_origin() -> tuple[str, str]:
    """(ISO 8601 time now, host name): where and when evidence was captured."""
    import time
    return time.strftime("%Y-%m-%dT%H:%M:%S%z"), platform.node()


def memory_settings(root: Path = Path("/sys/kernel")) -> MemorySettings:
    import resource
    sources: dict[str, str] = {}
    thp = root / "mm/transparent_hugepage"
    try:
        enabled = _selected((thp / "enabled").read_text()) or "never"
        sources["thp_enabled"] = f"observed: {thp / 'enabled'}"
    except OSError as exc:
        enabled = "never"
        sources["thp_enabled"] = f"assumed never: {exc.strerror or exc} (a kernel without THP)"
    try:
        zero = (thp / "use_zero_page").read_text().strip() == "1"
        sources["thp_use_zero_page"] = f"observed: {thp / 'use_zero_page'}"
    except OSError:
        zero = True
        sources["thp_use_zero_page"] = "assumed 1 (the kernel's default)"
    try:
        defrag = _selected((thp / "defrag").read_text()) or "madvise"
        sources["thp_defrag"] = f"observed: {thp / 'defrag'}"
    except OSError:
        defrag = "madvise"
        sources["thp_defrag"] = "assumed madvise (the kernel's default)"
    try:
        around = int((root / "debug/fault_around_bytes").read_text())
        sources["fault_around_bytes"] = f"observed: {root / 'debug/fault_around_bytes'}"
    except (OSError, ValueError):
        around = 65536
        sources["fault_around_bytes"] = ("assumed 65536, the kernel's default (debugfs is not mounted here: "
                                         "mount -t debugfs none /sys/kernel/debug to read it)")
    soft = resource.getrlimit(resource.RLIMIT_STACK)[0]
    stack = soft if soft != resource.RLIM_INFINITY else 1 << 62
    sources["stack_rlimit"] = "observed: getrlimit(RLIMIT_STACK) of pagefault, which the program inherits"
    return MemorySettings(enabled, zero, around, stack, sources, defrag)
