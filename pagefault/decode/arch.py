"""Which architecture's formats a number is decoded with.

The decoders of one architecture never guess another's: a value is decoded as the architecture it
is said to come from (``Arch``), and where the formats let a wrong choice show, the decoder says so
(see the ``suspicions`` of each result).
"""

from __future__ import annotations

import enum

from .bits import DecodeError


class Arch(enum.Enum):
    """An instruction-set architecture whose page-table and trap formats pagefault decodes."""

    X86_64 = "x86_64"
    ARM64 = "arm64"


# What `uname -m` prints on each (arm64 Linux says aarch64; macOS and Debian's dpkg say arm64).
_MACHINE_NAMES = {"x86_64": Arch.X86_64, "amd64": Arch.X86_64, "aarch64": Arch.ARM64, "arm64": Arch.ARM64}


def arch_of_machine(machine: str) -> Arch:
    """The Arch of a machine name as `uname -m` (or dpkg) prints it; DecodeError for any other."""
    try:
        return _MACHINE_NAMES[machine.strip().lower()]
    except KeyError:
        raise DecodeError(f"pagefault decodes x86_64 and arm64 formats, not {machine!r}") from None


def parse_arch(text: str) -> Arch:
    """--arch's value: x86_64 or arm64 (aarch64 and amd64 accepted as their other names)."""
    try:
        return arch_of_machine(text)
    except DecodeError:
        raise DecodeError(f"unknown architecture {text!r} (accepted: x86_64, arm64)") from None
