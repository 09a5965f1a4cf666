"""Live: the journey of a chosen fault of a program the tool does not control (issue 16).

The program is tests/c/fault_kinds.c, whose faults are known; each selector must pick the right fault,
and that fault's journey must pass the exercise's checks: the PFN equal across sources."""

import json
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.live
CLI = [sys.executable, "-m", "pagefault"]
LINE = re.compile(r"^(\w+) start=0x([0-9a-f]+) pages=(\d+) expect=(\d+)")


def journey(tmp_path, exe, *selector):
    out = tmp_path / f"j{abs(hash(selector))}.json"
    r = subprocess.run(CLI + ["journey", "-q", "--format", "json", "-o", str(out), *selector, "--", str(exe),
                              str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    regions = {m.group(1): (int(m.group(2), 16), int(m.group(3)))
               for m in (LINE.match(line) for line in r.stdout.splitlines()) if m}
    j = json.loads(out.read_text())
    return {v["label"]: v for s in j["steps"] for v in s["values"]}, regions


def inside(values, regions, name):
    start, pages = regions[name]
    return start <= values["faulting address (CR2)"]["value"] < start + pages * 4096


def pfn_checks(values):
    """PTE after, pagemap and the allocation agree on the frame (where the fault got one)."""
    assert values["PTE's PFN is pagemap's"]["value"] is True, values["PTE's PFN is pagemap's"]
    alloc = values.get("allocation: the fault's page")
    if alloc:
        pfn, order = int(alloc["value"].split()[1].rstrip(","), 16), int(alloc["value"].split()[-1])
        seen = int(values["pagemap"]["display"].rsplit("PFN 0x", 1)[1], 16)
        assert pfn <= seen < pfn + (1 << order), (alloc["value"], values["pagemap"]["display"])


@pytest.fixture(scope="module")
def exe(can_trace, cbin):
    from pagefault.capture.journey_capture import walk_engine_problem
    problem = walk_engine_problem()
    if problem:
        pytest.skip(problem)
    return cbin("fault_kinds")


@pytest.mark.parametrize("kind, region, cls", [("anon", None, "anonymous new page"), ("zero", None, "zero page"),
                                               ("cow", None, "COW copy"), ("major", "file", "file read from disk"),
                                               ("thp", "thp", "THP"), ("stack", "stack", "stack growth"),
                                               ("segv", "segv", "SIGSEGV")])
def test_kind_picks_a_fault_of_that_kind(exe, tmp_path, kind, region, cls):
    values, regions = journey(tmp_path, exe, "--kind", kind)
    assert values["kind checked afterwards"]["value"] is True, values["kind checked afterwards"]
    assert values["class"]["value"] == cls
    if region:
        assert inside(values, regions, region), (hex(values["faulting address (CR2)"]["value"]), regions[region])
    if kind in ("anon", "zero", "cow", "major", "thp"):
        pfn_checks(values)


def test_default_is_the_first_fault_in_the_programs_own_code(exe, tmp_path):
    values, _regions = journey(tmp_path, exe)
    assert values["where"]["value"].startswith("fault_kinds:")


def test_at_file_line_picks_the_fault_of_that_line(exe, tmp_path):
    line = next(n for n, text in enumerate((exe.parent / "fault_kinds.c").read_text().splitlines(), 1)
                if "anon[i * PAGE] = 1" in text) if (exe.parent / "fault_kinds.c").exists() else None
    if line is None:
        src = __import__("pathlib").Path(__file__).parent / "c" / "fault_kinds.c"
        line = next(n for n, text in enumerate(src.read_text().splitlines(), 1) if "anon[i * PAGE] = 1" in text)
    values, regions = journey(tmp_path, exe, "--at", f"fault_kinds.c:{line}")
    assert values["source line"]["value"] == f"fault_kinds.c:{line}".replace("fault_kinds.c", values["source line"]["value"].split(":")[0])
    assert inside(values, regions, "anon") and values["class"]["value"] == "anonymous new page"
    pfn_checks(values)


def test_at_symbol_picks_a_fault_whose_rip_is_in_that_function(exe, tmp_path):
    values, regions = journey(tmp_path, exe, "--at", "grow")
    assert values["where"]["value"].startswith("fault_kinds:grow+")
    assert values["class"]["value"] == "stack growth" and inside(values, regions, "stack")


def test_nth_counts_the_programs_faults(exe, tmp_path):
    values, _regions = journey(tmp_path, exe, "--nth", "5")
    assert values["fault number"]["value"] == 5


def test_selectors_are_refused_without_a_program(tmp_path):
    r = subprocess.run(CLI + ["journey", "--nth", "3", "--no-pause"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "give it after --" in r.stderr
    r = subprocess.run(CLI + ["journey", "--nth", "3", "--kind", "anon", "--", "/bin/true"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "one way" in r.stderr


# Fresh anonymous pages all along. A region is unmapped only long after its pages were written: the chosen
# fault's page must still be mapped when /proc is read after it (a munmap right after the last page's
# write unmapped it first, and the PTE/pagemap comparison had nothing to compare).
FAULT_LOOP = ("import mmap, sys, time\n"
              "kept = []\n"
              "while True:\n"
              "    m = mmap.mmap(-1, 1 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)\n"
              "    for i in range(0, 1 << 20, 4096): m[i] = 1\n"
              "    kept.append(m)\n"
              "    if len(kept) > 32: kept.pop(0).close()\n"
              "    time.sleep(0.05)\n")


def test_an_attached_process_that_fills_the_buffers_before_the_choice_keeps_the_chosen_faults_events(can_trace):
    """A running process faults while the walk attaches (a second or more with bpftrace); the perf buffers were read only at
    the end, so on a machine where attaching took longer they were full when the fault was chosen, its
    allocation was dropped, and a fresh anonymous page read as "spurious". Small buffers stand here for a
    slow attach: the chosen fault's samples are kept and its class is the kernel's."""
    import time

    from pagefault.capture.program_fault import ProgramFault
    from pagefault.journey.fault_classes import FaultClass
    from pagefault.journey.program_journey import classify_chosen
    child = subprocess.Popen([sys.executable, "-c", FAULT_LOOP])
    try:
        time.sleep(0.5)
        capture = ProgramFault(None, child.pid, "kind", "anon")
        capture.perf_pages = 64      # 256 KiB per CPU: read only at the end, it filled in the first second
        ev = capture.run()
        cls, how, window = classify_chosen(ev)
        assert cls is FaultClass.ANON_NEW, how
        assert any(e.name == "kmem:mm_page_alloc" for e in window)
    finally:
        child.kill()
        child.wait()


def test_attach_to_a_running_process_and_leave_it_running(exe, tmp_path):
    """journey -p PID: a process of someone else's is followed, then left running, never stopped."""
    import time
    child = subprocess.Popen([sys.executable, "-c", FAULT_LOOP])
    try:
        time.sleep(0.5)
        out = tmp_path / "p.json"
        r = subprocess.run(CLI + ["journey", "-q", "--format", "json", "-o", str(out), "--kind", "anon", "-p",
                                  str(child.pid)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        values = {v["label"]: v for s in json.loads(out.read_text())["steps"] for v in s["values"]}
        assert values["class"]["value"] == "anonymous new page"
        assert values["PTE's PFN is pagemap's"]["value"] is True
        time.sleep(0.2)
        state = open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0]
        assert state not in ("T", "t") and child.poll() is None
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("selector", [["--nth", "999999"], ["--at", "nosuchsym"], ["--kind", "swap"]],
                         ids=["nth", "symbol", "kind"])
def test_nothing_matched_is_its_own_exit_status(exe, tmp_path, selector):
    """Exit 3 says this machine cannot trace; a capture that ran but matched nothing is exit 4, with what it saw."""
    r = subprocess.run(CLI + ["journey", "-q", "--format", "json", "-o", str(tmp_path / "j.json"), *selector, "--",
                              str(exe), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 4, r.stderr
    assert r.stderr.startswith("pagefault: nothing matched:") and "Traceback" not in r.stderr
    assert not (tmp_path / "j.json").exists()


def test_journey_of_an_attached_process_ends_when_it_exits_or_the_timeout_passes(exe, tmp_path):
    """journey -p waited forever (140 s after its target died) with no progress line: it ends with exit 4
    when its target exits, or when --timeout passes, leaving the target running and not stopped."""
    import time
    short = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    try:
        t0 = time.monotonic()
        r = subprocess.run(CLI + ["journey", "-q", "--nth", "999999", "-p", str(short.pid)], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 4 and "nothing matched" in r.stderr and time.monotonic() - t0 < 60, r.stderr
    finally:
        short.kill()
        short.wait()
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        t0 = time.monotonic()
        r = subprocess.run(CLI + ["journey", "--timeout", "2", "--nth", "999999", "-p", str(idle.pid)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 4 and "within 2 s" in r.stderr and time.monotonic() - t0 < 60, r.stderr
        state = open(f"/proc/{idle.pid}/stat").read().rsplit(")", 1)[1].split()[0]
        assert state not in ("T", "t") and idle.poll() is None
    finally:
        idle.kill()
        idle.wait()
