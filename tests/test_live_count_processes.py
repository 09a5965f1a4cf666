"""The counting summary's rows by process (issue 29 item 8): `trace -- gcc ...` runs cc1, as and ld, and the
class × mapping table of a count had no process, so their rows looked duplicated. The count now keeps each
fault's process (tgid) in its key and each process's command name in the kernel (at its exec, else its first
fault), as a recording's summary has them from perf's COMM records.

exec_children forks two children one after the other, each exec'ing a different program name (two names of
touch_n_pages: their comm differs) that writes N pages of a VMA of its own; it prints each child's faults as the
kernel charged them to it (wait4's rusage, fork to exit)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from pagefault.capture import kernel_counts as kc

PAGES = {"pf_touch_a": 8, "pf_touch_b": 24}


def _programs(cbin, tmp_path):
    parent = cbin("exec_children")
    touch = cbin("touch_n_pages")
    names = {}
    for name in PAGES:
        copy = tmp_path / name           # root's own pytest directory: no other user can plant it
        shutil.copy(touch, copy)
        os.chmod(copy, 0o755)
        names[name] = copy
    argv = [str(parent)]
    for name, pages in PAGES.items():
        argv += [str(names[name]), str(pages)]
    return argv


def _reported(text: str) -> tuple[dict[int, tuple[int, int]], dict[int, int]]:
    """(child PID → (region start, pages)), (child PID → its faults as wait4 gave them)."""
    regions = {int(p): (int(s, 16), int(n)) for p, s, n in re.findall(r"^region (\d+) ([0-9a-f]+) (\d+)$", text, re.M)}
    charged = {int(p): int(n) for p, n in re.findall(r"^child (\d+) faults (\d+)$", text, re.M)}
    return regions, charged


def _root_and_object():
    if os.geteuid() != 0:
        pytest.skip("counting in the kernel needs root")
    if kc.engine_problem():
        pytest.skip(kc.engine_problem())


@pytest.mark.live
def test_a_count_has_a_row_per_process_with_its_command_and_its_own_faults(can_trace, cbin, tmp_path):
    _root_and_object()
    from pagefault.journey.count_summary import summarize_counts
    argv = _programs(cbin, tmp_path)
    with open(tmp_path / "out", "w") as out:
        counts = kc.count_faults(argv, None, stdout=out.fileno())
    assert counts.target_exit == "exited with status 0", (tmp_path / "out").read_text()
    regions, charged = _reported((tmp_path / "out").read_text())
    assert len(regions) == len(charged) == len(PAGES) and set(regions) == set(charged)
    # each child's own VMA holds exactly the pages it wrote, counted under its own process
    for child, (start, pages) in regions.items():
        mine = [r for r in counts.rows if r[8] == child and r[6] >> 3 == start]
        assert sum(r[7] for r in mine) == pages, (child, mine)
        assert not [r for r in counts.rows if r[8] != child and r[6] >> 3 == start and start]
    s = summarize_counts(counts.rows, counts.maps[counts.pid], counts.command, counts.pid, counts.target_exit,
                         counts.duration, counts.allocations, counts.total, counts.process_names)
    rows = {pid: (comm, n) for pid, comm, n in s.by_process}
    assert set(rows) == {counts.pid} | set(regions), rows
    assert rows[counts.pid][0] == "exec_children"
    by_name = {comm: pid for pid, (comm, _n) in rows.items()}
    assert set(by_name) == {"exec_children"} | set(PAGES), rows     # each child by the name of what it exec'ed
    for name, pages in PAGES.items():
        child = by_name[name]
        assert regions[child][1] == pages
        # the child's faults, from its fork (the parent's image, before the exec) to its exit, are among those the
        # kernel charged to it: its rusage counts exec's copies of argv into the new stack too (get_user_pages:
        # no fault the CPU raised, and no page-faults event), so it may be a little more, never less
        assert pages < rows[child][1] <= charged[child], (name, rows[child], charged[child])
    assert sum(n for _c, n in rows.values()) == s.faults == counts.total
    # and the whole is the kernel's own count (from 6.10 on: exec's own faults on the new image counted too)
    if counts.kernel_fault_counts and not any("sched_prepare_exec" in n for n in counts.notes):
        assert counts.kernel_fault_counts["page-faults"] == s.faults, (counts.kernel_fault_counts, counts.notes)


@pytest.mark.live
def test_the_cli_summary_shows_the_processes_in_text_and_json(can_trace, cbin, tmp_path):
    _root_and_object()
    argv = _programs(cbin, tmp_path)
    summary = tmp_path / "summary.json"
    r = subprocess.run([sys.executable, "-m", "pagefault", "trace", "-q", "--json", "--summary", str(summary), "--",
                        *argv], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    regions, charged = _reported(r.stdout)
    s = json.loads(summary.read_text())
    assert s["tier"] == "bpf-counts"
    rows = {pid: (comm, n) for pid, comm, n in s["by_process"]}
    assert {comm for comm, _n in rows.values()} == {"exec_children"} | set(PAGES)
    assert all(PAGES[rows[child][0]] < rows[child][1] <= n for child, n in charged.items()), (rows, charged)
    assert sum(n for _c, n in rows.values()) == s["faults"]
    # the whole is the kernel's own count, as the reconciliation says (from 6.10: exec's own faults counted)
    if "page-faults" in s["kernel_counts"] and not any("sched_prepare_exec" in n and "not counted" in n
                                                       for n in s["notes"]):
        assert s["kernel_counts"]["page-faults"] == s["faults"], s["notes"]
    # the text view: a table of them
    from pagefault.journey.count_summary import TraceSummary
    from pagefault.views.safe_console import terminal_console
    from pagefault.views.trace_view import render_summary
    fields = {k: v for k, v in s.items() if k in TraceSummary.__dataclass_fields__}
    text = io.StringIO()
    render_summary(TraceSummary(**fields), terminal_console(file=text, width=140, color_system=None))
    table = text.getvalue().split("faults by process", 1)[1]
    for pid, (comm, n) in rows.items():
        assert re.search(rf"{pid}\s.*{comm}\s.*\s{n}\s", table), (pid, comm, n, table)


def test_counted_rows_with_a_process_give_the_rows_by_process_most_first():
    """Offline: rows of (error code, allocated, order, cache, signal, si_code, vma key, faults, tgid) are summed by
    process, named from the kernel's names ("?" where none was kept), the most faults first; rows without a
    process (an older count) give none."""
    from pagefault.journey.count_summary import summarize_counts
    anon = 0x7000 << 3
    rows = [(6, 1, 0, 0, 0, 0, anon, 5, 101), (4, 0, 0, 0, 0, 0, anon, 2, 101), (6, 1, 0, 0, 0, 0, anon, 9, 102),
            (6, 1, 0, 0, 0, 0, anon, 1, 103)]
    s = summarize_counts(rows, [], ["p"], 101, "exited", 0.1, process_names={101: "make", 102: "cc1"})
    assert s.by_process == [(102, "cc1", 9), (101, "make", 7), (103, "?", 1)]
    assert s.faults == 17 and sum(n for _c, n, _h in s.by_class) == 17
    assert summarize_counts([r[:8] for r in rows], [], ["p"], 101, "exited", 0.1).by_process == []


@pytest.mark.live
@pytest.mark.parametrize("program", ["exec_children", "fault_kinds"])
def test_counted_pprof_names_every_process_a_forked_child_too(can_trace, cbin, tmp_path, program):
    """trace --pprof counting in the kernel: each sample's pid and comm labels. exec_children's children each
    exec (perf's COMM records name them); fault_kinds' child only forks (no COMM record: the kernel's name kept at
    its first fault names it). Every fault's process is named, so `go tool pprof -tags` gives the comm labels
    the summary's rows by process, as the pid labels."""
    _root_and_object()
    go = shutil.which("go")
    if go is None:
        pytest.skip("go tool pprof is not installed (bash scripts/setup.sh test does it)")
    argv = _programs(cbin, tmp_path) if program == "exec_children" else [str(cbin(program)), str(tmp_path)]
    profile, summary = tmp_path / "p.pb.gz", tmp_path / "s.json"
    r = subprocess.run([sys.executable, "-m", "pagefault", "trace", "-q", "--pprof", str(profile), "--json",
                        "--summary", str(summary), "--", *argv], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    tags = subprocess.run([go, "tool", "pprof", "-tags", str(profile)], capture_output=True, text=True, timeout=120,
                          env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "GOCACHE": str(tmp_path / "gocache")})
    assert tags.returncode == 0, tags.stderr

    def label(name: str) -> dict[str, int]:
        block = tags.stdout.split(f" {name}: Total ", 1)[1].split("\n\n", 1)[0]
        return {v: int(float(n)) for n, v in re.findall(r"^\s+([\d.]+) \(\s*[\d.]+%\): (\S+)$", block, re.M)}
    rows = json.loads(summary.read_text())["by_process"]
    assert len(rows) >= 2 and label("pid") == {str(pid): n for pid, _comm, n in rows}
    comms: dict[str, int] = {}
    for _pid, comm, n in rows:
        comms[comm] = comms.get(comm, 0) + n
    assert "?" not in comms and label("comm") == comms, tags.stdout


@pytest.mark.live
def test_processes_with_a_mapping_at_one_address_each_name_their_own(can_trace, cbin, tmp_path):
    """Without ASLR (setarch -R: the children inherit the personality) exec_children, pf_touch_a and pf_touch_b
    each map their executable at one and the same start. The count named its VMAs by start alone, so every
    process's executable was named after whichever one faulted in it first; each is now named by its own."""
    _root_and_object()
    setarch = shutil.which("setarch", path="/usr/bin:/bin")
    if setarch is None:
        pytest.skip("setarch (util-linux) is not installed")
    from pagefault.journey.count_summary import summarize_counts
    argv = _programs(cbin, tmp_path)
    with open(tmp_path / "out", "w") as out:
        counts = kc.count_faults([setarch, "-R", *argv], None, stdout=out.fileno())
    assert counts.target_exit == "exited with status 0", (tmp_path / "out").read_text()
    # the kernel's names of each process's VMAs at the one start its executable has in all three
    named: dict[str, set[str]] = {}
    for tgid, lines in counts.maps.items():
        comm = counts.process_names.get(tgid, "?")
        named.setdefault(comm, set()).update(m.path for m in lines if m.path)
    for comm in ("exec_children", *PAGES):
        assert comm in named.get(comm, set()), (comm, named)
    starts = {comm: {m.start for tgid, lines in counts.maps.items() for m in lines
                     if counts.process_names.get(tgid) == comm and m.path == comm} for comm in PAGES}
    assert starts["pf_touch_a"] & starts["pf_touch_b"], starts   # the case this test is about: one start, two files
    s = summarize_counts(counts.rows, counts.maps[counts.pid], counts.command, counts.pid, counts.target_exit,
                         counts.duration, counts.allocations, counts.total, counts.process_names,
                         maps_by_process=counts.maps)
    labels = {label for label, _n in s.by_mapping}
    assert {"pf_touch_a", "pf_touch_b", "exec_children"} <= labels, labels
