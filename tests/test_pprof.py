"""pprof export read by a real consumer: `go tool pprof` (Debian's golang-go) sees every fault, under its
class, process and mode labels (issue 29)."""

import gzip
import os
import re
import shutil
import subprocess
import sys
from collections import Counter

import pytest

from pagefault.journey.fault_stacks import TRUNCATED, FaultSample
from pagefault.views.pprof import _mapping_of, _varint, to_pprof

GO = shutil.which("go")
# scripts/test.sh installs golang-go and sets PAGEFAULT_TESTS_NEED_GO: there a missing go fails these tests
# instead of skipping them, so the suite cannot pass without the real consumer having read the export
NEED_GO = bool(os.environ.get("PAGEFAULT_TESTS_NEED_GO"))
needs_go = pytest.mark.skipif(GO is None and not NEED_GO,
                              reason="go tool pprof is not installed (bash scripts/setup.sh test does it)")


def test_varints_are_protobufs():
    assert _varint(0) == b"\x00" and _varint(1) == b"\x01" and _varint(300) == b"\xac\x02"
    assert _varint(-1) == b"\xff" * 9 + b"\x01"


def test_the_mapping_label_is_the_leaf_user_frames_object():
    assert _mapping_of(("COW copy", "prog:main", "libc.so.6:memset", "exc_page_fault_[k]")) == "libc.so.6"
    assert _mapping_of(("zero page", TRUNCATED, "[heap]+0x10")) == "[heap]"
    assert _mapping_of(("anonymous new page", "copy_to_user_[k]")) == "[kernel]"


def _pprof(args: list[str], path) -> str:
    assert GO is not None, "go tool pprof is not installed: apt-get install golang-go (scripts/setup.sh test)"
    r = subprocess.run([GO, "tool", "pprof", *args, str(path)], capture_output=True, text=True, timeout=120,
                       env={"HOME": str(path.parent), "PATH": "/usr/bin:/bin", "GOCACHE": str(path.parent / "gocache")})
    assert r.returncode == 0, r.stderr
    return r.stdout


@needs_go
def test_go_tool_pprof_reads_hand_made_samples(tmp_path):
    samples = Counter({FaultSample(("anonymous new page", "prog:main", "asm_exc_page_fault_[k]"), "anonymous new page",
                                   42, "prog", False): 7,
                       FaultSample(("COW copy", "prog:main", "libc.so.6:memset"), "COW copy", 43, "child", False): 5,
                       FaultSample(("anonymous new page", "copy_to_user_[k]"), "anonymous new page", 42, "prog", True): 3})
    path = tmp_path / "f.pb.gz"
    path.write_bytes(to_pprof(samples))
    assert gzip.decompress(path.read_bytes())
    top = _pprof(["-top", "-nodecount=100"], path)
    assert re.search(r"of 15 total", top), top
    assert re.search(r"^\s*5\s.*libc\.so\.6:memset", top, re.M), top     # flat: the leaf frame's own faults
    tags = _pprof(["-tags"], path)
    for word in ("class", "anonymous new page", "COW copy", "comm", "child", "mode", "kernel", "pid", "43"):
        assert word in tags, (word, tags)


@needs_go
@pytest.mark.live
def test_a_recordings_profile_totals_the_summarys_faults(can_trace, cbin, tmp_path):
    from pagefault.capture.recording import load_recording
    from pagefault.capture.tracer import TraceOptions, record
    from pagefault.journey.fault_stacks import fault_samples
    from pagefault.journey.trace_summary import summarize
    with open(tmp_path / "out", "w") as f:
        record(TraceOptions(argv=[str(cbin("fault_kinds")), str(tmp_path)], output=tmp_path / "t.pfrec",
                            target_stdout=f.fileno(), callchain=True))
    rec = load_recording(tmp_path / "t.pfrec")
    samples, chains = fault_samples(rec)
    assert chains
    path = tmp_path / "f.pb.gz"
    path.write_bytes(to_pprof(samples))
    total = summarize(rec).faults
    assert sum(samples.values()) == total
    assert re.search(rf"of {total} total", _pprof(["-top"], path))
    # the fork child's faults carry their own pid
    pids = {s.pid for s in samples}
    assert len(pids) >= 2 and f"{min(pids)}" in _pprof(["-tags"], path)


def test_the_traps_entry_frames_are_not_every_samples_leaf():
    from pagefault.views.pprof import _profile_frames
    user = ("COW copy", "prog:main", "asm_exc_page_fault_[k]", "exc_page_fault_[k]")
    assert _profile_frames(user) == ("COW copy", "prog:main")
    kernel = ("anonymous new page", "__x64_sys_read_[k]", "_copy_to_user_[k]", "asm_exc_page_fault_[k]",
              "exc_page_fault_[k]")
    assert _profile_frames(kernel)[-1] == "_copy_to_user_[k]"
    assert _profile_frames(("zero page", "exc_page_fault_[k]")) == ("zero page",)


@needs_go
@pytest.mark.live
def test_trace_pprof_totals_equal_the_summarys(can_trace, cbin, tmp_path):
    """`trace --pprof F -- CMD` as a user runs it (the faults counted in the kernel, no recording): go tool
    pprof's total is the "page faults" of the summary on standard error, and the program's own output alone
    is on standard output."""
    path = tmp_path / "f.pb.gz"
    r = subprocess.run([sys.executable, "-m", "pagefault", "trace", "-q", "--pprof", str(path), "--",
                        str(cbin("fault_kinds")), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    faults = int(re.search(r"page faults: (\d+)", r.stderr).group(1))
    assert faults > 0 and "page faults" not in r.stdout
    top = _pprof(["-top"], path)
    assert re.search(rf"Total samples = {faults}\b", top) and re.search(rf"of {faults} total", top), (faults, top)
    # every process's faults, the fork child's too: the pid tag's total is the summary's
    assert f"pid: Total {faults}.0" in _pprof(["-tags"], path)
