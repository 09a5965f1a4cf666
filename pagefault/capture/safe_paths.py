"""Paths that root may execute or write: nothing another user could have planted.

The tool runs as root, so three rules hold everywhere it touches the file system:

- a file it executes, and every directory above it, is writable only by the effective user
  (or root): otherwise another user could swap in a program of their own;
- a directory it caches programs in is created 0700 whatever the umask, and never under a
  predictable name in a shared directory (fresh ones come from ``mkdtemp``);
- an output file is written to a temporary file made with ``O_EXCL|O_NOFOLLOW`` beside it and
  then linked into place without following a symlink at the final name; an existing file is
  never replaced unless the person says ``--force`` (and then the symlink itself is replaced,
  never its target).
"""

from __future__ import annotations

import atexit
import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path


class UnsafePathError(Exception):
    """A path fails the ownership or mode checks; the message says which part and why."""


class OutputError(Exception):
    """An output file cannot be written where asked; the message has the fix."""


def _trusted_owners() -> set[int]:
    return {0, os.geteuid()}


def path_problem(path: Path, *, private: bool = False) -> str | None:
    """Why ``path`` could be replaced by another user, or None when it cannot.

    :param path: an absolute or relative path; it is resolved component by component with
        ``lstat``, so a symlink anywhere in it is itself a problem for ``private`` paths.
    :param private: the last component must be owned by the effective user (not merely by root)
        and be writable by nobody else; its ancestors must be owned by root or the effective user
        and be group/world-writable only if sticky (as /tmp is), like OpenSSH's ``safe_path``.
    :returns: a sentence naming the offending component, or None.
    """
    path = Path(os.path.abspath(path))
    euid = os.geteuid()
    chain = [path] + list(path.parents)
    linked = False
    for i, part in enumerate(chain):
        try:
            st = os.lstat(part)
        except OSError as exc:
            return f"{part}: {exc.strerror}"
        last = i == 0
        if stat.S_ISLNK(st.st_mode):
            if last or private:
                return f"{part} is a symbolic link"
            if st.st_uid not in _trusted_owners():
                return f"{part} is a symbolic link owned by uid {st.st_uid}"
            linked = True   # a trusted link above (e.g. /bin -> usr/bin): where it leads is checked below
            continue
        owners = {euid} if (last and private) else _trusted_owners()
        if st.st_uid not in owners:
            return f"{part} is owned by uid {st.st_uid}, not by uid {euid}" + ("" if last and private else " or root")
        writable_by_others = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if writable_by_others and not (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX and not last):
            return f"{part} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o})"
        if last and stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and private:
            return f"{part} has {st.st_nlink} hard links"
    if linked:
        real = Path(os.path.realpath(path))
        if real != path:
            return path_problem(real, private=private)
    return None


def trusted_executable(name: str) -> str | None:
    """The absolute path of program ``name`` on PATH, if root may run it; None if it is not installed.

    :raises UnsafePathError: the program found is, or lies under, a path another user can write
        (a PATH entry planted in a home directory, a world-writable bin directory).
    """
    found = shutil.which(name)
    if not found:
        return None
    real = os.path.realpath(found)
    problem = path_problem(Path(real))
    if problem:
        raise UnsafePathError(f"refusing to run {found}: {problem}; fix: install {name} from the "
                              "distribution (apt-get install) or put a root-owned one first on PATH")
    return real


_fresh_dirs: list[str] = []


def _remove_fresh_dirs() -> None:
    for d in _fresh_dirs:
        shutil.rmtree(d, ignore_errors=True)


def fresh_private_dir(prefix: str = "pagefault-") -> Path:
    """A new 0700 directory from ``mkdtemp`` (unpredictable name), removed when the tool exits."""
    d = tempfile.mkdtemp(prefix=prefix)
    if not _fresh_dirs:
        atexit.register(_remove_fresh_dirs)
    _fresh_dirs.append(d)
    return Path(d)


def _home_of_effective_user() -> Path | None:
    import pwd
    try:
        return Path(pwd.getpwuid(os.geteuid()).pw_dir)
    except KeyError:
        return None


def user_dir_candidates(xdg_variable: str, default_under_home: str) -> list[Path]:
    """Where a per-user pagefault directory may go, best first: $XDG_… (or $HOME/default_under_home),
    then the effective user's own home from the password database. Under sudo $HOME can be the
    invoking user's, which root must not write in: the checks of path_problem() rule it out, and the
    password-database home comes next."""
    out: list[Path] = []
    xdg, home = os.environ.get(xdg_variable), os.environ.get("HOME")
    if xdg:
        out.append(Path(xdg) / "pagefault")
    elif home:
        out.append(Path(home) / default_under_home / "pagefault")
    own = _home_of_effective_user()
    if own:
        out.append(own / default_under_home / "pagefault")
    return list(dict.fromkeys(out))


def cache_dir_candidates() -> list[Path]:
    """Where compiled programs may be cached (see user_dir_candidates)."""
    return user_dir_candidates("XDG_CACHE_HOME", ".cache")


def root_safe_state_dir() -> Path:
    """The directory for the exercise progress file: $XDG_STATE_HOME/pagefault (default
    ~/.local/state/pagefault). As root, the first candidate whose existing ancestors no other user can
    write (a sudo-kept $HOME is another user's): root never writes through a path another user controls."""
    candidates = user_dir_candidates("XDG_STATE_HOME", os.path.join(".local", "state"))
    if os.geteuid() != 0:
        return candidates[0] if candidates else Path(".") / "pagefault"
    for candidate in candidates:
        existing = next((p for p in [candidate, *candidate.parents] if os.path.lexists(p)), None)
        if existing is not None and path_problem(existing) is None:
            return candidate
    return candidates[-1] if candidates else Path("/root/.local/state/pagefault")


def private_cache_dir() -> tuple[Path, str | None]:
    """A cache directory owned by the effective user, mode 0700, under directories nobody else can write.

    :returns: (directory, None) for a kept cache, or (a fresh ``mkdtemp`` directory, the reason no
        kept cache could be used) — the fresh one is removed when the tool exits.
    """
    reasons = []
    for candidate in cache_dir_candidates():
        problem = path_problem(candidate.parent)
        if problem:
            reasons.append(problem)
            continue
        try:
            candidate.mkdir(mode=0o700, parents=False, exist_ok=True)
            st = os.lstat(candidate)
            if st.st_uid == os.geteuid() and stat.S_ISDIR(st.st_mode):
                os.chmod(candidate, 0o700)  # an older release, or another umask, may have left it wider
        except FileNotFoundError:
            try:
                candidate.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                candidate.mkdir(mode=0o700, exist_ok=True)
            except OSError as exc:
                reasons.append(f"{candidate}: {exc.strerror}")
                continue
        except OSError as exc:
            reasons.append(f"{candidate}: {exc.strerror}")
            continue
        problem = path_problem(candidate, private=True)
        if problem:
            reasons.append(problem)
            continue
        return candidate, None
    return fresh_private_dir(), "; ".join(reasons) or "no cache directory"


def executable_problem(exe: Path, root: Path) -> str | None:
    """Why the cached program ``exe`` inside cache ``root`` must not be run, or None if it may be.

    The binary and every directory from it up to ``root`` must be owned by the effective user and
    writable by nobody else; ``root``'s own ancestors are checked by :func:`path_problem`.
    """
    exe = Path(exe)
    if root not in exe.parents:
        return f"{exe} is not inside the cache {root}"
    for part in [exe, *exe.parents]:
        problem = path_problem(part, private=True)
        if problem:
            return problem
        if part == root:
            return None
    return None


# --- output files ------------------------------------------------------------------------------------

def check_output_target(path: Path, force: bool = False) -> Path:
    """Refuse, before any work is done, an output path that cannot be written safely.

    :returns: the path, unchanged.
    :raises OutputError: the parent is missing or not a directory; the final name is a directory,
        a device, a symlink, or an existing file (without ``force``).
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: {parent} is not a directory; fix: create it, or choose "
                          "another place with -o FILE")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        if force:
            return path
        raise OutputError(f"{path} is a symbolic link; pagefault never writes through one; fix: remove it, "
                          "or give --force to replace the link itself")
    if stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{path} is a directory; fix: give a file name with -o FILE")
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(f"{path} exists and is not a regular file; fix: choose a file name with -o FILE")
    if not force:
        raise OutputError(f"{path} exists; fix: give --force to replace it, or choose another name with -o FILE")
    return path


class OutputFile:
    """An output being written: a private temporary file beside the target until commit().

    The temporary file is created by ``mkstemp`` (``O_CREAT|O_EXCL|O_NOFOLLOW``, 0600) in the
    target's directory, so it can never be a planted file or link; commit() moves it to the final
    name without following a symlink there and, without ``force``, without replacing anything that
    appeared at that name meanwhile.
    """

    def __init__(self, path: Path, force: bool = False, suffix: str = ".part"):
        self.path = check_output_target(Path(path), force)
        self.force = force
        parent = self.path.parent if str(self.path.parent) else Path(".")
        try:
            fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=suffix, dir=parent)
        except OSError as exc:
            raise OutputError(f"cannot write in {parent}: {exc.strerror}; fix: choose another place with -o FILE") from None
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        self.tmp = Path(tmp)
        self.file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.tmp.unlink(missing_ok=True)

    def commit(self) -> Path:
        """Flush, then give the file its final name; raises OutputError (keeping the temporary file)."""
        if not self.file.closed:
            # flushed, not fsync'ed: a recording is tens of MB, and fsync cost more than perf record's whole
            # overhead; the rename is still atomic for every reader, which is what "never half a file" needs
            self.file.close()
        try:
            if self.force:
                os.rename(self.tmp, self.path)   # replaces a link or file at the name, never its target
            else:
                _link_no_replace(self.tmp, self.path)
        except FileExistsError:
            raise OutputError(f"{self.path} appeared while pagefault was writing; the output is kept in "
                              f"{self.tmp}; fix: rename it yourself, or run again with --force") from None
        except OSError as exc:
            raise OutputError(f"cannot name the output {self.path}: {exc.strerror}; it is kept in {self.tmp}") from None
        return self.path


def _link_no_replace(tmp: Path, final: Path) -> None:
    """rename(tmp, final) that fails if final exists (link(2) never replaces and never follows)."""
    try:
        os.link(tmp, final, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(final):   # a file system without hard links: check, then rename
            raise FileExistsError(errno.EEXIST, "exists") from None
        os.rename(tmp, final)
        return
    os.unlink(tmp)


def write_output(path: Path, data: str | bytes, force: bool = False) -> Path:
    """Write a whole output file safely (see :class:`OutputFile`); raises OutputError with the fix."""
    out = OutputFile(path, force)
    try:
        out.write(data.encode() if isinstance(data, str) else data)
        return out.commit()
    except OSError as exc:
        out.discard()
        raise OutputError(f"cannot write {path}: {exc.strerror}; nothing was written; fix: choose another "
                          "place with -o FILE") from None
    except BaseException:
        out.discard()
        raise
