"""Perfetto (Chrome JSON) traces: a live journey's timeline and a recording's samples, checked against the run."""

import json
import subprocess
import sys

import pytest

from pagefault.journey.model_journey import build_model_journey
from pagefault.model.scenarios import find_scenario, run_in_model
from pagefault.views.perfetto import PerfettoError, journey_trace

CLI = [sys.executable, "-m", "pagefault"]


def test_a_model_journey_has_no_clock_and_says_what_to_run():
    with pytest.raises(PerfettoError, match="sudo pagefault journey"):
        journey_trace(build_model_journey(run_in_model(find_scenario("first-touch"))))


@pytest.mark.live
def test_scenario_trace_orders_the_faults_between_the_pauses(can_trace, tmp_path):
    out = tmp_path / "s.json"
    r = subprocess.run(CLI + ["journey", "--scenario", "read-then-write", "-q", "--format", "perfetto", "-o", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    events = [e for e in json.loads(out.read_text())["traceEvents"] if e["ph"] == "i"]
    names = [e["name"].split(":")[0] if e["name"].startswith("program") else e["name"].split(", ")[-1] for e in events]
    assert names == ["program paused after operation 0", "error code 0x4", "program paused after operation 1",
                     "error code 0x7", "program paused after operation 2"]
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)


@pytest.mark.live
def test_recording_trace_has_one_event_per_sample_with_its_fields(can_trace, cbin, tmp_path):
    rec, out = tmp_path / "t.pfrec", tmp_path / "t.json"
    exe = cbin("touch_one")
    r = subprocess.run(CLI + ["trace", "-q", "--no-summary", "-o", str(rec), "--", str(exe), "0x100"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    said = dict(part.split("=", 1) for part in r.stdout.split() if "=" in part)
    vaddr, pfn = int(said["vaddr"], 16), int(said["pfn"], 16)
    summary = json.loads(subprocess.run(CLI + ["report", str(rec), "--json"], capture_output=True, text=True,
                                        timeout=60).stdout)
    r = subprocess.run(CLI + ["report", str(rec), "--format", "perfetto", "-o", str(out)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    events = json.loads(out.read_text())["traceEvents"]
    def event(e):   # a classified fault is named by its class, its tracepoint in its arguments
        return e["args"].get("event", e["name"])
    faults = [e for e in events if event(e) == "exceptions:page_fault_user"]
    from pagefault.capture.recording import load_recording
    from pagefault.journey.trace_summary import user_address_limit
    limit = user_address_limit(load_recording(rec).meta)
    in_kernel = [e for e in events if event(e) == "exceptions:page_fault_kernel" and int(e["args"]["address"], 16) < limit]
    allocs = [e for e in events if e["name"] == "kmem:mm_page_alloc"]
    # the summary counts faults in both modes: the user-mode ones, and kernel-mode ones on user addresses
    assert len(faults) + len(in_kernel) == summary["faults"] and len(in_kernel) == summary["kernel_mode_faults"]
    assert len(allocs) == summary["allocations"]
    assert all(int(e["args"]["address"], 16) and "error_code" in e["args"] for e in faults)
    assert all(int(e["args"]["pfn"], 16) for e in allocs)
    # the program's own write and the page its pagemap showed are on the timeline, in that order
    write = next(e for e in faults if int(e["args"]["address"], 16) == vaddr + 0x100)
    page = next(e for e in allocs if int(e["args"]["pfn"], 16) == pfn)
    assert write["args"]["error_code"] == "0x6" and write["ts"] <= page["ts"]
    # every fault is named by its class, counted as the summary counts them; the write took a new zeroed page
    # in the program's own anonymous mapping
    assert all(e["name"] == f"fault: {e['args']['class']}" and e["args"]["mapping"] for e in faults + in_kernel)
    named = {}
    for e in faults + in_kernel:
        named[e["args"]["class"]] = named.get(e["args"]["class"], 0) + 1
    assert named == {cls: n for cls, n, _how in summary["by_class"]}, (named, summary["by_class"])
    assert write["args"]["class"] == "anonymous new page", write["args"]
    bad = subprocess.run(CLI + ["report", str(rec), "--format", "perfetto"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "needs -o FILE" in bad.stderr
