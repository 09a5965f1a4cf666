"""Red team, second round (issue 28, classes 5 and 11): every writer on a full file system, and outputs reached
through planted links.

A full disk is one line, exit 1 (a write that failed midway, as `trace -o` says it), and leaves no file: the
whole-file writers (--summary, --folded, journey -o, report -o) said it with exit 2 (a usage error) and told
to 'choose another place with -o FILE' whichever option had named the file."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest
from live_helpers.full_disk import FILLER, full_tmpfs

CLI = [sys.executable, "-m", "pagefault"]
EVIDENCE = Path(__file__).parent / "fixtures" / "evidence" / "6.12.117+deb12-amd64" / "journey-bpf.json.gz"


@pytest.fixture(scope="module")
def full_fs(tmp_path_factory):
    """A 64 KiB tmpfs, filled to the last block."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    with full_tmpfs(tmp_path_factory.mktemp("full")) as mnt:
        yield mnt


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    (d / "ev.json").write_bytes(gzip.decompress(EVIDENCE.read_bytes()))
    return d


def _recording(can_trace, d: Path) -> Path:
    rec = d / "r.pfrec"
    if not rec.exists():
        r = subprocess.run(CLI + ["trace", "-q", "-g", "-o", str(rec), "--", "/bin/true"], capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    return rec


WRITERS = {
    "journey html": lambda d, o: ["journey", "--replay", str(d / "ev.json"), "--format", "html", "-o", o],
    "journey markdown": lambda d, o: ["journey", "--replay", str(d / "ev.json"), "--format", "markdown", "-o", o],
    "journey json": lambda d, o: ["journey", "--replay", str(d / "ev.json"), "--format", "json", "-o", o],
    "journey perfetto": lambda d, o: ["journey", "--replay", str(d / "ev.json"), "--format", "perfetto", "-o", o],
    "report folded": lambda d, o: ["report", "--format", "folded", "-o", o, str(d / "r.pfrec")],
    "report speedscope": lambda d, o: ["report", "--format", "speedscope", "-o", o, str(d / "r.pfrec")],
    "report perfetto": lambda d, o: ["report", "--format", "perfetto", "-o", o, str(d / "r.pfrec")],
    "report pprof": lambda d, o: ["report", "--format", "pprof", "-o", o, str(d / "r.pfrec")],
    "trace --summary": lambda d, o: ["trace", "-q", "--summary", o, "--", "/bin/true"],
    "trace --json --summary": lambda d, o: ["trace", "-q", "--json", "--summary", o, "--", "/bin/true"],
    "trace --folded": lambda d, o: ["trace", "-q", "-g", "--folded", o, "--", "/bin/true"],
    "trace --pprof": lambda d, o: ["trace", "-q", "-g", "--pprof", o, "--", "/bin/true"],
    "trace -o": lambda d, o: ["trace", "-q", "-o", o, "--", "/bin/true"],
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_full_disk_is_one_line_exit_1_and_no_file(can_trace, full_fs, inputs, writer):
    if writer.startswith("report"):
        _recording(can_trace, inputs)
    out = full_fs / "out"
    r = subprocess.run(CLI + WRITERS[writer](inputs, str(out)), capture_output=True, text=True, timeout=300)
    assert "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "No space left on device" in last and "free space" in last, r.stderr
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert sorted(p.name for p in full_fs.iterdir()) == [FILLER]


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_an_output_name_taken_by_a_device_or_a_file_is_refused_naming_no_other_option(can_trace, inputs, writer,
                                                                                      tmp_path):
    """Every writer refuses a name that is a device (/dev/null) or an existing file (without --force), before any
    work, in one line whose fix fits whichever option named it: it told to 'choose a file name with -o FILE' to
    a person who had given --summary, --folded or --pprof."""
    if writer.startswith("report"):
        _recording(can_trace, inputs)
    existing = tmp_path / "taken"
    existing.write_text("kept\n")
    for target, says in (("/dev/null", "exists and is not a regular file; fix: choose another name"),
                         (str(existing), "exists; fix: give --force to replace it, or choose another name")):
        r = subprocess.run(CLI + WRITERS[writer](inputs, target), capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (r.returncode, r.stderr)
        last = r.stderr.strip().splitlines()[-1]
        assert says in last and "-o FILE" not in last, last
    assert existing.read_text() == "kept\n"
