"""Attacks on a tool that runs as root: planted programs, planted links, hostile strings.

Each test plays the attacker with a real other user (nobody) where the attack needs one, and checks
that root neither ran the planted program nor wrote through the planted path.
"""

import hashlib
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pagefault.capture import exercise, safe_paths
from pagefault.capture.safe_paths import OutputError, check_output_target, path_problem, write_output

CLI = [sys.executable, "-m", "pagefault"]
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks need root (the victim) and nobody (the attacker)")
NOBODY = 65534


def _digest(source: Path) -> str:
    return hashlib.sha256(source.read_bytes()).hexdigest()[:16]


def _plant(path: Path, marker: Path, owner: int | None = NOBODY, mode: int = 0o755) -> None:
    """A 'program' that, if ever run, leaves a marker file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\ntouch {marker}\n")
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, owner, -1)


@pytest.fixture
def open_tmp():
    """A directory under /tmp that other users can reach (pytest's own tmp_path is root's, mode 0700)."""
    import shutil
    d = Path(tempfile.mkdtemp(prefix="pf-attack-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _shared_dir(base: Path, name: str = "shared") -> Path:
    d = base / name
    d.mkdir()
    os.chmod(d, 0o1777)   # like /tmp: everyone may create, only owners may remove
    return d


@root_only
def test_a_cache_planted_by_another_user_is_not_run(open_tmp):
    tmp_path = open_tmp
    """$XDG_CACHE_HOME/pagefault kept by another user: the planted exercise binary must not run as root."""
    cache_home = tmp_path / "cache"
    cache_home.mkdir()
    os.chown(cache_home, NOBODY, -1)
    marker = tmp_path / "PWNED"
    planted = cache_home / "pagefault" / f"exercise-{_digest(exercise.SOURCE)}"
    _plant(planted, marker)
    os.chown(planted.parent, NOBODY, -1)
    env = dict(os.environ, XDG_CACHE_HOME=str(cache_home))
    r = subprocess.run(CLI + ["journey", "--no-pause", "--tier", "perf", "-q"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert not marker.exists(), "root ran a program another user planted in the cache"
    assert str(planted) not in r.stdout


@root_only
def test_a_planted_binary_in_our_own_cache_is_rebuilt_not_run(tmp_path, monkeypatch):
    """The cache is ours, but a binary in it belongs to another user (or is a symlink, or group-writable)."""
    cache_home = tmp_path / "cache"
    cache_home.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    name = f"exercise-{_digest(exercise.SOURCE)}"
    folder = cache_home / "pagefault"
    folder.mkdir(mode=0o700)
    marker = tmp_path / "PWNED"
    real = tmp_path / "elsewhere"
    _plant(real, marker, owner=None)
    for plant in (lambda p: _plant(p, marker),                            # another user's file
                  lambda p: _plant(p, marker, owner=None, mode=0o777),    # ours, but writable by all
                  lambda p: p.symlink_to(real)):                          # a link to somewhere else
        target = folder / name
        if os.path.lexists(target):
            target.unlink()
        plant(target)
        program = exercise.build_program()
        assert program.compiled and program.path != target and not program.path.is_symlink()
        assert safe_paths.executable_problem(target, folder) is not None
        assert "fresh private directory" in program.how
        subprocess.run([str(program.path), "3", "4"], capture_output=True, timeout=30)
        assert not marker.exists()


@root_only
def test_the_cache_is_private_whatever_the_umask(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    (tmp_path / "c").mkdir(mode=0o700)
    old = os.umask(0)
    try:
        program = exercise.build_program()
    finally:
        os.umask(old)
    folder = tmp_path / "c" / "pagefault"
    assert program.path.parent == folder
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(program.path.stat().st_mode) == 0o700
    # an older, wider cache directory of ours is narrowed again before use
    os.chmod(folder, 0o777)
    assert exercise.build_program().path == program.path
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


@root_only
def test_no_predictable_tmp_fallback_and_sudo_home_is_not_used(tmp_path, monkeypatch):
    """When no kept cache is usable, a fresh mkdtemp directory is used, never /tmp/pagefault-UID; under sudo
    ($HOME is the invoking user's) root's cache is its own."""
    marker = tmp_path / "PWNED"
    predictable = Path("/tmp") / f"pagefault-{os.geteuid()}" / f"exercise-{_digest(exercise.SOURCE)}"
    created = not predictable.parent.exists()
    try:
        if created:
            predictable.parent.mkdir(mode=0o777)
            os.chown(predictable.parent, NOBODY, -1)
        if not predictable.exists():
            _plant(predictable, marker)
        monkeypatch.setattr(safe_paths, "cache_dir_candidates", lambda: [])
        program = exercise.build_program()
        assert program.compiled and predictable.parent not in program.path.parents
        assert "pagefault-" in program.path.parent.name and program.path.parent != predictable.parent
        assert stat.S_IMODE(program.path.parent.stat().st_mode) == 0o700
    finally:
        if created:
            subprocess.run(["rm", "-rf", str(predictable.parent)])
    assert not marker.exists()
    monkeypatch.undo()
    user_home = tmp_path / "alice"
    user_home.mkdir()
    os.chown(user_home, NOBODY, -1)
    monkeypatch.setenv("HOME", str(user_home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    folder, why = safe_paths.private_cache_dir()
    assert not str(folder).startswith(str(user_home)), "root used the invoking user's cache"
    assert not (user_home / ".cache").exists()


def test_a_kept_cache_is_made_where_no_cache_directory_exists_yet(tmp_path, monkeypatch):
    """A fresh machine may have no ~/.cache at all: the kept cache is made there (the nearest directory that exists
    checked first), not given up for a throw-away directory on every run; every directory made is 0700 whatever
    the umask, and none is made under a directory other users can write (sticky or not)."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(safe_paths, "_home_of_effective_user", lambda: None)
    old = os.umask(0)   # mkdir -p would have made ~/.cache with the umask's mode: 0777 here
    try:
        folder, why = safe_paths.kept_private_cache_dir()
    finally:
        os.umask(old)
    assert (folder, why) == (home / ".cache" / "pagefault", "")
    assert path_problem(folder, private=True) is None
    assert [stat.S_IMODE(d.stat().st_mode) for d in (home / ".cache", folder)] == [0o700] * 2
    # a home (or an XDG directory's parent) that is not there is not made: root made /nonexistent/.cache/... for
    # a $HOME of /nonexistent
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "a" / "b"))
    folder, why = safe_paths.kept_private_cache_dir()
    assert folder is None and "No such directory" in why and not (home / "a").exists(), why
    # a '..' after a directory another user owns could lead anywhere through their link: never taken
    for value in (str(home / "a" / ".." / ".cache"), "relative/cache"):
        monkeypatch.setenv("XDG_CACHE_HOME", value)
        assert safe_paths.cache_dir_candidates() == []
        assert safe_paths.kept_private_cache_dir() == (None, "no cache directory")
    # under a directory others can write, sticky like /tmp or not: refused, and nothing is made there
    for shared in (_shared_dir(tmp_path, "sticky"), tmp_path / "open"):
        if not shared.exists():
            shared.mkdir()
            os.chmod(shared, 0o777)
        monkeypatch.setenv("XDG_CACHE_HOME", str(shared / "cache"))
        folder, why = safe_paths.kept_private_cache_dir()
        assert folder is None and "writable by other users" in why and not (shared / "cache").exists(), why


def test_path_problem_names_the_component():
    assert path_problem(Path("/usr/bin/env")) is None
    # the text normalised is not what the kernel walks: a link before the '..' leads elsewhere
    assert "'..'" in path_problem(Path("/usr/lib/../bin/env"))
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o777)
        f = Path(d) / "x"
        f.write_text("")
        assert "writable by other users" in path_problem(f)


# --- output files ------------------------------------------------------------------------------------

@root_only
def test_a_symlink_planted_at_the_output_name_is_never_followed(open_tmp):
    tmp_path = open_tmp
    shared = _shared_dir(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = shared / "journey.md"
    # the attacker (nobody) plants a link at the output name and at the names a .part could take
    for name in ("journey.md", "journey.md.part"):
        subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "ln", "-s", str(victim),
                        str(shared / name)], check=True)
    r = subprocess.run(CLI + ["journey", "--model", "--format", "markdown", "-o", str(out)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "symbolic link" in r.stderr and "Traceback" not in r.stderr
    assert victim.read_text() == "precious\n"
    r = subprocess.run(CLI + ["journey", "--model", "--format", "markdown", "-o", str(out), "--force"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert victim.read_text() == "precious\n", "root wrote through the planted link"
    assert not out.is_symlink() and out.read_text().startswith("# The journey")
    assert stat.S_IMODE(out.stat().st_mode) & 0o022 == 0


def _as_nobody(*argv: str) -> None:
    subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv], check=True)


@root_only
def test_an_output_directory_reached_through_a_planted_link_is_refused(open_tmp):
    """Issue 28, item 5: a directory symlink planted in sticky /tmp sends root's output where the attacker
    chose; every output (-o, --save-evidence, trace -o) refuses it in one line, writing nothing there."""
    shared = _shared_dir(open_tmp)
    victim = open_tmp / "victim"           # root's own directory, where the attacker wants root to write
    victim.mkdir()
    _as_nobody("ln", "-s", str(victim), str(shared / "out"))
    runs = [["journey", "--model", "--format", "markdown", "-o", str(shared / "out" / "j.md")],
            ["journey", "--save-evidence", str(shared / "out" / "e.json"), "--no-pause"],
            ["trace", "-o", str(shared / "out" / "t.pfrec"), "--", "/bin/true"]]
    for argv in runs:
        r = subprocess.run(CLI + argv, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, (argv, r.stderr)
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
        assert f"{shared / 'out'} is a symbolic link owned by uid {NOBODY}" in r.stderr and "fix:" in r.stderr
    assert list(victim.iterdir()) == []
    with pytest.raises(OutputError, match="symbolic link"):
        write_output(shared / "out" / "x.json", "{}")
    assert list(victim.iterdir()) == []


@root_only
def test_links_root_made_are_followed_only_where_nobody_else_can_swap_them(open_tmp):
    shared = _shared_dir(open_tmp)
    target = open_tmp / "target"
    target.mkdir()
    (shared / "mine").symlink_to(target)          # root's link in a sticky directory: only root can replace it
    write_output(shared / "mine" / "a.json", "{}")
    assert (target / "a.json").read_text() == "{}"
    wide = open_tmp / "wide"
    wide.mkdir()
    os.chmod(wide, 0o777)                          # not sticky: anyone may rename root's link away
    (wide / "via").symlink_to(target)
    with pytest.raises(OutputError, match=r"which other users can write \(mode 0777\)"):
        write_output(wide / "via" / "b.json", "{}")
    assert sorted(p.name for p in target.iterdir()) == ["a.json"]


def test_existing_files_directories_and_devices_are_refused_with_the_fix(tmp_path):
    existing = tmp_path / "old.json"
    existing.write_text("keep me")
    cases = [(existing, "exists; fix: give --force"), (tmp_path, "is a directory"),
             (Path("/dev/full"), "not a regular file"), (tmp_path / "missing" / "x.json", "not a directory")]
    for path, words in cases:
        r = subprocess.run(CLI + ["journey", "--model", "--format", "json", "-o", str(path)], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().count("\n") == 0
    assert existing.read_text() == "keep me"
    for path, words in cases[:3]:
        with pytest.raises(OutputError, match=words.split(";")[0]):
            check_output_target(path)


def test_a_failed_run_leaves_no_output_file(tmp_path):
    out = tmp_path / "never.md"
    r = subprocess.run(CLI + ["journey", "--scenario", "no-such-scenario", "--model", "--format", "markdown", "-o",
                              str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and not out.exists() and list(tmp_path.iterdir()) == []


def test_write_output_leaves_no_temporary_file_on_error(tmp_path):
    class Boom(Exception):
        pass

    out = safe_paths.OutputFile(tmp_path / "x.json")
    out.write(b"half")
    out.discard()
    assert list(tmp_path.iterdir()) == []
    write_output(tmp_path / "x.json", "whole")
    with pytest.raises(OutputError):
        write_output(tmp_path / "x.json", "again")
    write_output(tmp_path / "x.json", "again", force=True)
    assert (tmp_path / "x.json").read_text() == "again" and len(list(tmp_path.iterdir())) == 1


# --- Markdown from hostile strings -------------------------------------------------------------------

HOSTILE = "a`b`` | <img src=x onerror=alert(1)> *x* [l](javascript:alert(1)) ```\n~~s~~ &amp; \\"


def _render(markdown: str) -> str:
    from markdown_it import MarkdownIt
    return MarkdownIt("commonmark").enable("table").render(markdown)


def _hostile_model_journey():
    from pagefault.journey.model_journey import build_model_journey
    from pagefault.journey.scenario_check import model_config
    from pagefault.model.scenarios import find_scenario, run_in_model
    run = run_in_model(find_scenario("first-touch"), model_config(None, 4))
    j = build_model_journey(run, HOSTILE)
    j.command = [HOSTILE, "--text", HOSTILE]
    j.program = HOSTILE
    j.kernel = HOSTILE
    step = j.steps[0]
    step.title = HOSTILE
    for v in step.values:
        v.display, v.source, v.label = HOSTILE, HOSTILE, HOSTILE
    step.evidence = [HOSTILE, "```", "</details><img src=y onerror=alert(2)>"]
    step.derivations = [HOSTILE]
    for w in list(step.ws):
        step.ws[w] = HOSTILE
    return j


def test_markdown_renders_hostile_strings_as_text_never_as_html():
    from pagefault.views.journey_view import to_markdown
    html = _render(to_markdown(_hostile_model_journey()))
    assert "<img" not in html and "<a " not in html and "<em>" not in html and "<del>" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    # the text round-trips: a reader sees exactly what the target said, its newline written as \n
    flat = HOSTILE.replace("\n", "\\n")
    import html as html_lib
    import re
    text = html_lib.unescape(re.sub(r"<[^>]+>", "", html))
    assert flat in text


ALLOWED_TAGS = {"table", "thead", "tbody", "tr", "th", "td", "code", "pre", "p"}

BREAKOUT = "/tmp/lib\n```\n</details><img src=x onerror=alert(1)>\n# Injected heading\n\n<script>x</script>"


def _breakout_journey():
    """A saved journey whose program's file (in every /proc/PID/maps snapshot) is named to end the evidence
    fence."""
    import gzip
    import json

    from pagefault.core import journey_from_evidence
    from pagefault.evidence.file import CONVERTER, KINDS
    doc = json.loads(gzip.open(Path(__file__).parent / "fixtures" / "evidence" / "6.18.44-fc-v669" /
                               "journey-bpf.json.gz").read())
    for snapshot in doc["evidence"]["snapshots"].values():
        for mapping in snapshot["maps"]:
            mapping["path"] = mapping["path"] + BREAKOUT
    doc["evidence"]["rip"]["mapping"]["path"] += BREAKOUT
    return journey_from_evidence(CONVERTER.structure(doc["evidence"], KINDS[doc["kind"]]))


def test_a_maps_path_with_a_newline_and_a_fence_stays_inside_its_line():
    """Issue 28, item 6: each evidence line, table cell and path stays one line of Markdown, its newline
    shown as \\n; no fence is closed, no heading or HTML appears."""
    import re

    from pagefault.views.journey_view import to_markdown
    journey = _breakout_journey()
    markdown = to_markdown(journey)
    html = _render(markdown)
    assert "<img" not in html and "<script" not in html and "Injected heading</h" not in html
    headings = len(journey.steps) + (1 if journey.timeline else 0)
    assert len(re.findall(r"<h1>", html)) == 1 and len(re.findall(r"<h2>", html)) == headings
    blocks = re.findall(r"<pre><code>(.*?)</code></pre>", html, re.S)
    shown = [line for step in journey.steps for line in step.evidence]
    evidence_lines = [line for block in blocks for line in block.splitlines()]
    assert len(evidence_lines) == sum(len(step.all_derivations()) for step in journey.steps) + len(shown)
    assert any("/tmp/lib\\n```\\n&lt;/details&gt;" in line for line in evidence_lines)
    assert all(BREAKOUT not in cell for cell in re.findall(r"<td>(.*?)</td>", html, re.S))


def test_markdown_fuzz_no_string_escapes():
    import re
    from hypothesis import given, settings, strategies as st
    from pagefault.views.journey_view import _code, _code_block, _md

    pieces = st.sampled_from(["`", "``", "```", "<", ">", "|", "*", "_", "[", "]", "(", ")", "!", "&", "\\", "~",
                              "#", "-", " ", "\n", "<img src=x onerror=alert(1)>", "<script>", "</td>", "a"])

    @settings(max_examples=300, deadline=None)
    @given(st.lists(pieces, max_size=12).map("".join))
    def check(s):
        doc = "| h | c |\n|---|---|\n| " + _md(s) + " | " + _code(s) + " |\n\n" + "\n".join(_code_block([s]))
        tags = set(re.findall(r"</?([a-zA-Z]+)", _render(doc)))
        assert tags <= ALLOWED_TAGS, (s, tags)
    check()


@root_only
def test_root_keeps_exercise_progress_out_of_a_sudo_kept_home(open_tmp, monkeypatch):
    """Under sudo $HOME can be the invoking user's: a 'pagefault' link planted there must not be written through."""
    from pagefault.views.exercise_view import Progress
    alice = open_tmp / "alice"
    (alice / ".local" / "state").mkdir(parents=True)
    for d in (alice, alice / ".local", alice / ".local" / "state"):
        os.chown(d, NOBODY, -1)
    target = open_tmp / "rootowned"
    target.mkdir()
    (alice / ".local" / "state" / "pagefault").symlink_to(target)
    monkeypatch.setenv("HOME", str(alice))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    progress = Progress()
    assert not str(progress.path).startswith(str(alice))
    assert list(target.iterdir()) == []


def test_exercise_reset_where_the_state_directory_is_a_file(tmp_path):
    (tmp_path / "pagefault").write_text("not a directory")
    r = subprocess.run(CLI + ["exercise", "--reset"], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, XDG_STATE_HOME=str(tmp_path)))
    assert r.returncode == 2 and f"{tmp_path / 'pagefault'} is a file, not a directory" in r.stderr
    assert "Traceback" not in r.stderr


@root_only
def test_a_directory_link_above_is_followed_and_its_target_checked(open_tmp):
    """A root-owned link in the chain (as /bin -> usr/bin) is fine only if where it leads is safe too."""
    wide = open_tmp / "wide"
    wide.mkdir()
    os.chmod(wide, 0o777)                     # writable by anyone, not sticky
    (wide / "prog").write_text("")
    link = open_tmp / "via"
    link.symlink_to(wide)
    assert "writable by other users" in path_problem(link / "prog")
    os.chmod(wide, 0o755)
    assert path_problem(link / "prog") is None


# --- the compiler's environment ----------------------------------------------------------------------

@pytest.mark.parametrize("variables", [("CPATH", "C_INCLUDE_PATH"), ("COMPILER_PATH",), ("GCC_EXEC_PREFIX",),
                                       ("PATH", "LIBRARY_PATH")])
def test_the_compile_ignores_the_callers_compiler_environment(variables, tmp_path, monkeypatch):
    """Issue 28, item 4: with sudo -E, COMPILER_PATH, GCC_EXEC_PREFIX, CPATH and friends would make root run
    the caller's assembler and include the caller's stdio.h. The compile runs with a fixed environment."""
    import shutil
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("needs a C compiler")
    planted = tmp_path / "planted"
    planted.mkdir()
    marker = tmp_path / "planted-as-ran"
    _plant(planted / "as", marker, owner=None)
    _plant(planted / "ld", marker, owner=None)
    (planted / "stdio.h").write_text('#error "the planted stdio.h was included"\n')
    for variable in variables:
        monkeypatch.setenv(variable, f"{planted}:{os.environ['PATH']}" if variable == "PATH" else f"{planted}/")
    (tmp_path / "cache").mkdir(mode=0o700)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))    # a fresh cache: the compile really runs
    built = exercise._compile(exercise.SOURCE, "exercise")
    assert isinstance(built, exercise.Program), built
    assert not marker.exists(), "the compiler ran the planted assembler"
    assert built.path.parent == tmp_path / "cache" / "pagefault"


@root_only
def test_a_cache_on_a_read_only_file_system_is_not_kept_and_nothing_fails(tmp_path, monkeypatch):
    """The kernel matrix's guests see the host's home read-only, ~/.cache/pagefault already there and 0700: it
    is no kept cache (every write there would fail with EROFS), and the BTF slice, only a cache, is not made
    without a word of error (its clean-up's unlink failed with EROFS and ended every load)."""
    from pagefault.capture import core_btf
    from pagefault.capture.bpf import object_path
    home = tmp_path / "ro"
    home.mkdir(mode=0o700)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(home)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"a tmpfs cannot be mounted here: {mounted.stderr.strip()}")
    try:
        (home / ".cache" / "pagefault").mkdir(parents=True, mode=0o700)
        subprocess.run(["mount", "-o", "remount,ro", str(home)], check=True)
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        monkeypatch.setattr(safe_paths, "_home_of_effective_user", lambda: None)
        folder, why = safe_paths.kept_private_cache_dir()
        assert folder is None and "read-only" in why, why
        try:
            obj = object_path("fault_count")
        except Exception as exc:   # noqa: BLE001  (the object is not built here: the cache check above stands)
            pytest.skip(str(exc))
        monkeypatch.setattr(core_btf, "_kept_dir", lambda: home / ".cache" / "pagefault" / core_btf.SUBDIR)
        # a bpftool that fails, so that the clean-up runs whether or not bpftool is installed here
        monkeypatch.setattr(core_btf, "trusted_executable", lambda *_a, **_k: "/bin/false")
        assert core_btf.make_slice(obj) is None
    finally:
        subprocess.run(["umount", str(home)], check=True)
