import os
import shutil
import subprocess
from pathlib import Path

import pytest

C_DIR = Path(__file__).parent / "c"

# `sudo bash scripts/test.sh` must test as root: under sudo, pagefault runs a traced command as the invoking user
# (tests/test_sudo_user.py sets these variables itself where it means to)
for _name in ("SUDO_UID", "SUDO_GID", "SUDO_USER", "SUDO_COMMAND"):
    os.environ.pop(_name, None)


def _capture_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "live capture tests need root (perf tier)"
    from pagefault.kernel.tracefs import TracefsError, find_tracefs, read_event_format
    try:
        root = find_tracefs()
        read_event_format("exceptions", "page_fault_user", root)
    except TracefsError as exc:
        return f"this machine cannot trace: {exc}"
    return None


@pytest.fixture(scope="session")
def can_trace():
    reason = _capture_skip_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def cbin(tmp_path_factory):
    """Compile a test C program from tests/c once per session."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler on this machine")
    out = tmp_path_factory.mktemp("cbin")
    os.chmod(out, 0o755)

    def build(name: str) -> Path:
        exe = out / name
        if not exe.exists():
            subprocess.run([cc, "-O1", "-g", "-o", str(exe), str(C_DIR / f"{name}.c")], check=True)
        return exe
    return build
