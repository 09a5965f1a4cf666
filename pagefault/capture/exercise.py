"""The journey's exercise program: built once with the system compiler, driven phase by phase.

The program (c/exercise.c, or exercise_fallback.py where no compiler exists) writes one line per
phase to a status pipe and waits for one byte on a control pipe, so the tool can read /proc and
the tracers' output while the target is paused at a known point: no sleeps, no races.
"""

from __future__ import annotations

import hashlib
import os
import select
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..evidence import ExerciseError, ExerciseOptions, Program  # noqa: F401  (re-exported)
from .runner import Target, TargetError, child_preexec, spawn_held
from .safe_paths import UnsafePathError, executable_problem, fresh_private_dir, private_cache_dir, trusted_executable

SOURCE = Path(__file__).with_name("c") / "exercise.c"
SCENARIO_SOURCE = Path(__file__).with_name("c") / "scenario.c"
FALLBACK = Path(__file__).with_name("exercise_fallback.py")

# The compiler runs as root with this environment and no other. The caller's (kept by sudo -E or
# env_keep) would choose what root runs and reads: COMPILER_PATH and GCC_EXEC_PREFIX name the
# assembler and linker, CPATH, C_INCLUDE_PATH and LIBRARY_PATH the headers and libraries, PATH the
# rest. LANG=C keeps its one-line error in English for the message we pass on.
COMPILER_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
COMPILER_ENVIRONMENT = {"PATH": COMPILER_PATH, "LANG": "C"}


def _run_compiler(argv: list[str]) -> subprocess.CompletedProcess:
    """The compiler run with COMPILER_ENVIRONMENT, from /, dying with the tool (text output captured)."""
    return subprocess.run(argv, capture_output=True, text=True, env=COMPILER_ENVIRONMENT, cwd="/",
                          preexec_fn=child_preexec())


def _compile(source: Path, name: str, progress=None) -> Program | str:
    """The compiled program, from the private cache when its source has not changed; or why it could not be built.

    A cached binary runs only if it and every directory up to the cache root belong to the effective
    user and nobody else can write them (safe_paths); otherwise it is rebuilt into a fresh private
    directory, never into a predictable /tmp name.
    """
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    try:
        cc = trusted_executable("cc", COMPILER_PATH) or trusted_executable("gcc", COMPILER_PATH)
    except UnsafePathError as exc:
        return str(exc)
    if not cc:
        return (f"no C compiler (cc or gcc) in {COMPILER_PATH} (fix: apt-get install gcc, or bash scripts/setup.sh "
                "as root)")
    folder, why_fresh = private_cache_dir()
    exe = folder / f"{name}-{digest}"
    if os.path.lexists(exe):
        problem = executable_problem(exe, folder)
        if problem is None:
            return Program([str(exe)], exe, True, f"cached build {exe}")
        # not ours to run: build again somewhere nobody else can have touched
        why_fresh = f"the cached {exe.name} was not used ({problem})"
        folder = fresh_private_dir()
        exe = folder / f"{name}-{digest}"
    if progress:
        progress(f"compiling the {name} program with {cc}" + (" (once)" if why_fresh is None else ""))
    tmp = exe.with_name(exe.name + f".{os.getpid()}.tmp")
    r = _run_compiler([cc, "-O2", "-g", "-fno-omit-frame-pointer", "-o", str(tmp), str(source)])
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        return f"{cc} failed on {source.name}: {(r.stderr.strip().splitlines() or ['?'])[-1]}"
    os.chmod(tmp, 0o700)   # the compiler honours the umask; under umask 000 it made the binary 0777
    tmp.replace(exe)
    where = f"into {exe}" + (f" (a fresh private directory: {why_fresh})" if why_fresh else "")
    return Program([str(exe)], exe, True, f"compiled {source.name} with {cc} -O2 -g {where}")


def build_program(progress=None) -> Program:
    """The exercise program: compiled, or the pure-Python one where it cannot be.

    :returns: the Program (its ``how`` says which and why); never raises: without a compiler the fallback runs."""
    built = _compile(SOURCE, "exercise", progress)
    if isinstance(built, Program):
        return built
    return Program([sys.executable, str(FALLBACK)], FALLBACK, False, f"{built}: using the pure-Python exercise")


def build_scenario_program(progress=None) -> Program:
    """The scenario program (fork, SIGSEGV recovery and mprotect need C: there is no fallback).

    :returns: the compiled Program.
    :raises ExerciseError: it cannot be compiled (the message says why and offers --model)."""
    built = _compile(SCENARIO_SOURCE, "scenario", progress)
    if isinstance(built, Program):
        return built
    raise ExerciseError(f"the live scenario program cannot be built: {built}; or run the scenario in the "
                        "simulator with --model")


@dataclass
class Phase:
    name: str
    fields: dict[str, str] = field(default_factory=dict)
    line: str = ""


class PausedProgram:
    """A spawned program held before exec, then driven one phase at a time over two pipes."""

    def __init__(self, argv_prefix: list[str], args: list[str], stdout: int | None = None):
        ctl_r, self._ctl_w = os.pipe()
        self._status_r, status_w = os.pipe()
        os.set_inheritable(ctl_r, True)
        os.set_inheritable(status_w, True)
        self.argv = argv_prefix + [str(ctl_r), str(status_w)] + args
        try:
            # pagefault's own program, from root's private cache: it stays root's under sudo
            self.target: Target = spawn_held(self.argv, stdout, own_program=True)
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

    def wait_phase(self, timeout: float = 300.0) -> Phase:
        """The next phase line; the program is paused there until advance().

        A phase takes microseconds here and well under a second under QEMU TCG: the bound only stops a
        program that hangs, so it is generous."""
        while b"\n" not in self._buf:
            ready, _, _ = select.select([self._status_r], [], [], timeout)
            if not ready:
                raise ExerciseError(f"the program (PID {self.pid}) said nothing for {timeout:.0f} s")
            chunk = os.read(self._status_r, 4096)
            if not chunk:
                self.target.wait()
                raise ExerciseError(f"the program (PID {self.pid}) ended early: "
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
            raise ExerciseError(f"the program failed: {rest}")
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


class ExerciseProcess(PausedProgram):
    """The exercise program: ready → mapped → touched."""

    def __init__(self, program: Program, options: ExerciseOptions, stdout: int | None = None):
        options.check()
        self.program, self.options = program, options
        args = [hex(options.offset), hex(options.size)] + ([options.text] if options.text is not None else [])
        super().__init__(program.argv_prefix, args, stdout)


class ScenarioProcess(PausedProgram):
    """The scenario program: ready, then one phase line "op N …" after each operation."""

    def __init__(self, program: Program, ops: list[str], stdout: int | None = None):
        self.program, self.ops = program, list(ops)
        super().__init__(program.argv_prefix, self.ops, stdout)
