"""The traced program's mappings, for the summaries' mapping columns, when its faults are counted or timed in
the kernel (trace --summary-only, trace --latency) and no recording holds its mmap events.

A short program is gone before a periodic read of /proc/PID/maps sees it, and its mm is torn down before
the exit tracepoint fires. So the compiled programs name each VMA in the kernel when a fault first
enters it: the counter (capture/bpf/fault_count.bpf.c) at the fault tracepoint, the latency tier
(capture/bpf/latency.bpf.c) at handle_mm_fault's entry, both as fault_count.h's struct vma_seen (start,
end, flags, offset, its file's name or [heap], [stack], [vdso]). Those are exactly the VMAs the counts
and histograms refer to, read while they exist, with nothing to stop or wait for; maps_from_kernel()
turns them into /proc-style lines.
"""

from __future__ import annotations

import os

from ..evidence.maps import MapsLine

# struct vma_seen's `what` (capture/bpf/fault_count.h)
VMA_HEAP, VMA_STACK, VMA_SPECIAL = 1, 2, 4
VM_READ, VM_WRITE, VM_EXEC, VM_SHARED = 0x1, 0x2, 0x4, 0x8


def maps_from_kernel(vmas) -> list[MapsLine]:
    """/proc/PID/maps-style lines for the VMAs the counter or the latency tier named (records with start, end, pgoff, flags,
    what and name, as fault_count.h's struct vma_seen). A file's path is its name only (the kernel's
    dentry, where /proc would print the whole path); an anonymous VMA's is "" unless it is the heap, the
    stack or a special mapping ([vdso]); no device or inode is known.

    :returns: one MapsLine per record, in the records' order; raises nothing."""
    page = os.sysconf("SC_PAGE_SIZE")
    out = []
    for v in vmas:
        flags, what = int(v["flags"]), int(v["what"])
        name = bytes(v["name"]).split(b"\0", 1)[0].decode(errors="replace")
        perms = ("r" if flags & VM_READ else "-") + ("w" if flags & VM_WRITE else "-") + \
            ("x" if flags & VM_EXEC else "-") + ("s" if flags & VM_SHARED else "p")
        is_file = what == 0 and bool(name)
        path = ("[heap]" if what & VMA_HEAP else "[stack]" if what & VMA_STACK else
                name if is_file or (what & VMA_SPECIAL and name.startswith("[")) else "")
        out.append(MapsLine(int(v["start"]), int(v["end"]), perms, int(v["pgoff"]) * page if is_file else 0,
                            "00:00", 0, path))
    return sorted(out, key=lambda m: m.start)
