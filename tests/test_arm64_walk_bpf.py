"""The arm64 journey's compiled program (capture/bpf/arm64_walk.bpf.c): its structs agree with the Python
mirror in both architectures' objects, the build makes arm64 objects on this host from an arm64 kernel
image's BTF, the object loads here, and its walk at a system call reads a real top-level descriptor of a
live process; the records become the evidence the journey builds from.

The fault capture itself runs only on arm64 (the kernel matrix's arm64 rows run it, with its checks);
`test_the_capture_on_this_arm64_machine` runs it where the tests run on arm64 as root.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from live_helpers.bpf_objects import btf_struct

from pagefault.capture import arm64_fault as af
from pagefault.capture.bpf import HERE, BpfObjectMissing, KernelHooks, object_path
from pagefault.evidence import Arm64FaultEvidence
from pagefault.kernel.kallsyms import KernelSymbols

ROOT = Path(__file__).resolve().parent.parent
ARM64_CACHE = Path(os.environ.get("ARM64_CACHE", "/var/cache/pagefault/arm64"))
MIRRORS = [("arm64_walk_settings", af.SETTINGS), ("arm64_walk_state", af.STATE), ("fault_event", af.FAULT_EVENT),
           ("walk_event", af.WALK_EVENT), ("alloc_event", af.ALLOC_EVENT), ("return_event", af.RETURN_EVENT),
           ("linear_event", af.LINEAR_EVENT)]


def _on_arm64() -> bool:
    """Whether these tests run on an arm64 machine (the test, not the package, may ask uname by name)."""
    return os.uname().machine == "aarch64"


def _built(machine: str) -> Path:
    obj = HERE / "build" / machine / "arm64_walk.bpf.o"
    if not obj.exists():
        fix = "bash scripts/build-bpf.sh" + ("" if machine == os.uname().machine else " --arch " + machine)
        pytest.skip(f"{obj} is not built; fix: {fix}")
    return obj


def _root():
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
@pytest.mark.parametrize("struct,dtype", MIRRORS, ids=[m[0] for m in MIRRORS])
def test_the_python_mirror_has_each_objects_sizes_and_offsets(machine, struct, dtype):
    size, members = btf_struct(_built(machine), struct)
    mirror = {name: (dtype.fields[name][1], dtype.fields[name][0].itemsize) for name in dtype.names}
    assert (dtype.itemsize, mirror) == (size, members)


def test_every_program_is_one_the_loader_knows():
    from pagefault.capture.libbpf import BpfObject
    _root()
    with BpfObject(_built(os.uname().machine)) as obj:
        sections = obj.programs()
    known = {af.ALLOC_PROGRAM, af.SYS_ENTER.btf_program, af.SYS_ENTER.tracepoint_program}
    for kinds in (af.FAULT_PROGRAMS, af.PGD_PROGRAMS):
        known |= {p for pair in kinds.values() for p in pair}
    assert set(sections) == known
    assert sections["fault_fentry"] == "fentry/handle_mm_fault" and sections["pgd_kretprobe"] == "kretprobe/pgd_alloc"


# --- the build: arm64 objects on this host, from an arm64 kernel image ---------------------------------------

def _tree(tmp_path: Path, extra: str = "") -> Path:
    """A copy of the build script and the BPF sources, with an extra program when asked."""
    tree = tmp_path / "tree"
    (tree / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "build-bpf.sh", tree / "scripts")
    src = tree / "pagefault" / "capture" / "bpf"
    src.mkdir(parents=True)
    for p in HERE.iterdir():
        if p.suffix in (".c", ".h"):
            shutil.copy(p, src)
    if extra:
        (src / "extra.bpf.c").write_text(extra)
    return tree


def _sections(obj: Path) -> set[str]:
    out = subprocess.run(["llvm-objdump", "-h", str(obj)], capture_output=True, text=True, check=True).stdout
    return {line.split()[1] for line in out.splitlines() if line.strip()[:1].isdigit()}


def _tools():
    if not all(shutil.which(t) for t in ("clang", "llvm-strip", "bpftool", "llvm-objdump")):
        pytest.skip("the BPF build tools are not installed; fix: as root, bash scripts/setup.sh")


def test_arm64_objects_are_built_here_from_an_arm64_kernel_image_for_every_source(tmp_path):
    """Any .bpf.c beside the others is built too, for arm64, against the types of the matrix's arm64 kernel."""
    _tools()
    images = sorted(ARM64_CACHE.glob("root/boot/vmlinuz-*"))
    if not images:
        pytest.skip(f"no arm64 kernel image in {ARM64_CACHE} (sudo bash scripts/arm64-root.sh {ARM64_CACHE})")
    extra = textwrap.dedent("""
        #include "vmlinux.h"
        #include <bpf/bpf_helpers.h>
        #include <bpf/bpf_tracing.h>
        char LICENSE[] SEC("license") = "GPL";
        SEC("kprobe/handle_mm_fault")
        int BPF_KPROBE(extra, struct vm_area_struct *vma, unsigned long address) { return address == 1; }
        """)
    tree = _tree(tmp_path, extra)
    r = subprocess.run(["bash", "scripts/build-bpf.sh", "--arch", "aarch64", "--btf", str(images[0])], cwd=tree,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = tree / "pagefault" / "capture" / "bpf" / "build" / "aarch64"
    names = {p.name for p in out.glob("*.bpf.o")}
    assert names == {c.name[:-2] + ".o" for c in (tree / "pagefault" / "capture" / "bpf").glob("*.bpf.c")}
    assert "extra.bpf.o" in names and "arm64_walk.bpf.o" in names
    # the arm64 kernel's own types: struct user_pt_regs is arm64's (x86 has none)
    assert "struct user_pt_regs {" in (out / "vmlinux.h").read_text()
    sections = _sections(out / "arm64_walk.bpf.o")
    assert {".BTF", ".BTF.ext"} <= sections and not any(s.startswith(".debug") for s in sections)
    # once built, nothing is rebuilt
    again = subprocess.run(["bash", "scripts/build-bpf.sh", "--arch", "aarch64"], cwd=tree, capture_output=True,
                           text=True)
    assert again.returncode == 0 and again.stdout == ""


def test_the_types_come_from_a_gzip_compressed_image_and_a_bad_one_is_one_line(tmp_path):
    _tools()
    btf = Path("/sys/kernel/btf/vmlinux")
    if not btf.exists():
        pytest.skip("this kernel has no BTF")
    image = tmp_path / "vmlinuz"
    image.write_bytes(gzip.compress(b"\x4d\x5a" + os.urandom(4096) + btf.read_bytes() + os.urandom(4096), 1))
    tree = _tree(tmp_path)
    arch = os.uname().machine
    r = subprocess.run(["bash", "scripts/build-bpf.sh", "--arch", arch, "--btf", str(image)], cwd=tree,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tree / "pagefault/capture/bpf/build" / arch / "vmlinux.h").read_text().count("struct task_struct {") == 1
    bad = tmp_path / "bad"
    bad.write_bytes(os.urandom(8192))
    shutil.rmtree(tree / "pagefault/capture/bpf/build")
    r = subprocess.run(["bash", "scripts/build-bpf.sh", "--btf", str(bad)], cwd=tree, capture_output=True, text=True)
    assert r.returncode == 1 and "cannot take" in r.stderr and "fix:" in r.stderr
    assert "Traceback" not in r.stderr


# --- the records → the evidence --------------------------------------------------------------------------------

def _record(dtype: np.dtype, **values) -> np.void:
    r = np.zeros(1, dtype=dtype)
    for k, v in values.items():
        r[k] = v
    return r[0]


def test_records_become_the_evidence_the_journey_reads():
    symbols = KernelSymbols([(0x1000, "handle_mm_fault"), (0x2000, "do_page_fault"), (0x3000, "el0_da"),
                             (0x9000, "bpf_prog_abc_fault_fentry"), (0xA000, "bpf_trampoline_42")])
    ev = Arm64FaultEvidence("6.1.0", (6, 1), "aarch64", 48, 4096, "", 1, 0xFFFF83B33000, 4096, 0x100)
    page = 0xFFFF83B33000
    stack = np.zeros(af.STACK_DEPTH, dtype=np.uint64)
    stack[:5] = [0x9010, 0xA008, 0x1008, 0x2134, 0x3044]
    walk_values = [0x8000000489C0003, 0x8000000489D0003, 0x800000048A10003, 0, 0]
    tables = [0x489BF000, 0x489C0000, 0x489D0000, 0x48A10000, 0]
    records = [
        (af.EV_LINEAR, _record(af.LINEAR_EVENT, kind=af.EV_LINEAR, how=af.LINEAR_PGD_ALLOC, offset=0xFFFEFFFFC0000000,
                               memstart_or_address=0xFFFF000008951000, pfn=0x48951)),
        (af.EV_FAULT, _record(af.FAULT_EVENT, kind=af.EV_FAULT, flags=0x255, address=page + 0x100, pc=0xAAAA0B58,
                              pstate=0x80001000, vm_start=page, vm_end=page + 0x3000, vm_flags=0x100073,
                              stack_bytes=5 * 8, stack=stack)),
        (af.EV_BEFORE, _record(af.WALK_EVENT, kind=af.EV_BEFORE, nreads=4, page=page, pgd=0xFFFF0000089BF000,
                               value=walk_values, table=tables)),
        (af.EV_ALLOC, _record(af.ALLOC_EVENT, kind=af.EV_ALLOC, pfn=0x1111, gfp_flags=0xCC0, stack_bytes=8,
                              stack=stack)),      # a page table: not movable
        (af.EV_ALLOC, _record(af.ALLOC_EVENT, kind=af.EV_ALLOC, pfn=0x2222, gfp_flags=0x140DCA, stack_bytes=16,
                              stack=np.roll(stack, -2))),
        (af.EV_RETURN, _record(af.RETURN_EVENT, kind=af.EV_RETURN, retval=0, duration_ns=1044272)),
        (af.EV_AFTER, _record(af.WALK_EVENT, kind=af.EV_AFTER, nreads=4, page=page, pgd=0xFFFF0000089BF000,
                              value=walk_values[:3] + [0xE800004AEC6F43, 0], table=tables)),
    ]
    af.apply_records(records, ev, symbols)
    assert (ev.address, ev.flags, ev.pc, ev.retval, ev.duration_ns) == (page + 0x100, 0x255, 0xAAAA0B58, 0, 1044272)
    # the program's own frames and its trampoline's are left out; offsets in decimal, as bpftrace printed them
    assert ev.kernel_stack == ["handle_mm_fault+8", "do_page_fault+308", "el0_da+68"]
    assert [r.level for r in ev.walk_before] == ["PGD", "PUD", "PMD", "PTE"]
    assert ev.walk_before[3].value == 0 and ev.walk_after[3].value == 0xE800004AEC6F43
    assert ev.walk_after[0].table_physical == 0x489BF000 and ev.pgd_virtual == 0xFFFF0000089BF000
    assert (ev.alloc_pfn, ev.alloc_gfp) == (0x2222, 0x140DCA) and ev.alloc_stack == ["handle_mm_fault+8",
                                                                                       "do_page_fault+308"]
    assert ev.linear_offset == 0xFFFEFFFFC0000000 and "pgd_alloc returned 0xffff000008951000" in ev.linear_how


def test_a_record_of_another_shape_says_to_rebuild():
    session = af.WalkSession(obj=None, hooks=[])   # type: ignore[arg-type]
    with pytest.raises(af.BpfError, match="build-bpf.sh --force"):
        session._on_record((af.EV_FAULT).to_bytes(4, "little") + bytes(12))


def test_settings_carry_the_walk_of_each_shape():
    for va_bits, granule, lpa2, shifts in ((48, 4096, False, [39, 30, 21, 12]), (52, 4096, True, [48, 39, 30, 21, 12]),
                                           (52, 16384, True, [47, 36, 25, 14])):
        s = np.frombuffer(af.walk_settings(7, va_bits, granule, lpa2, fault_page=0xFFFF83B30000), dtype=af.SETTINGS)[0]
        assert list(s["shift"][:s["levels"]]) == shifts and s["levels"] == len(shifts)
        # the top level is as wide as the bits left above it: 1 bit for 16 KiB pages at 48 bits, 4 at 52 with 4 KiB
        assert s["mask"][0] == (1 << (min(va_bits, shifts[0] + granule.bit_length() - 4) - shifts[0])) - 1
        assert s["table_mask"] & (granule - 1) == 0 and (s["table_mask"] >> 48 != 0) == lpa2


# --- live on this kernel --------------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import mmap, os, sys
    m = mmap.mmap(-1, mmap.PAGESIZE)
    m[0:1] = b"x"
    import ctypes
    print(hex(ctypes.addressof(ctypes.c_char.from_buffer(m))), flush=True)
    sys.stdin.readline()
    os.getppid()
    sys.stdin.readline()
""")
GETPPID = {"x86_64": 110, "aarch64": 173}


@pytest.mark.live
@pytest.mark.parametrize("variant", ["tp_btf", "tracepoint"])
def test_the_walk_at_a_system_call_reads_the_processs_top_level_descriptor(variant, tmp_path):
    """Without the linear offset the walk stops after the top table, which it reads through mm->pgd itself: the
    entry covering a live page must be valid and name a page-table page (kpageflags PGTABLE, from 6.0 on)."""
    _root()
    try:
        object_path("arm64_walk")
    except BpfObjectMissing as exc:
        pytest.skip(str(exc))
    from pagefault.capture import procfs
    from pagefault.kernel.facts import kernel_version, paging_levels
    if not _on_arm64() and paging_levels()[0] != 4:
        pytest.skip("the arm64 walk's shape stands in for x86's only with 4 levels")
    kernel = KernelHooks() if variant == "tp_btf" else KernelHooks(btf_path=tmp_path / "no-btf")
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        page = int(child.stdout.readline(), 16)
        page_size = os.sysconf("SC_PAGE_SIZE")
        va_bits = af.facts.arm64_translation()[0] if _on_arm64() else 48
        settings = af.walk_settings(child.pid, va_bits, page_size, False, pages=(page,),
                                    syscall_nr=GETPPID[os.uname().machine])
        walk = af.open_walk(settings, fault=False, pgd_alloc=False, kernel=kernel)
        try:
            assert walk.hooks[0].startswith(f"sys_enter: {variant}")
            child.stdin.write("\n")
            child.stdin.flush()
            assert walk.wait_for(af.EV_AFTER, 30.0)
            assert walk.lost() == 0
        finally:
            walk.close()
        [(kind, r)] = walk.records
        assert int(r["page"]) == page and int(r["nreads"]) == 1 and int(r["linear_offset"]) == 0
        top = int(r["value"][0])
        # valid, and the table a kernel address (bits 63..55 set: x86's direct map, arm64's linear map)
        assert top & 1 and int(r["pgd"]) >> 55 == 0x1FF
        if kernel_version() >= (6, 0):
            table_mask = int(np.frombuffer(settings, dtype=af.SETTINGS)[0]["table_mask"])
            flags = procfs.read_kpageflags((top & table_mask) // page_size)
            assert flags >> 26 & 1, f"PFN of {top:#x} is not a page-table page: kpageflags {flags:#x}"
    finally:
        child.kill()
        child.wait()


@pytest.mark.live
def test_the_capture_on_this_arm64_machine():
    """The whole capture, where these tests run on arm64 as root (the matrix's arm64 rows run it too)."""
    from pagefault.journey.arm64_journey import arm64_checks
    if not _on_arm64():
        pytest.skip("the arm64 capture runs on arm64 machines (the kernel matrix's arm64 rows)")
    _root()
    ev = af.capture_arm64_fault()
    failed = [c for c in arm64_checks(ev) if not c.ok]
    assert not failed, failed
    assert any(h.startswith("handle_mm_fault: fentry") or h.startswith("handle_mm_fault: kprobe") for h in ev.hooks)
    assert ev.linear_offset and ev.linear_how.startswith("derived")


def test_without_root_the_walk_says_to_run_as_root(tmp_path):
    _root()
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("setpriv (util-linux) is not installed")
    code = ("from pagefault.capture import arm64_fault as af\n"
            "try:\n    af.open_walk(af.walk_settings(1, 48, 4096, False, pages=(4096,), syscall_nr=1), False, False)\n"
            "except af.BpfError as e:\n    print(e)")
    r = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
                       capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT)] + sys.path[1:])})
    assert r.stdout.count("\n") == 1 and "fix: run it as root" in r.stdout and not r.stderr, r.stdout + r.stderr
