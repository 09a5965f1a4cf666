"""A small ctypes binding over the system's libbpf (libbpf.so.1, ≥ 1.0; Debian 12 ships 1.1.2): open a
compiled CO-RE object, set its read-only settings, choose its programs, load, attach, read its maps, and
tear it all down.

Why by hand: pylibbpf (0.0.7) is a pre-release, and bcc's Python compiles C at every run (LLVM in the
tool's process, seconds per start, and a compiler on every user's machine). libbpf itself is the
library the field's production tools load their objects with; these few calls are all pagefault needs.

Ownership: everything here belongs to the Python process. A BpfObject closes its links and its object
in close() (it is a context manager); nothing is pinned, so if the process dies the kernel drops the
programs, links and maps with its file descriptors.

libbpf's own log (its warnings, the verifier's log of a rejected program) is kept for each object;
when loading fails it is saved to a file in a private ``mkdtemp`` directory, and the one-line error
names that file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errno_names
import mmap
import os
import sys
from pathlib import Path
from typing import Callable, Container, Iterator

from .safe_paths import path_problem
from .signal_deferral import signals_deferred

c_void_p, c_char_p, c_int, c_bool, c_size_t, c_uint32 = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                                        ctypes.c_bool, ctypes.c_size_t, ctypes.c_uint32)


class _OpenOpts(ctypes.Structure):
    """struct bpf_object_open_opts as libbpf 1.1 declares it (libbpf.h; later releases only add fields at its end,
    and ``sz`` tells libbpf which of them this caller knows)."""
    _fields_ = [("sz", c_size_t), ("object_name", c_char_p), ("relaxed_maps", c_bool), ("pin_root_path", c_char_p),
                ("_removed_attach_prog_fd", c_uint32), ("kconfig", c_char_p), ("btf_custom_path", c_char_p),
                ("kernel_log_buf", c_char_p), ("kernel_log_size", c_size_t), ("kernel_log_level", c_uint32)]


# libbpf's function prototypes: (name, return type, argument types)
_PROTOTYPES = (
    ("libbpf_set_print", c_void_p, (c_void_p,)),
    ("bpf_object__open_file", c_void_p, (c_char_p, ctypes.POINTER(_OpenOpts))),
    ("bpf_object__load", c_int, (c_void_p,)),
    ("bpf_object__close", None, (c_void_p,)),
    ("bpf_object__next_program", c_void_p, (c_void_p, c_void_p)),
    ("bpf_object__find_program_by_name", c_void_p, (c_void_p, c_char_p)),
    ("bpf_object__find_map_by_name", c_void_p, (c_void_p, c_char_p)),
    ("bpf_program__name", c_char_p, (c_void_p,)),
    ("bpf_program__section_name", c_char_p, (c_void_p,)),
    ("bpf_program__set_autoload", c_int, (c_void_p, c_bool)),
    ("bpf_program__autoload", c_bool, (c_void_p,)),
    ("bpf_program__attach", c_void_p, (c_void_p,)),
    ("bpf_link__destroy", c_int, (c_void_p,)),
    ("bpf_map__set_initial_value", c_int, (c_void_p, c_void_p, c_size_t)),
    ("bpf_map__initial_value", c_void_p, (c_void_p, ctypes.POINTER(c_size_t))),
    ("bpf_map__fd", c_int, (c_void_p,)),
    ("bpf_map__key_size", c_uint32, (c_void_p,)),
    ("bpf_map__value_size", c_uint32, (c_void_p,)),
    ("bpf_map__type", c_int, (c_void_p,)),
    ("bpf_map_get_next_key", c_int, (c_int, c_void_p, c_void_p)),
    ("bpf_map_lookup_elem", c_int, (c_int, c_void_p, c_void_p)),
    ("libbpf_num_possible_cpus", c_int, ()),
    ("bpf_map_update_elem", c_int, (c_int, c_void_p, c_void_p, ctypes.c_uint64)),
    ("ring_buffer__new", c_void_p, (c_int, c_void_p, c_void_p, c_void_p)),
    ("ring_buffer__poll", c_int, (c_void_p, c_int)),
    ("ring_buffer__consume", c_int, (c_void_p,)),
    ("ring_buffer__free", None, (c_void_p,)),
    ("btf__load_vmlinux_btf", c_void_p, ()),
    ("btf__find_by_name_kind", ctypes.c_int32, (c_void_p, c_char_p, c_uint32)),
    ("btf__free", None, (c_void_p,)),
)
BTF_KIND_FUNC = 12   # include/uapi/linux/btf.h
# map types whose values are per CPU (enum bpf_map_type, stable UAPI numbers)
_PERCPU_MAP_TYPES = {5, 6, 10, 21}   # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH, PERCPU_CGROUP_STORAGE

# the print callback: int (*)(enum libbpf_print_level, const char *fmt, va_list ap); a va_list arrives as a
# pointer on x86-64 and arm64 alike, and is handed on as one to vsnprintf
_PRINT_FN = ctypes.CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)
_LEVELS = {0: "warning", 1: "info", 2: "debug"}
# a ring buffer's sample callback: int (*)(void *ctx, void *data, size_t size)
_SAMPLE_FN = ctypes.CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)
FIX = "fix: as root, bash scripts/setup.sh (it installs libbpf and builds the objects)"


class LibbpfError(Exception):
    """libbpf is missing, or an object could not be opened, loaded or attached; the message is one line
    with the reason and, for a failed load, the file holding libbpf's log and the verifier's."""

    def __init__(self, message: str, log_path: Path | None = None):
        super().__init__(message)
        self.log_path = log_path


_lib: ctypes.CDLL | None = None
_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = (c_char_p, c_size_t, c_char_p, c_void_p)
_log: list[str] | None = None     # where libbpf's messages go while an object is opened or loaded
_printer = None                   # the callback object, kept alive as long as libbpf may call it


def library_paths() -> list[Path]:
    """Where Debian (and other distributions) keep libbpf.so.1, best first.

    :returns: the candidate paths (they may not exist); raises nothing."""
    # the interpreter's own multiarch triplet (x86_64-linux-gnu), as sysconfig's MULTIARCH gives it without
    # importing sysconfig and its build data (~1.5 ms of every start)
    multiarch = getattr(sys.implementation, "_multiarch", None)
    if multiarch is None:
        import sysconfig
        multiarch = sysconfig.get_config_var("MULTIARCH")
    multiarch = multiarch or ""
    dirs = [f"/usr/lib/{multiarch}", f"/lib/{multiarch}"] if multiarch else []
    return [Path(d) / "libbpf.so.1" for d in dirs + ["/usr/lib64", "/lib64", "/usr/lib", "/lib"]]


_print_buffer = ctypes.create_string_buffer(4096)   # one for every message: libbpf prints ~1,000 per load


def _on_print(level: int, fmt: bytes, ap: int) -> int:
    if _log is not None:
        _libc.vsnprintf(_print_buffer, 4096, fmt, ap)
        _log.append(f"{_LEVELS.get(level, level)}: {_print_buffer.value.decode(errors='replace').rstrip()}")
    return 0


def lib() -> ctypes.CDLL:
    """The system's libbpf, loaded once from a root-owned library directory (never through
    LD_LIBRARY_PATH or the working directory).

    :returns: the library, with every prototype this module uses declared.
    :raises LibbpfError: not installed, older than 1.0, or lying where another user could replace it.
    """
    global _lib, _printer
    if _lib is not None:
        return _lib
    found = next((p for p in library_paths() if p.exists()), None)
    if found is None:
        raise LibbpfError(f"libbpf.so.1 is not installed (looked in {', '.join(str(p.parent) for p in library_paths())}); "
                          f"{FIX}")
    problem = path_problem(Path(os.path.realpath(found)))
    if problem:
        raise LibbpfError(f"refusing to load {found}: {problem}; fix: install libbpf1 from the distribution")
    library = ctypes.CDLL(str(found), use_errno=True)
    for name, restype, argtypes in _PROTOTYPES:
        try:
            fn = getattr(library, name)
        except AttributeError:
            raise LibbpfError(f"{found} has no {name}: libbpf is older than 1.0; {FIX}") from None
        fn.restype = restype
        fn.argtypes = argtypes
    _printer = _PRINT_FN(_on_print)
    library.libbpf_set_print(ctypes.cast(_printer, c_void_p))
    _lib = library
    return library


def _errno_text(code: int) -> str:
    code = abs(code)
    return f"{errno_names.errorcode.get(code, code)}: {os.strerror(code)}"


_kernel_functions: dict[str, bool] = {}    # name → a function in the running kernel's BTF (asked once each)


def kernel_functions(names: tuple[str, ...]) -> set[str]:
    """Which of `names` are functions (BTF_KIND_FUNC) in the running kernel's BTF: compiled as functions of
    their own, not inlined away, so that fentry can attach to them and a kprobe can name them. libbpf parses
    /sys/kernel/btf/vmlinux (or the vmlinux it finds) once per call, about 16 ms on the project's machine;
    the answers are kept for the process. Far cheaper than reading /proc/kallsyms (every symbol printed by
    the kernel: seconds under emulation), and exact where a search of BTF's strings would also match a
    member or a type of that name.

    :raises LibbpfError: libbpf is missing, or the kernel's BTF cannot be read (then no CO-RE object loads
        either)."""
    wanted = [n for n in names if n not in _kernel_functions]
    if wanted:
        library = lib()
        with signals_deferred():   # libbpf may log, through a Python callback (see BpfObject._logging)
            btf = library.btf__load_vmlinux_btf()
        if not btf or btf > 2**64 - 4096:     # an ERR_PTR-style failure in libbpf's older modes
            raise LibbpfError(f"libbpf cannot read the kernel's BTF ({_errno_text(ctypes.get_errno() or 2)}); "
                              "fix: a kernel built with CONFIG_DEBUG_INFO_BTF")
        try:
            for name in wanted:
                _kernel_functions[name] = library.btf__find_by_name_kind(btf, name.encode(), BTF_KIND_FUNC) > 0
        finally:
            library.btf__free(btf)
    return {n for n in names if _kernel_functions[n]}


def _btf_in_question(lines: list[str]) -> bool:
    """Whether a failed load's log (libbpf's warnings) points at the BTF relocations were made against: a custom
    BTF that could not be read, or a CO-RE relocation that failed (libbpf 1.1's relo_core and fixup messages);
    not a verifier refusal of the object's own, nor EPERM."""
    return any(line.startswith("warning") and ("BTF" in line or "CO-RE" in line or "relo #" in line)
               for line in lines)


class BpfMap:
    """One map of a loaded object: its file descriptor and sizes, read through the bpf(2) calls."""

    def __init__(self, name: str, fd: int, key_size: int, value_size: int, per_cpu: bool):
        self.name, self.fd, self.key_size, self.per_cpu = name, fd, key_size, per_cpu
        self.cpus = lib().libbpf_num_possible_cpus() if per_cpu else 1
        # a per-CPU value comes back as one 8-byte-aligned slot per possible CPU
        self.value_size = ((value_size + 7) & ~7) * self.cpus if per_cpu else value_size
        self.entry_size = value_size

    def keys(self) -> Iterator[bytes]:
        """Every key, in the map's own order (a key deleted meanwhile may be skipped)."""
        library = lib()
        key = ctypes.create_string_buffer(self.key_size)
        nxt = ctypes.create_string_buffer(self.key_size)
        prev = None
        while library.bpf_map_get_next_key(self.fd, prev, nxt) == 0:
            yield nxt.raw
            ctypes.memmove(key, nxt, self.key_size)
            prev = key

    def lookup(self, key: bytes) -> bytes | None:
        """The value at `key` (for a per-CPU map, every CPU's slot, one after another), or None."""
        value = ctypes.create_string_buffer(self.value_size)
        if lib().bpf_map_lookup_elem(self.fd, key, value) != 0:
            return None
        return value.raw

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                yield key, value

    def update(self, key: bytes, value: bytes) -> None:
        """Write `value` at `key` (BPF_ANY: create or replace).

        :raises LibbpfError: the kernel refused it (a full hash map: E2BIG; a wrong size: EINVAL)."""
        if len(key) != self.key_size or len(value) != self.value_size:
            raise LibbpfError(f"map {self.name!r} takes {self.key_size}-byte keys and {self.value_size}-byte values, "
                              f"not {len(key)} and {len(value)}")
        if lib().bpf_map_update_elem(self.fd, key, value, 0) != 0:
            raise LibbpfError(f"cannot write map {self.name!r}: {_errno_text(ctypes.get_errno())}")


class RingBuffer:
    """A BPF ring buffer map read from user space: poll() hands each record, as bytes, to `on_record`.

    :param bpf_map: a loaded map of type BPF_MAP_TYPE_RINGBUF.
    :param on_record: called with a copy of each record, in the order the kernel committed them; an
        exception it raises stops that poll and is raised from poll() (libbpf's callback cannot carry it).

    A ring buffer drops nothing silently: a record that finds it full is not written, and the BPF program
    is expected to count that (bpf_ringbuf_reserve returning NULL). Use as a context manager, or close().
    """

    def __init__(self, bpf_map: BpfMap, on_record: Callable[[bytes], None]):
        self._on_record = on_record
        self._error: BaseException | None = None
        self._callback = _SAMPLE_FN(self._sample)   # kept alive as long as libbpf may call it
        self._rb = lib().ring_buffer__new(bpf_map.fd, ctypes.cast(self._callback, c_void_p), None, None)
        if not self._rb:
            raise LibbpfError(f"cannot read map {bpf_map.name!r} as a ring buffer: {_errno_text(ctypes.get_errno())}")

    def _sample(self, _ctx: int, data: int, size: int) -> int:
        try:
            self._on_record(ctypes.string_at(data, size))
        except BaseException as exc:   # noqa: BLE001 - handed back to poll(), which raises it
            self._error = exc
            return -1                  # a negative return stops libbpf's loop over the records
        return 0

    def poll(self, timeout_ms: int) -> int:
        """Wait up to `timeout_ms` (0: don't wait) for records and hand each to on_record; how many.

        :raises LibbpfError: the poll failed (EINTR is not a failure: 0 records)."""
        if self._rb is None:
            raise LibbpfError("the ring buffer is closed")
        with signals_deferred():   # a handler raising before _sample's try was lost (see BpfObject._logging)
            n = lib().ring_buffer__poll(self._rb, timeout_ms)
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if n < 0:
            if -n == errno_names.EINTR:
                return 0
            raise LibbpfError(f"reading the ring buffer failed: {_errno_text(n)}")
        return n

    def drain(self) -> int:
        """Hand on every record already committed, without waiting; how many."""
        return self.poll(0)

    def close(self) -> None:
        if self._rb is not None:
            lib().ring_buffer__free(self._rb)
            self._rb = None

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class BpfObject:
    """A compiled BPF object, opened (not yet loaded).

    :param path: the ``.bpf.o`` file. Root loads it into the kernel, so it and every directory above it
        must be writable by root (or the effective user) alone, as for an executable (safe_paths).
    :raises LibbpfError: libbpf is missing, the path is unsafe, or libbpf cannot parse the file.

    Use as a context manager; close() destroys the links, then the object (its programs and maps).
    Without root, load() fails with EPERM and the error says to run as root.
    """

    def __init__(self, path: Path, core_btf: bool = True, keep_log: bool = False):
        self.path = Path(path)
        self.keep_log = keep_log   # libbpf's messages of a load that goes well too (tests read its CO-RE lines)
        self.log: list[str] = []
        self.links: list[int] = []
        self._mappings: list[mmap.mmap] = []
        self._obj: int | None = None
        self._before_load: list[tuple[str, tuple]] = []   # the choices made before load, made again on a reopen
        self._loaded = False
        problem = path_problem(self.path)
        if problem:
            raise LibbpfError(f"refusing to load {self.path}: {problem}; {FIX}")
        from . import core_btf as slices
        # the object's kept slice of the kernel's BTF (capture/core_btf.py), else the whole BTF, and a slice made
        # at close() for the next load
        self.core_btf: Path | None = slices.kept_slice(self.path) if core_btf else None
        self._make_slice = core_btf and self.core_btf is None
        self._obj = self._open(self.core_btf)

    def _open(self, core_btf: Path | None) -> int:
        opts = _OpenOpts(sz=ctypes.sizeof(_OpenOpts), btf_custom_path=str(core_btf).encode() if core_btf else None)
        with self._logging():
            obj = lib().bpf_object__open_file(str(self.path).encode(), ctypes.byref(opts))
        if not obj:
            raise LibbpfError(f"libbpf cannot open {self.path} ({_errno_text(ctypes.get_errno())}): "
                              + (self.log[-1] if self.log else "no message") + f"; {FIX}")
        return obj

    @contextlib.contextmanager
    def _logging(self) -> Iterator[None]:
        """libbpf's messages while inside go to this object's log; stop signals wait until libbpf returns (a
        handler raising inside the log's callback was swallowed by ctypes, and the signal lost)."""
        global _log
        _log = self.log
        try:
            with signals_deferred():
                yield
        finally:
            _log = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _program(self, name: str) -> int:
        prog = lib().bpf_object__find_program_by_name(self._obj, name.encode())
        if not prog:
            raise LibbpfError(f"{self.path} has no program {name!r}; fix: bash scripts/build-bpf.sh --force")
        return prog

    def programs(self) -> dict[str, str]:
        """Every program's name → its section (e.g. ``tp_btf/page_fault_user``), in the object's order."""
        library, prog = lib(), None
        out: dict[str, str] = {}
        while True:
            prog = library.bpf_object__next_program(self._obj, prog)
            if not prog:
                return out
            out[library.bpf_program__name(prog).decode()] = library.bpf_program__section_name(prog).decode()

    def set_autoload(self, name: str, on: bool) -> None:
        """Load program `name` with the object or not (before load): a hook this kernel lacks is switched
        off, so that one missing tracepoint does not fail the whole object."""
        if lib().bpf_program__set_autoload(self._program(name), on) != 0:
            raise LibbpfError(f"cannot choose program {name!r} after the object is loaded")
        self._before_load.append(("set_autoload", (name, on)))

    def load_only(self, wanted: Container[str | None]) -> None:
        """Load exactly the programs named in `wanted` with the object (before load); every other is switched
        off (a hook this kernel lacks, or one this capture does not use).

        :raises LibbpfError: the object is already loaded."""
        for name in self.programs():
            self.set_autoload(name, name in wanted)

    def set_rodata(self, data: bytes) -> None:
        """The initial value of the object's ``.rodata`` (its ``const volatile`` settings), before load.

        :raises LibbpfError: the object has no .rodata, or its size is not len(data) (the Python mirror
            of the settings and the object disagree: rebuild the object)."""
        library = lib()
        m = library.bpf_object__find_map_by_name(self._obj, b".rodata")
        if not m:
            raise LibbpfError(f"{self.path} has no .rodata settings; fix: bash scripts/build-bpf.sh --force")
        size = c_size_t(0)
        library.bpf_map__initial_value(m, ctypes.byref(size))
        if size.value != len(data):
            raise LibbpfError(f"{self.path}'s settings are {size.value} bytes where pagefault writes {len(data)}: "
                              "the object is older than the code; fix: bash scripts/build-bpf.sh --force")
        buf = ctypes.create_string_buffer(data, len(data))
        err = library.bpf_map__set_initial_value(m, buf, len(data))
        if err:
            raise LibbpfError(f"cannot set {self.path}'s settings: {_errno_text(err)}")
        self._before_load.append(("set_rodata", (data,)))

    def load(self) -> None:
        """Load every program left on (the verifier checks each) and create the maps.

        libbpf's messages are not taken while a load goes well, unless the object keeps its log (keep_log): each
        goes through a Python callback that needs the GIL, and a load beside a busy thread (the journey reads the
        kernel's symbols in one) waited for it at every message, ~300 of them: journey_walk's load took 64-85 ms
        where it takes ~20. A load that fails is made again with the messages taken, for the reasons it gives.

        :raises LibbpfError: one line: the reason (EPERM: not root), and the file in a private directory
            that holds libbpf's log with the verifier's."""
        err = self._load_once(quiet=not self.keep_log)
        if err and not self.keep_log:   # again, its messages taken: why libbpf or the kernel refused it
            if not self._loaded:
                self._reopen(self.core_btf)
            err = self._load_once(quiet=False)
        if err and self.core_btf is not None and not self._loaded and _btf_in_question(self.log):
            # the kept slice of the kernel's BTF may be at fault (libbpf could not read it, or a relocation failed
            # with it): the object is opened and loaded again with the whole BTF; the slice is removed, and made
            # again at close(), only if that load succeeds (else the failure is the object's own, either way)
            from . import core_btf as slices
            self.log.append(f"info: pagefault: the load with {self.core_btf} failed; loading again with the kernel's "
                            "whole BTF")
            tried = self.core_btf
            self._reopen(None)
            err = self._load_once(quiet=False)
            if not err:
                self.log.append(f"info: pagefault: loaded with the whole BTF; {tried} removed")
                slices.discard(tried)
                self._make_slice = True   # made again from the kernel's BTF at close(): a damaged file is mended
        if err:
            code = abs(err)
            saved = self.save_log()
            why = ("loading BPF programs needs root (CAP_BPF and CAP_PERFMON); fix: run pagefault as root"
                   if code == errno_names.EPERM and os.geteuid() != 0 else
                   f"the kernel refused {self.path.name} ({_errno_text(code)}): "
                   + next((line for line in reversed(self.log) if line.startswith("warning")), "no message"))
            raise LibbpfError(f"{why}; libbpf's and the verifier's log: {saved}", saved)
        self._loaded = True

    def _load_once(self, quiet: bool) -> int:
        """bpf_object__load, with libbpf's messages dropped in C (quiet) or taken into the log; its error."""
        library = lib()
        printer = _printer
        if quiet:
            library.libbpf_set_print(None)
        try:
            with self._logging():
                return library.bpf_object__load(self._obj)
        finally:
            if quiet and printer is not None:
                library.libbpf_set_print(ctypes.cast(printer, c_void_p))

    def _reopen(self, core_btf: Path | None) -> None:
        """The object closed and opened again (relocated against `core_btf`, else the whole BTF), with every
        choice and setting made before its load made again."""
        lib().bpf_object__close(self._obj)
        self._obj = None
        self.core_btf = core_btf
        self._obj = self._open(core_btf)
        replay, self._before_load = self._before_load, []
        for method, args in replay:
            getattr(self, method)(*args)

    def attach(self, name: str) -> None:
        """Attach a loaded program where its section says; its link is destroyed by close()."""
        with self._logging():
            link = lib().bpf_program__attach(self._program(name))
        if not link:
            raise LibbpfError(f"cannot attach {name} ({_errno_text(ctypes.get_errno())}): "
                              + (self.log[-1] if self.log else "no message"))
        self.links.append(link)

    def map(self, name: str) -> BpfMap:
        """A map of the loaded object, by name."""
        library = lib()
        m = library.bpf_object__find_map_by_name(self._obj, name.encode())
        if not m:
            raise LibbpfError(f"{self.path} has no map {name!r}; fix: bash scripts/build-bpf.sh --force")
        fd = library.bpf_map__fd(m)
        if fd < 0:
            raise LibbpfError(f"map {name!r} has no file descriptor: the object is not loaded")
        return BpfMap(name, fd, library.bpf_map__key_size(m), library.bpf_map__value_size(m),
                      library.bpf_map__type(m) in _PERCPU_MAP_TYPES)

    def global_data(self, section: str = ".bss") -> memoryview:
        """The loaded object's global variables of `section` (``.bss``, ``.data``), mapped shared into this
        process: writes are seen by the BPF programs at once, as a libbpf skeleton's ``skel->bss`` are.
        A struct mirror (ctypes ``from_buffer``) over it reads and writes its fields in place.

        (libbpf 1.1 maps these sections over the map only inside bpf_object__load_skeleton, which a
        loader without a generated skeleton cannot call: the map's file descriptor is mapped here.)

        :raises LibbpfError: not loaded, or the object has no such section (it has no globals of that kind)."""
        library = lib()
        m = library.bpf_object__find_map_by_name(self._obj, section.encode())
        if not m:
            raise LibbpfError(f"{self.path} has no {section} globals; fix: bash scripts/build-bpf.sh --force")
        fd = library.bpf_map__fd(m)
        if fd < 0:
            raise LibbpfError(f"{self.path}'s {section} has no map: the object is not loaded")
        size = library.bpf_map__value_size(m)
        try:
            shared = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            raise LibbpfError(f"cannot map {self.path}'s {section} ({exc.strerror}): the kernel does not "
                              "allow mapping BPF arrays (before 5.5)") from None
        self._mappings.append(shared)
        return memoryview(shared)

    def save_log(self) -> Path:
        """Write libbpf's log of this object to a new private (0700) directory; its path."""
        import tempfile
        d = Path(tempfile.mkdtemp(prefix="pagefault-libbpf-"))
        path = d / f"{self.path.stem}.log"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(self.log) + "\n")
        return path

    def detach(self) -> None:
        """Destroy every link: the programs stop running."""
        library = lib()
        while self.links:
            library.bpf_link__destroy(self.links.pop())

    def close(self) -> None:
        """Detach, then free the object with its programs and maps. Safe to call twice."""
        if self._obj is None:
            return
        try:
            self.detach()
        finally:
            for shared in self._mappings:
                with contextlib.suppress(BufferError):   # a mirror still over it: the GC unmaps it later
                    shared.close()
            self._mappings.clear()
            lib().bpf_object__close(self._obj)
            self._obj = None
            if self._make_slice and self._loaded:
                self._make_slice = False
                from . import core_btf as slices
                with signals_deferred():   # a stop signal waits for bpftool (~40 ms; 5 s at most), not a cleanup
                    slices.make_slice(self.path)
