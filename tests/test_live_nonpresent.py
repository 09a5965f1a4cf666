"""Entries that are not plain present pages, read live from the kernel and decoded as what they are.

A child process makes four kinds of page in one mapping: present, PROT_NONE, a guard region
(a PTE marker, Linux 6.13+) and, where swap can be turned on, a page swapped out. The compiled walk reads
each raw PTE through the direct map; pagemap says what the kernel thinks of each page. The
decoders must agree with both.
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from pagefault.kernel import facts

from live_helpers.nonpresent import check_entry_kinds, read_entry_kinds

@pytest.fixture(scope="module")
def direct_map_base(can_trace):
    """The direct map's base, derived by one bpf-tier journey (it is fixed for the boot)."""
    from pagefault.capture.journey_capture import LiveJourney, walk_engine_problem
    problem = walk_engine_problem()
    if problem:
        pytest.skip(problem)
    from pagefault.evidence import ExerciseOptions
    live = LiveJourney(ExerciseOptions(), tier="bpf")
    try:
        ev = live.run_all()
    finally:
        live.close()
    if ev.bpf is None:
        pytest.skip(f"the bpf tier read no walk: {ev.unavailable.get('bpf')}")
    return ev.bpf.direct_map_base


@pytest.fixture(scope="module")
def swap_on():
    """A small swap file for the test's life, if this machine lets us turn one on."""
    if os.geteuid() != 0 or not shutil.which("mkswap") and not Path("/sbin/mkswap").exists():
        yield False
        return
    d = tempfile.mkdtemp(prefix="pagefault-swaptest-", dir="/var/tmp")
    path = Path(d) / "swap"
    on = False
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", "count=32"], check=True, capture_output=True)
        path.chmod(0o600)
        subprocess.run(["/sbin/mkswap", str(path)], check=True, capture_output=True)
        on = subprocess.run(["/sbin/swapon", str(path)], capture_output=True).returncode == 0
        yield on
    finally:
        if on:
            subprocess.run(["/sbin/swapoff", str(path)], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def test_prot_none_guard_and_swap_entries_decode_as_the_kernel_keeps_them(direct_map_base, swap_on):
    version = facts.kernel_version()
    levels, _why = facts.paging_levels()
    seen = read_entry_kinds(direct_map_base, levels)
    problems, checked = check_entry_kinds(seen, version, levels, facts.swap_config())
    assert not problems, problems
    expected = {"present", "PROT_NONE"} | ({"guard marker"} if version >= (6, 13) else set()) \
        | ({"swap"} if swap_on else set())
    assert expected <= set(checked), checked
