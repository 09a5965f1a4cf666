"""vma->vm_flags (include/linux/mm.h), per kernel version and architecture where they differ.

The architecture-specific bits (VM_ARCH_1 = bit 24, VM_HIGH_ARCH_* = bits 32..37) mean different things
on x86-64 (PAT, protection keys, shadow stack) and arm64 (BTI, MTE, POE protection keys).
"""

from __future__ import annotations

from .arch import Arch
from .arch_interface import arch_interface
from .bits import Flag, FlagWord, bit, decode_flag_word

_BASE = (
    (0, "VM_READ", "readable"), (1, "VM_WRITE", "writable"), (2, "VM_EXEC", "executable"),
    (3, "VM_SHARED", "shared mapping (writes reach the file / other mappers)"),
    (4, "VM_MAYREAD", "mprotect() may make it readable"), (5, "VM_MAYWRITE", "mprotect() may make it writable"),
    (6, "VM_MAYEXEC", "mprotect() may make it executable"), (7, "VM_MAYSHARE", "may be shared"),
    (8, "VM_GROWSDOWN", "a stack that grows down"), (9, "VM_UFFD_MISSING", "userfaultfd tracks missing pages"),
    (10, "VM_PFNMAP", "raw PFNs without struct page"), (12, "VM_UFFD_WP", "userfaultfd write-protect tracking"),
    (13, "VM_LOCKED", "mlock()ed"), (14, "VM_IO", "memory-mapped I/O"),
    (15, "VM_SEQ_READ", "madvise(MADV_SEQUENTIAL)"), (16, "VM_RAND_READ", "madvise(MADV_RANDOM)"),
    (17, "VM_DONTCOPY", "not copied on fork"), (18, "VM_DONTEXPAND", "cannot grow with mremap()"),
    (19, "VM_LOCKONFAULT", "mlock2(MLOCK_ONFAULT)"), (20, "VM_ACCOUNT", "charged to the commit limit"),
    (21, "VM_NORESERVE", "no swap reserved (MAP_NORESERVE)"), (22, "VM_HUGETLB", "hugetlbfs mapping"),
    (23, "VM_SYNC", "synchronous page faults (MAP_SYNC)"), (24, "VM_PAT", "x86 VM_ARCH_1: PAT-tracked"),
    (25, "VM_WIPEONFORK", "zeroed in the child on fork"), (26, "VM_DONTDUMP", "left out of core dumps"),
    (27, "VM_SOFTDIRTY", "soft-dirty tracking: not yet cleared"), (28, "VM_MIXEDMAP", "mixed PFN and page mappings"),
    (29, "VM_HUGEPAGE", "madvise(MADV_HUGEPAGE)"), (30, "VM_NOHUGEPAGE", "madvise(MADV_NOHUGEPAGE)"),
    (31, "VM_MERGEABLE", "KSM may merge its pages"),
    (32, "VM_PKEY_BIT0", "protection key bit 0"), (33, "VM_PKEY_BIT1", "protection key bit 1"),
    (34, "VM_PKEY_BIT2", "protection key bit 2"), (35, "VM_PKEY_BIT3", "protection key bit 3"),
)
# (first version, bit, name, meaning)
_ADDED = (
    ((5, 13), 37, "VM_UFFD_MINOR", "userfaultfd minor faults"),
    ((6, 6), 37, "VM_SHADOW_STACK", "x86 shadow stack"),
    ((6, 6), 38, "VM_UFFD_MINOR", "userfaultfd minor faults"),
    ((6, 9), 39, "VM_ALLOW_ANY_UNCACHED", "KVM may map it uncached"),
    ((6, 10), 63, "VM_SEALED", "mseal()ed: cannot be changed"),
    ((6, 11), 40, "VM_DROPPABLE", "pages may be dropped under pressure (MAP_DROPPABLE)"),
    ((6, 13), 38, None, ""),
    ((6, 13), 41, "VM_UFFD_MINOR", "userfaultfd minor faults"),
    ((6, 17), 63, None, ""),
    ((6, 17), 42, "VM_SEALED", "mseal()ed: cannot be changed"),
    ((6, 19), 11, "VM_MAYBE_GUARD", "may contain guard regions"),
)


def vm_flags_table(version: tuple[int, int], arch: Arch = Arch.X86_64) -> tuple[tuple[Flag, ...], str]:
    arch_bits = arch_interface(arch).vm_flag_bits((version[0], version[1]))
    by_bit = {b: Flag(bit(b), n, m) for b, n, m in _BASE}
    for first, b, name, meaning in _ADDED:
        if tuple(version[:2]) >= first and name not in arch_bits.absent:
            if name is None:
                by_bit.pop(b, None)
            else:
                by_bit[b] = Flag(bit(b), name, meaning)
    for b in arch_bits.dropped:
        by_bit.pop(b, None)
    for b, name, meaning in arch_bits.own:
        by_bit[b] = Flag(bit(b), name, meaning)
    note = arch_bits.note
    source = (f"include/linux/mm.h as of kernel {version[0]}.{version[1]} ({arch.value}), modelled from the kernel "
              f"sources{note}")
    return tuple(by_bit[b] for b in sorted(by_bit)), source


def decode_vm_flags(value: int, version: tuple[int, int] = (6, 18), arch: Arch = Arch.X86_64) -> FlagWord:
    table, source = vm_flags_table(version, arch)
    return decode_flag_word(value, table, width=64, what="vm_flags", table_source=source)


PERMS_TO_VM = {"r": "VM_READ", "w": "VM_WRITE", "x": "VM_EXEC", "s": "VM_SHARED"}


def vm_flags_from_maps_perms(perms: str) -> int:
    """The access bits of vm_flags that a /proc/PID/maps "rw-p" field shows (the rest is not shown there)."""
    value = 0
    for ch, b in zip(perms[:4], (0, 1, 2, 3)):
        if ch != "-" and ch != "p":
            value |= bit(b)
    return value


# The two-letter names /proc/PID/smaps prints in VmFlags (fs/proc/task_mmu.c, show_smap_vma_flags), x86-64.
SMAPS_MNEMONICS = {
    "rd": "VM_READ", "wr": "VM_WRITE", "ex": "VM_EXEC", "sh": "VM_SHARED", "mr": "VM_MAYREAD",
    "mw": "VM_MAYWRITE", "me": "VM_MAYEXEC", "ms": "VM_MAYSHARE", "gd": "VM_GROWSDOWN", "pf": "VM_PFNMAP",
    "lo": "VM_LOCKED", "io": "VM_IO", "sr": "VM_SEQ_READ", "rr": "VM_RAND_READ", "dc": "VM_DONTCOPY",
    "de": "VM_DONTEXPAND", "lf": "VM_LOCKONFAULT", "ac": "VM_ACCOUNT", "nr": "VM_NORESERVE", "ht": "VM_HUGETLB",
    "sf": "VM_SYNC", "ar": "VM_PAT", "wf": "VM_WIPEONFORK", "dd": "VM_DONTDUMP", "mg": "VM_MERGEABLE",
    "um": "VM_UFFD_MISSING", "uw": "VM_UFFD_WP", "sd": "VM_SOFTDIRTY", "mm": "VM_MIXEDMAP", "hg": "VM_HUGEPAGE",
    "nh": "VM_NOHUGEPAGE", "ui": "VM_UFFD_MINOR", "ss": "VM_SHADOW_STACK", "sl": "VM_SEALED",
    "dp": "VM_DROPPABLE",
}


def vm_flags_from_smaps(mnemonics: list[str], version: tuple[int, int] = (6, 18)) -> tuple[int, list[str], list[str]]:
    """vm_flags from smaps VmFlags: (value, derivation lines, mnemonics this table cannot place).

    smaps prints only the flags it has names for, so the value is a lower bound of the real vm_flags.
    """
    table, _ = vm_flags_table(version)
    by_name = {f.name: f.mask for f in table}
    value, lines, unknown = 0, [], []
    for m in mnemonics:
        name = SMAPS_MNEMONICS.get(m)
        if name is None or name not in by_name:
            unknown.append(m)
            continue
        value |= by_name[name]
        lines.append(f"{m} → {name} = 0x{by_name[name]:x}")
    lines.append(" | ".join(f"0x{by_name[SMAPS_MNEMONICS[m]]:x}" for m in mnemonics if m not in unknown)
                 + f" = 0x{value:x}")
    return value, lines, unknown
