"""The kprobe tier's pieces that run anywhere: the latency summary, the kprobe line parser, the refusal."""

import subprocess
import sys

import pytest

from pagefault.capture.kprobes import kprobe_support, parse_fault_lines
from pagefault.evidence import MapsLine
from pagefault.journey.build import decode_vm_fault
from pagefault.journey.latency import summarize_latency, vm_fault_names

REASONS = {0x4: "VM_FAULT_MAJOR", 0x2: "VM_FAULT_SIGBUS", 0x400: "VM_FAULT_RETRY", 0x100: "VM_FAULT_NOPAGE"}


# bpftrace 0.17's printed maps, as seen here (a hist() and its max and sum beside it)
PRINTED = """
@lat[0, 0]:
[1K, 2K)               8 |@@@@@@@@@@@@@@@@@@@@@@@@@@@                         |
[2K, 4K)              15 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|
[4K, 8K)               1 |@@@                                                 |

@lat[-1, 260]:
[32K, 64K)             2 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|

@max[-1, 260]: 50000
@max[0, 0]: 4728
@sum[-1, 260]: 90000
@sum[0, 0]: 60000
@vlat[4096]:
[1K, 2K)               8 |@@@@@@@@@@@@@@@@@@@@@@@@@@@                         |
[2K, 4K)              15 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|
[4K, 8K)               1 |@@@                                                 |

@vlat[65536]:
[32K, 64K)             2 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|

@vmax[4096]: 4728
@vsum[4096]: 60000
"""


def test_kernel_histograms_parse_and_summarise_with_hand_checked_percentiles():
    from pagefault.capture.latency import parse_histograms
    by_outcome, by_vma = parse_histograms(PRINTED)
    assert by_outcome[(0, 0)].buckets == [(1024, 8), (2048, 15), (4096, 1)]
    assert (by_outcome[(0, 0)].max_ns, by_outcome[(0, 0)].total_ns) == (4728, 60000)
    assert by_outcome[(-1, 260)].buckets == [(32768, 2)] and by_vma[65536].buckets == [(32768, 2)]
    anon = MapsLine(0x1000, 0x9000, "rw-p", 0, "00:00", 0, "")
    summary = summarize_latency(by_outcome, by_vma, ["do_anonymous_page"], REASONS, [anon])
    assert summary.faults == 26
    first = summary.by_outcome[0]
    assert first.key == "do_anonymous_page → 0" and first.count == 24
    # 24 faults: the 12th (p50) and the 22nd (p90) are in [2K, 4K): at most 4096 ns; the 24th (p99) in
    # [4K, 8K), whose bound 8192 the kernel's maximum 4728 lowers
    assert first.percentiles_ns == {50: 4096.0, 90: 4096.0, 99: 4728.0}
    assert summary.by_outcome[1].key == "(no probed handler) → VM_FAULT_MAJOR|VM_FAULT_NOPAGE"
    assert {g.key: g.count for g in summary.by_mapping} == {"[anon rw-p]": 24,
                                                           "(the VMA at 0x10000, gone before maps was read)": 2}


def test_no_faults_is_said_not_divided_by():
    s = summarize_latency({}, {}, [], {}, [])
    assert s.faults == 0 and s.notes and not s.by_outcome


def test_vm_fault_bits_are_named_and_zero_means_handled():
    assert vm_fault_names(0, REASONS) == "0"
    assert decode_vm_fault(0, REASONS)[0].startswith("0 (the fault was handled")
    assert decode_vm_fault(0x404, REASONS) == ["VM_FAULT_MAJOR", "VM_FAULT_RETRY"]
    assert decode_vm_fault(0x8000, REASONS) == ["0x8000 (not named by the enum)"]


def test_kprobe_lines_parse_into_the_evidence():
    lines = ["kprobe handle_mm_fault 0xffff888100000000 0x7f0000000100 0x1255",
             "kprobe vma 0x7f0000000000 0x7f0000001000 0x100073 0x8000000000000025 0x0 0x0",
             "handler do_anonymous_page 1200", "kretprobe handle_mm_fault 0x0 5300", "before PTE 0"]
    kp = parse_fault_lines(lines, {"do_read_fault": "inlined"})
    assert (kp.address, kp.flags, kp.retval, kp.duration_ns) == (0x7F0000000100, 0x1255, 0, 5300)
    assert kp.vma["vm_flags"] == 0x100073 and kp.handlers == [("do_anonymous_page", 1200)]
    assert parse_fault_lines(["before PTE 0"], {}) is None


def test_latency_refuses_with_the_reason_where_kprobes_are_missing():
    ok, why = kprobe_support()
    if ok:
        pytest.skip("this kernel has kprobes: the kernel matrix runs --latency for real")
    r = subprocess.run([sys.executable, "-m", "pagefault", "trace", "--latency", "--", "/bin/true"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "kprobes" in r.stderr and "fix" in r.stderr and "Traceback" not in r.stderr
