"""What the bench scripts share: their peers installed (bpftrace and perf, which scripts/setup.sh no longer
installs), the 1 GiB first-touch loop and the floor object built, and a command timed."""

import contextlib
import errno
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PF = [sys.executable, "-m", "pagefault"]
LOOP_NS = re.compile(r"loop_ns=(\d+)")
LOOP_CPU_NS = re.compile(r"loop_cpu_ns=(\d+)")
# Python as a user runs it: its modules' bytecode cached (PYTHONDONTWRITEBYTECODE, set in some shells, made every
# run compile pagefault's modules again: ~60 ms here)
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
# Debian's packages of the peers
PACKAGES = {"bpftrace": "bpftrace", "perf": "linux-perf"}


def peers(*names: str) -> dict[str, str]:
    """The peers' paths; a missing one is installed with apt-get (as root), else the bench stops with the fix."""
    missing = [n for n in names if not shutil.which(n)]
    if missing:
        packages = [PACKAGES[n] for n in missing]
        fix = f"apt-get install -y {' '.join(packages)}"
        if os.geteuid() != 0:
            sys.exit(f"bench: needs {', '.join(missing)}; fix (as root): {fix}")
        print(f"bench: installing the peers: {fix}", flush=True)
        done = subprocess.run(["apt-get", "install", "-y", "-q", *packages], capture_output=True, text=True)
        if done.returncode != 0 or any(not shutil.which(n) for n in missing):
            sys.exit(f"bench: {fix} failed: {done.stderr.strip()[-300:]}; run apt-get update first if the package "
                     "lists are old")
    return {n: shutil.which(n) or n for n in names}


def build_loop(work: Path, frame_pointers: bool = False) -> Path:
    """bench/c/first_touch.c, linked statically (both tools then see the same loader faults run after run)."""
    exe = work / ("first_touch_fp" if frame_pointers else "first_touch")
    flags = ["-fno-omit-frame-pointer"] if frame_pointers else []
    if subprocess.run(["cc", "-O2", "-static", *flags, "-o", str(exe), str(HERE / "c" / "first_touch.c")]).returncode:
        sys.exit("bench: cannot link the target statically; fix: apt-get install libc6-dev")
    return exe


def build_floor(work: Path) -> Path:
    """bench/c/floor.bpf.c (the hooks with programs that do nothing of pagefault's), against the vmlinux.h that
    scripts/build-bpf.sh made for this machine."""
    arch = os.uname().machine
    include = ROOT / "pagefault" / "capture" / "bpf" / "build" / arch
    if not (include / "vmlinux.h").exists():
        sys.exit(f"bench: no {include}/vmlinux.h; fix: bash scripts/setup.sh (it builds pagefault's BPF objects)")
    target = {"x86_64": "x86", "aarch64": "arm64"}[arch]
    obj = work / "floor.bpf.o"
    if subprocess.run(["clang", "-O2", "-g", "-target", "bpf", f"-D__TARGET_ARCH_{target}", f"-I{include}", "-c",
                       str(HERE / "c" / "floor.bpf.c"), "-o", str(obj)]).returncode:
        sys.exit("bench: cannot build bench/c/floor.bpf.c; fix: bash scripts/setup.sh (clang, libbpf-dev)")
    return obj


def floor_command(obj: Path, what: str, loop: list[str]) -> list[str]:
    return [sys.executable, str(HERE / "floor.py"), str(obj), what, "--", *loop]


def loop_cpu_ns(stdout: str) -> int:
    """The loop's own CPU time (user + system, first_touch.c), 0 if not printed."""
    m = LOOP_CPU_NS.search(stdout)
    return int(m.group(1)) if m else 0


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[float, int, str, float]:
    """(whole wall time, the loop's own ns (0: not printed), standard output, CPU seconds of the command and
    its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env or ENV)
    elapsed = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        sys.exit(f"bench: {' '.join(map(str, cmd))} failed: {r.stderr.strip()[-400:]}")
    m = LOOP_NS.search(r.stdout)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return elapsed, int(m.group(1)) if m else 0, r.stdout, cpu


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def machine_note() -> str:
    """The load on the machine while the bench ran: other work on its CPUs shows in every number."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


# Free page reporting (a virtio balloon): the guest hands pages it has freed back to the host, and the next touch of
# one pays a fault in the host too. On these machines the same 1 GiB loop took 0.39 s on pages freed moments
# before and 0.8-1.6 s on reported ones, by how long the command before it had left them free: a tool that starts
# slower had its loop run on colder memory. This machine's kernel (not upstream's, which waits 2 s and then
# reports) has a setting for how long a page must have been free before it is reported, min_free_ms (0 here): the
# bench holds it high while it runs and puts it back after.
PAGE_REPORTING_WAIT = Path("/sys/module/page_reporting/parameters/min_free_ms")
HELD_MS = 60_000   # a minute: far longer than any gap between two commands (the setting refused 600000, took 120000)
# One bench at a time holds the setting: the lock is held for the whole bench (two benches at once also time each
# other's load), and the value found before the first hold is kept under /run (gone at reboot), so that a bench
# killed before it could put it back leaves the right value to the next one.
# Both under /run, which only root can write (not /run/lock, which anyone can, where a link planted at the name
# would have had root open its target).
BENCH_LOCK = Path("/run/pagefault-bench.lock")
SAVED_WAIT = Path("/run/pagefault-bench-min-free-ms")


@contextlib.contextmanager
def freed_memory_kept():
    """While the bench runs, pages freed by one command stay in this guest for the next (see PAGE_REPORTING_WAIT);
    the setting as it was is put back on the way out, SIGTERM and SIGHUP included (where they were not ignored).
    Where the kernel has no such setting, says so and changes nothing. Waits for another bench to end first."""
    import fcntl
    try:
        fd = os.open(BENCH_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        sys.exit(f"bench: cannot open {BENCH_LOCK} ({exc.strerror}); the benches run as root")
    lock = os.fdopen(fd, "r+")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != 0:
        sys.exit(f"bench: {BENCH_LOCK} is not a regular file of root's; remove it")
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"bench: waiting for another bench to end ({BENCH_LOCK})", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        problem = _hold_page_reporting()
        if problem:
            print(f"bench: freed pages are not kept from the host ({problem}); on a guest with free page "
                  "reporting, a loop on just-reported pages runs up to 3x slower", flush=True)
            yield
            return
        # a bench ended by SIGTERM (or the terminal's hang-up) puts the setting back too; not where they are ignored
        # (nohup): there the bench carries on as before
        handlers = {sig: signal.signal(sig, _exit_on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)
                    if signal.getsignal(sig) is signal.SIG_DFL}
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
            try:
                _put_page_reporting_back()
            finally:
                for sig, handler in handlers.items():
                    signal.signal(sig, handler)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
    finally:
        lock.close()


def _hold_page_reporting() -> str:
    """PAGE_REPORTING_WAIT set to HELD_MS, its value before kept in SAVED_WAIT (unless a bench killed earlier kept
    one there: that one is the machine's); "" when held, else why not."""
    saved_here = False
    try:
        if not _saved_value():
            part = SAVED_WAIT.with_name(SAVED_WAIT.name + ".part")   # whole or not at all: renamed into place
            part.write_text(PAGE_REPORTING_WAIT.read_text().strip() + "\n")
            os.replace(part, SAVED_WAIT)
            saved_here = True
        PAGE_REPORTING_WAIT.write_text(str(HELD_MS))
    except OSError as exc:
        if saved_here:   # a value kept by a bench killed earlier stays: it is the machine's
            SAVED_WAIT.unlink(missing_ok=True)
        if exc.errno in (errno.EACCES, errno.EPERM):
            return f"{exc.filename}: {exc.strerror}: the bench needs root"
        return f"{exc.filename}: {exc.strerror}"
    print(f"bench: {PAGE_REPORTING_WAIT} {SAVED_WAIT.read_text().strip()} -> {HELD_MS} while the bench runs (freed "
          "pages are not handed back to the host between commands; put back after; by hand: "
          f"cat {SAVED_WAIT} > {PAGE_REPORTING_WAIT})", flush=True)
    return ""


def _saved_value() -> str:
    """The machine's value kept in SAVED_WAIT ("" where none is, or what is there is not a number)."""
    try:
        value = SAVED_WAIT.read_text().strip()
    except OSError:
        return ""
    return value if value.isdigit() else ""


def _put_page_reporting_back() -> None:
    value = _saved_value()
    if not value:   # gone or damaged: the machine's value is not known here, and no guess is written
        print(f"bench: {SAVED_WAIT} holds no value to put back; {PAGE_REPORTING_WAIT} is left at "
              f"{PAGE_REPORTING_WAIT.read_text().strip()}", file=sys.stderr, flush=True)
        return
    try:
        PAGE_REPORTING_WAIT.write_text(value)
        SAVED_WAIT.unlink()
    except OSError as exc:
        print(f"bench: could not put {PAGE_REPORTING_WAIT} back ({exc.strerror}); by hand: cat {SAVED_WAIT} > "
              f"{PAGE_REPORTING_WAIT}", file=sys.stderr, flush=True)


def _exit_on_signal(signum, _frame):
    raise SystemExit(128 + signum)
