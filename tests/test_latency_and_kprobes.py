"""The kprobe tier's pieces that run anywhere: the latency summary, the kprobe line parser, the refusal."""

import subprocess
import sys

import pytest

from pagefault.capture.kprobes import kprobe_support
from pagefault.evidence import MapsLine
from pagefault.journey.build import decode_vm_fault
from pagefault.journey.latency import summarize_latency, vm_fault_names

REASONS = {0x4: "VM_FAULT_MAJOR", 0x2: "VM_FAULT_SIGBUS", 0x400: "VM_FAULT_RETRY", 0x100: "VM_FAULT_NOPAGE"}


# bpftrace 0.17's printed maps, in the form seen here: one hist() per (handler code, return value,
# vm_start), its max and sum beside it. Outcome (0, 0) spans two VMAs; the VMA at 0x10000 has gone.
PRINTED = """
@lat[0, 0, 4096]:
[1K, 2K)               8 |@@@@@@@@@@@@@@@@@@@@@@@@@@@                         |
[2K, 4K)              15 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|
[4K, 8K)               1 |@@@                                                 |

@lat[0, 0, 36864]:
[1K, 2K)               2 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|

@lat[-1, 260, 65536]:
[32K, 64K)             2 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|

@max[-1, 260, 65536]: 50000
@max[0, 0, 36864]: 1500
@max[0, 0, 4096]: 4728
@sum[-1, 260, 65536]: 90000
@sum[0, 0, 36864]: 2600
@sum[0, 0, 4096]: 60000
"""


def test_kernel_histograms_parse_and_summarise_with_hand_checked_percentiles():
    from pagefault.capture.latency import parse_histograms
    by_outcome, by_vma = parse_histograms(PRINTED)
    # the outcome adds its two VMAs' buckets and sums; its maximum is the larger
    assert by_outcome[(0, 0)].buckets == [(1024, 10), (2048, 15), (4096, 1)]
    assert (by_outcome[(0, 0)].max_ns, by_outcome[(0, 0)].total_ns) == (4728, 62600)
    assert by_vma[4096].buckets == [(1024, 8), (2048, 15), (4096, 1)] and by_vma[4096].max_ns == 4728
    assert (by_vma[36864].buckets, by_vma[36864].total_ns) == ([(1024, 2)], 2600)
    assert by_outcome[(-1, 260)].buckets == [(32768, 2)] and by_vma[65536].buckets == [(32768, 2)]
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


def test_latency_script_probes_only_the_outcome_handlers_with_either_hook():
    from pagefault.capture.latency import OUTCOME_HANDLERS, FunctionProbe, latency_script
    assert "__handle_mm_fault" not in OUTCOME_HANDLERS and "handle_pte_fault" not in OUTCOME_HANDLERS
    fentry = latency_script([42], ["do_anonymous_page", "do_wp_page"], 7, FunctionProbe.FENTRY)
    kprobe = latency_script([42], ["do_anonymous_page", "do_wp_page"], 7, FunctionProbe.KPROBE)
    assert "kfunc:handle_mm_fault { if (pid == 42 || @pids[pid]) { @t[tid] = (nsecs, (uint64)args->vma->vm_start); }" \
        in fentry
    # one program on the entry (the arming inside it): each program on it runs on every fault of the machine
    assert fentry.count("kfunc:handle_mm_fault ") == 1 and kprobe.count("kprobe:handle_mm_fault ") == 1
    assert 'else if (pid == 7 && @armed == 0) { printf("armed\\n")' in fentry
    assert "kfunc:do_wp_page /pid == 42 || @pids[pid]/ { @h[tid] = 2; }" in fentry and "kprobe:" not in fentry
    # every return clears the handler, timed or not: a fault begun before the probes leaves none behind
    assert fentry.split("kretfunc:handle_mm_fault")[1].split("\n")[0].endswith("} delete(@h[tid]); }")
    # both hooks read the VMA at the entry, where the fault holds it (a kretprobe cannot read the arguments;
    # at fexit a retried fault has dropped its lock): the return only reads what the entry kept
    assert "@t[tid] = (nsecs, (uint64)((struct vm_area_struct *)arg0)->vm_start);" in kprobe and "kfunc" not in kprobe
    for script in (fentry, kprobe):
        returned = script.split("retfunc:handle_mm_fault" if script is fentry else "kretprobe:handle_mm_fault")[1]
        assert "vm_start" not in returned.split("\n")[0] and "$v = $e.1;" in returned
    for script in (fentry, kprobe):
        assert script.count("hist(") == 1 and "@lat[$h, $r, $v]" in script


def test_no_faults_is_said_not_divided_by():
    s = summarize_latency({}, {}, [], {}, [])
    assert s.faults == 0 and s.notes and not s.by_outcome


def test_vm_fault_bits_are_named_and_zero_means_handled():
    assert vm_fault_names(0, REASONS) == "0"
    assert decode_vm_fault(0, REASONS)[0].startswith("0 (the fault was handled")
    assert decode_vm_fault(0x404, REASONS) == ["VM_FAULT_MAJOR", "VM_FAULT_RETRY"]
    assert decode_vm_fault(0x8000, REASONS) == ["0x8000 (not named by the enum)"]


def test_latency_refuses_with_the_reason_where_kprobes_are_missing():
    ok, why = kprobe_support()
    if ok:
        pytest.skip("this kernel has kprobes: the kernel matrix runs --latency for real")
    r = subprocess.run([sys.executable, "-m", "pagefault", "trace", "--latency", "--", "/bin/true"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "kprobes" in r.stderr and "fix" in r.stderr and "Traceback" not in r.stderr
