"""The journey's exercise program: built once with the system compiler, driven phase by phase.

The program (c/exercise.c, or exercise_fallback.py where no compiler exists) writes one line per
phase to a status pipe and waits for one byte on a control pipe, so the tool can read /proc and
the tracers' output while the target is paused at a known point: no sleeps, no races.
"""

from __future__ import annotations

import hashlib
import os
import select
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .runner import Target, TargetError, spawn_held

SOURCE = Path(__file__).with_name("c") / "exercise.c"
FALLBACK = Path(__file__).with_name("exercise_fallback.py")
DEFAULT_TEXT = "offset world"


class ExerciseError(Exception):
    """The exercise program could not be built, started or driven; the message has the fix."""


@dataclass(frozen=True)
class ExerciseOptions:
    offset: int = 0x100
    size: int = 4096
    text: str | None = None          # None: the built-in text, copied by stores inside main

    def check(self) -> None:
        if self.size < 1 or self.size > 1 << 40:
            raise ExerciseError(f"--size {self.size} is out of range (1 byte to 1 TiB)")
        text = DEFAULT_TEXT if self.text is None else self.text
        if "\n" in text or "\0" in text or len(text.encode()) > 400:
            raise ExerciseError("--text must be one line of at most 400 bytes, without NUL")
        if self.offset < 0 or self.offset + len(text.encode()) + 1 > self.size:
            raise ExerciseError(f"--offset 0x{self.offset:x} leaves no room for the text and its NUL in "
                                f"--size 0x{self.size:x} bytes")

    @property
    def written(self) -> str:
        return DEFAULT_TEXT if self.text is None else self.text


@dataclass
class Program:
    argv_prefix: list[str]
    path: Path              # the ELF file whose code does the write (for symbols), or the script
    compiled: bool
    how: str                # one line: how it was built or why the fallback is used


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pagefault"


def build_program(progress=None) -> Program:
    """The compiled exercise program, from the cache when its source has not changed."""
    src = SOURCE.read_bytes()
    digest = hashlib.sha256(src).hexdigest()[:16]
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return Program([sys.executable, str(FALLBACK)], FALLBACK, False,
                       "no C compiler (cc or gcc) on PATH: using the pure-Python exercise (fix: apt-get install gcc)")
    for folder in (cache_dir(), Path("/tmp") / f"pagefault-{os.geteuid()}"):
        exe = folder / f"exercise-{digest}"
        try:
            if exe.is_file() and os.access(exe, os.X_OK):
                return Program([str(exe)], exe, True, f"cached build {exe}")
            folder.mkdir(parents=True, exist_ok=True)
            if not os.access(folder, os.W_OK):
                continue
        except OSError:
            continue  # another user's cache (sudo keeps HOME): try the next place
        if progress:
            progress(f"compiling the exercise program with {cc} (once)")
        tmp = exe.with_name(exe.name + f".{os.getpid()}.tmp")
        r = subprocess.run([cc, "-O2", "-g", "-fno-omit-frame-pointer", "-o", str(tmp), str(SOURCE)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            tmp.unlink(missing_ok=True)
            return Program([sys.executable, str(FALLBACK)], FALLBACK, False,
                           f"{cc} failed ({(r.stderr.strip().splitlines() or ['?'])[-1]}): using the pure-Python exercise")
        tmp.replace(exe)
        return Program([str(exe)], exe, True, f"compiled {SOURCE.name} with {cc} -O2 -g into {exe}")
    return Program([sys.executable, str(FALLBACK)], FALLBACK, False,
                   "no writable cache folder for the compiled program: using the pure-Python exercise")


@dataclass
class Phase:
    name: str
    fields: dict[str, str] = field(default_factory=dict)
    line: str = ""


class ExerciseProcess:
    """A spawned exercise program, held before exec; then driven one phase at a time."""

    def __init__(self, program: Program, options: ExerciseOptions, stdout: int | None = None):
        options.check()
        self.program, self.options = program, options
        ctl_r, self._ctl_w = os.pipe()
        self._status_r, status_w = os.pipe()
        os.set_inheritable(ctl_r, True)
        os.set_inheritable(status_w, True)
        argv = program.argv_prefix + [str(ctl_r), str(status_w), hex(options.offset), hex(options.size)]
        if options.text is not None:
            argv.append(options.text)
        self.argv = argv
        try:
            self.target: Target = spawn_held(argv, stdout)
        except TargetError as exc:
            raise ExerciseError(str(exc)) from None
        finally:
            os.close(ctl_r)
            os.close(status_w)
        self._buf = b""

    @property
    def pid(self) -> int:
        return self.target.pid

    def release(self) -> None:
        """Let the held child exec the program."""
        try:
            self.target.release()
        except TargetError as exc:
            raise ExerciseError(str(exc)) from None

    def wait_phase(self, timeout: float = 30.0) -> Phase:
        """The next phase line; the program is paused there until advance()."""
        while b"\n" not in self._buf:
            ready, _, _ = select.select([self._status_r], [], [], timeout)
            if not ready:
                raise ExerciseError(f"the exercise program (PID {self.pid}) said nothing for {timeout:.0f} s")
            chunk = os.read(self._status_r, 4096)
            if not chunk:
                self.target.wait()
                raise ExerciseError(f"the exercise program (PID {self.pid}) ended early: "
                                    f"{self.target.describe_exit()}")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\n", 1)
        line = raw.decode(errors="replace")
        name, _, rest = line.partition(" ")
        fields = {}
        for part in rest.split(" ") if name != "touched" else [rest]:
            key, eq, value = part.partition("=")
            if eq:
                fields[key] = value
        if name == "error":
            raise ExerciseError(f"the exercise program failed: {rest}")
        return Phase(name, fields, line)

    def advance(self) -> None:
        try:
            os.write(self._ctl_w, b"g")
        except BrokenPipeError:
            pass

    def finish(self) -> str:
        """Let the program run to its end (it has no phase left to stop at); its exit as text."""
        self.advance()
        os.close(self._ctl_w)
        self._ctl_w = -1
        self.target.wait()
        os.close(self._status_r)
        return self.target.describe_exit()

    def kill(self) -> None:
        import signal
        self.target.kill(signal.SIGKILL)
        self.target.wait()
        for fd in (self._ctl_w, self._status_r):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._ctl_w = self._status_r = -1
