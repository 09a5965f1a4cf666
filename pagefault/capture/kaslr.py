"""Whether KASLR placed this boot's kernel and its memory regions (vmemmap, the direct map), read from what
the machine shows, never assumed from a value: each source seen is named in the answer.

x86-64's kernel randomises its memory regions (arch/x86/mm/kaslr.c) only when kaslr_memory_enabled():
CONFIG_RANDOMIZE_MEMORY built in, KASLR_FLAG set in boot_params.hdr.loadflags (set by the decompressor
unless `nokaslr` is given; a loader that starts the kernel without it, as Firecracker does, leaves it
clear), and no KASAN (arch/x86/include/asm/setup.h, 6.1 to 6.18). The sources, strongest first:

- /sys/kernel/boot_params/data: the kernel's own copy of boot_params; loadflags at 0x211, KASLR_FLAG bit 1;
- /proc/cmdline: `nokaslr` turns it off;
- the kernel's configuration (/proc/config.gz or /boot/config-RELEASE): CONFIG_RANDOMIZE_BASE,
  CONFIG_RANDOMIZE_MEMORY (and CONFIG_KASAN);
- `_text` in /proc/kallsyms against its unrandomised address, __START_KERNEL_map + CONFIG_PHYSICAL_START
  (aligned up to CONFIG_PHYSICAL_ALIGN): the kernel's text moved only if KASLR ran (root sees addresses).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ..kernel import facts

BOOT_PARAMS = "/sys/kernel/boot_params/data"
LOADFLAGS_OFFSET = 0x211          # struct boot_params: hdr (struct setup_header) at 0x1f1, loadflags at 0x211
KASLR_FLAG = 1 << 1               # arch/x86/include/uapi/asm/bootparam.h
START_KERNEL_MAP = 0xFFFF_FFFF_8000_0000
DEFAULT_PHYSICAL_START = 0x100_0000


@dataclass
class KaslrSources:
    """What was read of each source (None: not readable), and where."""

    loadflags: int | None = None
    cmdline: str | None = None
    config: dict[str, str] = field(default_factory=dict)     # option → value ("" not set); empty: unreadable
    config_where: str = ""
    text: int | None = None                                   # _text in /proc/kallsyms (0 when hidden)


def unrandomised_text(config: dict[str, str]) -> int:
    """Where _text lies when KASLR did not move it: __START_KERNEL_map + LOAD_PHYSICAL_ADDR (CONFIG_PHYSICAL_START
    rounded up to CONFIG_PHYSICAL_ALIGN; 16 MiB each by default).

    :returns: the address; raises nothing (an option missing from `config` takes its default)."""
    start = int(config.get("CONFIG_PHYSICAL_START") or "0", 0) or DEFAULT_PHYSICAL_START
    align = int(config.get("CONFIG_PHYSICAL_ALIGN") or "0", 0) or 1
    return START_KERNEL_MAP + (start + align - 1) // align * align


def decide(src: KaslrSources) -> tuple[bool | None, str]:
    """KASLR of the memory regions on (True), off (False) or unknown (None), and every source seen, in words.

    The verdict comes from the strongest source read: boot_params' KASLR_FLAG, then nokaslr, then a
    configuration without CONFIG_RANDOMIZE_MEMORY (or with KASAN), then _text against its unrandomised
    address; a configuration with it built in says only that KASLR could run. Raises nothing."""
    seen: list[str] = []
    verdict: bool | None = None
    cfg = src.config
    if src.loadflags is not None:
        on = bool(src.loadflags & KASLR_FLAG)
        verdict = on
        seen.append(f"KASLR_FLAG {'set' if on else 'clear'} in boot_params' loadflags (0x{src.loadflags:02x}, "
                    f"{BOOT_PARAMS})")
    if src.cmdline is not None:
        words = src.cmdline.split()
        if "nokaslr" in words:
            verdict = False if verdict is None else verdict   # boot_params' flag, if read, is what the kernel used
            seen.append("nokaslr on /proc/cmdline")
        else:
            seen.append("no nokaslr on /proc/cmdline" + (" (kaslr given)" if "kaslr" in words else ""))
    if cfg:
        base, memory, kasan = (cfg.get(n, "") for n in ("CONFIG_RANDOMIZE_BASE", "CONFIG_RANDOMIZE_MEMORY", "CONFIG_KASAN"))
        seen.append(f"CONFIG_RANDOMIZE_BASE={base or 'not set'}, CONFIG_RANDOMIZE_MEMORY={memory or 'not set'}"
                    + (", CONFIG_KASAN=y" if kasan == "y" else "") + f" in {src.config_where}")
        if memory != "y" or kasan == "y":
            verdict = False
    if src.text:
        plain = unrandomised_text(cfg)
        moved = src.text != plain
        seen.append(f"_text at 0x{src.text:x} in /proc/kallsyms, {'not ' if moved else ''}the unrandomised 0x{plain:x}")
        if verdict is None:
            verdict = moved
    return verdict, "; ".join(seen)


def _loadflags() -> int | None:
    """boot_params' loadflags byte (an x86 kernel's sysfs file; absent elsewhere: None)."""
    try:
        with open(BOOT_PARAMS, "rb") as f:
            data = f.read(LOADFLAGS_OFFSET + 1)
    except OSError:
        return None
    return data[LOADFLAGS_OFFSET] if len(data) > LOADFLAGS_OFFSET else None


def _text_address() -> int | None:
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                m = re.match(r"([0-9a-f]+) [Tt] _text$", line.rstrip())
                if m:
                    return int(m.group(1), 16)
    except OSError:
        return None
    return None


def read_sources() -> KaslrSources:
    """Each source read on this machine (/proc and /sys are the kernel's own; the configuration is read where
    pagefault.kernel.facts reads it). boot_params and _text's base are x86's, read only on a kernel that shows
    itself x86 by its own files.

    :returns: KaslrSources, a source that could not be read left None (or empty). Raises nothing."""
    src = KaslrSources(loadflags=_loadflags())
    try:
        with open("/proc/cmdline") as f:
            src.cmdline = f.read()
    except OSError:
        pass
    wanted = ("CONFIG_RANDOMIZE_BASE", "CONFIG_RANDOMIZE_MEMORY", "CONFIG_KASAN", "CONFIG_PHYSICAL_START",
              "CONFIG_PHYSICAL_ALIGN")
    values = {name: facts.kernel_config_value(name) for name in wanted}
    if all(v is not None for v in values.values()):
        src.config = {k: v or "" for k, v in values.items()}
        # where pagefault.kernel.facts reads it: /proc/config.gz, else the /boot file of this release
        src.config_where = ("/proc/config.gz" if os.path.exists("/proc/config.gz")
                            else f"/boot/config-{facts.kernel_release()}")
    # _text's unrandomised address is x86's (__START_KERNEL_map + CONFIG_PHYSICAL_START): read where the kernel
    # shows itself x86 by its own files (boot_params, or a configuration with CONFIG_PHYSICAL_START)
    if src.loadflags is not None or src.config.get("CONFIG_PHYSICAL_START"):
        src.text = _text_address()
    return src


def kaslr_seen() -> tuple[bool | None, str]:
    """Whether KASLR placed this boot's memory regions, and how that was read (decide(read_sources())).

    :returns: (True/False, the sources seen) or (None, "") when nothing could be read. Raises nothing."""
    return decide(read_sources())
