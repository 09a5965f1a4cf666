"""GFP flags as kmem:mm_page_alloc reports them (include/linux/gfp_types.h).

Bit positions depend on the kernel's configuration; the running kernel's come
from BTF (enum ___GFP_*_BIT) or the tracepoint's print format, via pagefault.kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

from .bits import DecodeError, Flag, FlagWord, decode_flag_word

# Kernel 6.18, x86-64, as on this project's machines (BTF enum ___GFP_*_BIT).
DEFAULT_GFP_BITS = {
    "__GFP_DMA": 0, "__GFP_HIGHMEM": 1, "__GFP_DMA32": 2, "__GFP_MOVABLE": 3, "__GFP_RECLAIMABLE": 4,
    "__GFP_HIGH": 5, "__GFP_IO": 6, "__GFP_FS": 7, "__GFP_ZERO": 8, "__GFP_DIRECT_RECLAIM": 10,
    "__GFP_KSWAPD_RECLAIM": 11, "__GFP_WRITE": 12, "__GFP_NOWARN": 13, "__GFP_RETRY_MAYFAIL": 14,
    "__GFP_NOFAIL": 15, "__GFP_NORETRY": 16, "__GFP_MEMALLOC": 17, "__GFP_COMP": 18,
    "__GFP_NOMEMALLOC": 19, "__GFP_HARDWALL": 20, "__GFP_THISNODE": 21, "__GFP_ACCOUNT": 22,
    "__GFP_ZEROTAGS": 23, "__GFP_NO_OBJ_EXT": 24,
}
# Linux 6.1 to 6.3, x86-64 (include/linux/gfp_types.h; #defines, so BTF has no ___GFP_*_BIT enum):
# ___GFP_ATOMIC at bit 9 until 6.4 removed it; the KASAN_HW_TAGS bits are 0 on x86, and NOLOCKDEP
# is 0 without CONFIG_LOCKDEP (distribution kernels).
GFP_BITS_6_1 = {name: b for name, b in DEFAULT_GFP_BITS.items() if name != "__GFP_NO_OBJ_EXT"} | {"__GFP_ATOMIC": 9}
# Built-in tables, keyed to the kernel versions they hold for: [first, last] (major, minor), inclusive.
BUILTIN_GFP_TABLES = (
    ((6, 1), (6, 3), GFP_BITS_6_1, "Linux 6.1-6.3 x86-64 (include/linux/gfp_types.h)"),
    ((6, 10), (6, 18), DEFAULT_GFP_BITS, "Linux 6.10-6.18 x86-64 (enum ___GFP_*_BIT, as BTF shows it on 6.12 and 6.18)"),
)


def builtin_gfp_bits(version: tuple[int, int]) -> tuple[dict[str, int], str, bool]:
    """(bit table, what it is, whether it holds for ``version``): the table keyed to that version, else the
    nearest one, and the caller must say that it may not hold."""
    for first, last, table, what in BUILTIN_GFP_TABLES:
        if first <= version <= last:
            return dict(table), what, True
    def distance(entry) -> int:
        ordinal = version[0] * 100 + version[1]
        return min(abs(ordinal - (v[0] * 100 + v[1])) for v in entry[:2])
    _first, _last, table, what = min(BUILTIN_GFP_TABLES, key=distance)
    return dict(table), what, False


MEANINGS = {
    "__GFP_ATOMIC": "the caller cannot reclaim or sleep (removed in 6.4)",
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
    ("GFP_NOFS", _RECLAIM + ("__GFP_IO",)),
    ("GFP_ATOMIC", ("__GFP_HIGH", "__GFP_ATOMIC", "__GFP_KSWAPD_RECLAIM")),   # before 6.4 (a table with __GFP_ATOMIC)
    ("GFP_ATOMIC", ("__GFP_HIGH", "__GFP_KSWAPD_RECLAIM")),
    ("GFP_NOIO", _RECLAIM), ("GFP_NOWAIT", ("__GFP_KSWAPD_RECLAIM", "__GFP_NOWARN")),
)


@dataclass(frozen=True)
class GfpFlags:
    value: int
    flags: FlagWord
    symbolic: str
    derivations: tuple[str, ...]


def gfp_table(bits: dict[str, int]) -> tuple[Flag, ...]:
    """The flags of a ___GFP_*_BIT table (name -> bit position); raises DecodeError for a position that
    no 32- or 64-bit gfp_t has (a damaged or hostile table, never 1 << 2**70)."""
    bad = {n: b for n, b in bits.items() if not 0 <= b < 64}
    if bad:
        raise DecodeError(f"GFP bit table has impossible bit positions: {bad}")
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
