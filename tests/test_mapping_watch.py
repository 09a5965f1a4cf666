"""The mappings of a program whose faults are counted or timed in the kernel: the VMAs the compiled programs
named (fault_count.h's struct vma_seen) as /proc-style lines."""

import os


def test_the_vmas_the_kernel_named_become_maps_lines():
    """The counter's and the latency tier's struct vma_seen records (capture/bpf/fault_count.h) as /proc-style lines."""
    import numpy as np

    from pagefault.capture.kernel_counts import VMA_SEEN
    from pagefault.capture.mapping_watch import maps_from_kernel
    page = os.sysconf("SC_PAGE_SIZE")
    records = np.array([
        (0x7F0000000000, 0x7F0000002000, 3, 0x1 | 0x4, 0, 0, b"libx.so"),     # a file, r-x, 3 pages in
        (0x7F0000010000, 0x7F0000050000, 0x7F0000010, 0x3 | 0x8, 0, 0, b""),   # anonymous shared rw
        (0x555500000000, 0x555500021000, 0, 0x3, 1, 0, b""),                   # the heap
        (0x7FFC00000000, 0x7FFC00021000, 0, 0x3, 2, 0, b""),                   # the stack
        (0x7FFC10000000, 0x7FFC10002000, 0, 0x5, 4, 0, b"[vdso]"),             # a special mapping
        (0x7FFC20000000, 0x7FFC20001000, 0, 0x0, 4, 0, b"junk"),               # not a special mapping's name
    ], dtype=VMA_SEEN)
    lines = {m.start: m for m in maps_from_kernel(records)}
    assert [(m.perms, m.offset, m.path) for m in lines.values()] == [
        ("rw-p", 0, "[heap]"), ("r-xp", 3 * page, "libx.so"), ("rw-s", 0, ""), ("rw-p", 0, "[stack]"),
        ("r-xp", 0, "[vdso]"), ("---p", 0, "")]
    assert lines[0x7F0000000000].end == 0x7F0000002000
