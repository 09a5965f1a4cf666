"""The journey as one self-contained HTML file: the steps, an SVG drawing of the page-table walk, the VMAs
around the address and the timeline. Jinja2 escapes every string (the target's name and paths among them);
nothing is fetched from the network.
"""

from __future__ import annotations

from jinja2 import Environment, PackageLoader, select_autoescape

from ..decode.arch import Arch
from ..decode.arch_interface import EntryRole, arch_interface
from ..journey.redact import NoRedaction, Redactor, redact_journey
from ..journey.steps import WS, Area, Journey, PageWalk

NODE_WIDTH = 196
NODE_GAP = 40
AREAS_EACH_SIDE = 4


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} B"


def walk_nodes(walk: PageWalk, r: Redactor) -> list[dict]:
    """One node per level of the walk, with what the drawing writes in it."""
    nodes = []
    arch = arch_interface(Arch(walk.architecture), len(walk.levels), va_bits=walk.va_bits, granule=walk.page_size)
    for pos, lv in enumerate(walk.levels):
        meaning = "not read"
        if lv.entry is not None:
            m = arch.describe_entry(lv.entry, lv.level)
            meaning = m.kind if m.role is EntryRole.NEITHER else m.role.value
        nodes.append({
            "level": lv.level, "index": lv.index, "offset": f"0x{lv.index * 8:x}",
            "x": 180 + pos * (NODE_WIDTH + NODE_GAP), "w": NODE_WIDTH,
            "table": r.number(lv.table), "entry": r.number(lv.entry, 16) if lv.entry is not None else "not read",
            "before": r.number(lv.entry_before, 16) if lv.entry_before is not None else "not read",
            "meaning": meaning,
        })
    return nodes


def layout_rows(areas: list[Area]) -> list[dict]:
    """The VMAs around the one holding the address, highest first, with the gaps between them."""
    here = next((i for i, a in enumerate(areas) if a.holds_address), None)
    if here is None:
        return []
    window = areas[max(0, here - AREAS_EACH_SIDE):here + AREAS_EACH_SIDE + 1]
    rows: list[dict] = []
    for prev, a in zip([None, *window[:-1]], window):
        if prev is not None and a.start > prev.end:
            rows.append({"gap": _size(a.start - prev.end)})
        rows.append({"start": f"0x{a.start:x}", "end": f"0x{a.end:x}", "size": _size(a.end - a.start),
                     "perms": a.perms, "path": a.path or "[anonymous]", "here": a.holds_address})
    return rows[::-1]


def render_html(j: Journey, redact: bool = False) -> str:
    env = Environment(loader=PackageLoader("pagefault", "views/templates"), autoescape=select_autoescape(["html"]))
    shown, r = redact_journey(j) if redact else (j, NoRedaction())
    walk = j.walk
    nodes = walk_nodes(walk, r) if walk else []
    offset_mask = (walk.page_size - 1) if walk else 0xFFF
    provenances = sorted({lv.provenance for lv in walk.levels}) if walk else []
    return env.get_template("journey.html").render(
        j=shown, redacted=redact, ws_order=WS,
        what="the simulator's process" if j.tier == "model" else "PID",
        walk=walk, nodes=nodes, walk_address=f"0x{walk.address:x}" if walk else "",
        walk_provenance=", ".join(f"{p} ({next(lv.source for lv in walk.levels if lv.provenance == p)})"
                                  for p in provenances) if walk else "",
        entry_address_field=arch_interface(Arch(walk.architecture)).entry_address_field if walk else "",
        cr3=r.number(walk.cr3) if walk else "", svg_width=180 + len(nodes) * (NODE_WIDTH + NODE_GAP) + 180,
        frame_x=180 + len(nodes) * (NODE_WIDTH + NODE_GAP), frame_pfn=r.number(walk.frame_pfn) if walk else "",
        frame_size=_size(walk.page_size) + " page" if walk else "",
        frame_offset=f"0x{walk.address & offset_mask:x}" if walk else "",
        layout=layout_rows(j.layout), walk_missing=_walk_missing(shown))


def _walk_missing(j: Journey) -> str:
    """Why the journey's walk step read no entries, in its own words ("" where it says nothing)."""
    return next((f"{v.display}: {v.source}" if v.source else str(v.display) for s in j.steps if s.key == "walk"
                 for v in s.values if v.provenance == "unavailable"), "")
