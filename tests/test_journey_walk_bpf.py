"""The journey's compiled walk (capture/bpf/journey_walk.bpf.c): its structs agree with their Python mirror, it
loads on this kernel with each hook variant the kernel offers, its fault-path programs are the functions the
loader names, and, on a real process, the entries it reads before and after a fault are the kernel's own
(pagemap's PFN, /proc/PID/maps's VMA)."""

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from live_helpers.bpf_objects import btf_struct, dtype_layout, walk_written_page

from pagefault.capture import bpf_walk as bw
from pagefault.capture.bpf import BpfObjectMissing, KernelHooks, object_path
from pagefault.capture.kprobes import (
    FAULT_HANDLERS,
    MERGE_FUNCTIONS,
    MMAP_FUNCTIONS,
    fault_from_events,
    fault_path_programs,
    mmap_from_events,
)
from pagefault.capture.libbpf import BpfObject

HOOKS = (bw.FAULT_HOOK, bw.FAULT_KERNEL_HOOK, bw.SYSCALL_HOOK, bw.EXEC_HOOK, bw.EXIT_HOOK)


def _object() -> Path:
    try:
        return object_path(bw.OBJECT)
    except BpfObjectMissing as exc:
        pytest.skip(str(exc))


def _root():
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")


def _ctypes_layout(struct) -> tuple[int, dict[str, tuple[int, int]]]:
    return ctypes.sizeof(struct), {n: (getattr(struct, n).offset, getattr(struct, n).size) for n, _t in struct._fields_}


@pytest.mark.parametrize("struct,mirror", [("walk_settings", bw.SETTINGS), ("walk_read", bw.WALK_READ),
                                           ("walk_event", bw.WALK_EVENT), ("maple_step_rec", bw.MAPLE_STEP),
                                           ("walk_state", bw.State)])
def test_the_python_mirror_has_the_objects_sizes_and_offsets(struct, mirror):
    size, members = btf_struct(_object(), struct)
    if isinstance(mirror, np.dtype):
        mine = dtype_layout(mirror)
    else:
        mine = _ctypes_layout(mirror)
    assert mine == (size, members)


def test_every_fault_path_program_the_loader_can_name_is_in_the_object():
    """fentry and kprobe variants of handle_mm_fault, each handler, each VMA-making and merging function: the
    names the loader asks for exist (a kernel with every one of those functions gives every program)."""
    _object()
    everything = set(FAULT_HANDLERS + MMAP_FUNCTIONS + MERGE_FUNCTIONS + ("handle_mm_fault",))
    with BpfObject(_object()) as obj:
        sections = obj.programs()
    for variant in ("fentry", "kprobe"):
        choice = fault_path_programs(variant, everything)
        assert set(choice.programs) <= set(sections) and not choice.not_probeable
        # one program per handler, entry/exit of handle_mm_fault, the first VMA-making function, every merge
        assert len(choice.programs) == 2 + len(FAULT_HANDLERS) + 2 + len(MERGE_FUNCTIONS)
    for fn in FAULT_HANDLERS + MMAP_FUNCTIONS + ("handle_mm_fault",):
        assert any(s in (f"fentry/{fn}",) for s in sections.values()), fn
        assert any(s == f"kprobe/{fn}" for s in sections.values()), fn
    # a kernel without a handler (inlined) loses only that handler
    less = fault_path_programs("fentry", everything - {"do_numa_page"})
    assert "fe_do_numa_page" not in less.programs and "do_numa_page" in less.not_probeable
    assert fault_path_programs("kprobe", {"do_fault"}).programs == ()


def test_the_fault_path_is_chosen_from_the_kernels_btf_functions_not_its_strings():
    """A name in the kernel's BTF that is a member or a type, not a function, is not one to hook (a search of
    BTF's strings took `vm_start`, a member of vm_area_struct, for one); handle_mm_fault is a function on every
    kernel this runs on."""
    from pagefault.capture.kprobes import probeable
    found, why = probeable(("handle_mm_fault", "vm_start", "vm_area_struct"))
    if "handle_mm_fault" not in found and "handle_mm_fault" in why and "libbpf" in why["handle_mm_fault"]:
        pytest.skip(why["handle_mm_fault"])
    assert found == ["handle_mm_fault"] and set(why) == {"vm_start", "vm_area_struct"}


def test_fault_path_records_decode_into_the_evidence():
    ev = np.zeros(4, dtype=bw.WALK_EVENT)
    ev[0]["kind"], ev[0]["v"] = bw.REC_FAULT_ENTRY, [0xFFFF888100000000, 0x7F0000000100, 0x1255, 0x7F0000000000,
                                                      0x7F0000001000, 0x100073]
    ev[0]["w"] = [0x8000000000000025, 0, 0]
    ev[1]["kind"], ev[1]["id"], ev[1]["v"][0] = bw.REC_HANDLER, FAULT_HANDLERS.index("do_anonymous_page"), 1200
    ev[2]["kind"], ev[2]["v"][:2] = bw.REC_FAULT_RETURN, [0, 5300]
    ev[3]["kind"], ev[3]["id"], ev[3]["v"][0] = bw.REC_MERGE, 1, 0
    kp = fault_from_events(list(ev), {"do_read_fault": "inlined"})
    assert (kp.address, kp.flags, kp.retval, kp.duration_ns) == (0x7F0000000100, 0x1255, 0, 5300)
    assert kp.vma["vm_flags"] == 0x100073 and kp.vma["vm_page_prot"] == 0x8000000000000025
    assert kp.handlers == [("do_anonymous_page", 1200)] and kp.not_probeable == {"do_read_fault": "inlined"}
    assert fault_from_events(list(ev[1:]), {}) is None
    # a VMA-making call that did not return is no evidence
    assert mmap_from_events(list(ev), "mmap_region", {}) is None


def _offered(variant: str) -> KernelHooks:
    """This kernel's hooks, with the tp_btf variant hidden for "tracepoint"."""
    kernel = KernelHooks()
    if variant == "tracepoint":
        kernel.has_btf_tracepoint = lambda event: False
    return kernel


@pytest.mark.live
@pytest.mark.parametrize("variant", ("tp_btf", "tracepoint"))
@pytest.mark.parametrize("mode", (bw.MODE_PAGE, bw.MODE_PROGRAM, bw.MODE_SYSCALL))
@pytest.mark.parametrize("kind", ("major", "kernel"))   # the rodata kind prunes branches: the kernel-mode one too
def test_the_object_loads_and_attaches_in_each_mode_with_each_variant(variant, mode, kind):
    """A verifier rejection fails here, not on a user's machine: every mode's branches are checked at load."""
    _root()
    _object()
    kernel = _offered(variant)
    choices = [kernel.choose(h) for h in HOOKS]
    if any(c.variant != variant for c in choices):
        pytest.skip(f"this kernel does not offer every hook as {variant}: "
                    + "; ".join(c.reason for c in choices if c.variant != variant))
    settings = {"target_tgid": os.getpid(), "levels": 4, "mode": mode, "selector": bw.SEL_KIND, "kind": bw.KINDS.index(kind)}
    obj = bw.WalkObject(settings, HOOKS, 4, kernel=kernel)
    try:
        assert len(obj.obj.links) == len(HOOKS) + obj.lru
        assert obj.obj.map("records").key_size == 0
    finally:
        obj.close()
    assert obj.obj.links == []


CHILD = r"""
import ctypes, mmap, os, sys
m = mmap.mmap(-1, 4 * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
print(f"{ctypes.addressof(ctypes.c_char.from_buffer(m)):x}", flush=True)
sys.stdin.readline()
os.getppid()              # the walk at a system call reads the mm's PGD (and the PTE, still 0)
sys.stdin.readline()
m[4096 + 5] = 7           # the fault the walk follows
os.getppid()              # the next system call: the read after it
sys.stdin.readline()
"""


@pytest.mark.live
@pytest.mark.parametrize("variant", ("tp_btf", "tracepoint"))
def test_a_write_fault_is_walked_before_and_after_as_the_kernel_has_it(variant):
    """Before the fault the PTE is 0 (a fresh anonymous page); after it, the PTE holds the frame pagemap names,
    the maple-tree search ends at the VMA /proc/PID/maps shows, and the struct page is that frame's."""
    _root()
    _object()
    if os.uname().machine != "x86_64":
        pytest.skip("the x86-64 walk")
    from pagefault.capture import procfs
    from pagefault.capture.program_fault import direct_map_base
    from pagefault.kernel import facts
    levels, _why = facts.paging_levels()
    base, _how = direct_map_base(lambda _m: None)       # derived once per boot by a journey, then cached
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        page = int(child.stdout.readline(), 16) + 4096
        # the child's PGD is read at its getppid() first: the walk needs its physical address (mm->pgd − base)
        walk = walk_written_page(child, page, base, levels, kernel=_offered(variant))
        pfn = procfs.pagemap_entry(child.pid, page) & ((1 << 55) - 1)
        maps = procfs.read_maps(child.pid)
    finally:
        child.kill()
        child.wait()
    before, after = walk.reads["before"], walk.reads["after"]
    assert walk.direct_map_base == base
    assert before.entries["PTE"] == 0 and after.entries["PTE"] & 1
    assert (after.entries["PTE"] & bw.FRAME_MASK) >> 12 == pfn != 0
    vma = next(m for m in maps if m.start <= page < m.end)
    assert (before.objects["vm_start"], before.objects["vm_end"]) == (vma.start, vma.end)
    assert before.maple_path and before.maple_path[-1].slot_entry == before.objects["vma"]
    assert after.objects["folio_pfn"] == pfn and after.objects["refcount"] >= 1 and after.objects["mapcount"] == 0
    assert "folio_order" not in after.objects     # an order-0 page of a fresh anonymous mapping
    assert walk.vmemmap_base is not None and walk.vmemmap_base % (1 << 30) == 0


THP_CHILD = r"""
import ctypes, mmap, os, sys
m = mmap.mmap(-1, 4 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
start = ctypes.addressof(ctypes.c_char.from_buffer(m))
aligned = (start + (2 << 20) - 1) & ~((2 << 20) - 1)
libc = ctypes.CDLL(None, use_errno=True)
if libc.madvise(ctypes.c_void_p(aligned), ctypes.c_size_t(2 << 20), 14):   # MADV_HUGEPAGE
    print("0", flush=True)
    sys.exit(0)
print(f"{aligned:x}", flush=True)
sys.stdin.readline()
os.getppid()
sys.stdin.readline()
m[aligned - start + 4096 + 5] = 7     # a write fault in a THP-able region: a 2 MiB folio, mapped by the PMD
os.getppid()
sys.stdin.readline()
"""


@pytest.mark.live
def test_a_thp_fault_reads_the_folios_order_from_its_head_page():
    """The large-folio reads: a write in an MADV_HUGEPAGE region gets a PMD-mapped 2 MiB folio; the walk stops
    at the huge PMD, and the struct page it names is the folio's head, of order 9 (its PG_head flag set)."""
    _root()
    _object()
    if os.uname().machine != "x86_64":
        pytest.skip("the x86-64 walk")
    if "[never]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text():
        pytest.skip("transparent huge pages are off here")
    from pagefault.capture import procfs
    from pagefault.capture.program_fault import direct_map_base
    from pagefault.kernel import facts
    levels, _why = facts.paging_levels()
    base, _how = direct_map_base(lambda _m: None)
    child = subprocess.Popen([sys.executable, "-c", THP_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        region = int(child.stdout.readline(), 16)
        if not region:
            pytest.skip("madvise(MADV_HUGEPAGE) refused")
        page = region + 4096
        walk = walk_written_page(child, page, base, levels)
        pagemap = procfs.pagemap_entry(child.pid, page)
    finally:
        child.kill()
        child.wait()
    after = walk.reads["after"]
    if "PTE" in after.entries:
        pytest.skip("no huge page was free: the fault got an order-0 page (the PMD points to a table)")
    pmd = after.entries["PMD"]
    assert pmd & 0x81 == 0x81, f"a present huge PMD, not 0x{pmd:x}"
    head = (pmd & bw.FRAME_MASK) >> 12
    assert head % 512 == 0 and (pagemap & ((1 << 55) - 1)) == head + 1   # pagemap names the sub-page, the 2nd
    assert after.objects["folio_pfn"] == head and after.objects["folio_order"] == 9
    assert "folio_head_pfn" not in after.objects      # the head itself: no tail's head to read


def _mthp_size() -> int | None:
    """The smallest multi-size THP (a PTE-mapped large folio) this machine hands an MADV_HUGEPAGE region."""
    root = Path("/sys/kernel/mm/transparent_hugepage")
    top = (root / "enabled").read_text() if (root / "enabled").exists() else "[never]"
    sizes = []
    for d in root.glob("hugepages-*kB"):
        kb = int(d.name[len("hugepages-"):-2])
        try:
            setting = (d / "enabled").read_text()
        except OSError:     # a size without its own setting
            continue
        on = "[always]" in setting or "[madvise]" in setting or ("[inherit]" in setting and "[never]" not in top)
        if on and 4 < kb < 2048:
            sizes.append(kb << 10)
    return min(sizes) if sizes else None


@pytest.mark.live
def test_a_tail_page_of_a_pte_mapped_large_folio_reads_its_head():
    """Where multi-size THP is on: a write in a region too small for a PMD folio gets a PTE-mapped large folio;
    the page written is a tail page (its second), and the walk reads its head through compound_head: the head's
    PFN is the tail's − 1 and its order is the folio's."""
    _root()
    _object()
    size = _mthp_size()
    if os.uname().machine != "x86_64" or size is None:
        pytest.skip("no multi-size THP size is enabled here (/sys/kernel/mm/transparent_hugepage/hugepages-*kB)")
    from pagefault.capture import procfs
    from pagefault.capture.program_fault import direct_map_base
    from pagefault.kernel import facts
    levels, _why = facts.paging_levels()
    base, _how = direct_map_base(lambda _m: None)
    child_src = THP_CHILD.replace("4 << 20", f"{4 * size}").replace("(2 << 20)", f"{size}")
    child = subprocess.Popen([sys.executable, "-c", child_src], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        region = int(child.stdout.readline(), 16)
        if not region:
            pytest.skip("madvise(MADV_HUGEPAGE) refused")
        page = region + 4096
        walk = walk_written_page(child, page, base, levels)
        pfn = procfs.pagemap_entry(child.pid, page) & ((1 << 55) - 1)
    finally:
        child.kill()
        child.wait()
    objs = walk.reads["after"].objects
    if "folio_head_pfn" not in objs:
        pytest.skip("the fault got an order-0 page (no large folio was free)")
    assert objs["folio_pfn"] == pfn and objs["folio_head_pfn"] == pfn - 1
    assert 1 << objs["folio_order"] == size // 4096 and objs["folio_head_refcount"] >= 1
