"""Turning decoder results into rows for the terminal and dicts for JSON."""

from __future__ import annotations

from typing import Any

from ..decode.bits import FlagWord


def flag_rows(word: FlagWord) -> list[tuple[str, str, str]]:
    rows = [(f.name, f"0x{f.mask:x}", f.meaning) for f in word.set_flags]
    rows += [(f"bit {b}", f"0x{1 << b:x}", "set, but not named in this table") for b in word.unknown_bits]
    return rows


def field_rows(obj: Any, names: list[str]) -> list[tuple[str, str, str]]:
    rows = []
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool):
            text = "yes" if value else "no"
        elif isinstance(value, int):
            text = f"0x{value:x} ({value})"
        elif value is None:
            text = "—"
        else:
            text = str(value)
        rows.append((name.replace("_", " "), text, ""))
    return rows
