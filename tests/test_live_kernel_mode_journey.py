"""Live: `journey --kind kernel` picks a fault taken in kernel mode (issue 26, item 1).

tests/c/read_syscall.c read()s a file into a fresh anonymous buffer it never touches itself: every fault on
the buffer is the kernel's copy to user memory, inside the read system call. The journey must pick one of
them, say it was taken in kernel mode and in read, with the error code's user bit clear; a user-mode kind
must pick no such fault."""

import json
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.live
CLI = [sys.executable, "-m", "pagefault"]
LINE = re.compile(r"^buffer start=0x([0-9a-f]+) pages=(\d+)")
X86_PF_USER = 0x4


@pytest.fixture(scope="module")
def exe(can_trace, cbin):
    from pagefault.capture.journey_capture import walk_engine_problem
    from pagefault.core.journey import machine_interface
    problem = walk_engine_problem()
    if problem:
        pytest.skip(problem)
    if not machine_interface().syndrome_traced:
        pytest.skip("no exceptions: tracepoints on this architecture (the refusal is tested in test_kernel_mode_kind)")
    return cbin("read_syscall")


def journey(tmp_path, exe, kind):
    out = tmp_path / f"{kind}.json"
    r = subprocess.run(CLI + ["journey", "-q", "--format", "json", "-o", str(out), "--kind", kind, "--", str(exe),
                              str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    m = next(m for m in (LINE.match(line) for line in r.stdout.splitlines()) if m)
    start, pages = int(m.group(1), 16), int(m.group(2))
    j = json.loads(out.read_text())
    return {v["label"]: v for s in j["steps"] for v in s["values"]}, (start, start + pages * 4096)


def test_kind_kernel_picks_the_copy_into_the_fresh_buffer_inside_read(exe, tmp_path):
    values, (lo, hi) = journey(tmp_path, exe, "kernel")
    address = values["faulting address (CR2)"]["value"]
    assert lo <= address < hi, (hex(address), hex(lo), hex(hi))
    code = values["error code"]["value"]
    assert not code & X86_PF_USER and code & 0x2, hex(code)    # kernel mode, a write (the copy into the buffer)
    assert values["taken in"]["value"].startswith("kernel mode"), values["taken in"]
    assert "page_fault_kernel" in values["taken in"]["source"]
    syscall = values["system call"]
    assert syscall["provenance"] == "observed" and syscall["value"].startswith("read (number 0)"), syscall
    assert values["kind checked afterwards"]["value"] is True
    assert values["PTE's PFN is pagemap's"]["value"] is True


def test_a_user_mode_kind_picks_no_kernel_mode_fault(exe, tmp_path):
    values, (lo, hi) = journey(tmp_path, exe, "anon")
    assert values["error code"]["value"] & X86_PF_USER
    assert values["taken in"]["value"].startswith("user mode")
    assert not lo <= values["faulting address (CR2)"]["value"] < hi     # the program never touches the buffer
