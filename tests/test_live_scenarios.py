"""Live: every scenario run on the real kernel and in the simulator, and the two must agree.

Besides the agreement, each test checks what the kernel itself did against the program: the fault
address is the region plus the offset written, the PFN mm_page_alloc reported is the PFN pagemap
shows, and a SIGSEGV's si_addr is the address the program touched.
"""

import json
import os
import subprocess
import sys

import pytest

from pagefault.decode.pagemap import PM_PFN_MASK
from pagefault.core import check_scenario
from pagefault.model.scenarios import SCENARIOS, find_scenario

pytestmark = pytest.mark.live
CLI = [sys.executable, "-m", "pagefault"]


@pytest.fixture(scope="module")
def results(can_trace):
    return {s.name: check_scenario(s) for s in SCENARIOS}


@pytest.mark.parametrize("name", [s.name for s in SCENARIOS])
def test_model_and_kernel_agree(results, name):
    model, live, agreement, ev, _run = results[name]
    assert ev.lost_events == 0
    assert agreement.agree, "\n".join(agreement.lines)
    assert [r.key() for r in live.rows] == [r.key() for r in model.rows]
    assert live.final_states == model.final_states and len(live.final_states) == ev.snapshots[-1].pages


def _faults(ev, op):
    snap = ev.snapshots[op]
    prev = ev.snapshots[op - 1].time_ns if op else ev.start_ns
    return [e for e in ev.events if e.name == "exceptions:page_fault_user" and prev < e.time_ns <= snap.time_ns
            and snap.region <= e.fields["address"] < snap.region + snap.pages * 4096]


def _allocs(ev, op, pid, order=0):
    snap = ev.snapshots[op]
    prev = ev.snapshots[op - 1].time_ns if op else ev.start_ns
    return [e.fields["pfn"] for e in ev.events if e.name == "kmem:mm_page_alloc" and prev < e.time_ns <= snap.time_ns
            and e.pid == pid and e.fields["order"] == order]


def test_first_touch_address_and_pfn(results):
    _m, _l, _a, ev, _r = results["first-touch"]
    (fault,) = _faults(ev, 1)
    assert fault.fields["address"] == ev.snapshots[1].region + 0x100
    pfn = ev.snapshots[1].pagemaps[ev.pid][0] & PM_PFN_MASK
    assert pfn and pfn in _allocs(ev, 1, ev.pid)


def test_read_then_write_maps_the_zero_page_then_a_new_frame(results):
    _m, _l, _a, ev, _r = results["read-then-write"]
    zero = ev.snapshots[1].pagemaps[ev.pid][0] & PM_PFN_MASK
    assert ev.snapshots[1].kpageflags[zero] >> 24 & 1                     # KPF_ZERO_PAGE
    written = ev.snapshots[2].pagemaps[ev.pid][0] & PM_PFN_MASK
    assert written != zero and written in _allocs(ev, 2, ev.pid)


def test_fork_child_copies_and_parent_keeps_its_frame(results):
    _m, _l, _a, ev, _r = results["fork-then-write"]
    original = ev.snapshots[1].pagemaps[ev.pid][0] & PM_PFN_MASK
    child_copy = ev.snapshots[4].pagemaps[ev.child_pid][0] & PM_PFN_MASK
    assert child_copy != original and child_copy in _allocs(ev, 4, ev.child_pid)
    assert ev.snapshots[5].pagemaps[ev.pid][0] & PM_PFN_MASK == original
    # page 1 is still shared by both: the same frame in both pagemaps
    assert ev.snapshots[5].pagemaps[ev.pid][1] & PM_PFN_MASK == ev.snapshots[5].pagemaps[ev.child_pid][1] & PM_PFN_MASK


def test_huge_page_is_one_order_9_allocation_behind_512_entries(results):
    _m, live, _a, ev, _r = results["huge-page"]
    if ev.settings.thp_enabled == "never":
        pytest.skip("THP is disabled on this machine (the model agreed on a small page)")
    entries = ev.snapshots[2].pagemaps[ev.pid]
    head = entries[0] & PM_PFN_MASK
    assert head in _allocs(ev, 2, ev.pid, order=9)
    assert [e & PM_PFN_MASK for e in entries] == list(range(head, head + 512))


def test_sigsegv_addresses_are_the_ones_touched(results):
    for name, op, offset, code in (("mprotect-violation", 3, 0x100, 2), ("unmapped-access", 2, 0x1000, 1)):
        _m, _l, _a, ev, _r = results[name]
        snap = ev.snapshots[op]
        assert (snap.segv_code, snap.segv_addr) == (code, snap.region + offset)
        assert [f.fields["address"] for f in _faults(ev, op)] == [snap.region + offset]


def test_scenario_cli_live_and_model(can_trace, tmp_path):
    out = tmp_path / "s.json"
    r = subprocess.run(CLI + ["journey", "--scenario", "read-then-write", "--no-pause", "-q", "--format", "json",
                              "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    j = json.loads(out.read_text())
    verdict = j["steps"][-1]["values"][-1]
    assert verdict["label"] == "model agrees with the kernel" and verdict["value"] is True
    assert {v["provenance"] for s in j["steps"][1:-1] for v in s["values"]} <= {"observed", "derived", "unavailable"}


def test_without_root_the_simulator_answers(tmp_path):
    import shutil
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root to drop to nobody with setpriv")
    os.chmod(tmp_path, 0o777)
    r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *CLI, "journey",
                        "--scenario", "fork-then-write", "--no-pause", "--format", "json", "-q"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "HOME": str(tmp_path)})
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "needs root" in r.stderr and "fix: sudo" in r.stderr
    j = json.loads(r.stdout)
    assert j["tier"] == "model"
    assert {v["provenance"] for s in j["steps"] for v in s["values"]} <= {"modelled", "unavailable"}
    assert find_scenario("fork-then-write").ops[-1] in j["steps"][-1]["title"]
