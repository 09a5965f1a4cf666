"""Starting children that die with the tool: a target held at the door until events are open (as
perf does with its start pipe), and helper programs (the compiler).

Every child asks the kernel for SIGKILL when the tool dies (PR_SET_PDEATHSIG, set in the child
before exec), so not even a SIGKILL of the tool leaves a paused program or a helper
behind; SIGTERM and SIGHUP are turned into an orderly exit by the CLI.

A command given after ``--`` runs as the person who ran sudo, not as root: where sudoers grants
only pagefault, ``sudo pagefault trace -- /bin/sh`` must not be a root shell. Under sudo (root, with
SUDO_UID naming another user) the held child takes that user's uid, gid and groups and a clean
environment before it execs; ``--as-root`` (keep_root_for_commands) keeps root, as before.
"""

from __future__ import annotations

import ctypes
import os
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess  # imported where a helper is started: the target is forked without it (~1.5 ms of each start)

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)   # the libc already loaded: find_library() would run ldconfig


def die_with_parent(parent_pid: int | None = None) -> None:
    """In a freshly forked child: be killed when the parent dies (also if it died just before).

    :returns: None; exits 125 at once when the parent is already gone. Raises nothing."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(125)   # the parent is already gone: the death signal would never come


def child_preexec():
    """A preexec_fn for subprocess that ties the child's life to this process.

    :returns: the function, for this process's PID; raises nothing."""
    me = os.getpid()
    return lambda: die_with_parent(me)


def start_child(argv: list[str], **kwargs) -> subprocess.Popen:
    """subprocess.Popen of a helper program that dies with the tool.

    :returns: the Popen.
    :raises OSError: ``argv[0]`` cannot be run."""
    import subprocess
    return subprocess.Popen(argv, preexec_fn=child_preexec(), **kwargs)


def stop_child(proc: subprocess.Popen, grace: float) -> None:
    """Stop a child of ours: SIGTERM, up to `grace` seconds to finish (a compiler removes its temporary files), else SIGKILL.

    :returns: None once the child has ended; raises nothing."""
    import subprocess
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_child(argv: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
    """subprocess.run of a helper program (text output captured) that dies with the tool.

    :returns: the CompletedProcess (its status not checked).
    :raises OSError: ``argv[0]`` cannot be run.
    :raises subprocess.TimeoutExpired: it ran past ``timeout`` (it is killed)."""
    import subprocess
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, preexec_fn=child_preexec())


class TargetError(Exception):
    """The target could not be started or attached to; the message says why."""


# What a command run as the invoking user keeps of root's environment: how the terminal and the
# language are set. Everything else (root's PATH, HOME, tokens, LD_* and the like) is left behind.
KEPT_VARIABLES = ("TERM", "COLORTERM", "LANG", "LANGUAGE", "TZ", "COLUMNS", "LINES")
USER_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Credentials:
    """Whom a command runs as, and the environment it starts with."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str
    environment: dict[str, str] = field(default_factory=dict, compare=False)


_keep_root = False


def keep_root_for_commands(keep: bool) -> None:
    """--as-root: commands after -- run as root with root's environment even under sudo.

    :returns: None; raises nothing."""
    global _keep_root
    _keep_root = keep


def invoking_user(environ: dict[str, str] | None = None) -> Credentials | None:
    """The user who ran ``sudo pagefault``, for the command after ``--``: None when pagefault is not root,
    not under sudo (no SUDO_UID, or SUDO_UID 0), or --as-root was given.

    :raises TargetError: SUDO_UID or SUDO_GID is not a number (one line, with the fix).
    """
    import pwd
    env = os.environ if environ is None else environ
    if _keep_root or os.geteuid() != 0 or not env.get("SUDO_UID"):
        return None
    try:
        uid = int(env["SUDO_UID"])
        gid = int(env["SUDO_GID"]) if env.get("SUDO_GID") else None
    except ValueError:
        raise TargetError(f"SUDO_UID={env.get('SUDO_UID')!r} / SUDO_GID={env.get('SUDO_GID')!r} do not name a user; "
                          "fix: run pagefault with sudo as it sets them, or give --as-root to run the command as "
                          "root") from None
    if uid == 0:
        return None
    try:
        entry = pwd.getpwuid(uid)
        name, home, shell = entry.pw_name, entry.pw_dir, entry.pw_shell
        gid = entry.pw_gid if gid is None else gid
        groups = tuple(sorted(set(os.getgrouplist(name, gid))))
    except KeyError:             # a uid without a passwd entry: no supplementary groups, no home
        name, home, shell = str(uid), "/", "/bin/sh"
        gid = uid if gid is None else gid
        groups = (gid,)
    environment = {"PATH": USER_PATH, "HOME": home, "USER": name, "LOGNAME": name, "SHELL": shell}
    environment.update({k: v for k, v in env.items() if k in KEPT_VARIABLES or k.startswith("LC_")})
    return Credentials(uid, gid, groups, name, environment)


def _become(user: Credentials) -> None:
    """In the held child, before exec: the user's groups, gid and uid, real, effective and saved (so root
    cannot be taken back)."""
    os.setgroups(list(user.groups))
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)   # those whose handlers raise (as tracer.STOP_SIGNALS)
_STATUS_UNKNOWN = -1     # a target reaped elsewhere: ended, its wait status never seen


@dataclass
class Target:
    pid: int
    spawned: bool
    argv: list[str]
    _go_fd: int = -1
    _err_fd: int = -1
    status: int | None = None
    run_as: str = ""          # the sudo user a spawned command runs as ("" for root, or pagefault's own user)

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
            who = (f" as {self.run_as}, the user who ran sudo (--as-root runs it as root)" if self.run_as else "")
            raise TargetError(f"cannot run {self.argv[0]!r}{who}: {os.strerror(code)}")

    def poll(self) -> bool:
        """True while the target runs."""
        if self.status is not None:
            return False
        if self.spawned:
            return not self._reap()
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            self.status = 0
            return False
        except PermissionError:
            return True
        return True

    def wait(self) -> None:
        """Wait for a spawned target to end and reap it; nothing for an attached one (not our child)."""
        while self.spawned and self.status is None:
            try:   # a wait that reaps nothing: a signal's exception raised here loses no status
                os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                pass   # _reap says what became of it
            self._reap()

    def _reap(self) -> bool:
        """Reap a spawned target that has ended (True), with the stop signals held from the wait to the status
        kept: a handler raising in between (the CLI's Terminated) lost the status, the child was reaped already,
        and the next wait failed with ECHILD ('pagefault: No child processes')."""
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:     # reaped by someone else: ended, its status unknown
                pid, status = self.pid, _STATUS_UNKNOWN
            if pid:
                self.status = status
            return bool(pid)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def kill(self, sig: int = signal.SIGTERM) -> None:
        if self.spawned and self.status is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def end(self, sig: int = signal.SIGTERM, resume: bool = True) -> None:
        """After a capture: a spawned target still running is killed with `sig`. An attached one is someone
        else's process: after a capture that may have stopped it (`resume`), it is continued (SIGCONT), never
        left stopped; after one that never stops it (the in-kernel counts), it is left as it is, so that a stop
        its owner made meanwhile is not undone."""
        if self.spawned:
            if self.poll():
                self.kill(sig)
            return
        if not resume:
            return
        try:
            os.kill(self.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def describe_exit(self) -> str:
        if self.status is None:
            return "still running" if not self.spawned else "unknown"
        if not self.spawned:
            return "exited"
        if self.status == _STATUS_UNKNOWN:
            return "ended (its exit status was not seen)"
        if os.WIFSIGNALED(self.status):
            sig = os.WTERMSIG(self.status)
            return f"killed by {signal.Signals(sig).name}"
        return f"exited with status {os.WEXITSTATUS(self.status)}"

    @property
    def exit_signal(self) -> int | None:
        if self.spawned and self.status not in (None, _STATUS_UNKNOWN) and os.WIFSIGNALED(self.status):
            return os.WTERMSIG(self.status)
        return None


def spawn_held(argv: list[str], stdout: int | None = None, own_program: bool = False) -> Target:
    """fork now, exec only after release(): events opened in between see the exec and everything after.

    The command runs as the user who ran sudo, with a clean environment (invoking_user()), unless it is
    pagefault's ``own_program`` (the exercise and scenario programs, built in root's private cache).

    :raises TargetError: no command, or SUDO_UID/SUDO_GID that name no user.
    """
    if not argv:
        raise TargetError("no command given; usage: pagefault trace -- CMD ARGS…")
    user = None if own_program else invoking_user()
    go_r, go_w = os.pipe()
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # child
        try:
            die_with_parent(parent)
            os.close(go_w)
            os.close(err_r)
            if stdout is not None:
                os.dup2(stdout, 1)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            if os.read(go_r, 1) != b"g":
                os._exit(126)
            os.close(go_r)
            if user is None:
                os.execvp(argv[0], argv)
            _become(user)
            die_with_parent(parent)   # a change of credentials clears the parent-death signal: ask again
            os.execvpe(argv[0], argv, user.environment)
        except OSError as exc:
            os.write(err_w, str(exc.errno or 0).encode())
        finally:
            os._exit(127)
    os.close(go_r)
    os.close(err_w)
    return Target(pid, True, list(argv), go_w, err_r, run_as=user.name if user else "")


def _pid_max() -> int:
    try:
        return int(open("/proc/sys/kernel/pid_max").read())
    except (OSError, ValueError):
        return 1 << 22   # PID_MAX_LIMIT on 64-bit


# PF_KTHREAD (include/linux/sched.h, the same value since 2.6.27): the flags word of /proc/PID/stat says a
# task is a kernel thread, which has no user address space and so no page faults of its own to follow
PF_KTHREAD = 0x00200000


def attach(pid: int, allow_init: bool = False) -> Target:
    """A running process to trace.

    :param pid: the process; it must not be pagefault itself, a zombie, a kernel thread, or (without
        `allow_init`) PID 1, whose stop or slowdown stops the whole machine's services.
    :raises TargetError: one line saying why this PID cannot be traced, and the fix where there is one.
    """
    if pid <= 0 or pid >= _pid_max():
        raise TargetError(f"bad PID {pid}: PIDs here run from 1 to {_pid_max() - 1}")
    if pid == os.getpid() or os.path.exists(f"/proc/self/task/{pid}"):
        raise TargetError(f"PID {pid} is pagefault itself: tracing it would record its own work forever; "
                          "give the PID of another process")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise TargetError(f"no process with PID {pid}") from None
    except PermissionError:
        pass
    problem = _unattachable(pid, allow_init)
    if problem:
        raise TargetError(problem)
    try:
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        argv = [a.decode(errors="replace") for a in cmdline if a]
    except OSError:
        argv = [str(pid)]
    return Target(pid, False, argv)


def _unattachable(pid: int, allow_init: bool) -> str | None:
    """Why `pid` is not a process whose faults can be followed (from /proc/PID/stat), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        state, flags = fields[0].decode(), int(fields[6])
    except (OSError, IndexError, ValueError):
        return f"PID {pid} ended while pagefault looked at it (or its /proc/{pid}/stat is unreadable)"
    if state in ("Z", "X"):
        return f"PID {pid} has exited (a zombie waiting for its parent to reap it): there is nothing left to trace"
    if flags & PF_KTHREAD:
        return (f"PID {pid} is a kernel thread: it has no user address space, so no page faults of its own; "
                "give the PID of a user process")
    if pid == 1 and not allow_init:
        return ("PID 1 is the init process: holding or slowing it holds every service of the machine; "
                "fix: add --allow-init if you mean it")
    return None
