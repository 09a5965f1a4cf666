"""Red team, second round (issue 28, class 3): what `sudo -E pagefault trace -- CMD` hands CMD.

New cases: a loader, interpreter, libbpf and perf environment kept by sudo -E (LD_PRELOAD, LD_LIBRARY_PATH,
PYTHONPATH, PYTHONSTARTUP, LIBBPF_*, PERF_*, BPF_*, IFS, ENV, BASH_ENV, GCONV_PATH) and SUDO_UID of nobody:
the command sees none of it, only the clean environment's names, and runs as nobody."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys

import pytest

pytestmark = pytest.mark.live
KEPT_BY_SUDO_E = {"LD_PRELOAD": "/nonexistent/x.so", "LD_LIBRARY_PATH": "/tmp/l", "PYTHONPATH": "/tmp/p",
                  "PYTHONSTARTUP": "/tmp/s.py", "LIBBPF_LOG_LEVEL": "debug", "PERF_EXEC_PATH": "/tmp/perf",
                  "BPF_EVIL": "1", "IFS": "x", "ENV": "/tmp/env.sh", "BASH_ENV": "/tmp/env.sh",
                  "GCONV_PATH": "/tmp/gconv", "PF_ROOT_SECRET": "s3cret"}
CLEAN = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LC_ALL", "LC_CTYPE", "COLORTERM", "TZ"}


def test_a_command_under_sudo_sees_none_of_roots_kept_environment(can_trace, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("as root only")
    nobody = pwd.getpwnam("nobody")
    env = {**os.environ, **KEPT_BY_SUDO_E, "SUDO_UID": str(nobody.pw_uid), "SUDO_GID": str(nobody.pw_gid),
           "SUDO_USER": "nobody"}
    r = subprocess.run([sys.executable, "-m", "pagefault", "trace", "-q", "--summary", "s.txt", "--",
                        "/bin/sh", "-c", "id -u; env"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == str(nobody.pw_uid)
    names = {line.split("=", 1)[0] for line in lines[1:] if "=" in line}
    names -= {"PWD", "SHLVL", "_", "OLDPWD"}          # what sh itself sets
    assert names <= CLEAN, sorted(names - CLEAN)
