"""Combinations that mean nothing, and machines that cannot trace: one line with the reason, exit 2."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "pagefault"]


@pytest.mark.parametrize("argv, words", [
    (["journey", "--model", "--tier", "bpf"], "--model runs the simulator, --tier bpf traces the kernel"),
    (["journey", "--model", "--tier", "perf"], "--model runs the simulator, --tier perf"),
    (["journey", "--model", "--offset", "0x200"], "--offset vary the exercise program"),
    (["journey", "--scenario", "first-touch", "--text", "hi"], "--text vary the exercise program"),
    (["journey", "--scenario", "fork-then-write", "--offset", "8", "--size", "8192"], "--offset, --size vary"),
    (["journey", "--scenario", ""], "--scenario needs a name"),
    (["journey", "--scenario", "  "], "--scenario needs a name"),
    (["report", "x.pfrec", "-o", "out.json"], "-o FILE is where --format perfetto, folded or speedscope writes"),
    (["report", "x.pfrec", "--top", "-1"], "--top -1 is negative"),
    (["trace", "--buffer-mb", "0", "--", "true"], "--buffer-mb must be from 1 to 4096"),
    (["journey", "--arch", "arm64"], "--arch chooses the simulator's architecture; add --model"),
    (["journey", "--model", "--arch", "sparc"], "unknown architecture 'sparc'"),
])
def test_meaningless_combinations_are_refused_with_the_reason(argv, words, tmp_path):
    r = subprocess.run(CLI + argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert list(tmp_path.iterdir()) == []          # nothing was written


def test_text_that_is_not_utf8_is_one_line():
    r = subprocess.run([*map(os.fsencode, CLI), b"journey", b"--no-pause", b"--text", b"ab\xff\xfe"],
                       capture_output=True, timeout=60)
    assert r.returncode == 2 and b"--text is not valid UTF-8" in r.stderr and b"Traceback" not in r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to nobody with setpriv")
@pytest.mark.parametrize("argv", [["doctor"], ["doctor", "--json"], ["journey", "--tier", "bpf", "--no-pause"],
                                  ["journey", "--tier", "perf", "--no-pause"], ["trace", "--tier", "perf", "--", "true"]])
def test_a_non_root_user_facing_a_closed_tracefs_gets_one_line_or_a_result(argv):
    if not os.path.isdir("/sys/kernel/tracing/events") or os.stat("/sys/kernel/tracing").st_mode & 0o005:
        pytest.skip("tracefs is not mounted closed (mode 0700) here")
    home = Path(tempfile.mkdtemp(prefix="pf-nobody-", dir="/tmp"))
    os.chown(home, 65534, 65534)
    env = dict(os.environ, HOME=str(home), XDG_CACHE_HOME=str(home / "cache"))
    r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] + CLI + argv,
                       capture_output=True, text=True, timeout=300, cwd=home, env=env)
    subprocess.run(["rm", "-rf", str(home)])
    assert "Traceback" not in r.stderr and "PermissionError" not in r.stderr, r.stderr
    if argv == ["doctor", "--json"]:
        import json
        checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
        assert r.returncode == 0 and "not readable by uid 65534" in checks["tracefs"]["detail"]
        assert not checks["tracefs"]["ok"] and json.loads(r.stdout)["tier"] in ("user", "model")
    elif argv[0] == "doctor":
        assert r.returncode == 0 and "capture tier:" in r.stdout
    else:
        assert r.returncode == 3 and "cannot trace here" in r.stderr and "fix: run as root" in r.stderr, r.stderr


def test_doctor_names_the_compiled_counter_and_its_hooks():
    """The doctor says whether summary-only trace can count in the kernel here, and with which hook variants."""
    import json
    import subprocess
    import sys
    from pagefault.capture.kernel_counts import engine_problem
    r = subprocess.run([sys.executable, "-m", "pagefault", "doctor", "--json"], capture_output=True,
                       text=True, timeout=120)
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    counter = checks["compiled BPF counter"]
    problem = engine_problem()
    if problem:
        assert not counter["ok"] and counter["detail"] == problem and "setup.sh" in counter["fix"]
    else:
        import re
        assert counter["ok"] and re.search(r"page_fault_user: (raw_tp|tracepoint)", counter["detail"]), counter
