"""GFP flags as kmem:mm_page_alloc reports them (include/linux/gfp_types.h).

Bit positions depend on the kernel's configuration; the running kernel's come
from BTF (enum ___GFP_*_BIT) or the tracepoint's print format, via pagefault.kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

from .bits import Flag, FlagWord, decode_flag_word

# Kernel 6.18, x86-64, as on this project's machines (BTF enum ___GFP_*_BIT).
DEFAULT_GFP_BITS = {
    "__GFP_DMA": 0, "__GFP_HIGHMEM": 1, "__GFP_DMA32": 2, "__GFP_MOVABLE": 3, "__GFP_RECLAIMABLE": 4,
    "__GFP_HIGH": 5, "__GFP_IO": 6, "__GFP_FS": 7, "__GFP_ZERO": 8, "__GFP_DIRECT_RECLAIM": 10,
    "__GFP_KSWAPD_RECLAIM": 11, "__GFP_WRITE": 12, "__GFP_NOWARN": 13, "__GFP_RETRY_MAYFAIL": 14,
    "__GFP_NOFAIL": 15, "__GFP_NORETRY": 16, "__GFP_MEMALLOC": 17, "__GFP_COMP": 18,
    "__GFP_NOMEMALLOC": 19, "__GFP_HARDWALL": 20, "__GFP_THISNODE": 21, "__GFP_ACCOUNT": 22,
    "__GFP_ZEROTAGS": 23, "__GFP_NO_OBJ_EXT": 24,
}
MEANINGS = {
    "__GFP_DMA": "from ZONE_DMA", "__GFP_HIGHMEM": "highmem allowed", "__GFP_DMA32": "from ZONE_DMA32",
    "__GFP_MOVABLE": "movable: may be migrated or compacted", "__GFP_RECLAIMABLE": "reclaimable slab",
    "__GFP_HIGH": "high priority, may use reserves", "__GFP_IO": "may start physical I/O",
    "__GFP_FS": "may call into the filesystem", "__GFP_ZERO": "return the page zeroed",
    "__GFP_DIRECT_RECLAIM": "the caller may reclaim directly (may sleep)",
    "__GFP_KSWAPD_RECLAIM": "may wake kswapd", "__GFP_WRITE": "the caller intends to dirty the page",
    "__GFP_NOWARN": "no failure warning", "__GFP_RETRY_MAYFAIL": "retry hard, but may fail",
    "__GFP_NOFAIL": "must not fail", "__GFP_NORETRY": "do not retry hard", "__GFP_MEMALLOC": "may use all reserves",
    "__GFP_COMP": "a compound page (a large folio)", "__GFP_NOMEMALLOC": "never use emergency reserves",
    "__GFP_HARDWALL": "enforce the cpuset memory policy", "__GFP_THISNODE": "this NUMA node only",
    "__GFP_ACCOUNT": "charged to the memory cgroup", "__GFP_ZEROTAGS": "zero memory tags",
    "__GFP_NO_OBJ_EXT": "no slab object extension",
}
# Composite names in the order the kernel's show_gfp_flags() tries them (include/trace/events/mmflags.h).
_RECLAIM = ("__GFP_DIRECT_RECLAIM", "__GFP_KSWAPD_RECLAIM")
_KERNEL = _RECLAIM + ("__GFP_IO", "__GFP_FS")
_USER = _KERNEL + ("__GFP_HARDWALL",)
_HIGHUSER = _USER + ("__GFP_HIGHMEM",)
_HIGHUSER_MOVABLE = _HIGHUSER + ("__GFP_MOVABLE",)
_TRANSHUGE_LIGHT = tuple(n for n in _HIGHUSER_MOVABLE if n not in _RECLAIM) + ("__GFP_COMP", "__GFP_NOMEMALLOC", "__GFP_NOWARN")
COMPOSITES = (
    ("GFP_TRANSHUGE", _TRANSHUGE_LIGHT + ("__GFP_DIRECT_RECLAIM",)),
    ("GFP_TRANSHUGE_LIGHT", _TRANSHUGE_LIGHT),
    ("GFP_HIGHUSER_MOVABLE", _HIGHUSER_MOVABLE), ("GFP_HIGHUSER", _HIGHUSER), ("GFP_USER", _USER),
    ("GFP_KERNEL_ACCOUNT", _KERNEL + ("__GFP_ACCOUNT",)), ("GFP_KERNEL", _KERNEL),
    ("GFP_NOFS", _RECLAIM + ("__GFP_IO",)), ("GFP_ATOMIC", ("__GFP_HIGH", "__GFP_KSWAPD_RECLAIM")),
    ("GFP_NOIO", _RECLAIM), ("GFP_NOWAIT", ("__GFP_KSWAPD_RECLAIM", "__GFP_NOWARN")),
)


@dataclass(frozen=True)
class GfpFlags:
    value: int
    flags: FlagWord
    symbolic: str
    derivations: tuple[str, ...]


def gfp_table(bits: dict[str, int]) -> tuple[Flag, ...]:
    return tuple(Flag(1 << b, n, MEANINGS.get(n, "")) for n, b in sorted(bits.items(), key=lambda kv: kv[1]))


def decode_gfp(value: int, bits: dict[str, int] | None = None, source: str = "") -> GfpFlags:
    bits = bits or DEFAULT_GFP_BITS
    source = source or "built-in table for kernel 6.18 x86-64 (positions depend on the kernel's configuration)"
    word = decode_flag_word(value, gfp_table(bits), width=32, what="GFP flags", table_source=source)
    rest, parts, lines = value, [], list(word.derivations)
    for name, members in COMPOSITES:
        if not all(m in bits for m in members):
            continue
        mask = 0
        for m in members:
            mask |= 1 << bits[m]
        if rest & mask == mask:
            parts.append(name)
            lines.append(f"{name} = 0x{mask:x} ⊆ 0x{rest:x} → left 0x{rest & ~mask:x}")
            rest &= ~mask
    for f in word.set_flags:
        if rest & f.mask:
            parts.append(f.name)
            rest &= ~f.mask
    if rest:
        parts.append(f"0x{rest:x}")
    return GfpFlags(value, word, "|".join(parts) or "none", tuple(lines))


def gfp_value(names: tuple[str, ...] | list[str], bits: dict[str, int] | None = None) -> int:
    """The mask for GFP names as the kernel source writes them (GFP_HIGHUSER_MOVABLE | __GFP_ZERO)."""
    bits = bits or DEFAULT_GFP_BITS
    composites = dict(COMPOSITES)
    value = 0
    for name in names:
        members = composites.get(name, (name,))
        for m in members:
            if m not in bits:
                raise ValueError(f"unknown GFP flag {m!r}")
            value |= 1 << bits[m]
    return value
