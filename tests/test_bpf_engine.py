"""The compiled BPF engine: the counter's object loads on this kernel with every hook variant it offers, its
structs agree with their Python mirror, the loader refuses what it must, and a live count of a program with
known faults gives the known classes."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from live_helpers.bpf_objects import btf_struct

from pagefault.capture import kernel_counts as kc
from pagefault.capture.bpf import HERE, BpfObjectMissing, Hook, HookVariant, KernelHooks, object_path
from pagefault.capture.libbpf import BpfObject, LibbpfError

VARIANTS = ("raw_tp", "tracepoint")   # the counter's raw tracepoints are raw_tp (RAW_TRACEPOINTS)


OBJECTS = ("fault_count", "fault_stacks")


def _object(name: str = "fault_count") -> Path:
    try:
        return object_path(name)
    except BpfObjectMissing as exc:
        pytest.skip(str(exc))


def _offered(variant: str) -> list[str]:
    """The programs of that variant this kernel can take (BTF's raw tracepoints, tracefs's events)."""
    kernel = KernelHooks()
    if variant == "raw_tp":
        return [h.btf_program for h in kc.HOOKS if kernel.has_btf_tracepoint(h.event)]
    return [h.tracepoint_program for h in kc.HOOKS if kernel.tracefs_format(h.system, h.event) is not None]


def _root():
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")


# --- the object against its mirror and its hooks --------------------------------------------------------------

@pytest.mark.parametrize("name,struct,dtype", [
    ("fault_count", "fault_count_settings", kc.SETTINGS), ("fault_count", "fault_key", kc.FAULT_KEY),
    ("fault_count", "thread_fault", kc.THREAD_FAULT), ("fault_count", "vma_seen", kc.VMA_SEEN),
    ("fault_count", "vma_key", kc.VMA_KEY), ("latency", "vma_key", kc.VMA_KEY),
    ("fault_stacks", "thread_fault", kc.THREAD_FAULT), ("fault_stacks", "fault_stack_key", kc.FAULT_STACK_KEY),
    ("fault_stacks", "stack", kc.STACK), ("fault_count", "process_name", kc.PROCESS_NAME),
    ("fault_stacks", "process_name", kc.PROCESS_NAME)])
def test_the_python_mirror_has_the_objects_sizes_and_offsets(name, struct, dtype):
    size, members = btf_struct(_object(name), struct)
    dtype = dtype.dtype
    mirror = {name: (dtype.fields[name][1], dtype.fields[name][0].itemsize) for name in dtype.names}
    assert (dtype.itemsize, mirror) == (size, members)


@pytest.mark.parametrize("name", OBJECTS)
def test_every_program_of_the_object_is_one_variant_of_a_known_hook(name):
    _root()
    with BpfObject(_object(name)) as obj:
        programs = obj.programs()
    assert {h.raw_kind for h in kc.HOOKS} == {HookVariant.RAW_TP}   # no hook makes libbpf parse the whole BTF
    named = {p: s for h in kc.HOOKS for p, s in ((h.btf_program, f"raw_tp/{h.event}"),
                                                   (h.tracepoint_program, f"tracepoint/{h.system}/{h.event}"))}
    assert programs == named


@pytest.mark.live
@pytest.mark.parametrize("name", OBJECTS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_object_loads_and_attaches_with_each_variant_the_kernel_offers(variant, name):
    """A verifier rejection fails here, not on a user's machine."""
    _root()
    wanted = _offered(variant)
    if not wanted:
        pytest.skip(f"this kernel offers no {variant} hook of the counter")
    stacks = name == "fault_stacks"
    with BpfObject(_object(name)) as obj:
        obj.load_only(wanted)
        obj.set_rodata(kc._settings(os.getpid(), from_exec=False))
        obj.load()
        for name in wanted:
            obj.attach(name)
        assert len(obj.links) == len(wanted)
        # the maps' keys and values are the mirror's
        key = kc.FAULT_STACK_KEY if stacks else kc.FAULT_KEY
        assert (obj.map("counts").key_size, obj.map("counts").entry_size) == (key.itemsize, 8)
        assert obj.map("threads").entry_size == kc.THREAD_FAULT.itemsize
        if stacks:
            assert (obj.map("stack_ids").key_size, obj.map("stack_ids").entry_size) == (8, kc.STACK.itemsize)
        assert (obj.map("vmas").key_size, obj.map("vmas").entry_size) == (kc.VMA_KEY.itemsize, kc.VMA_SEEN.itemsize)
        names = obj.map("process_names")
        assert (names.key_size, names.entry_size) == (4, kc.PROCESS_NAME.itemsize)
    assert obj.links == []


# --- the hook choice ------------------------------------------------------------------------------------------

def _fake_tracefs(tmp_path: Path, formats: dict[str, str]) -> Path:
    for event, text in formats.items():
        d = tmp_path / "events" / event
        d.mkdir(parents=True)
        (d / "format").write_text(text)
    return tmp_path


FAULT_FORMAT = """name: page_fault_user
ID: 120
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned long address;\toffset:8;\tsize:8;\tsigned:0;
\tfield:unsigned long ip;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned long error_code;\toffset:24;\tsize:8;\tsigned:0;
"""
FAULT = kc.HOOKS[0]


def test_the_raw_tracepoint_is_chosen_where_the_kernels_btf_has_its_typedef(tmp_path):
    btf = tmp_path / "vmlinux"
    btf.write_bytes(b"\x9f\xeb\0\0junk\0btf_trace_page_fault_user\0more\0")
    kernel = KernelHooks(btf, _fake_tracefs(tmp_path, {}))
    choice = kernel.choose(FAULT)
    assert (choice.program, choice.variant) == ("fault_btf", "raw_tp")
    assert "btf_trace_page_fault_user" in choice.reason
    # a hook whose object keeps BTF-typed programs (the journey's walk, the latency tier) gets tp_btf
    typed = Hook("exceptions", "page_fault_user", "walk_btf", "walk_tp")
    assert (kernel.choose(typed).program, kernel.choose(typed).variant) == ("walk_btf", "tp_btf")


def test_the_classic_tracepoint_is_chosen_without_the_typedef_and_its_format_is_checked(tmp_path):
    btf = tmp_path / "vmlinux"
    btf.write_bytes(b"\0btf_trace_page_fault_user_other\0")   # a longer name is not the typedef
    choice = KernelHooks(btf, _fake_tracefs(tmp_path / "a", {"exceptions/page_fault_user": FAULT_FORMAT})).choose(FAULT)
    assert (choice.program, choice.variant) == ("fault_tp", "tracepoint")
    moved = FAULT_FORMAT.replace("error_code;\toffset:24", "error_code;\toffset:32")
    choice = KernelHooks(btf, _fake_tracefs(tmp_path / "b", {"exceptions/page_fault_user": moved})).choose(FAULT)
    assert choice.program is None and "differs from the program's at error_code" in choice.reason


def test_neither_variant_is_a_reason_and_a_required_hook_missing_refuses_the_count(tmp_path):
    kernel = KernelHooks(tmp_path / "no-btf", _fake_tracefs(tmp_path, {}))
    choice = kernel.choose(Hook("sched", "sched_process_fork", "fork_btf", "fork_tp"))
    assert choice.program is None and "no btf_trace_sched_process_fork" in choice.reason
    assert "tracefs has no sched:sched_process_fork" in choice.reason

    class OnlyTheFault(KernelHooks):
        def has_btf_tracepoint(self, event):
            return event == "page_fault_user"
    from pagefault.capture.tracer import CaptureError
    with pytest.raises(CaptureError, match="needs sched:sched_process_exec.*fix: record instead with -o FILE"):
        kc.choose_hooks(OnlyTheFault(tmp_path / "no-btf", _fake_tracefs(tmp_path / "t", {})))


# --- the loader's refusals ------------------------------------------------------------------------------------

def test_an_object_another_user_could_have_written_is_refused(tmp_path):
    planted = tmp_path / "fault_count.bpf.o"
    shutil.copy(_object(), planted)
    os.chmod(planted, 0o666)
    with pytest.raises(LibbpfError, match="refusing to load .*writable by other users"):
        BpfObject(planted)


def test_settings_of_another_size_are_refused_before_load():
    _root()
    with BpfObject(_object()) as obj:
        with pytest.raises(LibbpfError, match="settings are 16 bytes where pagefault writes 8"):
            obj.set_rodata(bytes(8))


def test_a_failed_load_names_the_file_holding_libbpfs_log():
    _root()
    with BpfObject(_object()) as obj:
        for name in obj.programs():
            obj.set_autoload(name, False)
        obj.set_rodata(kc._settings(os.getpid(), from_exec=False))
        obj.load()
        with pytest.raises(LibbpfError) as err:
            obj.load()      # an object loads once: libbpf refuses the second
    message = str(err.value)
    assert "\n" not in message and str(err.value.log_path) in message
    log = err.value.log_path
    assert oct(os.stat(log.parent).st_mode & 0o777) == "0o700" and "load can't be attempted twice" in log.read_text()
    shutil.rmtree(log.parent)


def test_without_root_the_load_says_to_run_as_root(tmp_path):
    _root()
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("setpriv (util-linux) is not installed")
    code = ("import sys; from pagefault.capture.kernel_counts import _settings; "
            "from pagefault.capture.libbpf import BpfObject, LibbpfError\n"
            f"o = BpfObject({str(_object())!r})\n"
            "o.set_rodata(_settings(1, False))\n"
            "try:\n    o.load()\nexcept LibbpfError as e:\n    print(e)")
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
                       capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(root)})
    assert "needs root" in r.stdout and "run pagefault as root" in r.stdout, r.stdout + r.stderr


def test_the_sources_are_in_the_package_and_the_objects_are_not_tracked():
    assert {"fault_count.bpf.c", "fault_count.bpf.h", "fault_count.h", "fault_stacks.bpf.c", "fault_stacks.h",
            "pagefault.bpf.h"} <= {p.name for p in HERE.iterdir()}
    r = subprocess.run(["git", "ls-files", str(HERE)], capture_output=True, text=True, cwd=HERE)
    if r.returncode != 0:
        pytest.skip("not a git checkout")
    assert not [f for f in r.stdout.split() if f.endswith((".o", "vmlinux.h"))]


# --- a live count ---------------------------------------------------------------------------------------------

LINE = re.compile(r"^(\w+) start=0x([0-9a-f]+) pages=(\d+) expect=(\d+)")


def _cache_can_be_dropped(directory: Path) -> bool:
    """Whether a file written in `directory`, synced and dropped with POSIX_FADV_DONTNEED, leaves memory (as
    fault_kinds' cold file must, to be read from disk): not on tmpfs, nor on a matrix guest's overlaid /tmp.
    Seen with mincore(2)."""
    import ctypes
    import mmap
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    pages = 4
    path = directory / "cache-probe"
    resident = (ctypes.c_ubyte * pages)()
    with open(path, "wb+") as f:
        f.write(b"\7" * pages * mmap.PAGESIZE)
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        addr = libc.mmap(None, pages * mmap.PAGESIZE, mmap.PROT_READ, mmap.MAP_PRIVATE, f.fileno(), 0)
        assert addr not in (None, ctypes.c_void_p(-1).value)
        ok = libc.mincore(addr, pages * mmap.PAGESIZE, resident) == 0
        libc.munmap(addr, pages * mmap.PAGESIZE)
    path.unlink()
    return ok and not any(b & 1 for b in resident)


@pytest.mark.live
@pytest.mark.parametrize("variant", VARIANTS)
def test_a_live_count_gives_the_known_classes_and_names_their_mappings(variant, can_trace, cbin, tmp_path):
    _root()
    _object()
    from pagefault.journey.trace_summary import summarize_counts
    kernel = KernelHooks() if variant == "raw_tp" else KernelHooks(btf_path=tmp_path / "no-btf")
    if variant == "tracepoint" and not all(c.variant == "tracepoint" for c in map(kernel.choose, kc.HOOKS)):
        pytest.skip("this kernel does not offer every classic tracepoint the counter uses")
    exe = cbin("fault_kinds")
    with open(tmp_path / "out", "w") as out:
        counts = kc.count_faults([str(exe), str(tmp_path)], None, stdout=out.fileno(), kernel=kernel)
    regions = {m.group(1): int(m.group(2), 16) for m in map(LINE.match, (tmp_path / "out").read_text().splitlines()) if m}
    assert counts.target_exit == "exited with status 0"
    assert all(f": {variant} (" in h for h in counts.hooks), counts.hooks
    maps = counts.maps[counts.pid]
    s = summarize_counts(counts.rows, maps, counts.command, counts.pid, counts.target_exit, counts.duration,
                         counts.allocations, counts.total)
    classes = {c: n for c, n, _how in s.by_class}
    assert classes["stack growth"] == 24 and classes["THP"] == 1 and classes["SIGSEGV"] == 1
    if not _cache_can_be_dropped(tmp_path):     # tmpfs, a matrix guest's /tmp: the file's pages never leave memory
        assert "file read from disk" not in classes and classes["file page-cache hit"] >= 12, classes
    else:
        assert classes.get("file read from disk", 0) >= 12, classes
    assert classes["zero page"] >= 16 and classes["anonymous new page"] >= 32 + 8 and classes["COW copy"] >= 16 + 8
    assert sum(classes.values()) == s.faults == counts.total
    # the VMAs were named in the kernel at their first fault: the cold file's (unlinked since), the stack's,
    # the PROT_NONE page's with its permissions
    by_start = {m.start: m for m in maps}
    assert by_start[regions["file"]].path.startswith("fault_kinds.") and by_start[regions["file"]].perms == "r--p"
    assert by_start[regions["segv"]].perms == "---p"
    mappings = dict(s.by_mapping)
    assert mappings["[stack]"] >= 24 and mappings[exe.name] >= 1
    # the counting started at the exec: no fault of the held child (the forked Python tool) was counted
    assert not [m for m in maps if "python" in m.path]


@pytest.mark.live
def test_the_count_follows_a_forked_child_and_closes_what_is_in_progress(can_trace, cbin, tmp_path):
    """fault_kinds' child writes its K_FORK pages under its own PID: those copies are counted too, and every
    fault of both processes is in a row (the last of each thread closed at its exit)."""
    _root()
    _object()
    exe = cbin("fault_kinds")
    with open(tmp_path / "out", "w") as out:
        counts = kc.count_faults([str(exe), str(tmp_path)], None, stdout=out.fileno())
    assert sum(r[7] for r in counts.rows) == counts.total > 0
    fork_start = next(int(m.group(2), 16) for m in map(LINE.match, (tmp_path / "out").read_text().splitlines())
                      if m and m.group(1) == "fork")
    # the region's writes: 8 before the fork, 8 in the child, 8 in the parent after it; each write of a
    # present page is a protection fault (error code bit 0) after the fork
    holding = [m.start for m in counts.maps[counts.pid] if m.start <= fork_start < m.end]
    assert holding, "the fork region's VMA was not named"
    here = [r for r in counts.rows if r[6] >> 3 == max(holding)]
    protection = sum(r[7] for r in here if r[0] & 1)
    assert protection >= 16, here


@pytest.mark.live
@pytest.mark.parametrize("variant", VARIANTS)
def test_faults_taken_in_kernel_mode_are_counted_and_the_total_is_the_kernels(variant, can_trace, cbin, tmp_path):
    """read_into_fresh preads 64 pages into a fresh anonymous buffer it never touches: copy_to_user faults on
    each page in kernel mode. Those are counted (their error code without X86_PF_USER), and the total is the
    kernel's own page-faults count for the program from its exec, to the fault."""
    _root()
    _object()
    from pagefault.journey.count_summary import summarize_counts
    kernel = KernelHooks() if variant == "raw_tp" else KernelHooks(btf_path=tmp_path / "no-btf")
    choices = {c.hook.event: c for c in map(kernel.choose, kc.HOOKS)}
    if choices["page_fault_kernel"].variant != variant:
        pytest.skip(f"this kernel offers no {variant} hook for exceptions:page_fault_kernel")
    exe = cbin("read_into_fresh")
    with open(tmp_path / "out", "w") as out:
        counts = kc.count_faults([str(exe), str(tmp_path)], None, stdout=out.fileno(), kernel=kernel)
    start, pages = re.search(r"start=0x([0-9a-f]+) pages=(\d+)", (tmp_path / "out").read_text()).groups()
    assert counts.target_exit == "exited with status 0" and counts.kernel_fault_counts, counts.notes
    # the buffer's faults, every one in kernel mode (the program never touches it)
    in_buffer = [r for r in counts.rows if r[6] >> 3 == int(start, 16)]
    assert sum(r[7] for r in in_buffer) == int(pages) and not [r for r in in_buffer if r[0] & 4], in_buffer
    s = summarize_counts(counts.rows, counts.maps[counts.pid], counts.command, counts.pid, counts.target_exit,
                         counts.duration, counts.allocations, counts.total)
    assert s.kernel_mode_faults >= int(pages)
    if choices["sched_prepare_exec"].program is None:
        pytest.skip("without sched_prepare_exec (before 6.10) exec's own faults on the new image are not counted")
    assert counts.kernel_fault_counts["page-faults"] - s.faults == 0, (counts.kernel_fault_counts, s.faults)


def test_a_missing_or_stale_object_is_one_line_with_the_fix(tmp_path, monkeypatch):
    import pagefault.capture.bpf as engine
    monkeypatch.setattr(engine, "HERE", tmp_path)
    (tmp_path / "fault_count.bpf.c").write_text("")
    with pytest.raises(BpfObjectMissing, match="is not built; fix: as root, bash scripts/setup.sh"):
        object_path("fault_count")
    built = tmp_path / "build" / os.uname().machine / "fault_count.bpf.o"
    built.parent.mkdir(parents=True)
    built.write_bytes(b"")
    os.utime(built, (1, 1))     # older than the source
    with pytest.raises(BpfObjectMissing, match="older than its sources; fix: as root, bash scripts/setup.sh"):
        object_path("fault_count")
    assert "older than its sources" in kc.engine_problem()


def test_on_arm64_without_the_fault_tracepoint_the_refusal_says_what_works_there(tmp_path, monkeypatch):
    import pagefault.capture.tracer as tracer
    from pagefault.capture.tracer import CaptureError
    fake = _fake_tracefs(tmp_path / "tracefs", {"sched/sched_process_fork": "ID: 1\n"})
    monkeypatch.setattr(tracer, "find_tracefs", lambda *a, **k: fake)
    from pagefault.decode.arch_interface import Arm64
    from pagefault.kernel import facts
    monkeypatch.setattr(facts, "machine_arch", Arm64)
    with pytest.raises(CaptureError, match="arm64 kernels .* have no page-fault tracepoint"):
        kc.choose_hooks(KernelHooks(tmp_path / "no-btf", fake))


def _load_counter(keep_log: bool) -> BpfObject:
    obj = BpfObject(_object(), keep_log=keep_log)
    for c in kc.choose_hooks():
        obj.set_autoload(c.hook.btf_program, c.program == c.hook.btf_program)
        obj.set_autoload(c.hook.tracepoint_program, c.program == c.hook.tracepoint_program)
    obj.set_rodata(kc._settings(os.getpid(), from_exec=False))
    obj.load()
    return obj


def test_a_load_that_goes_well_takes_libbpfs_messages_only_when_asked():
    # libbpf's ~300 messages of a load went through a Python callback that needs the GIL (a load beside a busy
    # thread waited for it at each): they are dropped in C unless the object keeps its log
    _root()
    quiet, kept = _load_counter(False), _load_counter(True)
    try:
        assert not any("CO-RE relocating" in line for line in quiet.log)
        assert sum("CO-RE relocating" in line for line in kept.log) >= 3
    finally:
        quiet.close()
        kept.close()


def test_a_first_load_that_fails_still_gives_libbpfs_reasons():
    # every program on, fentry and kprobes too: this host refuses them (the matrix's guests may not: then it skips).
    # The quiet load drops libbpf's messages; the load made again after it failed must have them
    _root()
    obj = BpfObject(_object("fault_calls"))
    try:
        for name in obj.programs():
            obj.set_autoload(name, True)
        try:
            obj.load()
        except LibbpfError as exc:
            assert exc.log_path is not None and "failed to load" in exc.log_path.read_text()
            assert any("BPF program load failed" in line or "failed to load object" in line for line in obj.log)
            shutil.rmtree(exc.log_path.parent)
        else:
            pytest.skip("this kernel loads every program of fault_calls.bpf.o (fentry and kprobes both allowed)")
    finally:
        obj.close()
