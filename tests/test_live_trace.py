"""Live: trace real C programs with perf_event_open and check what the kernel did."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from live_helpers.heldout import counts_from_exec

from pagefault.capture.perf_event import SAMPLE_CALLCHAIN
from pagefault.capture.recording import load_recording
from pagefault.capture.records import callchain, parse_stream, raw_field, split_callchain
from pagefault.capture.tracer import TraceOptions, record
from pagefault.journey.trace_summary import summarize
from pagefault.kernel.kallsyms import KernelSymbols

pytestmark = pytest.mark.live
CLI = [sys.executable, "-m", "pagefault"]


def field(stream, meta, event, name, mask):
    ev = next(e for e in meta["events"].values() if f"{e['system']}:{e['name']}" == event)
    off, size, signed = ev["fields"][name]
    return raw_field(stream.data, stream.samples.raw_offset[mask], off, size, bool(signed))


def event_mask(stream, meta, event):
    eid = next(int(i) for i, e in meta["events"].items() if f"{e['system']}:{e['name']}" == event)
    return stream.samples.event_type == eid


def run_traced(tmp_path, argv, **kw):
    out = tmp_path / "target.out"
    with open(out, "w") as f:
        meta = record(TraceOptions(argv=[str(a) for a in argv], output=tmp_path / "t.pfrec",
                                   target_stdout=f.fileno(), **kw))
    rec = load_recording(tmp_path / "t.pfrec")
    return meta, rec, out.read_text()


def test_first_touch_fault_allocation_and_pfn(can_trace, cbin, tmp_path):
    meta, rec, out = run_traced(tmp_path, [cbin("touch_one"), "0x100"], callchain=True)
    m = re.search(r"vaddr=0x([0-9a-f]+) offset=0x100 pagemap=0x([0-9a-f]+) pfn=0x([0-9a-f]+)", out)
    assert m, out
    vaddr, pagemap_pfn = int(m.group(1), 16), int(m.group(3), 16)
    assert pagemap_pfn != 0

    stream = parse_stream(rec.data, meta["sample_type"] | SAMPLE_CALLCHAIN)
    assert stream.lost == 0
    faults = event_mask(stream, meta, "exceptions:page_fault_user")
    addresses = field(stream, meta, "exceptions:page_fault_user", "address", faults)
    codes = field(stream, meta, "exceptions:page_fault_user", "error_code", faults)
    hits = np.nonzero(addresses == vaddr + 0x100)[0]
    assert len(hits) == 1, "exactly one fault at the mmap address plus the offset written"
    assert int(codes[hits[0]]) == 0x6
    fault_time = int(stream.samples.time[faults][hits[0]])

    allocs = event_mask(stream, meta, "kmem:mm_page_alloc")
    pfns = field(stream, meta, "kmem:mm_page_alloc", "pfn", allocs)
    match = np.nonzero(pfns == pagemap_pfn)[0]
    assert len(match) == 1, "the PFN mm_page_alloc reported is the one pagemap shows"
    alloc_index = int(np.nonzero(allocs)[0][match[0]])
    assert int(stream.samples.time[alloc_index]) > fault_time

    ksyms = KernelSymbols.load()
    kernel, _ = split_callchain(callchain(stream.data, stream.samples, alloc_index))
    names = [ksyms.describe(ip).split("+")[0] for ip in kernel]
    assert "handle_mm_fault" in names and "do_anonymous_page" in names


def test_summary_of_a_traced_program(can_trace, cbin, tmp_path):
    meta, rec, out = run_traced(tmp_path, [cbin("touch_one")], callchain=True)
    s = summarize(rec)
    stream = parse_stream(rec.data, meta["sample_type"] | SAMPLE_CALLCHAIN)
    in_kernel = event_mask(stream, meta, "exceptions:page_fault_kernel")
    user_addresses = field(stream, meta, "exceptions:page_fault_kernel", "address", in_kernel) < (1 << 47)
    assert s.kernel_mode_faults == int(np.sum(user_addresses))
    assert s.faults == int(np.sum(event_mask(stream, meta, "exceptions:page_fault_user"))) + s.kernel_mode_faults
    # the total is the kernel's own: the page-faults software event counted the same task from its exec
    assert s.kernel_counts["page-faults"] == s.faults, s.notes
    assert any("the same as traced here" in n for n in s.notes)
    assert s.by_kind.get("write, not-present page", 0) >= 1
    assert any(label == "[anon]" for label, _ in s.by_mapping)
    assert any("touch_one:main+" in r["where"] for r in s.top_instructions)
    assert any("do_anonymous_page" in path for path, _ in s.kernel_paths)
    assert s.lost == 0


def test_target_killed_by_sigsegv_still_yields_its_recording(can_trace, cbin, tmp_path):
    meta, rec, _ = run_traced(tmp_path, [cbin("segv")])
    assert meta["exit"] == "killed by SIGSEGV"
    stream = parse_stream(rec.data, meta["sample_type"])
    faults = event_mask(stream, meta, "exceptions:page_fault_user")
    addresses = field(stream, meta, "exceptions:page_fault_user", "address", faults)
    codes = field(stream, meta, "exceptions:page_fault_user", "error_code", faults)
    i = np.nonzero(addresses == 0x10)[0]
    assert len(i) >= 1 and int(codes[i[0]]) == 0x6


def test_unprivileged_tier_sees_address_and_ip(can_trace, cbin, tmp_path):
    meta, rec, out = run_traced(tmp_path, [cbin("touch_one"), "0x180"], tier="user")
    vaddr = int(re.search(r"vaddr=0x([0-9a-f]+)", out).group(1), 16)
    s = summarize(rec)
    assert s.tier == "user" and any("no error code" in n for n in s.notes)
    stream = parse_stream(rec.data, meta["sample_type"])
    assert vaddr + 0x180 in set(stream.samples.addr.tolist())


def test_cli_trace_and_report_agree(can_trace, cbin, tmp_path):
    rec = tmp_path / "cli.pfrec"
    r = subprocess.run(CLI + ["trace", "-q", "--json", "--summary", str(tmp_path / "s.json"), "-o", str(rec), "--",
                              str(cbin("touch_one"))], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    traced = json.loads((tmp_path / "s.json").read_text())
    r2 = subprocess.run(CLI + ["report", "--json", str(rec)], capture_output=True, text=True, timeout=120)
    assert r2.returncode == 0, r2.stderr
    assert json.loads(r2.stdout)["faults"] == traced["faults"] > 0


def test_two_traces_at_once_do_not_disturb_each_other(can_trace, cbin, tmp_path):
    procs = []
    for i in (1, 2):
        procs.append(subprocess.Popen(CLI + ["trace", "-q", "--json", "-o", str(tmp_path / f"{i}.pfrec"), "--",
                                             str(cbin("touch_one")), hex(0x100 * i)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for i, p in enumerate(procs, 1):
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        vaddr = int(re.search(r"vaddr=0x([0-9a-f]+)", out).group(1), 16)
        rec = load_recording(tmp_path / f"{i}.pfrec")
        stream = parse_stream(rec.data, rec.meta["sample_type"])
        faults = event_mask(stream, rec.meta, "exceptions:page_fault_user")
        addrs = set(field(stream, rec.meta, "exceptions:page_fault_user", "address", faults).tolist())
        assert vaddr + 0x100 * i in addrs and stream.lost == 0
        pids = set(stream.samples.pid[faults].tolist())
        assert pids == {rec.meta["pid"]}, "each recording holds its own target's faults only"


def test_ctrl_c_stops_cleanly_and_changes_no_tracing_setting(can_trace, tmp_path):
    from pagefault.kernel.tracefs import find_tracefs
    root = find_tracefs()
    watched = [root / "tracing_on", root / "events/exceptions/page_fault_user/enable",
               root / "events/kmem/mm_page_alloc/enable"]
    before = [p.read_text() for p in watched]
    rec = tmp_path / "int.pfrec"
    p = subprocess.Popen(CLI + ["trace", "-q", "-o", str(rec), "--", "sleep", "30"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "Traceback" not in err
    meta = load_recording(rec).meta
    assert meta["interrupted_by"] == "SIGINT" and meta["exit"] == "killed by SIGINT"
    assert [p.read_text() for p in watched] == before


def test_missing_command_is_one_clear_line(tmp_path):
    r = subprocess.run(CLI + ["trace", "-o", str(tmp_path / "x"), "--", "/nonexistent/program"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "nonexistent" in r.stderr


def test_non_root_user_gets_the_user_tier(can_trace, cbin, tmp_path):
    import shutil
    if not shutil.which("setpriv"):
        pytest.skip("setpriv is not installed")
    import tempfile
    work = Path(tempfile.mkdtemp(prefix="pf-nobody-", dir="/tmp"))
    os.chmod(work, 0o777)
    rec = work / "nobody.pfrec"
    exe = work / "touch_one"
    shutil.copy(cbin("touch_one"), exe)
    r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *CLI, "trace", "-q",
                        "--json", "--summary", "-", "-o", str(rec), "--", str(exe)],
                       capture_output=True, text=True, timeout=120, cwd=work)
    if "perf_event_paranoid" in r.stderr:
        pytest.skip(f"unprivileged perf is off here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout[r.stdout.index("{"):])
    assert s["tier"] == "user" and s["faults"] > 0
    assert any("run as root" in n for n in s["notes"])
    shutil.rmtree(work)


def test_unwritable_output_is_one_clear_line(tmp_path):
    r = subprocess.run(CLI + ["trace", "-o", "/proc/nope/x.pfrec", "--", "true"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "-o FILE" in r.stderr


def test_damaged_and_foreign_recordings_are_one_clear_line(tmp_path):
    bad = tmp_path / "bad.pfrec"
    bad.write_bytes(b"not a recording at all")
    part = tmp_path / "part.pfrec"
    part.write_bytes(b"PFREC\x003\n" + b"\0" * 64)   # the magic, then no HEAD chunk
    old = tmp_path / "old.pfrec"
    old.write_bytes(b"PFREC\x002\n" + b"\0" * 64)
    for path, words in ((bad, "not a pagefault recording"), (part, "head of the recording is damaged"),
                        (old, "format-2 recording"), (tmp_path / "none", "no recording"), (tmp_path, "directory")):
        r = subprocess.run(CLI + ["report", str(path)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "Traceback" not in r.stderr and words in r.stderr, r.stderr
        assert r.stderr.strip().count("\n") == 0


def test_report_events_prints_every_sample_decoded(can_trace, cbin, tmp_path):
    """report --events: one line per sample, in time order, with the fault's address and the pagemap PFN's
    allocation among them, and the tracepoint's ip named as kallsyms names it."""
    meta, rec, out = run_traced(tmp_path, [cbin("touch_one"), "0x100"])
    m = re.search(r"vaddr=0x([0-9a-f]+) offset=0x100 pagemap=0x([0-9a-f]+) pfn=0x([0-9a-f]+)", out)
    vaddr, pfn = int(m.group(1), 16), int(m.group(3), 16)
    r = subprocess.run(CLI + ["report", "--events", str(tmp_path / "t.pfrec")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    stream = parse_stream(rec.data, meta["sample_type"])
    assert len(lines) == len(stream.samples) > 0
    times = [float(line.split("]", 1)[1].split(":", 1)[0]) for line in lines]
    assert times == sorted(times)

    def values(line):   # the line's field=value pairs (hex zero-padded to the column's widest value)
        return {k: int(v, 0) for k, v in (part.split("=", 1) for part in line.split() if "=" in part)}
    fault = [line for line in lines if "exceptions:page_fault_user:" in line and values(line)["address"] == vaddr + 0x100]
    assert len(fault) == 1 and values(fault[0])["error_code"] == 0x6
    alloc = [line for line in lines if "kmem:mm_page_alloc:" in line and values(line)["pfn"] == pfn]
    assert len(alloc) == 1
    ksyms = KernelSymbols.load()
    ip = int(alloc[0].split(": ", 2)[2].split()[0], 16)
    assert alloc[0].split(": ", 2)[2].split()[1] == ksyms.describe(ip)


def test_faults_taken_in_kernel_mode_are_counted_classed_and_reconciled(can_trace, cbin, tmp_path):
    """read() into a fresh buffer: the kernel's copy faults on every page, in kernel mode. They are the
    program's faults (the kernel charges them to it), so they are counted, classed, shown as a mode, and the
    total equals the kernel's own count (issue 26: `sort` showed 43,831 where perf stat counted 93,736)."""
    from pagefault.journey.fault_classes import FaultClass
    from pagefault.journey.trace_summary import classify_recording
    out = tmp_path / "out"
    with open(out, "w") as f:
        record(TraceOptions(argv=[str(cbin("read_into_fresh")), str(tmp_path)], output=tmp_path / "t.pfrec",
                            target_stdout=f.fileno()))
    m = re.match(r"buffer start=0x([0-9a-f]+) pages=(\d+)", out.read_text())
    start, pages = int(m.group(1), 16), int(m.group(2))
    rec = load_recording(tmp_path / "t.pfrec")
    s = summarize(rec)
    assert s.kernel_mode_faults >= pages and s.by_kind["write, not-present page, in kernel mode"] >= pages
    addresses, _tids, _times, result = classify_recording(rec)
    in_buffer = [c for a, c in zip(addresses.tolist(), result.classes) if start <= a < start + pages * 4096]
    assert in_buffer == [FaultClass.ANON_NEW] * pages
    assert s.kernel_counts["page-faults"] == s.faults, s.notes


def test_the_counted_summary_has_the_kernel_mode_faults_and_the_kernels_total(can_trace, cbin, tmp_path):
    """trace without -o (counted in the kernel) counts read_into_fresh's kernel-mode faults too: the buffer's
    pages as kernel-mode writes, and a total equal to the kernel's own page-faults count for the program."""
    if os.geteuid() != 0:
        pytest.skip("counting in the kernel needs root")
    r = subprocess.run(CLI + ["trace", "-q", "--json", "--summary", str(tmp_path / "s.json"), "--",
                              str(cbin("read_into_fresh")), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    pages = int(re.search(r"pages=(\d+)", r.stdout).group(1))
    s = json.loads((tmp_path / "s.json").read_text())
    if s["tier"] != "bpf-counts":
        pytest.skip(f"the faults were not counted in the kernel here: {s['notes'][-1]}")
    assert s["kernel_mode_faults"] >= pages and s["by_kind"]["write, not-present page, in kernel mode"] >= pages
    if not counts_from_exec(s):
        pytest.skip("without sched_prepare_exec (before 6.10) exec's own faults on the new image are not counted")
    assert s["kernel_counts"]["page-faults"] == s["faults"], s["notes"]


@pytest.mark.parametrize("mode", [[], ["-o", "REC"], ["--json"]], ids=["counted", "recorded", "json"])
def test_the_summary_never_mixes_with_the_programs_output(can_trace, tmp_path, mode):
    """`pagefault trace -- xz -c f > f.xz` appended the tables to the compressed data: stdout belongs to the
    traced program, the summary goes to stderr (as perf stat's does), or to --summary FILE."""
    program = [sys.executable, "-c", "import sys; sys.stdout.buffer.write(bytes(range(256)) * 64)"]
    args = [a.replace("REC", str(tmp_path / "t.pfrec")) for a in mode]
    r = subprocess.run(CLI + ["trace", "-q", *args, "--", *program], capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout == bytes(range(256)) * 64
    assert b"page faults" in r.stderr or b'"faults"' in r.stderr
    args = [a.replace("t.pfrec", "t2.pfrec") for a in args]
    r = subprocess.run(CLI + ["trace", "-q", *args, "--summary", str(tmp_path / "s.txt"), "--", *program],
                       capture_output=True, timeout=300)
    assert r.returncode == 0 and r.stdout == bytes(range(256)) * 64
    written = (tmp_path / "s.txt").read_text()
    assert ("page faults" in written) or json.loads(written)["faults"] > 0


def test_pprof_from_the_cli_for_trace_and_report(can_trace, cbin, tmp_path):
    import shutil
    go = shutil.which("go")
    if go is None:
        pytest.skip("go tool pprof is not installed (bash scripts/setup.sh test does it)")
    rec = tmp_path / "t.pfrec"
    r = subprocess.run(CLI + ["trace", "-q", "-g", "--json", "--summary", str(tmp_path / "s.json"), "--pprof",
                              str(tmp_path / "t.pb.gz"), "-o", str(rec), "--", str(cbin("touch_one"))],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    faults = json.loads((tmp_path / "s.json").read_text())["faults"]
    r = subprocess.run(CLI + ["report", "--format", "pprof", "-o", str(tmp_path / "r.pb.gz"), str(rec)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for profile in ("t.pb.gz", "r.pb.gz"):
        top = subprocess.run([go, "tool", "pprof", "-top", str(tmp_path / profile)], capture_output=True, text=True,
                             timeout=120, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
        assert top.returncode == 0 and f"of {faults} total" in top.stdout, top.stdout + top.stderr
    r = subprocess.run(CLI + ["report", "--format", "pprof", str(rec)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "-o FILE" in r.stderr
