"""Text that is safe to put on a terminal: the one sanitizer every terminal writer uses.

Strings shown by pagefault come from places an attacker can choose: an evidence file or a recording
handed to root, the traced program's comm (prctl(PR_SET_NAME)), the names of the files it maps. A
terminal acts on control characters instead of showing them: ESC starts sequences that can set the
clipboard (OSC 52), retitle the window or clear the screen, C1 characters (U+0080–U+009F) do the same
on terminals that take 8-bit controls, and bidi overrides make text read in another order than it is
stored. So these are shown escaped, the way Python writes them (``\\x1b``, ``\\u202e``), and the
person sees what the source held. rich's ``escape()`` is not this: it escapes markup only.

Pure functions over strings; nothing here touches the machine or imports a view library.
"""

from __future__ import annotations

import re

# C0 controls, DEL and C1 controls; then the bidi embeddings, overrides and isolates (LRE…RLO, LRI…PDI).
_BIDI = "\u202a-\u202e\u2066-\u2069"
_UNSAFE_IN_TEXT = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}]")
# Newline and tab lay out multi-line text (a table, a folded stack file), and a terminal only moves the
# cursor forward for them; every other control is escaped there too.
_UNSAFE_IN_LINES = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}]")


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}   # as Python writes them: a path's newline reads as \n


def _escaped(match: re.Match) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def escape_controls(text: str) -> str:
    """One string (a name, a path, a field) with every control character, newlines included, escaped."""
    return _UNSAFE_IN_TEXT.sub(_escaped, text)


def escape_controls_in_lines(text: str) -> str:
    """Multi-line output with its newlines and tabs kept and every other control character escaped."""
    return _UNSAFE_IN_LINES.sub(_escaped, text)


# A lone byte 0x80–0x9F that is not part of valid UTF-8 is a C1 control to a terminal in 8-bit mode.
_C1_BYTE = re.compile("[\udc80-\udc9f]")


def escape_controls_in_bytes(data: bytes) -> bytes:
    """Bytes bound for a terminal, lines kept: controls escaped, and stray bytes 0x80–0x9F too (other
    invalid UTF-8 is left as it was)."""
    text = escape_controls_in_lines(data.decode("utf-8", errors="surrogateescape"))
    text = _C1_BYTE.sub(lambda m: f"\\x{ord(m.group()) - 0xdc00:02x}", text)
    return text.encode("utf-8", errors="surrogateescape")


def has_unsafe_controls(text: str) -> bool:
    """Whether a terminal would act on something in this multi-line text (what the tests check)."""
    return _UNSAFE_IN_LINES.search(text) is not None
