"""--redact: a copy of a journey with its PFNs, physical addresses and kernel addresses hidden, for sharing.

User-space addresses, indices, flags and call chains stay: they say nothing about the machine's physical
memory or the kernel's layout (KASLR). Entries keep their flag bits; only the frame field is hidden.
"""

from __future__ import annotations

import copy
import re
from dataclasses import fields, is_dataclass

from ..decode.pagemap import PM_PFN_MASK
from .steps import Journey, Value

PFN_HIDDEN = "[PFN]"
PHYS_HIDDEN = "[physical address]"
KERNEL_HIDDEN = "[kernel address]"
FRAME_MASK = 0x000F_FFFF_FFFF_F000
KERNEL_ADDRESS = re.compile(r"(?<![0-9a-fA-F])(?:0x)?ffff[89a-f][0-9a-f]{11}(?![0-9a-fA-F])", re.IGNORECASE)
NAMED_PFN = re.compile(r"\b(PFNs?|frame|pfn) (0x[0-9a-fA-F]+)")
NAMED_PHYS = re.compile(r"\b(physical(?: address)?) (0x[0-9a-fA-F]+)")
NAMED_PAGEMAP = re.compile(r"\bpagemap (?:entry )?(?:=\s*)?(0x[0-9a-fA-F]+)")


def rewrite_strings(obj, fn) -> None:
    """Replace, in place, every string in a journey's tree of dataclasses, lists and dicts by fn(string)."""
    if is_dataclass(obj):
        for f in fields(obj):
            val = getattr(obj, f.name)
            if isinstance(val, str):
                setattr(obj, f.name, fn(val))
            else:
                rewrite_strings(val, fn)
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            if isinstance(item, str):
                obj[i] = fn(item)
            else:
                rewrite_strings(item, fn)
    elif isinstance(obj, dict):
        for key, val in obj.items():
            if isinstance(val, str):
                obj[key] = fn(val)
            else:
                rewrite_strings(val, fn)


HEX = re.compile(r"(?<![0-9a-zA-Z])(0x[0-9a-fA-F]+|[0-9a-fA-F]{16})(?![0-9a-zA-Z])")


def mask_entry(value: int) -> str:
    """A page-table entry with its frame field (bits 12..51) hidden: the flag digits stay readable."""
    text = f"{value:016x}"
    return "0x" + text[:3] + "x" * 10 + text[13:]


def mask_pagemap(value: int) -> str:
    """A pagemap entry with its PFN field (bits 0..54) hidden: the flag bits 55..63 stay."""
    return f"0x{value >> 55 << 55 >> 52:03x}" + "x" * 13


class Redactor:
    """Collects the journey's sensitive numbers once, then hides them in any text."""

    def __init__(self, j: Journey):
        self.entries: set[int] = set()      # page-table entries: shown with their frame field masked
        self.pfns: set[int] = set()         # every frame the journey names, from PFNs, physical addresses,
        for step in j.steps:                # entries and pagemap entries
            for v in step.values:
                self._collect(v)
        if j.walk:
            self.pfns |= {p for p in (j.walk.frame_pfn,) if p is not None}
            self.pfns |= {p >> 12 for p in (j.walk.cr3, *(lv.table for lv in j.walk.levels)) if p is not None}
            self.entries |= {e for lv in j.walk.levels for e in (lv.entry, lv.entry_before) if e}

        def named(text: str) -> str:       # numbers the text names: "PFN 0x…", "pagemap 0x…"
            self.pfns.update(int(m.group(2), 16) for m in NAMED_PFN.finditer(text))
            self.pfns.update(int(m.group(1), 16) & PM_PFN_MASK for m in NAMED_PAGEMAP.finditer(text))
            return text
        rewrite_strings(j, named)
        self.entries.discard(0)
        self.pfns |= {(e & FRAME_MASK) >> 12 for e in self.entries}
        self.pfns -= {0, None}

    def _collect(self, v: Value) -> None:
        if not isinstance(v.value, int) or isinstance(v.value, bool):
            return
        label = v.label.lower()
        if "pagemap" in label:
            self.pfns.add(v.value & PM_PFN_MASK)
        elif "pfn" in label:
            self.pfns.add(v.value)
        elif "physical" in label or "cr3" in label:
            self.pfns.add(v.value >> 12)
        elif "entry" in label or label.startswith("pte (") or label.startswith("pte entry"):
            self.entries.add(v.value)

    def hide(self, n: int) -> str | None:
        """How a number is shown when it is, or holds, one of the journey's frames; None when it does not."""
        if n in self.pfns:
            return PFN_HIDDEN
        if n in self.entries:
            return mask_entry(n)
        if n >> 63 and (n & PM_PFN_MASK) in self.pfns:
            return mask_pagemap(n)
        if n < 1 << 52 and not n & 0xFFF and n >> 12 in self.pfns:
            return PHYS_HIDDEN
        if (n & FRAME_MASK) >> 12 in self.pfns:     # an entry on its way to being built, or a byte's address
            return mask_entry(n)
        return None

    def text(self, s: str) -> str:
        def one(m: re.Match) -> str:
            hidden = self.hide(int(m.group(1), 16))
            return hidden if hidden is not None else m.group(0)
        s = HEX.sub(one, s)
        s = NAMED_PFN.sub(lambda m: f"{m.group(1)} {PFN_HIDDEN}", s)
        s = NAMED_PHYS.sub(lambda m: f"{m.group(1)} {PHYS_HIDDEN}", s)
        return KERNEL_ADDRESS.sub(KERNEL_HIDDEN, s)

    def number(self, n: int | None, width: int = 0) -> str:
        """How the drawing shows a number: hex, hidden where it is sensitive."""
        if n is None:
            return "?"
        return self.text(f"0x{n:0{width}x}")


class NoRedaction(Redactor):
    def __init__(self) -> None:  # noqa: D107 - nothing to collect
        pass

    def text(self, s: str) -> str:
        return s


def redact_journey(j: Journey) -> tuple[Journey, Redactor]:
    """A deep copy with every string passed through the redactor; a value whose text changed loses its number."""
    r = Redactor(j)
    out = copy.deepcopy(j)
    for step in out.steps:      # a number whose text is hidden becomes that hidden text
        for v in step.values:
            if isinstance(v.value, int) and not isinstance(v.value, bool) and (
                    r.text(v.display) != v.display or r.text(f"0x{v.value:x}") != f"0x{v.value:x}"):
                v.value = v.display
    rewrite_strings(out, r.text)
    if out.walk:   # the numbers of the drawing: hidden ones dropped, the redacted text stays in the steps
        w = out.walk
        w.cr3 = None
        w.frame_pfn = None
        for lv in w.levels:
            lv.table, lv.entry, lv.entry_before = None, None, None
        w.cr3_source = "hidden by --redact"
    return out, r
