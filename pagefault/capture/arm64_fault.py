"""The live journey on arm64: one anonymous write fault of the exercise program, seen by bpftrace.

What arm64 kernels let us see (Debian's 6.1 here): there is no exceptions:page_fault_user tracepoint,
and do_mem_abort, do_translation_fault and do_page_fault are off limits to kprobes. So the fault is
met at kprobe:handle_mm_fault, which gets the address, the fault flags, the VMA and the saved user
registers (whose PC is the faulting instruction); its kernel stack shows the arm64 path that led
there (el0_da → do_mem_abort → do_translation_fault → do_page_fault). ESR_EL1 is not kept anywhere a
probe can reach for a fault that is handled, so the journey derives it from the flags and the walk,
and says so.

The walk reads every level's descriptor through the kernel's linear map. Its offset (PAGE_OFFSET -
PHYS_OFFSET; memstart_addr is not in kallsyms without CONFIG_KALLSYMS_ALL) is derived the way the
x86 direct-map base is: a PGD page is allocated (pgd_alloc → __get_free_page, seen by mm_page_alloc
with its PFN) and returned as a linear-map address, so offset = returned address - PFN × page size.
The tool forks once to make pgd_alloc run.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Callable

from .. import __version__
from ..decode.arm64_address import lpa2_in_use, split_arm64_address
from ..evidence import Arm64FaultEvidence, Arm64WalkRead, ExerciseOptions
from ..kernel import facts
from . import procfs
from .bpf_walk import BpfError, _last_error, arm_with_own_faults, bpftrace_executable, read_available
from .exercise import ExerciseProcess, build_program
from .runner import start_child, stop_child

OUTPUT_ADDRESS_MASK = 0x0000_FFFF_FFFF_F000   # OA bits 47..12 (48-bit physical addresses)
# struct user_pt_regs (arch/arm64/include/uapi/asm/ptrace.h, a UAPI layout): regs[31], sp, pc, pstate
PT_REGS_PC, PT_REGS_PSTATE = 31 * 8 + 8, 31 * 8 + 16


def _walk_block(tag: str, page: int, va_bits: int, granule: int, lpa2: bool = False) -> str:
    """bpftrace statements reading one descriptor per level through the linear map ($base), stopping at an
    invalid descriptor or a block. With LPA2 the table address runs to bit 49 (bits 51..50 sit in bits 9..8,
    zero below 1 PiB of RAM)."""
    split = split_arm64_address(page, va_bits, granule)
    mask = ((1 << 50) - 1 if lpa2 else OUTPUT_ADDRESS_MASK) & ~(granule - 1)
    lines = ["$t = (uint64)curtask->mm->pgd;", f'printf("{tag} pgdv %lx\\n", $t);']
    indent = ""
    for position, level in enumerate(split.indices):
        lines.append(f"{indent}$e = *(uint64 *)($t + {level.index * 8}); "
                     f'printf("{tag} {level.level} %lx %lx\\n", $e, $t - $base);')
        if position < len(split.indices) - 1:
            lines.append(f"{indent}if (($e & 3) == 3) {{ $t = $base + ($e & {mask:#x});")
            indent += "  "
    lines.append("}" * (len(split.indices) - 1))
    return "\n    ".join(lines)


def linear_probes(granule: int, page_offset: int | None) -> str:
    """How the script learns the linear map's offset. With memstart_addr in kallsyms (CONFIG_KALLSYMS_ALL, as
    Debian's 6.12): PAGE_OFFSET − memstart_addr, read at start. Without (Debian's 6.1): a PGD page's returned
    address minus its PFN × page size, from a pgd_alloc that the tool's own fork causes."""
    if page_offset is not None:
        return f"""BEGIN {{
    $memstart = *(int64 *)kaddr("memstart_addr");
    @lin = {page_offset:#x} - $memstart;
    printf("linearm %lx %lx\\n", @lin, $memstart);
}}"""
    return f"""kprobe:pgd_alloc {{ @pg[tid] = 1; }}
tracepoint:kmem:mm_page_alloc /@pg[tid] == 1/ {{ @pgpfn[tid] = args->pfn; }}
kretprobe:pgd_alloc /@pg[tid] == 1/ {{
    if (@lin == 0 && @pgpfn[tid] != 0) {{
        @lin = retval - @pgpfn[tid] * {granule};
        printf("linear %lx %lx %lx\\n", @lin, retval, @pgpfn[tid]);
    }}
    delete(@pg[tid]); delete(@pgpfn[tid]);
}}"""


def bpftrace_script(pid: int, page: int, va_bits: int, granule: int, tool_pid: int, page_offset: int | None = None,
                    lpa2: bool = False) -> str:
    """The probes of one arm64 fault on `page` of process `pid`; the tool's own fault and syscall arm it."""
    return f"""
{linear_probes(granule, page_offset)}
kprobe:handle_mm_fault /pid == {pid} && @state == 0 && (arg1 & ~{granule - 1:#x}) == {page:#x}/ {{
    @state = 1; @t0 = nsecs; $base = @lin;
    $v = (struct vm_area_struct *)arg0;
    printf("fault %lx %lx %lx %lx\\n", arg1, arg2, *(uint64 *)(arg3 + {PT_REGS_PC}), *(uint64 *)(arg3 + {PT_REGS_PSTATE}));
    printf("vma %lx %lx %lx %lx\\n", $v->vm_start, $v->vm_end, (uint64)$v->vm_flags, $v->vm_page_prot.pgprot);
    printf("stack begin%s\\nstack end\\n", kstack);
    {_walk_block("before", page, va_bits, granule, lpa2)}
}}
tracepoint:kmem:mm_page_alloc /pid == {pid} && @state == 1/ {{
    printf("alloc %lx %d %lx\\n", args->pfn, args->order, args->gfp_flags);
    printf("stack begin%s\\nstack end\\n", kstack);
}}
kretprobe:handle_mm_fault /pid == {pid} && @state == 1/ {{ printf("ret %lx %ld\\n", retval, nsecs - @t0); @state = 2; }}
tracepoint:raw_syscalls:sys_enter /pid == {pid} && @state == 2/ {{
    $base = @lin;
    {_walk_block("after", page, va_bits, granule, lpa2)}
    @state = 3;
    exit();
}}
kprobe:handle_mm_fault /pid == {tool_pid} && @armf == 0/ {{ printf("armed fault\\n"); @armf = 1; }}
tracepoint:raw_syscalls:sys_enter /pid == {tool_pid} && @arms == 0/ {{ printf("armed syscall\\n"); @arms = 1; }}
"""


def parse_lines(lines: list[str], ev: Arm64FaultEvidence) -> None:
    """Fill `ev` from bpftrace's lines (the allocations in the order printed, with their stacks)."""
    allocs: list[tuple[int, int, int, list[str]]] = []
    stack: list[str] | None = None
    owner = ""
    for line in lines:
        if line == "stack begin" or line.startswith("stack begin"):
            stack = []
            continue
        if line == "stack end":
            if owner == "fault":
                ev.kernel_stack = stack or []
            elif owner == "alloc" and allocs:
                allocs[-1][3].extend(stack or [])
            stack = None
            continue
        if stack is not None:
            if line.strip():
                stack.append(line.strip())
            continue
        words = line.split()
        if not words:
            continue
        head = words[0]
        if head == "linearm" and len(words) == 3:
            ev.linear_offset = int(words[1], 16)
            ev.linear_how = (f"derived: PAGE_OFFSET − memstart_addr (read through kallsyms: 0x{int(words[2], 16):x}) "
                             f"= 0x{ev.linear_offset:x}, as __phys_to_virt() computes it")
        elif head == "linear" and len(words) == 4:
            ev.linear_offset = int(words[1], 16)
            ev.linear_how = (f"derived: pgd_alloc returned 0x{int(words[2], 16):x} for the page of PFN "
                             f"0x{int(words[3], 16):x} (kmem:mm_page_alloc inside it): linear offset = "
                             f"0x{int(words[2], 16):x} - 0x{int(words[3], 16):x} × {ev.page_size} = 0x{ev.linear_offset:x}")
        elif head == "fault" and len(words) == 5:
            ev.address, ev.flags, ev.pc, ev.pstate = (int(w, 16) for w in words[1:])
            owner = "fault"
        elif head == "vma" and len(words) == 5:
            ev.vma = dict(zip(("vm_start", "vm_end", "vm_flags", "vm_page_prot"), (int(w, 16) for w in words[1:])))
        elif head == "alloc" and len(words) == 4:
            allocs.append((int(words[1], 16), int(words[2]), int(words[3], 16), []))
            owner = "alloc"
        elif head == "ret" and len(words) == 3:
            ev.retval, ev.duration_ns = int(words[1], 16) & 0xFFFFFFFF, int(words[2])
        elif head in ("before", "after") and len(words) >= 3:
            if words[1] == "pgdv":
                ev.pgd_virtual = int(words[2], 16)
            elif len(words) == 4:
                read = Arm64WalkRead(words[1], int(words[2], 16), int(words[3], 16))
                (ev.walk_before if head == "before" else ev.walk_after).append(read)
    # the data page is the movable allocation (GFP_HIGHUSER_MOVABLE); page tables are not movable
    data = [a for a in allocs if a[2] & 0x08] or allocs[-1:]
    if data:
        ev.alloc_pfn, ev.alloc_order, ev.alloc_gfp, ev.alloc_stack = data[0]


def _fork_once() -> None:
    """A child that exits at once: its new mm makes pgd_alloc run, which shows the linear map's offset."""
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)


# "linear" starts both lines that carry the offset: "linear" (from a pgd_alloc), "linearm" (memstart_addr)
ARMED = (b"armed fault", b"armed syscall", b"linear")
ARMED_MEANING = {b"linear": "report the linear-map offset (no pgd_alloc allocated a page: a PGD smaller than a page "
                            "comes from a slab, and this kernel's kallsyms lacks memstart_addr)"}


def capture_arm64_fault(options: ExerciseOptions = ExerciseOptions(), progress: Callable[[str], None] | None = None,
                        bound: float = 600.0) -> Arm64FaultEvidence:
    """Run the exercise program and capture its write fault, on an arm64 machine, as root.

    Raises BpfError (bpftrace missing, a probe refused, nothing seen) with the reason and fix.
    """
    if not facts.on_arm64():
        raise BpfError(f"the arm64 capture runs on arm64 machines; this one is {os.uname().machine}")
    exe = bpftrace_executable()
    va_bits, page_size, how = facts.arm64_translation()
    program = build_program(progress)
    ev = Arm64FaultEvidence(facts.kernel_release(), facts.kernel_version(), os.uname().machine, va_bits, page_size,
                            how, 0, 0, options.size, options.offset, " ".join(program.argv_prefix), program.how)
    target = ExerciseProcess(program, options)
    proc = session = None
    try:
        target.release()
        ev.pid = target.pid
        target.wait_phase()                       # ready
        target.advance()
        mapped = target.wait_phase()              # mapped: the VMA exists, nothing touched yet
        ev.mapping_start = int(mapped.fields["vaddr"], 16)
        page = (ev.mapping_start + options.offset) & ~(page_size - 1)
        ev.lpa2 = lpa2_in_use(va_bits, page_size)
        ev.script = bpftrace_script(ev.pid, page, va_bits, page_size, os.getpid(), _page_offset(), ev.lpa2)
        if progress:
            progress("starting bpftrace (compiling and attaching takes a while under emulation)")
        proc = start_child([exe, "-B", "line", "-e", ev.script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        buf = bytearray()
        arm_with_own_faults(proc, buf, ARMED, bound, progress, each_round=_fork_once, meaning=ARMED_MEANING)
        session = _open_fault_event(ev)
        target.advance()                          # the write: the fault
        touched = target.wait_phase()
        if session is not None:
            _read_fault_event(ev, session, page_size)
        ev.readback = touched.fields.get("readback", "")
        address = ev.mapping_start + options.offset
        ev.pagemap = procfs.pagemap_entry(ev.pid, address)
        pfn = ev.pagemap & ((1 << 55) - 1)
        try:
            ev.kpageflags = procfs.read_kpageflags(pfn) if pfn else None
        except OSError as exc:
            ev.unavailable["kpageflags"] = str(exc)
        ev.maps = procfs.read_maps(ev.pid)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            read_available(proc, buf, 0.5)
        while read_available(proc, buf, 0.1):
            pass
        err = proc.stderr.read().decode(errors="replace") if proc.poll() is not None else ""
        ev.lines = [line for line in buf.decode(errors="replace").splitlines() if not line.startswith("armed")]
        parse_lines(ev.lines, ev)
        if not ev.address:
            raise BpfError("bpftrace saw no fault on the page: " + (_last_error(err) or "no output"))
        _read_instruction(ev)
        flag_table = facts.fault_flag_values()
        ev.fault_flag_table, ev.fault_flag_source = dict(flag_table.values), flag_table.source
        gfp = facts.gfp_bits()
        ev.gfp_table, ev.gfp_source = dict(gfp.values), gfp.source + " (bit positions are the same on arm64 while " \
            "CONFIG_KASAN_HW_TAGS is off, as in distribution kernels)"
        ev.kernel_enums, _ = facts.kernel_enums()
        ev.captured_at, ev.host = facts.capture_origin()
        ev.tool_version = __version__
        target.finish()
        return ev
    finally:
        if session is not None:
            session.close()          # closing twice is harmless: a closed session holds no descriptors
        if proc is not None:
            stop_child(proc, 5)
        if target.target.poll():
            target.kill()


def _page_offset() -> int | None:
    """PAGE_OFFSET (−2^CONFIG_ARM64_VA_BITS, the configured size, whatever runs) when memstart_addr can be read
    through kallsyms; None otherwise (the script then derives the offset from a pgd_alloc)."""
    try:
        with open("/proc/kallsyms") as f:
            found = any(line.rstrip().endswith(" memstart_addr") for line in f)
    except OSError:
        return None
    configured = facts.kernel_config_value("CONFIG_ARM64_VA_BITS")
    if not found or not configured or not configured.isdigit():
        return None
    return (1 << 64) - (1 << int(configured))


def _open_fault_event(ev: Arm64FaultEvidence):
    """The perf software page-fault event on the target, with call chains; None (said) where it cannot open."""
    from .perf_event import (PERF_COUNT_SW_PAGE_FAULTS, PERF_TYPE_SOFTWARE, SAMPLE_ADDR, SAMPLE_CPU, SAMPLE_IP,
                             SAMPLE_TID, SAMPLE_TIME, EventSpec, PerfError, PerfSession)
    spec = EventSpec("page-faults", PERF_TYPE_SOFTWARE, PERF_COUNT_SW_PAGE_FAULTS,
                     SAMPLE_IP | SAMPLE_TID | SAMPLE_TIME | SAMPLE_ADDR | SAMPLE_CPU)
    try:
        session = PerfSession([spec], ev.pid, enable_on_exec=False, callchain=True, data_pages=16, monotonic_clock=True)
        session.enable()
        return session
    except PerfError as exc:
        ev.unavailable["perf"] = f"the software page-fault event could not be opened: {exc}"
        return None


def _read_fault_event(ev: Arm64FaultEvidence, session, page_size: int) -> None:
    """The sample of the fault on the written page: its address, IP and both call chains."""
    from ..kernel.kallsyms import KernelSymbols
    from .journey_capture import decode_trace_events
    from .perf_event import SAMPLE_ADDR, SAMPLE_CALLCHAIN, SAMPLE_CPU, SAMPLE_IP, SAMPLE_TID, SAMPLE_TIME
    try:
        session.disable()
        data = b"".join(session.drain())
    finally:
        session.close()
    sample_type = SAMPLE_IP | SAMPLE_TID | SAMPLE_TIME | SAMPLE_ADDR | SAMPLE_CPU | SAMPLE_CALLCHAIN
    events, _lost = decode_trace_events(data, sample_type, {}, KernelSymbols.load())
    page = (ev.mapping_start + ev.offset) & ~(page_size - 1)
    mine = [e for e in events if e.fields.get("address", 0) & ~(page_size - 1) == page]
    if not mine:
        ev.unavailable["perf"] = f"no page-fault sample on the page among {len(events)} samples"
        return
    ev.perf_address, ev.perf_ip = mine[0].fields["address"], mine[0].fields["ip"]
    ev.perf_kernel_chain = [name for _address, name in mine[0].kernel_chain]
    ev.perf_user_chain = list(mine[0].user_chain)


def _read_instruction(ev: Arm64FaultEvidence) -> None:
    """The 4 bytes at PC from /proc/PID/mem (the program is paused after the fault), and the mapping holding PC."""
    holder = next((m for m in ev.maps if m.start <= ev.pc < m.end), None)
    ev.instruction_path = (holder.path or "[anonymous]") if holder else ""
    try:
        fd = os.open(f"/proc/{ev.pid}/mem", os.O_RDONLY)
        try:
            ev.instruction = os.pread(fd, 4, ev.pc).hex()
        finally:
            os.close(fd)
    except OSError as exc:
        ev.unavailable["instruction"] = f"cannot read /proc/{ev.pid}/mem at 0x{ev.pc:x}: {exc.strerror}"
