"""The records of a capture: what /proc, the tracepoints, bpftrace and the ELF file showed.

Plain dataclasses of ints and strings only, so pagefault.evidence.file can save them as JSON and load
them back into the same types. Times are CLOCK_MONOTONIC nanoseconds, as the perf samples use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..decode.arch import Arch

# Mapping, MapsLine and parse_maps live apart (maps.py) so that a command needing only them (trace's
# counters) imports no decoder; re-exported here, where the rest of pagefault finds them
from .maps import Mapping, MapsLine, parse_maps  # noqa: F401

DEFAULT_TEXT = "offset world"


class ExerciseError(Exception):
    """The exercise program could not be built, started or driven, or its options are wrong; the
    message has the fix."""


@dataclass(frozen=True)
class MemorySettings:
    """The knobs the fault paths depend on, each with where it was read (or why it is assumed)."""

    thp_enabled: str
    thp_use_zero_page: bool
    fault_around_bytes: int
    stack_rlimit: int
    sources: dict[str, str]
    thp_defrag: str = "madvise"   # /sys/kernel/mm/transparent_hugepage/defrag (older evidence: the default)


@dataclass
class Program:
    """The program the journey ran: how it was built, and the ELF file whose code does the write."""

    argv_prefix: list[str]
    path: Path              # the ELF file whose code does the write (for symbols), or the script
    compiled: bool
    how: str                # one line: how it was built or why the fallback is used


@dataclass(frozen=True)
class ExerciseOptions:
    offset: int = 0x100
    size: int = 4096
    text: str | None = None          # None: the built-in text, copied by stores inside main

    def check(self) -> None:
        """Raises ExerciseError (with the fix) for options the program cannot run with."""
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
class Snapshot:
    """What /proc showed while the target was paused at one phase."""

    phase: str
    time_ns: int                      # CLOCK_MONOTONIC, the clock the perf samples use
    maps: list[MapsLine]
    minor_faults: int
    major_faults: int
    pagemap: int | None = None        # raw entry of the faulting page
    vm_flags_mnemonics: list[str] | None = None
    kpageflags: int | None = None
    kpagecount: int | None = None
    errors: list[str] = field(default_factory=list)
    # the other pages the write covers (a write that straddles a page boundary): page address → entry
    more_pagemaps: dict[int, int] = field(default_factory=dict)


@dataclass
class TraceEvent:
    """One sample of the target: its tracepoint (or software event), fields and symbolised call chain."""

    name: str
    time_ns: int
    cpu: int
    pid: int
    fields: dict[str, int]
    kernel_chain: list[tuple[int, str]] = field(default_factory=list)   # (address, function+offset), innermost first
    user_chain: list[int] = field(default_factory=list)


@dataclass
class WalkRead:
    """Entries read at one moment, top level first; a level missing means the walk stopped above it."""

    when: str
    pgd_virtual: int | None = None
    entries: dict[str, int] = field(default_factory=dict)
    table_physical: dict[str, int] = field(default_factory=dict)   # physical address of each level's table
    # kernel objects read through BTF at the same moment (names: see capture/bpf_walk.OBJECT_FIELDS)
    objects: dict[str, int] = field(default_factory=dict)
    maple_path: list[MapleStep] = field(default_factory=list)      # root first, down to the leaf
    maple_leaf_pivots: list[int] = field(default_factory=list)


@dataclass
class MapleStep:
    """One node of the maple-tree search for the fault address, as bpftrace read it."""

    node: int          # struct maple_node address
    node_type: int     # enum maple_type (1 leaf_64, 2 range_64, 3 arange_64)
    slot: int          # the slot the search took
    slot_entry: int    # what that slot held: the child's encoded pointer, or the VMA at the leaf


@dataclass
class BpfWalk:
    direct_map_base: int
    pgd_physical: int
    reads: dict[str, WalkRead]
    script: str
    stderr: str = ""
    # vmemmap_base = folio − pfn × sizeof(struct page), from a pagemap:mm_lru_insertion event
    vmemmap_base: int | None = None
    vmemmap_folio: int | None = None
    vmemmap_pfn: int | None = None
    struct_page_size: int | None = None
    # whether KASLR placed the memory regions (vmemmap, the direct map), and the sources read (capture/kaslr.py)
    kaslr_on: bool | None = None
    kaslr_how: str = ""


@dataclass
class KprobeFault:
    """handle_mm_fault() of the followed fault, as its kprobe and kretprobe saw it."""

    address: int | None = None
    flags: int | None = None              # arg2: the fault flags, observed
    vma_pointer: int | None = None        # arg0
    vma: dict[str, int] = field(default_factory=dict)   # vm_start, vm_end, vm_flags, vm_page_prot, vm_file, anon_vma
    retval: int | None = None             # vm_fault_t
    duration_ns: int | None = None        # from the kprobe to the kretprobe
    handlers: list[tuple[str, int]] = field(default_factory=list)   # (function, ns after the entry), in order
    not_probeable: dict[str, str] = field(default_factory=dict)     # handler → why it has no kprobe here
    pid: int | None = None
    start_ns: int | None = None           # bpftrace nsecs (CLOCK_MONOTONIC, the perf samples' clock)


@dataclass
class KprobeMmap:
    """The call that made the mapping's VMA, as its kprobe saw it."""

    function: str = ""
    file: int | None = None
    addr: int | None = None
    length: int | None = None
    vm_flags: int | None = None
    pgoff: int | None = None
    retval: int | None = None
    merges: list[tuple[str, int]] = field(default_factory=list)     # (function, returned VMA or 0)
    not_probeable: dict[str, str] = field(default_factory=dict)


@dataclass
class RipFacts:
    """The faulting RIP traced into the program's ELF file, as read where the fault was captured."""

    ip: int
    mapping: MapsLine
    file_offset: int
    elf_vaddr: int | None
    symbol: str | None
    symbol_offset: int | None
    derivations: list[str]
    describe: str                                    # "exercise:main+0x4c"
    instruction: tuple[int, str, str, str] | None = None   # (ELF address, mnemonic, operands, bytes in hex)
    source_line: tuple[str, int] | None = None
    error: str = ""                                  # why a part could not be read


@dataclass
class JourneyEvidence:
    arch: ClassVar[Arch] = Arch.X86_64     # the exercise's bpf walk traps at x86's page_fault_user (not saved)
    tier: str
    kernel_release: str
    kernel_version: tuple[int, int]
    paging_levels: int
    paging_why: str
    program: Program
    options: ExerciseOptions
    argv: list[str] = field(default_factory=list)
    pid: int = 0
    stage: str = ""                   # the last stage reached
    spawned_ns: int = 0
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    events: list[TraceEvent] = field(default_factory=list)
    event_sources: dict[str, str] = field(default_factory=dict)   # event name -> "observed: tracepoint …"
    lost_events: int = 0
    vaddr: int | None = None
    readback: str | None = None
    exit: str = ""
    bpf: BpfWalk | None = None
    unavailable: dict[str, str] = field(default_factory=dict)     # what -> reason and fix
    soft_dirty_config: bool | None = None
    fault_flag_table: dict[str, int] = field(default_factory=dict)
    fault_flag_source: str = ""
    gfp_table: dict[str, int] = field(default_factory=dict)
    gfp_source: str = ""
    migratetypes: dict[int, str] = field(default_factory=dict)    # enum migratetype, value -> name
    migratetype_source: str = ""
    kernel_enums: dict[str, dict[int, str]] = field(default_factory=dict)   # enum name → value → name (BTF)
    kernel_enums_source: str = ""
    kprobe_fault: KprobeFault | None = None
    kprobe_mmap: KprobeMmap | None = None
    rip: RipFacts | None = None
    captured_at: str = ""             # ISO 8601, the capture's wall clock
    host: str = ""
    tool_version: str = ""

    @property
    def fault_address(self) -> int | None:
        return None if self.vaddr is None else self.vaddr + self.options.offset

    def written_pages(self) -> list[int]:
        """The page addresses the write covers, its text and NUL: more than one when it straddles a boundary."""
        if self.vaddr is None:
            return []
        first = self.vaddr + self.options.offset
        last = first + len(self.options.written.encode())      # the NUL strcpy writes
        return list(range(first & ~0xFFF, (last & ~0xFFF) + 1, 4096))


@dataclass
class OpSnapshot:
    """What the program said and /proc showed right after one operation."""

    index: int
    op: str
    pid: int                                  # the process that ran it
    time_ns: int                              # CLOCK_MONOTONIC, as the samples
    region: int
    pages: int
    segv_code: int = 0
    segv_addr: int = 0
    pagemaps: dict[int, list[int]] = field(default_factory=dict)     # pid → the region's entries
    kpageflags: dict[int, int] = field(default_factory=dict)         # PFN → flags
    maps: dict[int, list[MapsLine]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    segv_esr: int = 0                         # arm64: ESR_EL1 from the SIGSEGV's signal frame (esr_context), observed

    def region_states(self, pid: int) -> list[str]:
        """One page_state word per page of the region in pid's pagemap."""
        from ..decode.pagemap import PM_PFN_MASK, page_state
        return [page_state(e, self.kpageflags.get(e & PM_PFN_MASK) if e >> 63 else None)
                for e in self.pagemaps.get(pid, [])]


@dataclass
class ScenarioEvidence:
    tier: str
    kernel_release: str
    ops: list[str]
    program: Program
    settings: MemorySettings
    scenario: str = ""                        # its name in the library
    paging_levels: int = 4
    pid: int = 0
    child_pid: int = 0
    start_ns: int = 0
    ready_maps: list[MapsLine] = field(default_factory=list)
    snapshots: list[OpSnapshot] = field(default_factory=list)
    events: list[TraceEvent] = field(default_factory=list)
    event_sources: dict[str, str] = field(default_factory=dict)
    lost_events: int = 0
    exit: str = ""
    captured_at: str = ""
    host: str = ""
    tool_version: str = ""
    kprobe_faults: list[KprobeFault] = field(default_factory=list)   # every handle_mm_fault of the program
    unavailable: dict[str, str] = field(default_factory=dict)
    fault_flag_table: dict[str, int] = field(default_factory=dict)
    fault_flag_source: str = ""
    kernel_enums: dict[str, dict[int, str]] = field(default_factory=dict)
    kernel_enums_source: str = ""
    # the architecture it ran on (stored as "x86_64" or "arm64"; older files hold none: x86_64).
    # On arm64 the faults are the perf software page-fault event's samples (no tracepoint has the trap
    # there), and what the trap was is read from handle_mm_fault's flags in kprobe_faults.
    arch: Arch = Arch.X86_64
    lpa2: bool = False                        # arm64: 52-bit (LPA2) descriptors in use

    @property
    def fault_event(self) -> str:
        """The name of the events that are the faults: the architecture's (decode.arch_interface's trap_event)."""
        from ..decode.arch_interface import arch_interface  # the decoders only when asked
        return arch_interface(self.arch).trap_event

    def op_events(self, index: int, name: str) -> list[TraceEvent]:
        """The events of the program (and its child) between the pause before operation index and the one after."""
        lo = self.snapshots[index - 1].time_ns if index else self.start_ns
        hi = self.snapshots[index].time_ns
        pids = {self.pid, self.child_pid} - {0}
        return [e for e in self.events if e.name == name and e.pid in pids and lo < e.time_ns <= hi]

    def region_faults(self, index: int) -> list[TraceEvent]:
        """The fault events of operation index whose address is in the region: page_fault_user's on x86,
        the software page-fault event's on arm64."""
        snap = self.snapshots[index]
        lo, hi = snap.region, snap.region + snap.pages * 4096
        return [e for e in self.op_events(index, self.fault_event) if lo <= e.fields["address"] < hi]


@dataclass
class ProgramFaultEvidence:
    """One chosen fault of any program, and what was seen of it (capture/program_fault.py)."""

    # the program capture traps at x86's exceptions:page_fault_user; the file names no architecture (not saved)
    arch: ClassVar[Arch] = Arch.X86_64

    kernel_release: str
    kernel_version: tuple[int, int]
    paging_levels: int
    paging_why: str
    argv: list[str]
    pid: int
    selector_words: str                # how the fault was chosen, in words
    selector: str                      # own-code, nth, address, symbol, line or kind
    selector_value: str = ""
    tier: str = "bpf"
    tid: int = 0
    nth: int = 0                       # the program's fault number of the chosen fault
    address: int = 0
    ip: int = 0
    error_code: int = 0
    fault_ns: int = 0                  # bpftrace nsecs (CLOCK_MONOTONIC, the perf samples' clock)
    kernel_mode: bool = False          # taken in kernel mode (exceptions:page_fault_kernel), on a user address
    syscall_nr: int = -1               # kernel_mode: the system call it was taken in (saved orig_ax), -1 none
    lines: list[str] = field(default_factory=list)      # bpftrace's output, as printed
    bpf: BpfWalk | None = None
    paused: bool = False               # the program was stopped after the fault while /proc was read
    maps: list[MapsLine] = field(default_factory=list)
    pagemap: int | None = None
    kpageflags: int | None = None
    kpagecount: int | None = None
    rip: RipFacts | None = None
    events: list[TraceEvent] = field(default_factory=list)
    event_sources: dict[str, str] = field(default_factory=dict)
    lost_events: int = 0
    exit: str = ""
    unavailable: dict[str, str] = field(default_factory=dict)
    fault_flag_table: dict[str, int] = field(default_factory=dict)
    fault_flag_source: str = ""
    gfp_table: dict[str, int] = field(default_factory=dict)
    gfp_source: str = ""
    kernel_enums: dict[str, dict[int, str]] = field(default_factory=dict)
    kernel_enums_source: str = ""
    direct_map_how: str = ""
    captured_at: str = ""
    host: str = ""
    tool_version: str = ""


@dataclass
class Arm64WalkRead:
    """One descriptor read by bpftrace on arm64: its level, its value, and the physical address of its table."""

    level: str
    value: int
    table_physical: int


@dataclass
class Arm64FaultEvidence:
    """One anonymous write fault of the exercise program on arm64 (capture/arm64_fault.py).

    arm64 kernels before 6.x have no exceptions:page_fault_user tracepoint and refuse kprobes on
    do_mem_abort, so the trap is seen at kprobe:handle_mm_fault: the address, the fault flags, the
    saved user registers (PC) and the kernel stack that led there.
    """

    arch: ClassVar[Arch] = Arch.ARM64      # what this capture is of (not saved: its type says it)
    kernel_release: str
    kernel_version: tuple[int, int]
    machine: str
    va_bits: int                       # in use (a 52-bit kernel runs with 48 on a CPU without LPA2)
    page_size: int
    translation_source: str            # where VA_BITS and the page size were read
    pid: int
    mapping_start: int
    mapping_size: int
    offset: int
    program: str = ""
    program_how: str = ""
    address: int = 0                   # handle_mm_fault's address argument
    flags: int = 0                     # handle_mm_fault's flags argument
    pc: int = 0                        # the saved user PC (struct user_pt_regs, UAPI layout)
    pstate: int = 0
    instruction: str = ""              # the 4 bytes at PC, hex, read from /proc/PID/mem
    instruction_path: str = ""         # the mapping holding PC ("[anonymous]" for one without a file; "": none)
    kernel_stack: list[str] = field(default_factory=list)
    vma: dict[str, int] = field(default_factory=dict)       # vm_start, vm_end, vm_flags, vm_page_prot
    linear_offset: int | None = None   # PAGE_OFFSET - PHYS_OFFSET: virtual = physical + this
    linear_how: str = ""
    lpa2: bool = False                 # descriptors in FEAT_LPA2's format (52-bit addresses with 4/16 KiB pages)
    pgd_virtual: int = 0
    walk_before: list[Arm64WalkRead] = field(default_factory=list)
    walk_after: list[Arm64WalkRead] = field(default_factory=list)
    alloc_pfn: int | None = None
    alloc_order: int | None = None
    alloc_gfp: int | None = None
    alloc_stack: list[str] = field(default_factory=list)
    retval: int | None = None
    duration_ns: int | None = None
    # the perf software page-fault event of the same fault (PERF_SAMPLE_ADDR, PERF_SAMPLE_IP, call chains):
    # a second, independent observation of the address and the PC; None where it was not captured
    perf_address: int | None = None
    perf_ip: int | None = None
    perf_kernel_chain: list[str] = field(default_factory=list)
    perf_user_chain: list[int] = field(default_factory=list)
    pagemap: int | None = None
    kpageflags: int | None = None
    maps: list[MapsLine] = field(default_factory=list)
    readback: str = ""
    lines: list[str] = field(default_factory=list)           # bpftrace's output, as printed
    script: str = ""
    unavailable: dict[str, str] = field(default_factory=dict)
    fault_flag_table: dict[str, int] = field(default_factory=dict)
    fault_flag_source: str = ""
    gfp_table: dict[str, int] = field(default_factory=dict)   # empty: not captured (the builder says what it used)
    gfp_source: str = ""
    kernel_enums: dict[str, dict[int, str]] = field(default_factory=dict)
    captured_at: str = ""
    host: str = ""
    tool_version: str = ""
    # the compiled capture's hooks, each with why this kernel got that kind (fentry or kprobe, tp_btf or the
    # classic tracepoint) and its start-up time; empty in a capture made with bpftrace
    hooks: list[str] = field(default_factory=list)
