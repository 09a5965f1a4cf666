"""Shared machinery for flag words: a table of named bits and its decoding."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Iterable


class DecodeError(ValueError):
    """A value that cannot be decoded; the message says why and what is accepted."""


@dataclass(frozen=True)
class Flag:
    mask: int
    name: str
    meaning: str


@dataclass(frozen=True)
class FlagWord:
    """A flag word split into its named bits, plus any bits the table does not know."""

    value: int
    set_flags: tuple[Flag, ...]
    unknown_bits: tuple[int, ...]
    derivations: tuple[str, ...]
    table_source: str = ""

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.set_flags]

    def has(self, name: str) -> bool:
        return name in self.names


def bit(n: int) -> int:
    return 1 << n


def check_word(value: int, width: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise DecodeError(f"{what} must be an integer, got {value!r}")
    if value < 0 or value >= 1 << width:
        raise DecodeError(f"{what} 0x{value:x} does not fit in {width} bits (accepted: 0 to 0x{(1 << width) - 1:x})"
                          if value >= 0 else f"{what} must not be negative, got {value}")
    return value


def decode_flag_word(value: int, table: Iterable[Flag], width: int = 64, what: str = "value",
                     table_source: str = "", field_mask: int = 0) -> FlagWord:
    """Split `value` into the table's flags; bits in `field_mask` are a numeric field, not flags."""
    value = check_word(value, width, what)
    table = list(table)
    present = tuple(f for f in table if f.mask and value & f.mask == f.mask)
    known = field_mask
    for f in table:
        known |= f.mask
    unknown = tuple(b for b in range(width) if value >> b & 1 and not known >> b & 1)
    lines = [f"0x{value:x} & 0x{f.mask:x} = 0x{value & f.mask:x} → {f.name}" for f in present]
    covered = 0
    for f in present:
        covered |= f.mask
    if present:
        lines.append(" | ".join(f"0x{f.mask:x}" for f in present) + f" = 0x{covered:x}"
                     + ("" if covered == value else f" (the other 0x{value & ~covered:x} is "
                        + ("the numeric field)" if not value & ~covered & ~field_mask else "not named)")))
    for b in unknown:
        lines.append(f"bit {b} (0x{1 << b:x}) is set but has no name in this table")
    return FlagWord(value, present, unknown, tuple(lines), table_source)


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, tuples and ints to JSON-friendly structures (ints kept as ints)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        out = {f.name: to_jsonable(getattr(obj, f.name)) for f in fields(obj)}
        for name in getattr(obj, "json_extra", ()):
            out[name] = to_jsonable(getattr(obj, name))
        return out
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


__all__ = ["DecodeError", "Flag", "FlagWord", "bit", "check_word", "decode_flag_word", "to_jsonable", "asdict", "field"]
