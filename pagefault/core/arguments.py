"""Values given on the command line turned into what the commands take."""

from __future__ import annotations

from .errors import UsageError


def parse_number(text: str, what: str = "value") -> int:
    """A number given on the command line: hex with 0x, octal 0o, binary 0b or decimal; ``_`` separators allowed.

    :returns: the value, 0 to 2**64-1.
    :raises UsageError: it is not a number, is negative, or does not fit in 64 bits (the message names ``what``).
    """
    s = text.strip().replace("_", "")
    try:
        value = int(s, 0)
    except ValueError:
        raise UsageError(f"{what} {text!r} is not a number; accepted: hex with 0x (0x716b326c8100) or decimal") from None
    if value < 0:
        raise UsageError(f"{what} {text!r} is negative; accepted: 0 to 2**64-1")
    if value >= 1 << 64:
        raise UsageError(f"{what} {text!r} does not fit in 64 bits")
    return value
