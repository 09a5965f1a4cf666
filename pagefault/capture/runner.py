"""Starting a target held at the door until events are open (as perf does with its start pipe)."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass


class TargetError(Exception):
    """The target could not be started or attached to; the message says why."""


@dataclass
class Target:
    pid: int
    spawned: bool
    argv: list[str]
    _go_fd: int = -1
    _err_fd: int = -1
    status: int | None = None

    def release(self) -> None:
        """Let a spawned target exec; raise TargetError if exec failed."""
        if self._go_fd < 0:
            return
        os.write(self._go_fd, b"g")
        os.close(self._go_fd)
        self._go_fd = -1
        err = os.read(self._err_fd, 64)
        os.close(self._err_fd)
        self._err_fd = -1
        if err:
            self.wait()
            code = int(err.decode() or 0)
            raise TargetError(f"cannot run {self.argv[0]!r}: {os.strerror(code)}")

    def poll(self) -> bool:
        """True while the target runs."""
        if self.status is not None:
            return False
        if self.spawned:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == 0:
                return True
            self.status = status
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            self.status = 0
            return False
        except PermissionError:
            return True
        return True

    def wait(self) -> None:
        if self.spawned and self.status is None:
            _, self.status = os.waitpid(self.pid, 0)

    def kill(self, sig: int = signal.SIGTERM) -> None:
        if self.spawned and self.status is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def describe_exit(self) -> str:
        if self.status is None:
            return "still running" if not self.spawned else "unknown"
        if not self.spawned:
            return "exited"
        if os.WIFSIGNALED(self.status):
            sig = os.WTERMSIG(self.status)
            return f"killed by {signal.Signals(sig).name}"
        return f"exited with status {os.WEXITSTATUS(self.status)}"

    @property
    def exit_signal(self) -> int | None:
        if self.spawned and self.status is not None and os.WIFSIGNALED(self.status):
            return os.WTERMSIG(self.status)
        return None


def spawn_held(argv: list[str], stdout: int | None = None) -> Target:
    """fork now, exec only after release(): events opened in between see the exec and everything after."""
    if not argv:
        raise TargetError("no command given; usage: pagefault trace -- CMD ARGS…")
    go_r, go_w = os.pipe()
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(go_w)
            os.close(err_r)
            if stdout is not None:
                os.dup2(stdout, 1)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            if os.read(go_r, 1) != b"g":
                os._exit(126)
            os.close(go_r)
            os.execvp(argv[0], argv)
        except OSError as exc:
            os.write(err_w, str(exc.errno or 0).encode())
        finally:
            os._exit(127)
    os.close(go_r)
    os.close(err_w)
    return Target(pid, True, list(argv), go_w, err_r)


def attach(pid: int) -> Target:
    if pid <= 0:
        raise TargetError(f"bad PID {pid}")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise TargetError(f"no process with PID {pid}") from None
    except PermissionError:
        pass
    try:
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        argv = [a.decode(errors="replace") for a in cmdline if a]
    except OSError:
        argv = [str(pid)]
    return Target(pid, False, argv)
