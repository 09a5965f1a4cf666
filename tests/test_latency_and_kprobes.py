"""The kprobe tier's pieces that run anywhere: the latency summary, the kprobe line parser, the refusal."""

import subprocess
import sys

import numpy as np
import pytest

from pagefault.capture.kprobes import kprobe_support, parse_fault_lines
from pagefault.evidence import MapsLine
from pagefault.journey.build import decode_vm_fault
from pagefault.journey.latency import LATENCY_DTYPE, summarize_latency, vm_fault_names

REASONS = {0x4: "VM_FAULT_MAJOR", 0x2: "VM_FAULT_SIGBUS", 0x400: "VM_FAULT_RETRY", 0x100: "VM_FAULT_NOPAGE"}


def test_latency_summary_groups_by_outcome_and_mapping_with_hand_checked_percentiles():
    anon = MapsLine(0x1000, 0x9000, "rw-p", 0, "00:00", 0, "")
    lib = MapsLine(0x10000, 0x20000, "r-xp", 0, "08:01", 42, "/usr/lib/libc.so.6")
    rows = [(7, 0x1000 + 0x1000 * i, 0, 0, d) for i, d in enumerate([1000, 2000, 3000, 4000, 100_000])]
    rows += [(7, 0x10000, 0x104, 1, 5000)]   # a file fault that returned NOPAGE|MAJOR through handler 1
    summary = summarize_latency(np.array(rows, dtype=LATENCY_DTYPE), ["do_anonymous_page", "filemap_fault"],
                                REASONS, {7: [anon, lib]})
    assert summary.faults == 6
    first = summary.by_outcome[0]
    assert first.key == "do_anonymous_page → 0" and first.count == 5
    # numpy's linear percentiles of 1000, 2000, 3000, 4000, 100000: p50 = 3000, p90 = 4000 + 0.6 × 96000
    assert first.percentiles_ns[50] == 3000 and first.percentiles_ns[90] == pytest.approx(61600)
    assert first.max_ns == 100_000 and first.total_ns == 110_000
    # log2 buckets: 1000 → 512, 2000/3000 → 1024... 2048, 4000 → 2048, 100000 → 65536
    assert first.histogram == [(512, 1), (1024, 1), (2048, 2), (65536, 1)]
    assert summary.by_outcome[1].key == "filemap_fault → VM_FAULT_MAJOR|VM_FAULT_NOPAGE"
    assert {g.key: g.count for g in summary.by_mapping} == {"[anon rw-p]": 5, "/usr/lib/libc.so.6": 1}


def test_no_faults_is_said_not_divided_by():
    s = summarize_latency(np.array([], dtype=LATENCY_DTYPE), [], {}, {})
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
