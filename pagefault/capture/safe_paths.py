"""Paths that root may execute or write: nothing another user could have planted.

The tool runs as root, so three rules hold everywhere it touches the file system:

- a file it executes, and every directory above it, is writable only by the effective user
  (or root): otherwise another user could swap in a program of their own;
- a directory it caches programs in is created 0700 whatever the umask, and never under a
  predictable name in a shared directory (fresh ones come from ``mkdtemp``);
- an output file's directory is reached by a walk from ``/`` that follows no symlink another user
  planted or can swap (``openat(O_NOFOLLOW)``, one component at a time); the file is written to a
  temporary file made with ``O_EXCL|O_NOFOLLOW`` in that directory and then linked into place without
  following a symlink at the final name; an existing file is never replaced unless the person says
  ``--force`` (and then the symlink itself is replaced, never its target).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import stat
from pathlib import Path


class UnsafePathError(Exception):
    """A path fails the ownership or mode checks; the message says which part and why."""


class OutputError(Exception):
    """An output file cannot be written where asked; the message has the fix."""


class OutputWriteFailed(OutputError):
    """Writing an output failed midway (a full disk): exit 1, one line saying what was kept, if anything."""


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
    if ".." in Path(path).parts:   # the kernel follows a link before the ".." after it; abspath would not
        return f"{path}: a '..' in it (a symbolic link before it would lead elsewhere than the check looks)"
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


def trusted_executable(name: str, search_path: str | None = None) -> str | None:
    """The absolute path of program ``name`` on PATH (or ``search_path``), if root may run it; None if it
    is not installed.

    :raises UnsafePathError: the program found is, or lies under, a path another user can write
        (a PATH entry planted in a home directory, a world-writable bin directory).
    """
    import shutil  # here, not at the top: the counting path never looks for a program (~2 ms of each start)
    found = shutil.which(name, path=search_path)
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
    import shutil
    for d in _fresh_dirs:
        shutil.rmtree(d, ignore_errors=True)


def fresh_private_dir(prefix: str = "pagefault-") -> Path:
    """A new 0700 directory from ``mkdtemp`` (unpredictable name), removed when the tool exits.

    :returns: its path.
    :raises OSError: the temporary directory cannot be written."""
    import tempfile  # here, not at the top: its random module costs ~2 ms of each start
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
    password-database home comes next.

    Only absolute paths without a ``..`` are taken (the XDG specification ignores a relative one): the kernel
    follows a symlink before it applies the ``..`` after it, where the checks (which normalise the text) would
    look at another directory than the one written.

    :returns: the paths, none checked yet; raises nothing."""
    out: list[Path] = []
    xdg, home = os.environ.get(xdg_variable), os.environ.get("HOME")
    if xdg:
        out.append(Path(xdg) / "pagefault")
    elif home:
        out.append(Path(home) / default_under_home / "pagefault")
    own = _home_of_effective_user()
    if own:
        out.append(own / default_under_home / "pagefault")
    return [p for p in dict.fromkeys(out) if p.is_absolute() and ".." not in p.parts]


def cache_dir_candidates() -> list[Path]:
    """Where compiled programs may be cached (see user_dir_candidates).

    :returns: the paths, none checked yet; raises nothing."""
    return user_dir_candidates("XDG_CACHE_HOME", ".cache")


def root_safe_state_dir() -> Path:
    """The directory for the exercise progress file: $XDG_STATE_HOME/pagefault (default
    ~/.local/state/pagefault). As root, the first candidate whose existing ancestors no other user can
    write (a sudo-kept $HOME is another user's): root never writes through a path another user controls.

    :returns: the directory (perhaps not made yet); a caller without root gets its first candidate."""
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
    kept, why_not = kept_private_cache_dir()
    return (kept, None) if kept is not None else (fresh_private_dir(), why_not)


def _make_private_dirs(existing: Path, target: Path) -> None:
    """Every directory from below `existing` down to `target` that is missing, made 0700 one at a time (mkdir
    -p would make the ones above the last with the umask's mode) and each checked to be a directory of ours
    before the next is made in it.

    :raises OSError: one cannot be made, or what is there is not a directory of the effective user's."""
    for part in reversed([p for p in [target, *target.parents] if p != existing and existing in p.parents]):
        try:
            os.mkdir(part, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(part)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise OSError(errno.EEXIST, "not a directory of the effective user", str(part))


def kept_private_cache_dir() -> tuple[Path | None, str]:
    """private_cache_dir's kept directory, made if it is not there yet, with the directory above it if that is
    missing too (a fresh machine may have no ~/.cache; a home that is not there is not made): each made 0700
    under the nearest one that exists, once that one passes the same checks the whole path must pass (so nothing
    is made where the cache would then be refused). One that cannot be written in (a read-only home) is none.
    The fresh directory that private_cache_dir falls back to is not made here.

    :returns: (the directory, "") or (None, why no kept cache could be used); raises nothing."""
    reasons = []
    for candidate in cache_dir_candidates():
        existing = candidate.parent
        while not os.path.lexists(existing) and existing.parent != existing:
            existing = existing.parent
        if existing not in (candidate.parent, candidate.parent.parent):   # a home that is not there: nothing made
            reasons.append(f"{candidate.parent.parent}: No such directory")
            continue
        problem = path_problem(existing, private=True)
        if problem:
            reasons.append(problem)
            continue
        try:
            _make_private_dirs(existing, candidate)
            st = os.lstat(candidate)
            if st.st_uid == os.geteuid() and stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) != 0o700:
                os.chmod(candidate, 0o700)  # an older release, or another umask, may have left it wider
        except OSError as exc:
            reasons.append(f"{exc.filename or candidate}: {exc.strerror}")
            continue
        # a cache that is there but cannot be written in (a read-only home: the kernel matrix's guests see the
        # host's) is no kept cache: what would be written there fails (access() says so for a read-only mount)
        if not os.access(candidate, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
            reasons.append(f"{candidate}: not writable (a read-only file system)")
            continue
        problem = path_problem(candidate, private=True)
        if problem:
            reasons.append(problem)
            continue
        return candidate, ""
    return None, "; ".join(reasons) or "no cache directory"


def executable_problem(exe: Path, root: Path) -> str | None:
    """Why the cached program ``exe`` inside cache ``root`` must not be run, or None if it may be.

    The binary and every directory from it up to ``root`` must be owned by the effective user and
    writable by nobody else; ``root``'s own ancestors are checked by :func:`path_problem`.

    :returns: the reason, or None.
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

_MAX_LINKS = 40    # as the kernel's own limit on symlinks followed in one lookup (ELOOP)


def _foreign_writable(st: os.stat_result) -> bool:
    return bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def written_by_another(st: os.stat_result) -> str | None:
    """Why an input file (its fstat) may hold what another user wrote: its owner is neither root nor us, or
    its group or others may write it; None when only root or we could have. A recording another user could
    write may claim this boot and any file's identity (all of it readable by stat), so that root would open a
    file of its choosing to symbolise (an ELF only root may read named its functions).

    :returns: the reason in words, or None; raises nothing (it reads only the stat given)."""
    if st.st_uid not in _trusted_owners():
        return f"it belongs to uid {st.st_uid}, not to root or you"
    if _foreign_writable(st):
        return f"its group or others may write it (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _link_problem(name: str, link: os.stat_result, directory: str, dir_st: os.stat_result) -> str | None:
    """Why the symlink ``name`` in ``directory`` must not be followed to an output, or None.

    Another user could have planted it (it is theirs), or could swap it (its directory lets others
    rename entries: group/world-writable and not sticky). A root-owned link in a sticky directory
    (/tmp) or a root-only one (/var/run -> /run) is followed, and where it leads is walked in turn.
    """
    where = os.path.join(directory, name)
    if link.st_uid not in _trusted_owners():
        return f"{where} is a symbolic link owned by uid {link.st_uid}"
    if _foreign_writable(dir_st) and not dir_st.st_mode & stat.S_ISVTX:
        return (f"{where} is a symbolic link in {directory}, which other users can write "
                f"(mode {stat.S_IMODE(dir_st.st_mode):04o})")
    return None


def open_output_directory(directory: Path) -> int:
    """An ``O_PATH`` descriptor for ``directory``, reached without following a planted symlink.

    The walk starts at ``/`` and opens one component at a time with ``openat(O_NOFOLLOW|O_DIRECTORY)``;
    each symlink met is checked (:func:`_link_problem`) before its target is walked, and each directory
    opened is checked to be the one ``lstat`` saw, so nothing can be swapped in between. Files are then
    created and renamed relative to the descriptor: the output lands in the directory that was checked.

    :returns: a descriptor the caller closes.
    :raises OutputError: a component is missing, not a directory, or a symlink another user planted or
        can swap; the message names it and the fix.
    """
    # not normalised: "a/link/.." is the link target's parent, as the kernel would walk it (getcwd() holds
    # no symlink, so a relative path starts from the real working directory)
    pending = [p for p in os.path.join(os.getcwd(), directory).split("/") if p]
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open("/", flags)
    here, links = "/", 0
    try:
        while pending:
            name = pending.pop(0)
            if name == ".":
                continue
            if name == "..":
                parent = os.open("..", flags, dir_fd=fd)
                os.close(fd)
                fd, here = parent, os.path.dirname(here)
                continue
            dir_st = os.fstat(fd)
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                raise OutputError(f"cannot write in {directory}: {os.path.join(here, name)} is not a directory "
                                  "(nothing is there); fix: create it, or choose another place with -o FILE") from None
            if stat.S_ISLNK(st.st_mode):
                problem = _link_problem(name, st, here, dir_st)
                if problem:
                    raise OutputError(f"refusing to write in {directory}: {problem}, so it could lead anywhere; "
                                      f"fix: give the real directory ({os.path.realpath(directory)}) if it is "
                                      "the one meant, or write elsewhere")
                links += 1
                if links > _MAX_LINKS:
                    raise OutputError(f"cannot write in {directory}: too many symbolic links")
                target = os.readlink(name, dir_fd=fd)
                pending[:0] = [p for p in target.split("/") if p]
                if target.startswith("/"):
                    os.close(fd)
                    fd, here = os.open("/", flags), "/"
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise OutputError(f"cannot write in {directory}: {os.path.join(here, name)} is not a directory; "
                                  "fix: choose another place with -o FILE")
            child = os.open(name, flags, dir_fd=fd)
            seen = os.fstat(child)
            if (seen.st_dev, seen.st_ino) != (st.st_dev, st.st_ino):
                os.close(child)
                raise OutputError(f"cannot write in {directory}: {os.path.join(here, name)} changed while it "
                                  "was checked; fix: run again, or write elsewhere")
            os.close(fd)
            fd, here = child, os.path.join(here, name)
        return fd
    except OSError as exc:
        os.close(fd)
        raise OutputError(f"cannot write in {directory}: {exc.strerror}; fix: choose another place") from None
    except BaseException:
        os.close(fd)
        raise


def _directory_of(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def check_output_target(path: Path, force: bool = False) -> Path:
    """Refuse, before any work is done, an output path that cannot be written safely.

    :returns: the path, unchanged.
    :raises OutputError: the directory is missing, not a directory, or reached through a symlink
        another user planted or can swap (see :func:`open_output_directory`); the final name is a
        directory, a device, a symlink, or an existing file (without ``force``).
    """
    path = Path(path)
    dir_fd = open_output_directory(_directory_of(path))
    try:
        _check_final_name(path, dir_fd, force)
    finally:
        os.close(dir_fd)
    return path


def _check_final_name(path: Path, dir_fd: int, force: bool) -> None:
    # the fixes name no option: the same check serves -o, --summary, --folded, --pprof and --save-evidence, and
    # the path in the message is the one the person gave
    try:
        st = os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        if force:
            return
        raise OutputError(f"{path} is a symbolic link; pagefault never writes through one; fix: remove it, "
                          "or give --force to replace the link itself")
    if stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{path} is a directory; fix: give the name of a file in it")
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(f"{path} exists and is not a regular file; fix: choose another name")
    if not force:
        raise OutputError(f"{path} exists; fix: give --force to replace it, or choose another name")


class OutputFile:
    """An output being written: a private temporary file beside the target until commit().

    The directory is opened once by :func:`open_output_directory` (no planted symlink on the way), and
    everything after is relative to that descriptor: the temporary file is created there with
    ``O_CREAT|O_EXCL|O_NOFOLLOW``, mode 0600 while it is written, so it can never be a planted file or
    link; commit() gives it the umask's mode and moves it to the final name without following a symlink
    there and, without ``force``, without replacing anything that appeared at that name meanwhile.
    """

    def __init__(self, path: Path, force: bool = False, suffix: str = ".part"):
        import secrets
        self.path = Path(path)
        self.force = force
        parent = _directory_of(self.path)
        self.dir_fd = open_output_directory(parent)
        try:
            _check_final_name(self.path, self.dir_fd, force)
            for _attempt in range(100):
                self.tmp_name = f"{self.path.name}.{secrets.token_hex(4)}{suffix}"
                try:
                    fd = os.open(self.tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 0o600, dir_fd=self.dir_fd)
                    break
                except FileExistsError:
                    continue
            else:
                raise FileExistsError(errno.EEXIST, "no free temporary name")
        except OSError as exc:
            os.close(self.dir_fd)
            raise OutputError(f"cannot write in {parent}: {exc.strerror}; fix: choose another place") from None
        except BaseException:
            os.close(self.dir_fd)
            raise
        self.tmp = parent / self.tmp_name
        self.file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def _close_dir(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def discard(self) -> None:
        if not self.file.closed:
            with contextlib.suppress(OSError):   # a full disk fails the flush of what is being thrown away
                self.file.close()
        if self.dir_fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp_name, dir_fd=self.dir_fd)
        self._close_dir()

    def commit(self, keep_partial: bool = False) -> Path:
        """Flush, then give the file its final name; raises OutputError (keeping the temporary file).

        A flush that fails (a full disk) discards the file and raises OutputWriteFailed; with keep_partial (a
        recording, whose reader takes every whole chunk before the damage) the file is named all the same and
        OutputWriteFailed says so."""
        failed: OSError | None = None
        if not self.file.closed:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(self.file.fileno(), 0o666 & ~umask)
            # flushed, not fsync'ed: a recording is tens of MB, and fsync cost more than perf record's whole
            # overhead; the rename is still atomic for every reader, which is what "never half a file" needs
            try:
                self.file.close()
            except OSError as exc:
                failed = exc
                if not keep_partial:
                    self.discard()
                    raise OutputWriteFailed(f"cannot write {self.path}: {exc.strerror}; nothing was kept; fix: "
                                            "free space on its file system, or write elsewhere") from None
        from .signal_deferral import signals_deferred
        try:
            with signals_deferred():   # link and unlink of the temporary name are one step: never both names left
                if self.force:
                    # replaces a link or file at the name, never its target
                    os.rename(self.tmp_name, self.path.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
                else:
                    _link_no_replace(self.tmp_name, self.path.name, self.dir_fd)
        except FileExistsError:
            raise OutputError(f"{self.path} appeared while pagefault was writing; the output is kept in "
                              f"{self.tmp}; fix: rename it yourself, or run again with --force") from None
        except OSError as exc:
            raise OutputError(f"cannot name the output {self.path}: {exc.strerror}; it is kept in {self.tmp}") from None
        finally:
            self._close_dir()
        if failed is not None:
            raise OutputWriteFailed(f"{self.path} was written up to a failure ({failed.strerror}): what was written "
                                    "is kept under that name; fix: free space on its file system")
        return self.path


def _link_no_replace(tmp: str, final: str, dir_fd: int) -> None:
    """rename(tmp, final) in dir_fd that fails if final exists (link(2) never replaces and never follows)."""
    try:
        os.link(tmp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        try:   # a file system without hard links: check, then rename
            os.stat(final, dir_fd=dir_fd, follow_symlinks=False)
            raise FileExistsError(errno.EEXIST, "exists") from None
        except FileNotFoundError:
            pass
        os.rename(tmp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return
    os.unlink(tmp, dir_fd=dir_fd)


def write_output(path: Path, data: str | bytes, force: bool = False) -> Path:
    """Write a whole output file safely (see :class:`OutputFile`); raises OutputError with the fix.

    A stop signal meanwhile is held off until the file is named (or discarded), then raised: one landing
    between the temporary file's creation and the try below, or between commit()'s link and unlink, left
    FILE.*.part behind."""
    from .signal_deferral import signals_deferred
    with signals_deferred():
        return _write_whole(path, data, force)


def _write_whole(path: Path, data: str | bytes, force: bool) -> Path:
    out = OutputFile(path, force)
    try:
        out.write(data.encode() if isinstance(data, str) else data)
        return out.commit()
    except OSError as exc:
        out.discard()
        # a full disk, a quota, an I/O error: a write that failed midway (exit 1), whichever option named the
        # file (--summary, --save-evidence, --folded, -o); the fix names no option
        raise OutputWriteFailed(f"cannot write {path}: {exc.strerror}; nothing was written; fix: free space on its "
                                "file system, or write elsewhere") from None
    except BaseException:
        out.discard()
        raise
