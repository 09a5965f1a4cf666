"""The mappings of a program whose faults are counted in the kernel: what the counter or bpftrace tells, what /proc shows."""

import os
import subprocess
import sys

from pagefault.capture.mapping_watch import MappingWatch, mapping_probes


def test_told_mappings_and_the_heap_are_kept_with_their_permissions():
    watch = MappingWatch(4242)
    lines = ["map 4242 0x7f0000000000 0x1800 1 2 0x3000 libx.so",     # PROT_READ, MAP_PRIVATE, a file
             "map 4242 0x7f0000010000 0x40000 3 34 0x0 //anon",        # PROT_READ|WRITE, PRIVATE|ANONYMOUS
             "map 999 0x7f0000020000 0x1000 3 34 0x0 //anon",          # another process: not this one's
             "brk 4242 0x5555000 0x5556000", "brk 4242 0x5555000 0x5558000", "stopped exec", "@lat[0, 0, 1]:"]
    maps = watch.finish(lines)[4242]
    by_start = {m.start: m for m in maps}
    lib = by_start[0x7F0000000000]
    # the length rounds up to whole pages; the offset and the file's name are mmap's own
    assert (lib.end, lib.perms, lib.offset, lib.path) == (0x7F0000002000, "r--p", 0x3000, "libx.so")
    anon = by_start[0x7F0000010000]
    assert (anon.end, anon.perms, anon.path) == (0x7F0000050000, "rw-p", "")
    assert 0x7F0000020000 not in by_start
    # the heap's extent is the last brk's
    heap = by_start[0x5555000]
    assert (heap.end, heap.path) == (0x5558000, "[heap]")


def test_a_mapping_proc_showed_keeps_its_whole_path_when_bpftrace_tells_of_it_too():
    from pagefault.evidence import MapsLine
    watch = MappingWatch(4242)
    watch.maps[4242] = [MapsLine(0x7F0000000000, 0x7F0000002000, "r--p", 0, "08:01", 7, "/usr/lib/libx.so")]
    maps = watch.finish(["map 4242 0x7f0000000000 0x2000 1 2 0x0 libx.so"])[4242]
    assert [m.path for m in maps] == ["/usr/lib/libx.so"]


def test_a_told_mappings_length_rounds_up_to_this_kernels_page_size():
    watch = MappingWatch(4242)
    watch.page_size = 16384     # a 16 KiB arm64 kernel: mmap rounds to its pages, not to 4 KiB
    maps = watch.finish(["map 4242 0x7f0000000000 0x1800 3 34 0x0 //anon"])[4242]
    assert [(m.start, m.end) for m in maps] == [(0x7F0000000000, 0x7F0000004000)]


def test_mappings_read_from_proc_stay_after_they_are_unmapped():
    child = subprocess.Popen([sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"ready\n"
        watch = MappingWatch(child.pid)
        out = bytearray()
        watch.step(out)
        seen = {m.path for m in watch.maps[child.pid]}
        assert any(p.endswith(os.path.basename(os.path.realpath(sys.executable))) for p in seen)
    finally:
        child.communicate(b"")
    # the process is gone: a later read adds nothing and takes nothing away
    watch._last_read = 0.0
    watch.step(out)
    assert {m.path for m in watch.maps[child.pid]} == seen


def test_a_held_programs_mappings_before_exec_are_named_apart():
    child = subprocess.Popen([sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"ready\n"   # past its exec and start-up: its heap and anon maps exist
        watch = MappingWatch(child.pid)
        watch.before_exec()
        paths = [m.path for m in watch.maps[child.pid]]
    finally:
        child.communicate(b"")
    assert paths and all(p.startswith("(before exec) ") for p in paths)
    assert any(p.startswith("(before exec) [anon ") for p in paths)


def test_the_programs_own_mapping_wins_over_one_before_exec_at_the_same_start():
    from pagefault.evidence import MapsLine
    from pagefault.journey.latency import KernelHistogram, summarize_latency
    watch = MappingWatch(4242)
    watch.maps[4242] = [MapsLine(0x7F0000000000, 0x7F0000004000, "rw-p", 0, "00:00", 0, "(before exec) [anon rw-p]")]
    maps = watch.finish(["map 4242 0x7f0000000000 0x400000 3 34 0x0 //anon"])[4242]
    assert [m.path for m in maps] == ["", "(before exec) [anon rw-p]"]
    h = KernelHistogram([(1024, 5)], 6000, 1500)
    summary = summarize_latency({(0, 0): h}, {0x7F0000000000: h}, ["do_anonymous_page"], {}, maps)
    assert [(g.key, g.count) for g in summary.by_mapping] == [("[anon rw-p]", 5)]


def test_the_probes_stop_the_program_at_exec_and_follow_its_children_through_the_filter():
    text = mapping_probes(77, "pid == 77 || @pids[pid]")
    assert 'tracepoint:sched:sched_process_exec /pid == 77/ { signal("SIGSTOP")' in text
    assert "sys_exit_mmap /(pid == 77 || @pids[pid]) && @mln[tid]" in text
    assert "sys_exit_brk /pid == 77 || @pids[pid]/" in text


def test_the_vmas_the_kernel_named_become_maps_lines():
    """The counter's struct vma_seen records (capture/bpf/fault_count.h) as /proc-style lines."""
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
