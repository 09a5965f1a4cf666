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


def strings(obj):
    """Every string in a journey's tree of dataclasses, lists and dicts."""
    if isinstance(obj, str):
        yield obj
    elif is_dataclass(obj):
        for f in fields(obj):
            yield from strings(getattr(obj, f.name))
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from strings(item)
    elif isinstance(obj, dict):
        for val in obj.values():
            yield from strings(val)


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
        self.entries: set[int] = set()
        self.pagemaps: set[int] = set()
        self.phys: set[int] = set()
        self.pfns: set[int] = set()
        for step in j.steps:
            for v in step.values:
                self._collect(v)
        if j.walk:
            if j.walk.cr3 is not None:
                self.phys.add(j.walk.cr3)
            if j.walk.frame_pfn is not None:
                self.pfns.add(j.walk.frame_pfn)
            for lv in j.walk.levels:
                if lv.table is not None:
                    self.phys.add(lv.table)
                for e in (lv.entry, lv.entry_before):
                    if e:
                        self.entries.add(e)
        for text in strings(j):      # numbers the text names: "PFN 0x…", "pagemap 0x…"
            self.pfns |= {int(m.group(2), 16) for m in NAMED_PFN.finditer(text)}
            self.pagemaps |= {int(m.group(1), 16) for m in NAMED_PAGEMAP.finditer(text)}
        for e in self.entries:
            self.phys.add(e & FRAME_MASK)
        for pm in self.pagemaps:
            self.pfns.add(pm & PM_PFN_MASK)
        self.pfns |= {p >> 12 for p in self.phys}
        self.phys |= {p << 12 for p in self.pfns}
        self.entries.discard(0)
        self.pagemaps.discard(0)
        self.phys.discard(0)
        self.pfns.discard(0)

    def _collect(self, v: Value) -> None:
        if not isinstance(v.value, int) or isinstance(v.value, bool):
            return
        label = v.label.lower()
        if "pagemap" in label:
            self.pagemaps.add(v.value)
        elif "pfn" in label:
            self.pfns.add(v.value)
        elif "physical" in label or "cr3" in label:
            self.phys.add(v.value)
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
        self.entries, self.pagemaps, self.phys, self.pfns = set(), set(), set(), set()

    def text(self, s: str) -> str:
        return s


def redact_journey(j: Journey) -> tuple[Journey, Redactor]:
    """A deep copy with every string passed through the redactor; a value whose text changed loses its number."""
    r = Redactor(j)
    out = copy.deepcopy(j)

    def walk(obj):
        if isinstance(obj, Value):
            display = r.text(obj.display)
            if isinstance(obj.value, str):
                obj.value = r.text(obj.value)
            elif display != obj.display or (isinstance(obj.value, int) and not isinstance(obj.value, bool)
                                            and r.text(f"0x{obj.value:x}") != f"0x{obj.value:x}"):
                obj.value = display
            obj.display, obj.source = display, r.text(obj.source)
            obj.derivation = [r.text(line) for line in obj.derivation]
            return
        if is_dataclass(obj):
            for f in fields(obj):
                val = getattr(obj, f.name)
                if isinstance(val, str):
                    setattr(obj, f.name, r.text(val))
                else:
                    walk(val)
        elif isinstance(obj, list):
            for i, item in enumerate(obj):
                if isinstance(item, str):
                    obj[i] = r.text(item)
                else:
                    walk(item)
        elif isinstance(obj, dict):
            for key, val in obj.items():
                if isinstance(val, str):
                    obj[key] = r.text(val)
                else:
                    walk(val)

    walk(out)
    if out.walk:   # the numbers of the drawing: hidden ones dropped, the redacted text stays in the steps
        w = out.walk
        w.cr3 = None
        w.frame_pfn = None
        for lv in w.levels:
            lv.table, lv.entry, lv.entry_before = None, None, None
        w.cr3_source = "hidden by --redact"
    return out, r
