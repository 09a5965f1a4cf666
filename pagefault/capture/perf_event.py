"""perf_event_open(2) through ctypes: events, per-CPU ring buffers, continuous draining.

No maintained Python binding exposes perf_event_open with tracepoints, callchains
and the mmap ring buffer (python-perf ships only with the kernel tree, bcc needs
BPF), so the syscall and the ring-buffer protocol of include/uapi/linux/perf_event.h
are written here by hand.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import mmap
import os
import struct
from dataclasses import dataclass
from typing import Callable

from ..decode.arch import Arch, arch_of_machine
from ..decode.bits import DecodeError

_libc = ctypes.CDLL(None, use_errno=True)   # the libc already loaded: find_library() would run ldconfig
_libc.syscall.restype = ctypes.c_long


# perf_event_open(2)'s system-call number for every Arch: the Arch interface's nr_perf_event_open
# (decode/arch_interface.py; tests/test_fast_start.py holds the two equal), kept here as well because importing the
# interface imports every decoder of both architectures (~20 ms, a tenth of the fixed cost of
# `pagefault trace --summary-only`, which opens the kernel's fault counters and needs nothing else of them).
NR_PERF_EVENT_OPEN = {Arch.X86_64: 298, Arch.ARM64: 241}


@functools.cache
def _nr_perf_event_open() -> int:
    """The system-call number, which differs per architecture; on a machine pagefault does not know, x86-64's,
    as before: perf_event_open then fails with a clear errno. Asked at the first open, not at import."""
    try:
        return NR_PERF_EVENT_OPEN[arch_of_machine(os.uname().machine)]
    except DecodeError:
        return NR_PERF_EVENT_OPEN[Arch.X86_64]


PERF_TYPE_SOFTWARE, PERF_TYPE_TRACEPOINT = 1, 2
PERF_COUNT_SW_PAGE_FAULTS = 2
PERF_COUNT_SW_PAGE_FAULTS_MIN, PERF_COUNT_SW_PAGE_FAULTS_MAJ = 5, 6
# The kernel's own fault counts, as `perf stat -e page-faults,major-faults` reads them: charged in
# do_user_addr_fault (x86) / do_page_fault (arm64) to the faulting task, user and kernel mode alike. Not
# minor-faults: each counter open on the task is work at every fault it counts (the three together added ~75 ns of
# CPU to each fault of the first-touch loop here), and the summaries show page-faults and major-faults only.
KERNEL_FAULT_COUNTERS = (("page-faults", PERF_COUNT_SW_PAGE_FAULTS), ("major-faults", PERF_COUNT_SW_PAGE_FAULTS_MAJ))

SAMPLE_IP, SAMPLE_TID, SAMPLE_TIME, SAMPLE_ADDR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
SAMPLE_CALLCHAIN, SAMPLE_CPU, SAMPLE_PERIOD, SAMPLE_RAW = 1 << 5, 1 << 7, 1 << 8, 1 << 10
SAMPLE_REGS_USER, SAMPLE_STACK_USER = 1 << 12, 1 << 13
# x86-64's perf_regs: BP, SP, IP (arch/x86/include/uapi/asm/perf_regs.h), in the sample in bit order
USER_REGS_X86 = 1 << 6 | 1 << 7 | 1 << 8
USER_STACK_BYTES = 8192   # the stack top copied per sample, perf --call-graph dwarf's default

# attr.flags bit positions
F_EXCLUDE_KERNEL, F_EXCLUDE_HV = 5, 6
F_DISABLED, F_INHERIT, F_MMAP, F_COMM, F_ENABLE_ON_EXEC, F_TASK = 0, 1, 8, 9, 12, 13
F_WATERMARK, F_MMAP_DATA, F_SAMPLE_ID_ALL, F_MMAP2, F_COMM_EXEC, F_USE_CLOCKID = 14, 17, 18, 23, 24, 25
CLOCK_MONOTONIC = 1

RECORD_MMAP, RECORD_LOST, RECORD_COMM, RECORD_EXIT, RECORD_THROTTLE = 1, 2, 3, 4, 5
RECORD_FORK, RECORD_SAMPLE, RECORD_MMAP2 = 7, 9, 10
RECORD_NAMES = {1: "MMAP", 2: "LOST", 3: "COMM", 4: "EXIT", 5: "THROTTLE", 6: "UNTHROTTLE", 7: "FORK",
                9: "SAMPLE", 10: "MMAP2"}

PERF_CONTEXT_KERNEL = (1 << 64) - 128
PERF_CONTEXT_USER = (1 << 64) - 512
PERF_CONTEXT_MAX = (1 << 64) - 4095

PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_DISABLE = 0x2401
PERF_EVENT_IOC_SET_OUTPUT = 0x2405

_HEAD_OFF, _TAIL_OFF = 1024, 1032


class PerfAttr(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64), ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64), ("wakeup", ctypes.c_uint32), ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64), ("config2", ctypes.c_uint64), ("branch_sample_type", ctypes.c_uint64),
        ("sample_regs_user", ctypes.c_uint64), ("sample_stack_user", ctypes.c_uint32), ("clockid", ctypes.c_int32),
        ("sample_regs_intr", ctypes.c_uint64), ("aux_watermark", ctypes.c_uint32),
        ("sample_max_stack", ctypes.c_uint16), ("reserved_2", ctypes.c_uint16),
        ("aux_sample_size", ctypes.c_uint32), ("reserved_3", ctypes.c_uint32), ("sig_data", ctypes.c_uint64),
    ]


assert ctypes.sizeof(PerfAttr) == 128


class PerfError(OSError):
    """perf_event_open failed; the message says why and what fixes it."""


def explain_errno(err: int, what: str) -> str:
    """perf_event_open's ``err`` (an errno) for ``what``, in one line with its fix.

    :returns: the line (strerror, then the fix; an errno without a known fix points at perf_event_open(2)); raises nothing."""
    fixes = {
        1: "run as root, or lower /proc/sys/kernel/perf_event_paranoid (sysctl kernel.perf_event_paranoid=2)",
        13: "run as root, or lower /proc/sys/kernel/perf_event_paranoid",
        2: "the event does not exist on this kernel",
        22: "the kernel refused these event settings",
        24: "too many open files: raise the limit with ulimit -n",
        3: "the target process has already exited",
    }
    return f"cannot open {what}: {os.strerror(err)}; {fixes.get(err, 'see perf_event_open(2)')}"


def perf_event_open(attr: PerfAttr, pid: int, cpu: int, group_fd: int = -1, flags: int = 0,
                    what: str = "perf event") -> int:
    """perf_event_open(2) with FD_CLOEXEC.

    :param attr: the event (its size field is filled in here).
    :param pid: the task to follow (0: this one), with ``cpu`` -1 for any CPU, or a CPU with pid -1.
    :returns: the new file descriptor, owned by the caller.
    :raises PerfError: with errno and one line saying why and the fix (explain_errno()).

    A non-root caller gets EACCES/EPERM for tracepoints and kernel samples unless perf_event_paranoid
    allows them (≤ 1 for kernel call chains, ≤ 2 for its own processes' software events).
    """
    attr.size = ctypes.sizeof(PerfAttr)
    PERF_FLAG_FD_CLOEXEC = 8
    fd = _libc.syscall(_nr_perf_event_open(), ctypes.byref(attr), pid, cpu, group_fd, flags | PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise PerfError(err, explain_errno(err, what))
    return fd


def online_cpus() -> list[int]:
    """The CPUs online now, from /sys/devices/system/cpu/online.

    :returns: their numbers, ascending; where the file cannot be read, 0 .. os.cpu_count() - 1. Raises nothing."""
    try:
        text = open("/sys/devices/system/cpu/online").read().strip()
    except OSError:
        return list(range(os.cpu_count() or 1))
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


@dataclass
class EventSpec:
    """One event to open: a tracepoint by id, or the software page-fault event."""

    name: str
    type: int
    config: int
    sample_type: int
    user_only: bool = False   # exclude kernel and hypervisor: what perf_event_paranoid 2 allows
    busy: bool = True         # one event per fault or page: a full-size ring buffer (else 1/32 of it)


class RingBuffer:
    """One mmap'd perf ring buffer; read() returns the bytes between tail and head and frees them."""

    def __init__(self, fd: int, data_pages: int):
        self.fd = fd
        self.page = mmap.PAGESIZE
        self.size = data_pages * self.page
        self.map = mmap.mmap(fd, (data_pages + 1) * self.page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.view = memoryview(self.map)

    def read(self) -> bytes:
        views, head = self.pending()
        if not views:
            return b""
        data = b"".join(views)
        self.release(head)
        return data

    def pending(self) -> tuple[list[memoryview], int]:
        """The bytes between tail and head, not copied: views into the buffer (two where they wrap round its
        end), and the head to release() them up to. The kernel leaves them alone until then, so a caller writes
        them out straight from the buffer: a recording with --dwarf streams ~8 KiB a fault, and each copy of it
        in Python cost the reader the speed to keep up (events were lost).

        :returns: ([], head) when there is nothing new; raises nothing."""
        head = struct.unpack_from("<Q", self.map, _HEAD_OFF)[0]
        tail = struct.unpack_from("<Q", self.map, _TAIL_OFF)[0]
        if head == tail:
            return [], head
        start, end = tail % self.size + self.page, head % self.size + self.page
        if head - tail >= self.size or end <= start:
            return [self.view[start:self.page + self.size], self.view[self.page:end]], head
        return [self.view[start:end]], head

    def release(self, head: int) -> None:
        """Hand the bytes up to `head` (from pending()) back to the kernel; their views must no longer be read."""
        struct.pack_into("<Q", self.map, _TAIL_OFF, head)

    def close(self) -> None:
        self.view.release()
        self.map.close()


def _map_ring_buffer(fd: int, data_pages: int) -> tuple[RingBuffer, int]:
    """Map the largest buffer up to data_pages that the lock limit allows (perf_event_mlock_kb for non-root)."""
    pages = data_pages
    while True:
        try:
            return RingBuffer(fd, pages), pages
        except OSError as exc:
            if pages <= 1:
                raise PerfError(exc.errno or 1, f"cannot map a perf ring buffer: {exc.strerror}; fix: run as root "
                                "or raise /proc/sys/kernel/perf_event_mlock_kb") from None
            pages //= 2


class PerfSession:
    """Events for one task (and its children), one ring buffer per CPU."""

    def __init__(self, events: list[EventSpec], pid: int, *, enable_on_exec: bool, callchain: bool,
                 data_pages: int = 2048, max_stack: int = 64, monotonic_clock: bool = False):
        self.fds: list[int] = []
        self.fd_events: list[str] = []      # the event name of each fd
        self.buffers: list[RingBuffer] = []
        try:
            self._open(events, pid, enable_on_exec, callchain, data_pages, max_stack, monotonic_clock)
        except BaseException:
            self.close()
            raise

    def _open(self, events, pid, enable_on_exec, callchain, data_pages, max_stack, monotonic_clock) -> None:
        # One ring buffer per event and CPU rather than one shared per CPU: each buffer then holds
        # records of one size (side-band records aside), which the reader walks in vectorised steps.
        for cpu in online_cpus():
            for i, ev in enumerate(events):
                attr = PerfAttr()
                attr.type, attr.config = ev.type, ev.config
                attr.sample_period = 1
                attr.sample_type = ev.sample_type | (SAMPLE_CALLCHAIN if callchain else 0)
                flags = 1 << F_DISABLED | 1 << F_INHERIT | 1 << F_SAMPLE_ID_ALL | 1 << F_WATERMARK
                if ev.user_only:
                    flags |= 1 << F_EXCLUDE_KERNEL | 1 << F_EXCLUDE_HV
                if enable_on_exec:
                    flags |= 1 << F_ENABLE_ON_EXEC
                if i == 0:  # side-band records once per CPU: mappings, comm, fork/exit
                    flags |= 1 << F_MMAP | 1 << F_MMAP2 | 1 << F_MMAP_DATA | 1 << F_COMM | 1 << F_TASK | 1 << F_COMM_EXEC
                if monotonic_clock:  # sample times comparable with time.clock_gettime_ns(CLOCK_MONOTONIC)
                    flags |= 1 << F_USE_CLOCKID
                    attr.clockid = CLOCK_MONOTONIC
                attr.flags = flags
                pages = data_pages if ev.busy else max(1, data_pages // 32)
                attr.wakeup = pages * mmap.PAGESIZE // 4  # wake the reader at a quarter full
                attr.sample_max_stack = max_stack
                if attr.sample_type & SAMPLE_STACK_USER:   # --dwarf: registers and the stack top, for .eh_frame
                    attr.sample_regs_user, attr.sample_stack_user = USER_REGS_X86, USER_STACK_BYTES
                fd = perf_event_open(attr, pid, cpu, what=f"{ev.name} on CPU {cpu}")
                self.fds.append(fd)
                self.fd_events.append(ev.name)
                buf, mapped = _map_ring_buffer(fd, pages)
                self.buffers.append(buf)
                if ev.busy:
                    data_pages = mapped  # the lock limit allowed no more: keep to it for the rest

    def enable(self) -> None:
        for fd in self.fds:
            fcntl.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)

    def disable(self) -> None:
        for fd in self.fds:
            try:
                fcntl.ioctl(fd, PERF_EVENT_IOC_DISABLE, 0)
            except OSError:
                pass

    def event_counts(self) -> dict[str, int] | None:
        """How many times each event fired in the traced tasks (children that exited included), summed
        over CPUs: read(2) of each counter. Every firing is a sample (period 1), so this minus the
        samples received is what the kernel dropped, even after the last PERF_RECORD_LOST.
        None if a counter cannot be read."""
        totals: dict[str, int] = {}
        try:
            for fd, name in zip(self.fds, self.fd_events):
                totals[name] = totals.get(name, 0) + struct.unpack("<Q", os.read(fd, 8))[0]
        except (OSError, struct.error):
            return None
        return totals

    def drain(self) -> list[bytes]:
        """Whole records from every CPU's buffer (each chunk is a run of complete, 8-aligned records)."""
        return [data for data in (buf.read() for buf in self.buffers) if data]

    def drain_into(self, sink: Callable[[list[memoryview]], None]) -> None:
        """Hand each CPU's new records to `sink` as views into its buffer (one run of complete, 8-aligned records,
        in one or two pieces), without copying them; each buffer's records are given back to the kernel once
        `sink` returns, or raises (its exception is raised here, with the rest not drained)."""
        for buf in self.buffers:
            views, head = buf.pending()
            if views:
                try:
                    sink(views)
                finally:
                    for view in views:
                        view.release()
                    buf.release(head)

    def close(self) -> None:
        self.disable()
        for buf in self.buffers:
            buf.close()
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds, self.fd_events, self.buffers = [], [], []


class FaultCounters:
    """The kernel's own counts of a task's page faults (children included), counted, not sampled.

    Opened before the task runs with ``enable_on_exec`` (counting starts at its exec, as ``perf stat -- CMD``
    does), or enabled at once for a running task. :meth:`read` returns {"page-faults": n,
    "major-faults": n}, or None if a counter cannot be read.

    :raises PerfError: an event cannot be opened (perf_event_paranoid, or the task is gone).
    """

    def __init__(self, pid: int, *, enable_on_exec: bool):
        self.fds: list[tuple[str, int]] = []
        try:
            for name, config in KERNEL_FAULT_COUNTERS:
                attr = PerfAttr()
                attr.type, attr.config = PERF_TYPE_SOFTWARE, config
                attr.flags = 1 << F_INHERIT | (1 << F_DISABLED | 1 << F_ENABLE_ON_EXEC if enable_on_exec else 0)
                self.fds.append((name, perf_event_open(attr, pid, -1, what=f"the kernel's {name} counter")))
        except BaseException:
            self.close()
            raise

    def read(self) -> dict[str, int] | None:
        try:
            return {name: struct.unpack("<Q", os.read(fd, 8))[0] for name, fd in self.fds}
        except (OSError, struct.error):
            return None

    def close(self) -> None:
        for _name, fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []
