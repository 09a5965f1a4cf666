"""The latency tier's pieces that run anywhere: the kernel's histograms read and summarised, the compiled object
against its Python mirror and the verifier, the refusal."""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from live_helpers.bpf_objects import btf_struct, btf_types, dtype_layout

from pagefault.capture.kprobes import kprobe_support
from pagefault.evidence import MapsLine
from pagefault.journey.build import decode_vm_fault
from pagefault.journey.latency import summarize_latency, vm_fault_names

REASONS = {0x4: "VM_FAULT_MAJOR", 0x2: "VM_FAULT_SIGBUS", 0x400: "VM_FAULT_RETRY", 0x100: "VM_FAULT_NOPAGE"}


# The kernel's histograms as the compiled program keeps them (latency.h): one per (handler code, return value,
# vm_start), per CPU. Outcome (0, 0) spans two VMAs, and its VMA at 0x1000 was hit on two CPUs; the VMA at
# 0x10000 has gone.
def _hist(cpus: list[tuple[dict[int, int], int, int]]) -> bytes:
    """One map value: per CPU, (slot → faults, sum, max)."""
    from pagefault.capture.latency import LATENCY_HIST
    v = np.zeros(len(cpus), dtype=LATENCY_HIST)
    for i, (slots, total, mx) in enumerate(cpus):
        for slot, n in slots.items():
            v[i]["slots"][slot] = n
        v[i]["total_ns"], v[i]["max_ns"] = total, mx
    return v.tobytes()


def _key(handler: int, retval: int, start: int) -> bytes:
    from pagefault.capture.latency import LATENCY_KEY
    return np.array([(handler, retval, start)], dtype=LATENCY_KEY).tobytes()


# slot s ≥ 1 holds [2^(s-1), 2^s): slot 11 is [1K, 2K), 12 [2K, 4K), 13 [4K, 8K), 16 [32K, 64K)
MAP_ITEMS = [
    (_key(0, 0, 0x1000), _hist([({11: 5, 12: 15}, 40000, 4000), ({11: 3, 13: 1}, 20000, 4728)])),
    (_key(0, 0, 0x9000), _hist([({11: 2}, 2600, 1500), ({}, 0, 0)])),
    (_key(-1, 260, 0x10000), _hist([({}, 0, 0), ({16: 2}, 90000, 50000)])),
]


def test_kernel_histograms_are_read_and_summarised_with_hand_checked_percentiles():
    from pagefault.capture.latency import group_histograms, histograms_from_map, slot_floor
    assert [slot_floor(s) for s in (0, 1, 2, 11, 39)] == [0, 1, 2, 1024, 1 << 38]
    kept = histograms_from_map(MAP_ITEMS)
    # the CPUs add up, the maximum is the larger
    assert kept[(0, 0, 0x1000)].buckets == [(1024, 8), (2048, 15), (4096, 1)]
    assert (kept[(0, 0, 0x1000)].total_ns, kept[(0, 0, 0x1000)].max_ns) == (60000, 4728)
    by_outcome, by_vma = group_histograms(kept)
    # the outcome adds its two VMAs' buckets and sums; its maximum is the larger
    assert by_outcome[(0, 0)].buckets == [(1024, 10), (2048, 15), (4096, 1)]
    assert (by_outcome[(0, 0)].max_ns, by_outcome[(0, 0)].total_ns) == (4728, 62600)
    assert by_vma[0x1000].buckets == [(1024, 8), (2048, 15), (4096, 1)] and by_vma[0x1000].max_ns == 4728
    assert (by_vma[0x9000].buckets, by_vma[0x9000].total_ns) == ([(1024, 2)], 2600)
    assert by_outcome[(-1, 260)].buckets == [(32768, 2)] and by_vma[0x10000].buckets == [(32768, 2)]
    anon = MapsLine(0x1000, 0x9000, "rw-p", 0, "00:00", 0, "")
    lib = MapsLine(0x9000, 0xA000, "r--p", 0, "08:01", 12, "/usr/lib/libx.so")
    summary = summarize_latency(by_outcome, by_vma, ["do_anonymous_page"], REASONS, [anon, lib])
    assert summary.faults == 28
    first = summary.by_outcome[0]
    assert first.key == "do_anonymous_page → 0" and first.count == 26
    # 26 faults: the 13th (p50) and the 24th (p90) are in [2K, 4K): at most 4096 ns; the 26th (p99) in
    # [4K, 8K), whose bound 8192 the kernel's maximum 4728 lowers
    assert first.percentiles_ns == {50: 4096.0, 90: 4096.0, 99: 4728.0}
    assert summary.by_outcome[1].key == "(no probed handler) → VM_FAULT_MAJOR|VM_FAULT_NOPAGE"
    assert {g.key: g.count for g in summary.by_mapping} == {
        "[anon rw-p]": 24, "/usr/lib/libx.so": 2, "(the VMA at 0x10000, gone before maps was read)": 2}


def test_what_the_kernel_could_not_keep_is_said():
    from pagefault.capture.latency import LAT_N, LAT_NO_ROOM, LAT_UNNAMED, LAT_UNTIMED, counter_notes
    assert counter_notes([300, 0, 0, 0]) == []
    counts = [0] * LAT_N
    counts[LAT_NO_ROOM], counts[LAT_UNNAMED], counts[LAT_UNTIMED] = 3, 2, 1
    notes = counter_notes(counts)
    assert len(notes) == 3 and notes[0].startswith("3 faults were timed but not kept")


def test_the_handlers_are_found_in_the_kernels_btf_without_reading_kallsyms(monkeypatch):
    """Finding the handlers is part of the tier's start: /proc/kallsyms and available_filter_functions (every
    symbol printed by the kernel, seconds under emulation) are not read; the kernel's BTF, through libbpf, says
    which are functions of their own, the same for fentry and kprobes."""
    import builtins
    import io

    from pagefault.capture import libbpf
    from pagefault.capture.kprobes import FAULT_HANDLERS, NOT_A_FUNCTION, probeable
    from pagefault.capture.latency import OUTCOME_HANDLERS, FunctionProbe, hookable
    opened = []
    real_open = builtins.open

    def spy(file, *a, **k):
        opened.append(str(file))
        return real_open(file, *a, **k)
    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    monkeypatch.setattr(libbpf, "_kernel_functions", {})
    found, why = probeable(FAULT_HANDLERS + ("handle_mm_fault",))
    assert not [p for p in opened if "kallsyms" in p or "filter_functions" in p], opened
    if any("libbpf" in w for w in why.values()):
        pytest.skip(next(iter(why.values())))
    assert "handle_mm_fault" in found and all(w == NOT_A_FUNCTION for w in why.values())
    assert set(found) | set(why) == set(FAULT_HANDLERS + ("handle_mm_fault",))
    assert hookable(FunctionProbe.KPROBE) == hookable(FunctionProbe.FENTRY) == probeable(OUTCOME_HANDLERS)


# --- the compiled object against its Python mirror --------------------------------------------------------

def _object() -> Path:
    from pagefault.capture.bpf import BpfObjectMissing, object_path
    try:
        return object_path("latency")
    except BpfObjectMissing as exc:
        pytest.skip(str(exc))


def test_the_python_mirror_has_the_objects_sizes_offsets_and_handler_codes():
    from pagefault.capture import latency as lat
    from pagefault.capture.kernel_counts import VMA_SEEN
    types = btf_types(_object())
    for struct, dtype in (("latency_settings", lat.SETTINGS), ("latency_key", lat.LATENCY_KEY),
                          ("latency_hist", lat.LATENCY_HIST), ("fault_timing", lat.FAULT_TIMING),
                          ("vma_seen", VMA_SEEN.dtype)):
        t = types[struct]
        offsets = {m["name"]: m["bits_offset"] // 8 for m in t["members"]}
        assert (t["size"], offsets) == (dtype.itemsize, {n: dtype.fields[n][1] for n in dtype.names}), struct
    # a histogram key's handler code is the index in OUTCOME_HANDLERS
    values = {v["name"]: v["val"] for v in types["outcome_handler"]["values"] if v["name"] != "NO_HANDLER"}
    assert values == {f"H_{fn}": i for i, fn in enumerate(lat.OUTCOME_HANDLERS)}


def _expected_programs(entry_return: tuple[str, str, str, str], handlers: dict[str, tuple[str, str]],
                       hooks) -> dict[str, str]:
    """Program → section of an object timing handle_mm_fault: its fentry, fexit, kprobe and kretprobe programs
    (`entry_return`, in that order), each handler's (function → (fentry program, kprobe program)) and each
    hook's tp_btf and tracepoint pair."""
    expected = dict(zip(entry_return, ("fentry/handle_mm_fault", "fexit/handle_mm_fault", "kprobe/handle_mm_fault",
                                       "kretprobe/handle_mm_fault")))
    for fn, (fentry, kprobe) in handlers.items():
        expected[fentry], expected[kprobe] = f"fentry/{fn}", f"kprobe/{fn}"
    for h in hooks:
        expected[h.btf_program] = f"tp_btf/{h.event}"
        expected[h.tracepoint_program] = f"tracepoint/{h.system}/{h.event}"
    return expected


def test_every_hook_has_an_fentry_and_a_kprobe_program_and_nothing_else_is_in_the_object():
    _root()
    from pagefault.capture import latency as lat
    from pagefault.capture.libbpf import BpfObject
    with BpfObject(_object()) as obj:
        programs = obj.programs()
    handlers = {fn: (lat.handler_program(fn, lat.FunctionProbe.FENTRY), lat.handler_program(fn, lat.FunctionProbe.KPROBE))
                for fn in lat.OUTCOME_HANDLERS}
    assert programs == _expected_programs(("enter_fentry", "return_fexit", "enter_kprobe", "return_kretprobe"),
                                          handlers, lat.HOOKS)


def _root():
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root")


@contextlib.contextmanager
def _loaded(path: Path, wanted: set[str], rodata: bytes, kind: str):
    """The object loaded with the `wanted` programs alone and `rodata` as its settings; a kernel that refuses
    fentry programs (EPERM here) skips the fentry kind."""
    from pagefault.capture.libbpf import BpfObject, LibbpfError
    with BpfObject(path) as obj:
        obj.load_only(wanted)
        obj.set_rodata(rodata)
        try:
            obj.load()
        except LibbpfError as exc:
            if kind == "fentry" and "EPERM" in str(exc):
                pytest.skip(f"this kernel refuses fentry programs: {exc}")
            raise
        yield obj


@pytest.mark.live
@pytest.mark.parametrize("kind", ["fentry", "kprobe"])
def test_the_object_passes_the_verifier_with_each_kind(kind):
    """A verifier rejection fails here, not on a user's machine. The kprobe programs load anywhere (attaching
    them needs kprobes); fentry's load needs BPF trampolines, which some kernels refuse (EPERM here)."""
    _root()
    from pagefault.capture import latency as lat
    probe = lat.FunctionProbe(kind)
    handlers, _why = lat.hookable(probe)
    choices = lat.choose_hooks()
    entry, ret = lat.ENTRY_RETURN[probe]
    wanted = {entry, ret} | {lat.handler_program(fn, probe) for fn in handlers} | {c.program for c in choices}
    with _loaded(_object(), wanted, lat._settings(os.getpid(), from_exec=False), kind) as obj:
        for c in choices:
            obj.attach(c.program or "")
        # the maps' keys and values are the mirror's
        hists = obj.map("hists")
        assert (hists.key_size, hists.entry_size) == (lat.LATENCY_KEY.itemsize, lat.LATENCY_HIST.itemsize)
        assert obj.map("timing").entry_size == lat.FAULT_TIMING.itemsize
        assert len(list(hists.items())) == 0 and lat.read_counters(obj) == [0] * lat.LAT_N


def test_no_faults_is_said_not_divided_by():
    s = summarize_latency({}, {}, [], {}, [])
    assert s.faults == 0 and s.notes and not s.by_outcome


def test_vm_fault_bits_are_named_and_zero_means_handled():
    assert vm_fault_names(0, REASONS) == "0"
    assert decode_vm_fault(0, REASONS)[0].startswith("0 (the fault was handled")
    assert decode_vm_fault(0x404, REASONS) == ["VM_FAULT_MAJOR", "VM_FAULT_RETRY"]
    assert decode_vm_fault(0x8000, REASONS) == ["0x8000 (not named by the enum)"]


def test_latency_refuses_with_each_reason_where_neither_hook_works():
    ok, why = kprobe_support()
    if ok:
        pytest.skip("this kernel has kprobes: the kernel matrix runs --latency for real")
    r = subprocess.run([sys.executable, "-m", "pagefault", "trace", "--latency", "-q", "--", "/bin/true"],
                       capture_output=True, text=True, timeout=60)
    if r.returncode == 0:   # no kprobes, but BPF trampolines: fentry timed the faults
        assert "hooked with fentry" in r.stderr
        return
    assert r.returncode == 3 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # each kind's own reason: kprobes' from tracefs and the config, fentry's from the kernel's refusal
    assert "kprobes: " in r.stderr and "fix" in r.stderr
    if os.geteuid() == 0:
        assert "fentry: " in r.stderr and "libbpf's and the verifier's log: /" in r.stderr


def test_another_objects_newer_source_leaves_this_object_current(tmp_path, monkeypatch):
    """build-bpf.sh rebuilds an object when its own .bpf.c or a header is newer; the loader's staleness test
    is the same, or a newer latency.bpf.c would make the counter's object stale for good."""
    from pagefault.capture import bpf
    built = tmp_path / "build" / os.uname().machine
    built.mkdir(parents=True)
    for name, when in (("fault_count.bpf.c", 100), ("pagefault.bpf.h", 100), ("latency.bpf.c", 300)):
        (tmp_path / name).write_text("")
        os.utime(tmp_path / name, (when, when))
    (built / "fault_count.bpf.o").write_text("")
    os.utime(built / "fault_count.bpf.o", (200, 200))
    monkeypatch.setattr(bpf, "HERE", tmp_path)
    assert bpf.object_path("fault_count") == built / "fault_count.bpf.o"
    os.utime(tmp_path / "pagefault.bpf.h", (300, 300))   # a header both include: both are stale
    with pytest.raises(bpf.BpfObjectMissing, match="older than its sources"):
        bpf.object_path("fault_count")


# --- the scenarios' every-fault timing: fault_calls.bpf.c -----------------------------------------------------

def _calls_object() -> Path:
    from pagefault.capture.bpf import BpfObjectMissing, object_path
    try:
        return object_path("fault_calls")
    except BpfObjectMissing as exc:
        pytest.skip(str(exc))


def test_the_calls_mirror_has_the_objects_layout_and_handler_indices():
    from pagefault.capture import kprobes as kp
    obj = _calls_object()
    for struct, dtype in (("fault_calls_settings", kp.CALLS_SETTINGS), ("fault_call_key", kp.FAULT_CALL_KEY),
                          ("fault_call", kp.FAULT_CALL)):
        assert btf_struct(obj, struct) == dtype_layout(dtype), struct
    # a call's path holds enum fault_handler values: the index in FAULT_HANDLERS (the journey walk's object
    # takes its programs from the same list in pagefault.bpf.h)
    values = {v["name"]: v["val"] for v in btf_types(obj)["fault_handler"]["values"] if v["name"].startswith("FH_")}
    assert values == {f"FH_{fn}": i for i, fn in enumerate(kp.FAULT_HANDLERS)}


def test_every_handler_has_an_fentry_and_a_kprobe_program_in_the_calls_object():
    _root()
    from pagefault.capture import kprobes as kp
    from pagefault.capture.libbpf import BpfObject
    with BpfObject(_calls_object()) as obj:
        programs = obj.programs()
    assert programs == _expected_programs(("hmf_fentry", "hmf_fexit", "hmf_kprobe", "hmf_kretprobe"),
                                          {fn: (f"fe_{fn}", f"kp_{fn}") for fn in kp.FAULT_HANDLERS}, kp.CALLS_HOOKS)


def _call(start: int, address: int, flags: int, path: list[tuple[str, int]], ret: int | None, took: int = 0,
          pid: int = 4242) -> bytes:
    from pagefault.capture import kprobes as kp
    c = np.zeros(1, dtype=kp.FAULT_CALL)
    c[0]["start_ns"], c[0]["address"], c[0]["flags"], c[0]["pid"], c[0]["tid"] = start, address, flags, pid, pid
    c[0]["npath"] = len(path)
    for i, (fn, ns) in enumerate(path[:kp.CALL_PATH]):
        c[0]["path"][i], c[0]["path_ns"][i] = kp.FAULT_HANDLERS.index(fn), ns
    if ret is not None:
        c[0]["returned"], c[0]["retval"], c[0]["duration_ns"] = 1, ret, took
    return c.tobytes()


def test_the_calls_read_from_the_kernel_become_the_scenarios_faults_in_entry_order():
    """Hand-made records as the kernel keeps them: read in the map's (hash) order, given back by their start;
    a call still inside handle_mm_fault at the read has no return value nor duration; a path longer than the
    record keeps its first CALL_PATH handlers."""
    from pagefault.capture import kprobes as kp
    long_path = [("__handle_mm_fault", 10 + i) for i in range(kp.CALL_PATH + 3)]
    values = [_call(3000, 0x7F0000002010, 0x254, [("__handle_mm_fault", 400), ("do_fault", 900)], None),
              _call(1000, 0x7F0000001000, 0x1255, [("__handle_mm_fault", 300), ("do_anonymous_page", 1200)], 0, 5300),
              _call(2000, 0x7F0000001000, 0x1255, long_path, 0x400, 8000, pid=4343)]
    faults = kp.calls_from_map(values, {"do_numa_page": "inlined"})
    assert [f.start_ns for f in faults] == [1000, 2000, 3000]
    first, forked, open_call = faults
    assert (first.address, first.flags, first.retval, first.duration_ns, first.pid) == (0x7F0000001000, 0x1255, 0, 5300,
                                                                                        4242)
    assert first.handlers == [("__handle_mm_fault", 300), ("do_anonymous_page", 1200)]
    assert first.not_probeable == {"do_numa_page": "inlined"} and forked.pid == 4343 and forked.retval == 0x400
    assert len(forked.handlers) == kp.CALL_PATH and forked.handlers[-1] == ("__handle_mm_fault", 10 + kp.CALL_PATH - 1)
    assert open_call.retval is None and open_call.duration_ns is None and open_call.handlers[-1] == ("do_fault", 900)
    assert kp.calls_from_map([], {}) == []


@pytest.mark.live
@pytest.mark.parametrize("kind", ["fentry", "kprobe"])
def test_the_calls_object_passes_the_verifier_with_each_kind(kind):
    """As the latency object's: every program of the kind, with the scheduler hooks this kernel offers, loads;
    the maps are the mirror's and start empty. (Timing real faults needs fentry or kprobes attached: the
    kernel matrix's scenarios do it in its guests.)"""
    _root()
    from pagefault.capture import kprobes as kp
    from pagefault.capture.bpf import KernelHooks
    probe = kp.FunctionProbe(kind)
    handlers, _why = kp.probeable(kp.FAULT_HANDLERS)
    hooks = [KernelHooks().choose(h) for h in kp.CALLS_HOOKS]
    wanted = set(kp.CALLS_ENTRY_RETURN[probe]) | {f"{'fe' if kind == 'fentry' else 'kp'}_{fn}" for fn in handlers}
    wanted |= {c.program for c in hooks}
    settings = np.zeros(1, dtype=kp.CALLS_SETTINGS)
    settings[0] = (os.getpid(), 1)
    with _loaded(_calls_object(), wanted, settings.tobytes(), kind) as obj:
        for c in hooks:
            obj.attach(c.program or "")
        calls = obj.map("calls")
        assert (calls.key_size, calls.entry_size) == (kp.FAULT_CALL_KEY.itemsize, kp.FAULT_CALL.itemsize)
        assert list(calls.items()) == []


def test_every_fault_probe_refuses_in_one_line_where_neither_kind_attaches():
    """Here (no kprobes; fentry refused, or allowed) the probe either times with fentry or says why not, each
    kind's reason in one BpfError, and leaves nothing loaded."""
    _root()
    _calls_object()
    from pagefault.capture.bpf_walk import BpfError
    from pagefault.capture.kprobes import EveryFaultProbe, FunctionProbe
    try:
        probe = EveryFaultProbe(os.getpid(), from_exec=True)
    except BpfError as exc:
        assert "\n" not in str(exc) and "fentry: " in str(exc), exc
        if not kprobe_support()[0]:
            assert "kprobes: " in str(exc)
        return
    try:
        assert probe.variant is FunctionProbe.FENTRY or kprobe_support()[0]
        assert probe.describe().startswith(f"{probe.variant} programs of fault_calls.bpf.o")
    finally:
        probe.stop()
