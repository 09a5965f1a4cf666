"""Issue 28, item 3: under sudo, the command after -- runs as the user who ran sudo (SUDO_UID, SUDO_GID,
their groups, a clean environment), not as root; --as-root keeps root. sudo is simulated by setting
SUDO_UID/SUDO_GID/SUDO_USER of the `nobody` user in root's environment, as sudo itself does."""

import os
import pwd
import subprocess
import sys

import pytest

from pagefault.capture import runner

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")
NOBODY = pwd.getpwnam("nobody")
SUDO_NOBODY = {"SUDO_UID": str(NOBODY.pw_uid), "SUDO_GID": str(NOBODY.pw_gid), "SUDO_USER": "nobody"}
REPORT = ("echo uid=$(id -u) gid=$(id -g) groups=$(id -G) home=$HOME user=$USER; "
          "echo secret=${PF_ROOT_SECRET:-none} preload=${LD_PRELOAD:-none} path=$PATH")


def _held_output(argv, monkeypatch, own_program=False) -> str:
    for key, value in SUDO_NOBODY.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PF_ROOT_SECRET", "root's token")
    monkeypatch.setenv("LD_PRELOAD", "/nonexistent/root-only.so")
    read, write = os.pipe()
    target = runner.spawn_held(argv, stdout=write, own_program=own_program)
    os.close(write)
    target.release()
    target.wait()
    with os.fdopen(read) as out:
        return out.read()


@root_only
def test_a_command_under_sudo_runs_as_the_invoking_user_with_a_clean_environment(monkeypatch):
    out = _held_output(["sh", "-c", REPORT], monkeypatch)
    assert f"uid={NOBODY.pw_uid} gid={NOBODY.pw_gid} " in out
    assert f"groups={' '.join(map(str, sorted(set(os.getgrouplist('nobody', NOBODY.pw_gid)))))} " in out
    assert f"home={NOBODY.pw_dir} user=nobody" in out
    assert "secret=none preload=none" in out and f"path={runner.USER_PATH}" in out


@root_only
def test_as_root_and_pagefaults_own_programs_keep_root(monkeypatch):
    runner.keep_root_for_commands(True)
    try:
        assert "uid=0 gid=0" in _held_output(["sh", "-c", REPORT], monkeypatch)
    finally:
        runner.keep_root_for_commands(False)
    assert "uid=0 gid=0" in _held_output(["sh", "-c", REPORT], monkeypatch, own_program=True)


def test_no_sudo_or_sudo_from_root_changes_nothing():
    assert runner.invoking_user({}) is None
    assert runner.invoking_user({"SUDO_UID": "0", "SUDO_GID": "0"}) is None
    if os.geteuid() != 0:
        assert runner.invoking_user(SUDO_NOBODY) is None      # not root: nothing to drop


@root_only
def test_bad_sudo_ids_are_one_line_with_the_fix():
    with pytest.raises(runner.TargetError, match="--as-root"):
        runner.invoking_user({"SUDO_UID": "nobody", "SUDO_GID": "x"})


@root_only
def test_a_command_the_user_cannot_run_says_whom_it_ran_as(tmp_path, monkeypatch):
    prog = tmp_path / "root-only"
    prog.write_text("#!/bin/sh\necho ran\n")
    os.chmod(prog, 0o700)
    for key, value in SUDO_NOBODY.items():
        monkeypatch.setenv(key, value)
    target = runner.spawn_held([str(prog)])
    with pytest.raises(runner.TargetError, match="as nobody, the user who ran sudo .--as-root runs it as root."):
        target.release()


@root_only
@pytest.mark.live
def test_trace_under_sudo_runs_the_command_as_the_user():
    """The whole CLI: `sudo pagefault trace -- id -u` prints the user's uid; with --as-root, root's."""
    env = dict(os.environ, **SUDO_NOBODY)
    cli = [sys.executable, "-m", "pagefault", "trace", "-q"]
    for extra, uid in (([], NOBODY.pw_uid), (["--as-root"], 0)):
        r = subprocess.run(cli + extra + ["--", "id", "-u"], capture_output=True, text=True, timeout=180, env=env)
        if r.returncode == 3:
            pytest.skip(f"cannot trace here: {r.stderr.strip()}")
        assert r.returncode == 0, r.stderr
        assert r.stdout.split()[0] == str(uid), (extra, r.stdout)
