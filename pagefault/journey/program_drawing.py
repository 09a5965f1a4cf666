"""What the HTML view draws for one fault of any program (journey -- CMD, -p PID), as it does for the
exercise's: the page-table walk, the address space around the fault and a timeline.

- the walk: the compiled walk's entries after the fault (at the thread's next kernel entry), each level's
  table as it read it; the PGD's physical address derived from mm->pgd and the direct map's base;
- the address space: /proc/PID/maps, read while the program was stopped after the fault;
- the timeline: the chosen thread's events from its fault to its next fault (the allocations, the page
  cache insertions, a signal) and the walk's reads, in µs since the program's first traced fault.
"""

from __future__ import annotations

from ..decode.address import split_virtual_address
from ..evidence import ProgramFaultEvidence, TraceEvent
from .fault_classes import GFP_MOVABLE
from .steps import Area, PageWalk, Provenance, TimelineEntry, WalkLevel, timeline_from

WALK_AFTER = "the compiled walk (journey_walk.bpf.c) at the thread's next kernel entry after the fault"
WHAT = {"kmem:mm_page_alloc": "page allocated", "filemap:mm_filemap_add_to_page_cache": "page added to the page cache",
        "signal:signal_generate": "signal sent"}


def program_walk(ev: ProgramFaultEvidence) -> PageWalk | None:
    """The walk of the chosen fault's address; None when no fault was chosen or nothing was read."""
    if not ev.address or ev.bpf is None:
        return None
    after, before = ev.bpf.reads.get("after"), ev.bpf.reads.get("before")
    read = after or before
    if read is None:
        return None
    cr3 = ev.bpf.pgd_physical or None
    walk = PageWalk(ev.address, cr3,
                    f"derived: mm->pgd 0x{read.pgd_virtual:x} (read by the walk) − the direct map's base "
                    f"0x{ev.bpf.direct_map_base:x}" if cr3 and read.pgd_virtual else "unavailable: mm->pgd was not read")
    source = WALK_AFTER if after is not None else "the compiled walk at the fault (nothing was read after it)"
    for i in split_virtual_address(ev.address, ev.paging_levels).indices:
        seen = i.level in read.entries
        walk.levels.append(WalkLevel(
            i.level, i.index, read.table_physical.get(i.level),
            read.entries.get(i.level) if after is not None else None,
            before.entries.get(i.level) if before is not None else None,
            Provenance.OBSERVED if seen else Provenance.UNAVAILABLE,
            source if seen else "the walk stopped above this level (an entry above was not present)"))
    walk.set_frame(kernel=ev.kernel_version)
    return walk


def program_layout(ev: ProgramFaultEvidence) -> tuple[list[Area], str]:
    areas = [Area(m.start, m.end, m.perms, m.path, m.start <= ev.address < m.end) for m in ev.maps]
    return areas, (f"/proc/{ev.pid}/maps while the program was stopped after the fault (observed)" if areas else "")


def program_timeline(ev: ProgramFaultEvidence, window: list[TraceEvent]) -> list[TimelineEntry]:
    faults = [e.time_ns for e in ev.events if e.name == "exceptions:page_fault_user"]
    if not ev.fault_ns:
        return []
    start = min(faults + [ev.fault_ns])
    items: list[tuple[int, str, str]] = []
    if faults and start < ev.fault_ns:
        items.append((start, "the program's first traced fault", "tracepoint exceptions:page_fault_user via perf"))
    hook = "page_fault_kernel" if ev.kernel_mode else "page_fault_user"
    mode = ", taken in kernel mode" if ev.kernel_mode else ""
    items.append((ev.fault_ns, f"the chosen fault (number {ev.nth}) at 0x{ev.address:x}, RIP 0x{ev.ip:x}{mode}",
                  f"the compiled walk at exceptions:{hook}"))
    for e in window:
        if e.name in WHAT:
            detail = (f", PFN 0x{e.fields['pfn']:x} order {e.fields.get('order', 0)}" if "pfn" in e.fields else
                      f", index {e.fields['index']}" if "index" in e.fields else "")
            if e.name == "kmem:mm_page_alloc":   # as the allocation step tells them apart: by the GFP flags
                detail += (": the fault's page (movable)" if e.fields.get("gfp_flags", 0) & GFP_MOVABLE
                           else ": a page-table page (not movable)")
            items.append((e.time_ns, WHAT[e.name] + detail, f"tracepoint {e.name} via perf (thread {e.pid})"))
    later = [e for e in ev.events if e.name in ("exceptions:page_fault_user", "exceptions:page_fault_kernel")
             and e.pid == ev.tid and e.time_ns > max([ev.fault_ns] + [w.time_ns for w in window])]
    if later:
        first = min(later, key=lambda e: e.time_ns)
        items.append((first.time_ns, "the thread's next fault (the end of this fault's window)",
                      f"tracepoint {first.name} via perf"))
    return timeline_from(items, start)
