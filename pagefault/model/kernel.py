"""A simulated MMU and Linux fault handler (mm/memory.c and the architecture's fault.c, kernel 6.18).

Processes have an mm: VMAs kept sorted (the kernel keeps them in a maple tree, see maple_tree.py),
and page tables whose pages come from a simulated buddy allocator. The architecture is a parameter
(ModelConfig.arch): its entry format, MMU check and trap code live in page_tables.py, as the
kernel's live in arch/; this module is the generic part and never tests an entry's bit itself.
x86-64 walks 4 or 5 levels and traps with an error code; arm64 (4 KiB granule) walks 3 to 5 and
traps with an ESR. access() is the MMU: it walks the tables and, when the entry does not allow the
access, raises a fault with the architecture's trap code; handle_fault() is the architecture's front
end (do_user_addr_fault() or do_page_fault()) and handle_mm_fault(): the VMA lookup (and stack
growth), the access check, the table allocation, and one of the fault paths:

  anonymous read       the shared zero page, read-only            "zero page"
  anonymous write      a new zeroed page                          "new page"
  write after read     a new page in place of the zero page       "copy"
  write after fork     a copy, or the page itself when no one
                       else maps it any more                      "copy" / "reuse"
  file read            the page-cache page, and its cached
                       neighbours (fault-around)                  "page cache"
  THP                  a 2 MiB page mapped by the PMD             "huge page" / "huge zero page"
  no VMA / forbidden   SIGSEGV with SEGV_MAPERR / SEGV_ACCERR

Everything here is modelled: the PFNs are what this model's allocator hands out, never the
machine's. Nothing in this module touches the machine.
"""

from __future__ import annotations

import bisect
from array import array
from dataclasses import dataclass, field

from ..decode.arch import Arch
from .buddy import BuddyAllocator
from .page_tables import FORMATS, EntryFormat, FaultKind, Trap, X86Format, entry_format

PAGE_SHIFT, PAGE_SIZE = 12, 4096
PMD_SIZE = 1 << 21
PTRS_PER_TABLE = 512
# x86 page-table entry and #PF error code bits, for callers that read x86 faults (page_tables.X86Format)
P, RW, US, A, D, PSE, SPECIAL = X86Format.P, X86Format.RW, X86Format.US, X86Format.A, X86Format.D, X86Format.PSE, \
    X86Format.SPECIAL
FRAME = X86Format.frame_mask
PF_PROT, PF_WRITE, PF_USER, PF_INSTR = X86Format.PF_PROT, X86Format.PF_WRITE, X86Format.PF_USER, X86Format.PF_INSTR
# vm_flags (include/linux/mm.h)
VM_READ, VM_WRITE, VM_EXEC, VM_SHARED = 1, 2, 4, 8
VM_MAYREAD, VM_MAYWRITE, VM_MAYEXEC, VM_MAYSHARE = 0x10, 0x20, 0x40, 0x80
VM_GROWSDOWN, VM_ACCOUNT, VM_HUGEPAGE, VM_NOHUGEPAGE = 0x100, 1 << 20, 1 << 29, 1 << 30
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS, MAP_POPULATE = 1, 2, 0x20, 0x8000
SEGV_MAPERR, SEGV_ACCERR = 1, 2
# outcomes of a fault
NEW_PAGE, ZERO_PAGE, COPY, REUSE = "new page", "zero page", "copy", "reuse"
HUGE_PAGE, HUGE_ZERO_PAGE, PAGE_CACHE = "huge page", "huge zero page", "page cache"
MAPERR, ACCERR = "SIGSEGV (SEGV_MAPERR)", "SIGSEGV (SEGV_ACCERR)"
# GFP masks, by name (include/linux/gfp_types.h); the journey turns them into this kernel's bits
# As 6.18 allocates them (seen live: 0x140dca for a fresh anonymous page, on 6.1 and 6.12 too): every
# folio allocation adds __GFP_COMP (vma_alloc_folio, filemap_alloc_folio), and so does pagetable_alloc()
# for page-table pages (GFP_PGTABLE_USER = GFP_KERNEL_ACCOUNT | __GFP_ZERO).
GFP_USER_PAGE = ("GFP_HIGHUSER_MOVABLE", "__GFP_ZERO", "__GFP_COMP")
GFP_COPY_PAGE = ("GFP_HIGHUSER_MOVABLE", "__GFP_COMP")
GFP_TABLE = ("GFP_KERNEL_ACCOUNT", "__GFP_ZERO", "__GFP_COMP")
# alloc_pages_mpol() first tries a THP on the local node only, adding __GFP_THISNODE | __GFP_NORETRY, and
# that is the call mm_page_alloc reports (0x3d24ca for a madvised VMA with defrag "madvise", seen live on
# 6.18). The huge page is zeroed by folio_zero_user(), not by __GFP_ZERO.
THP_FIRST_TRY = ("__GFP_THISNODE", "__GFP_NORETRY")
GFP_THP = ("GFP_TRANSHUGE",) + THP_FIRST_TRY


def thp_gfp(defrag: str, madvised: bool) -> tuple[str, ...]:
    """vma_thp_gfp_mask() (mm/huge_memory.c) for a defrag setting, plus the first try's bits."""
    base = {
        "always": ("GFP_TRANSHUGE",) + (() if madvised else ("__GFP_NORETRY",)),
        "defer": ("GFP_TRANSHUGE_LIGHT", "__GFP_KSWAPD_RECLAIM"),
        "defer+madvise": ("GFP_TRANSHUGE_LIGHT", "__GFP_DIRECT_RECLAIM" if madvised else "__GFP_KSWAPD_RECLAIM"),
        "madvise": ("GFP_TRANSHUGE_LIGHT",) + (("__GFP_DIRECT_RECLAIM",) if madvised else ()),
    }.get(defrag, ("GFP_TRANSHUGE_LIGHT",))
    return tuple(dict.fromkeys(base + THP_FIRST_TRY))
GFP_PAGE_CACHE = ("GFP_HIGHUSER_MOVABLE", "__GFP_COMP")

ALLOC_TAIL = ("alloc_pages_mpol", "__alloc_frozen_pages_noprof", "get_page_from_freelist")


@dataclass
class ModelConfig:
    """The kernel settings the model follows; the live cross-check passes the machine's own."""

    arch: Arch = Arch.X86_64
    paging_levels: int = 4
    memory_mib: int = 4096
    thp_enabled: str = "madvise"          # /sys/kernel/mm/transparent_hugepage/enabled
    thp_use_zero_page: bool = True
    thp_defrag: str = "madvise"           # /sys/kernel/mm/transparent_hugepage/defrag
    fault_around_bytes: int = 65536       # /sys/kernel/debug/fault_around_bytes
    soft_dirty: bool = False              # CONFIG_MEM_SOFT_DIRTY
    stack_guard_gap_pages: int = 256      # stack_guard_gap
    stack_rlimit: int = 8 << 20           # RLIMIT_STACK
    lpa2: bool = False                    # arm64: FEAT_LPA2 in use (52-bit tables); SH is left to TCR_EL1
    kernel: str = "6.18"

    def entry_format(self) -> EntryFormat:
        """The architecture's helpers for this shape; ValueError if the architecture has no such shape."""
        return entry_format(self.arch, self.paging_levels, self.soft_dirty, self.lpa2)

    def check(self) -> None:
        self.entry_format()
        if self.thp_enabled not in ("always", "madvise", "never"):
            raise ValueError(f"THP setting must be always, madvise or never, not {self.thp_enabled!r}")


@dataclass
class File:
    name: str
    pages: int
    cache: dict[int, int] = field(default_factory=dict)    # page index → PFN in the page cache


@dataclass(eq=False)
class VMA:
    start: int
    end: int
    flags: int
    name: str = ""
    file: File | None = None
    pgoff: int = 0                    # in pages
    anon_vma: bool = False            # set on the first anonymous page (anon_vma_prepare)

    def perms(self) -> str:
        f = self.flags
        return ("r" if f & VM_READ else "-") + ("w" if f & VM_WRITE else "-") + \
               ("x" if f & VM_EXEC else "-") + ("s" if f & VM_SHARED else "p")


@dataclass
class Alloc:
    pfn: int
    order: int
    gfp: tuple[str, ...]
    what: str                         # "data page", "PTE table", …
    chain: tuple[str, ...]            # modelled call chain, outermost first


@dataclass
class Fault:
    """One fault as the model handled it: the trap, the path taken and what it left behind."""

    pid: int
    address: int
    error_code: int                   # the trap code: x86's #PF error code, or arm64's ESR_EL1 (see esr)
    outcome: str = ""
    trap: bool = True                 # False: a fault taken by the kernel itself (MAP_POPULATE)
    vma: VMA | None = None
    stack_grown_pages: int = 0
    walk_before: list[tuple[str, int, int, int]] = field(default_factory=list)   # (level, table PFN, index, entry)
    walk_after: list[tuple[str, int, int, int]] = field(default_factory=list)
    allocs: list[Alloc] = field(default_factory=list)
    path: tuple[str, ...] = ()
    pfn: int | None = None            # the frame mapped at the address when it returned
    kpageflags_after: int | None = None   # that frame's kpageflags once its operation ended (as live is read)
    entry: int = 0                    # the leaf entry written
    also_mapped: int = 0              # pages mapped besides the faulting one (fault-around, THP)
    si_code: int = 0
    arch: Arch = Arch.X86_64

    @property
    def esr(self) -> int | None:
        """ESR_EL1 of an arm64 fault (the trap code); None on x86."""
        return self.error_code if FORMATS[self.arch].trap_code_is_esr else None


@dataclass
class FaultRun:
    """The faults of write_loop(): the plain first touches compactly (error code 0x6, a new page each),
    the others as full Fault records."""

    pid: int
    start: int
    pages: int
    addresses: array = field(default_factory=lambda: array("Q"))
    pfns: array = field(default_factory=lambda: array("Q"))
    full: list[Fault] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.addresses) + len(self.full)


def _vm_from_prot(prot: int) -> int:
    """calc_vm_prot_bits(): PROT_READ/WRITE/EXEC → VM_READ/WRITE/EXEC."""
    return (VM_READ if prot & PROT_READ else 0) | (VM_WRITE if prot & PROT_WRITE else 0) | \
        (VM_EXEC if prot & PROT_EXEC else 0)


_R, _X, _W, _MAY = VM_READ, VM_EXEC, VM_WRITE, VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC
_STACK = VM_READ | VM_WRITE | _MAY | VM_GROWSDOWN | VM_ACCOUNT
# Where mmap() starts looking, top-down (below the stack's gap), as the layouts below place things
_MMAP_BASE = {Arch.X86_64: 0x7FFFF7FFF000, Arch.ARM64: 0xFFFFF7FFF000}


_PROGRAM = ""   # stands for the program's own name in the layouts below
# The VMAs of a dynamically linked program after execve, without address randomisation (modelled), per
# architecture: where each one's loader puts the program, its heap, libc, the vDSO and the stack.
_LAYOUTS: dict[Arch, tuple[tuple[int, int, int, str], ...]] = {
    Arch.ARM64: (
        (0xAAAAAAAA0000, 0xAAAAAAAA1000, _R | _X | _MAY, _PROGRAM),
        (0xAAAAAAAB0000, 0xAAAAAAAB1000, _R | _MAY, _PROGRAM),
        (0xAAAAAAAB1000, 0xAAAAAAAB2000, _R | _W | _MAY, _PROGRAM),
        (0xAAAAAAAB2000, 0xAAAAAAAD3000, _R | _W | _MAY, "[heap]"),
        (0xFFFFF7E00000, 0xFFFFF7F88000, _R | _X | _MAY, "libc.so.6"),
        (0xFFFFF7F98000, 0xFFFFF7F9C000, _R | _MAY, "libc.so.6"),
        (0xFFFFF7F9C000, 0xFFFFF7F9E000, _R | _W | _MAY, "libc.so.6"),
        (0xFFFFF7FC0000, 0xFFFFF7FEB000, _R | _X | _MAY, "ld-linux-aarch64.so.1"),
        (0xFFFFF7FF7000, 0xFFFFF7FF9000, VM_READ | VM_MAYREAD, "[vvar]"),
        (0xFFFFF7FF9000, 0xFFFFF7FFA000, VM_READ | VM_EXEC | VM_MAYREAD | VM_MAYEXEC, "[vdso]"),
        (0xFFFFF7FFA000, 0xFFFFF7FFC000, _R | _MAY, "ld-linux-aarch64.so.1"),
        (0xFFFFF7FFC000, 0xFFFFF7FFE000, _R | _W | _MAY, "ld-linux-aarch64.so.1"),
        (0xFFFFFFFDF000, 0xFFFFFFFFF000, _STACK, "[stack]"),
    ),
    Arch.X86_64: (
        (0x555555554000, 0x555555555000, _R | _MAY, _PROGRAM),
        (0x555555555000, 0x555555556000, _R | _X | _MAY, _PROGRAM),
        (0x555555556000, 0x555555557000, _R | _MAY, _PROGRAM),
        (0x555555557000, 0x555555558000, _R | _W | _MAY, _PROGRAM),
        (0x555555559000, 0x55555557A000, _R | _W | _MAY, "[heap]"),
        (0x7FFFF7DC3000, 0x7FFFF7DE9000, _R | _MAY, "libc.so.6"),
        (0x7FFFF7DE9000, 0x7FFFF7F3E000, _R | _X | _MAY, "libc.so.6"),
        (0x7FFFF7F3E000, 0x7FFFF7F95000, _R | _MAY, "libc.so.6"),
        (0x7FFFF7F95000, 0x7FFFF7F9B000, _R | _W | _MAY, "libc.so.6"),
        (0x7FFFF7FC1000, 0x7FFFF7FC5000, VM_READ | VM_MAYREAD, "[vvar]"),
        (0x7FFFF7FC5000, 0x7FFFF7FC7000, VM_READ | VM_EXEC | VM_MAYREAD | VM_MAYEXEC, "[vdso]"),
        (0x7FFFF7FC7000, 0x7FFFF7FF1000, _R | _X | _MAY, "ld-linux-x86-64.so.2"),
        (0x7FFFF7FF1000, 0x7FFFF7FFB000, _R | _MAY, "ld-linux-x86-64.so.2"),
        (0x7FFFF7FFB000, 0x7FFFF7FFF000, _R | _W | _MAY, "ld-linux-x86-64.so.2"),
        (0x7FFFFFFDE000, 0x7FFFFFFFF000, _STACK, "[stack]"),
    ),
}


def _layout(arch: Arch, name: str) -> tuple[tuple[int, int, int, str], ...]:
    """The VMAs of a dynamically linked program after execve, without address randomisation (modelled)."""
    return tuple((start, end, flags, path or name) for start, end, flags, path in _LAYOUTS[arch])


class Process:
    def __init__(self, pid: int, name: str, pgd: int):
        self.pid, self.name, self.pgd = pid, name, pgd
        self.vmas: list[VMA] = []
        self.starts: list[int] = []
        self.minor_faults = 0
        self.signals: list[tuple[int, int]] = []     # (si_code, address)
        self.mmap_base = 0x7FFFF7FFF000

    def find_vma(self, addr: int) -> VMA | None:
        i = bisect.bisect_right(self.starts, addr) - 1
        if i >= 0 and addr < self.vmas[i].end:
            return self.vmas[i]
        return None

    def vma_above(self, addr: int) -> VMA | None:
        i = bisect.bisect_right(self.starts, addr)
        return self.vmas[i] if i < len(self.vmas) else None

    def insert(self, vma: VMA) -> None:
        i = bisect.bisect_left(self.starts, vma.start)
        self.vmas.insert(i, vma)
        self.starts.insert(i, vma.start)

    def reindex(self) -> None:
        self.vmas.sort(key=lambda v: v.start)
        self.starts = [v.start for v in self.vmas]


class SimulatedKernel:
    """One machine: memory, the zero page, the page cache and the processes' address spaces."""

    def __init__(self, config: ModelConfig | None = None):
        self.config = config or ModelConfig()
        self.fmt = self.config.entry_format()
        self.levels = self.fmt.level_names()
        self.shifts = self.fmt.shifts()
        pages = self.config.memory_mib * 256
        self.buddy = BuddyAllocator(0x100000, pages)       # RAM from 4 GiB physical up (modelled)
        self.zero_pfn = 0x3A04                              # empty_zero_page, inside the kernel image (modelled)
        self.huge_zero_pfn: int | None = None
        self.tables: dict[int, list[int]] = {}
        self.mapcount: dict[int, int] = {}                  # folio head PFN → mappings
        self.kind: dict[int, str] = {}                      # folio head PFN → anon / file / table / thp
        self.exclusive: set[int] = set()                    # PageAnonExclusive
        self.processes: dict[int, Process] = {}
        self.faults: list[Fault] = []
        self.allocs: list[Alloc] = []
        self.next_pid = 1000
        self.fault_around_pages = max(1, self.config.fault_around_bytes // PAGE_SIZE)

    # -- allocation --------------------------------------------------------------------------------

    def _alloc(self, order: int, gfp: tuple[str, ...], what: str, chain: tuple[str, ...], fault: Fault | None) -> int:
        pfn = self.buddy.alloc(order)
        a = Alloc(pfn, order, gfp, what, chain + ALLOC_TAIL)
        self.allocs.append(a)
        if fault is not None:
            fault.allocs.append(a)
        return pfn

    def _new_table(self, level: str, chain: tuple[str, ...], fault: Fault | None) -> int:
        pfn = self._alloc(0, GFP_TABLE, f"{level} table", chain, fault)
        self.tables[pfn] = [0] * PTRS_PER_TABLE
        self.kind[pfn] = "table"
        return pfn

    # -- processes -----------------------------------------------------------------------------------

    def exec(self, name: str = "program") -> Process:
        """A process after execve: a fresh mm with its PGD, and the usual VMAs of a dynamic program."""
        pgd = self._new_table("PGD", ("execve", "bprm_execve", "alloc_bprm", "mm_alloc", "mm_init", "pgd_alloc",
                                      "__get_free_pages"), None)
        proc = Process(self.next_pid, name, pgd)
        self.next_pid += 1
        self.processes[proc.pid] = proc
        for start, end, flags, vname in _layout(self.config.arch, name):
            proc.insert(VMA(start, end, flags, vname))
        proc.mmap_base = _MMAP_BASE[self.config.arch]
        return proc

    def fork(self, parent: Process) -> Process:
        """dup_mmap(): the VMAs copied; anonymous pages shared and write-protected in both (COW)."""
        child = Process(self.next_pid, parent.name, self._new_table("PGD", ("kernel_clone", "copy_process",
                                                                            "dup_mm", "mm_init", "pgd_alloc"), None))
        self.next_pid += 1
        self.processes[child.pid] = child
        child.mmap_base = parent.mmap_base
        chain = ("kernel_clone", "copy_process", "dup_mm", "dup_mmap", "copy_page_range")
        fmt = self.fmt
        for vma in parent.vmas:
            copy = VMA(vma.start, vma.end, vma.flags, vma.name, vma.file, vma.pgoff, vma.anon_vma)
            child.insert(copy)
            if not vma.anon_vma:          # vma_needs_copy(): file pages are faulted in again instead
                continue
            cow = not vma.flags & VM_SHARED and vma.flags & VM_MAYWRITE
            for addr, level, table, idx, entry in self._present_leaves(parent, vma.start, vma.end):
                if cow and fmt.write(entry):
                    entry = fmt.wrprotect(entry)
                    self.tables[table][idx] = entry
                head = self._folio_head(entry, level)
                if head is not None and self.kind.get(head) in ("anon", "thp"):
                    self.mapcount[head] = self.mapcount.get(head, 0) + 1
                    self.exclusive.discard(head)
                elif head is not None and head in self.mapcount:
                    self.mapcount[head] += 1
                self._set_leaf(child, addr, level, fmt.mkold(entry), chain, None)
        return child

    # -- system calls ------------------------------------------------------------------------------------

    def mmap(self, proc: Process, length: int, prot: int, flags: int, file: File | None = None,
             hint: int | None = None) -> int:
        """mmap(2); a page-aligned ``hint`` whose range is free is taken as the kernel takes one."""
        length = (length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        if not length:
            raise ValueError("mmap of 0 bytes")
        align = PMD_SIZE if file is None and length % PMD_SIZE == 0 else PAGE_SIZE   # thp_get_unmapped_area
        if hint is not None and not hint % PAGE_SIZE and 0x10000 <= hint and hint + length <= proc.mmap_base \
                and not any(v.start < hint + length and hint < v.end for v in proc.vmas):
            addr = hint
        else:
            addr = self._unmapped_area(proc, length, align)
        vm = _vm_from_prot(prot) | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC
        if flags & MAP_SHARED:
            vm |= VM_SHARED | VM_MAYSHARE
        if file is None and not flags & MAP_SHARED and vm & VM_WRITE:
            vm |= VM_ACCOUNT
        proc.insert(VMA(addr, addr + length, vm, file.name if file else "", file))
        if flags & MAP_POPULATE:
            self.populate(proc, addr, addr + length)
        return addr

    def _unmapped_area(self, proc: Process, length: int, align: int) -> int:
        """vm_unmapped_area() top-down: the highest gap below mmap_base that fits."""
        gap_top = proc.mmap_base
        for vma in reversed(proc.vmas):
            if vma.start >= gap_top:
                continue
            candidate = (gap_top - length) & ~(align - 1)
            if candidate >= vma.end:
                return candidate
            gap_top = vma.start
        candidate = (gap_top - length) & ~(align - 1)
        if candidate < 0x10000:
            raise ValueError("no room for the mapping")
        return candidate

    def _split(self, proc: Process, start: int, end: int) -> list[VMA]:
        """The VMAs covering [start, end), split at start and end (split_vma())."""
        for vma in list(proc.vmas):
            if vma.end <= start or vma.start >= end:
                continue
            for cut in (start, end):
                if vma.start < cut < vma.end:
                    tail = VMA(cut, vma.end, vma.flags, vma.name, vma.file,
                               vma.pgoff + ((cut - vma.start) >> PAGE_SHIFT), vma.anon_vma)
                    vma.end = cut
                    proc.vmas.append(tail)
                    if cut == start:
                        vma = tail
        proc.reindex()
        return [v for v in proc.vmas if v.start >= start and v.end <= end]

    def mprotect(self, proc: Process, start: int, length: int, prot: int) -> None:
        """change_protection(): the VMAs' flags, then every present entry rebuilt from the new vm_page_prot."""
        end = start + length
        for vma in self._split(proc, start, end):
            new = (vma.flags & ~(VM_READ | VM_WRITE | VM_EXEC)) | _vm_from_prot(prot)
            adding_write = new & VM_WRITE and not vma.flags & VM_WRITE
            vma.flags = new
            fmt = self.fmt
            prot_bits = fmt.page_prot(new)
            for addr, level, table, idx, entry in self._present_leaves(proc, vma.start, vma.end):
                entry = fmt.modify(entry, prot_bits, huge=level != "PTE")
                head = self._folio_head(entry, level)
                # MM_CP_TRY_CHANGE_WRITABLE: an exclusive anonymous page may become writable at once
                if adding_write and head in self.exclusive and fmt.dirty(entry) and not vma.flags & VM_SHARED:
                    entry = fmt.mkwrite(entry)
                self.tables[table][idx] = entry

    def madvise_hugepage(self, proc: Process, start: int, length: int) -> None:
        for vma in self._split(proc, start, start + length):
            vma.flags = (vma.flags | VM_HUGEPAGE) & ~VM_NOHUGEPAGE

    def munmap(self, proc: Process, start: int, length: int) -> None:
        """The pages unmapped (freed when no one maps them), then the VMAs removed. Tables are kept."""
        end = start + length
        for vma in self._split(proc, start, end):
            for addr, level, table, idx, entry in self._present_leaves(proc, vma.start, vma.end):
                self.tables[table][idx] = 0
                self._drop_mapping(self._folio_head(entry, level))
            proc.vmas.remove(vma)
        proc.reindex()

    def populate(self, proc: Process, start: int, end: int) -> None:
        """MAP_POPULATE (populate_vma_page_range): the kernel faults each page itself; no trap, no signal."""
        for vma in self._split(proc, start, end):
            write = (vma.flags & (VM_WRITE | VM_SHARED)) == VM_WRITE
            addr = vma.start
            while addr < vma.end:
                entry = self._leaf(proc, addr)[0]
                if not self.fmt.present(entry) or (write and not self.fmt.write(entry)):
                    # no trap: the code is the one the access would have trapped with, for the record
                    code = self.fmt.trap_code(Trap(write, False, False, len(self.shifts) - 1))
                    f = Fault(proc.pid, addr, code, trap=False, arch=self.config.arch)
                    self._handle_mm_fault(proc, vma, addr, write, f, ("__mm_populate", "populate_vma_page_range",
                                                                       "__get_user_pages", "handle_mm_fault",
                                                                       "__handle_mm_fault"))
                    self.faults.append(f)
                addr += PAGE_SIZE

    def create_file(self, name: str, pages: int) -> File:
        """A file written with write(2): its pages are in the page cache before anyone maps it."""
        f = File(name, pages)
        for i in range(pages):
            pfn = self._alloc(0, GFP_PAGE_CACHE, "page-cache page", ("ksys_write", "vfs_write", "generic_perform_write",
                                                                   "__filemap_get_folio", "filemap_alloc_folio"), None)
            f.cache[i] = pfn
            self.kind[pfn] = "file"
            self.mapcount[pfn] = 0
        return f

    # -- the MMU -------------------------------------------------------------------------------------

    def access(self, proc: Process, addr: int, write: bool = False, execute: bool = False) -> Fault | None:
        """One user access as the CPU does it: translate, or trap into the fault handler and retry.

        Returns the fault taken (its outcome may be a SIGSEGV), or None when the TLB-less walk succeeded.
        """
        # the walk inlined (not walk()): this runs once per simulated access
        fmt, tables, t = self.fmt, self.tables, self.tables[proc.pgd]
        entry, depth, idx = 0, 0, 0
        for depth, shift in enumerate(self.shifts):
            idx = (addr >> shift) & 511
            entry = t[idx]
            if not entry & fmt.present_bit or shift == 12 or fmt.is_huge(entry):
                break
            t = tables[(entry & fmt.frame_mask) >> 12]
        leaf = entry & fmt.present_bit and (self.shifts[depth] == 12 or fmt.is_huge(entry))
        if leaf and fmt.allows(entry, write, execute):
            t[idx] = fmt.on_access(entry, write)
            return None
        code = fmt.trap_code(Trap(write, execute, bool(leaf), depth))
        return self.handle_fault(proc, addr, code)

    def write_loop(self, proc: Process, start: int, pages: int) -> FaultRun:
        """The loop `for each page: *p = 1` over [start, start + pages * 4 KiB), as access() would run it.

        Every page still goes through the MMU check and, when it faults, through the same work as
        do_anonymous_page(): a page from the buddy allocator and a PTE. The plain first touch of an
        anonymous page (no THP, tables present) is done inline and recorded compactly in the
        returned FaultRun; every other case (a missing table, THP, a file, a protection fault, no
        VMA) goes through access() and handle_fault() with a full Fault record. tests/test_model.py
        checks that both ways leave identical tables, allocator and page state. (The data pages of the
        plain touches are listed in the FaultRun, not in self.allocs.)
        """
        run = FaultRun(proc.pid, start, pages)
        tables, buddy, kind, mapcount, exclusive = self.tables, self.buddy, self.kind, self.mapcount, self.exclusive
        free0 = buddy.free[0]
        fmt = self.fmt
        addresses, pfns = run.addresses, run.pfns
        vma: VMA | None = None
        table: list[int] | None = None
        window = -1
        for i in range(pages):
            addr = start + i * PAGE_SIZE
            if addr >> 21 != window:        # a new PTE table: walk the upper levels once per 2 MiB
                window = addr >> 21
                vma = proc.find_vma(addr)
                _entry, level, tpfn, _idx = self._leaf(proc, addr)
                plain = (vma is not None and vma.file is None and vma.flags & VM_WRITE and level == "PTE"
                         and vma.end >= min((window + 1) << 21, start + pages * PAGE_SIZE)
                         and not self._thp_allowed(vma, addr))
                table = tables[tpfn] if plain else None
                leaf_bits = fmt.mkwrite(fmt.mkdirty(fmt.page_prot(vma.flags))) if plain and vma is not None else 0
            idx = (addr >> 12) & 511
            if table is not None and vma is not None and not table[idx] & fmt.present_bit:
                if free0:                   # the buddy allocator's order-0 fast case, inline
                    pfn = free0.popitem()[0]
                    buddy.allocated += 1
                else:
                    pfn = buddy.alloc(0)
                vma.anon_vma = True
                kind[pfn] = "anon"
                mapcount[pfn] = 1
                exclusive.add(pfn)
                table[idx] = pfn << 12 | leaf_bits
                addresses.append(addr)
                pfns.append(pfn)
                continue
            f = self.access(proc, addr, write=True)
            if f is not None:
                run.full.append(f)
                window = -1                 # the handler may have built tables: look again
        proc.minor_faults += len(addresses)
        return run

    def handle_fault(self, proc: Process, addr: int, code: int) -> Fault:
        """The trap (x86: exc_page_fault → do_user_addr_fault; arm64: el0_da → do_mem_abort → do_page_fault)
        → handle_mm_fault, as far as this address needs. code: the architecture's trap code."""
        fault = Fault(proc.pid, addr, code, arch=self.config.arch)
        self.faults.append(fault)
        fault.walk_before = self.walk(proc, addr)
        kind = self.fmt.fault_kind(code)
        vma = proc.find_vma(addr)
        if vma is None:
            vma = self._expand_stack(proc, addr, fault)
            if vma is None:
                return self._segv(proc, fault, SEGV_MAPERR, self.fmt.segv_path(kind, mapped=False))
        fault.vma = vma
        if self.fmt.access_error(kind, vma.flags):
            return self._segv(proc, fault, SEGV_ACCERR, self.fmt.segv_path(kind, mapped=True))
        proc.minor_faults += 1
        self._handle_mm_fault(proc, vma, addr, kind.write, fault, self.fmt.entry_path(kind))
        return fault

    def fault_kind(self, fault: Fault) -> FaultKind:
        """What the architecture's trap handler read out of a fault's trap code."""
        return self.fmt.fault_kind(fault.error_code)

    def _expand_stack(self, proc: Process, addr: int, fault: Fault) -> VMA | None:
        """expand_downwards(): a fault just below a VM_GROWSDOWN VMA grows it, within the limits."""
        above = proc.vma_above(addr)
        if above is None or not above.flags & VM_GROWSDOWN:
            return None
        new_start = addr & ~(PAGE_SIZE - 1)
        i = proc.vmas.index(above)
        prev = proc.vmas[i - 1] if i else None
        gap = self.config.stack_guard_gap_pages * PAGE_SIZE
        if prev is not None and not prev.flags & VM_GROWSDOWN and new_start - prev.end < gap:
            return None
        if above.end - new_start > self.config.stack_rlimit or new_start < 0x10000:
            return None
        fault.stack_grown_pages = (above.start - new_start) >> PAGE_SHIFT
        above.start = new_start
        proc.reindex()
        return above

    def _segv(self, proc: Process, fault: Fault, si_code: int, path: tuple[str, ...]) -> Fault:
        fault.si_code = si_code
        fault.outcome = MAPERR if si_code == SEGV_MAPERR else ACCERR
        fault.path = path
        proc.signals.append((si_code, fault.address))
        return fault

    # -- handle_mm_fault ----------------------------------------------------------------------------------

    def _handle_mm_fault(self, proc: Process, vma: VMA, addr: int, write: bool, fault: Fault,
                         entry_path: tuple[str, ...]) -> None:
        tables, shifts, levels, fmt = self.tables, self.shifts, self.levels, self.fmt
        table = proc.pgd
        chain = entry_path
        for depth in range(len(shifts) - 1):
            idx = (addr >> shifts[depth]) & 511
            entry = tables[table][idx]
            if levels[depth + 1] == "PTE" and not fmt.present(entry) and self._thp_allowed(vma, addr):
                self._huge_fault(vma, addr, write, table, idx, fault, chain + ("create_huge_pmd",))
                break
            if fmt.present(entry) and fmt.is_huge(entry):
                raise NotImplementedError("the model does not simulate write faults on PMD-mapped huge pages")
            if not fmt.present(entry):
                below = levels[depth + 1]
                if below != "PTE":
                    how = chain + (f"__{below.lower()}_alloc", f"{below.lower()}_alloc_one")
                elif vma.file is not None:
                    how = chain + ("handle_pte_fault", "do_pte_missing", "do_fault", "do_read_fault",
                                   "do_fault_around", "pte_alloc_one")
                else:
                    how = chain + ("handle_pte_fault", "do_pte_missing", "do_anonymous_page", "__pte_alloc",
                                   "pte_alloc_one")
                new = self._new_table(below, how, fault)
                tables[table][idx] = fmt.table_entry(new)
                entry = tables[table][idx]
            table = fmt.frame(entry)
        else:
            idx = (addr >> 12) & 511
            self._pte_fault(vma, addr, write, table, idx, fault, chain + ("handle_pte_fault",))
        fault.walk_after = self.walk(proc, addr)

    def _pte_fault(self, vma: VMA, addr: int, write: bool, table: int, idx: int, fault: Fault,
                   chain: tuple[str, ...]) -> None:
        fmt = self.fmt
        pte = self.tables[table][idx]
        prot = fmt.page_prot(vma.flags)
        if not fmt.present(pte):
            if vma.file is not None:
                self._file_fault(vma, addr, write, table, idx, fault, chain + ("do_pte_missing", "do_fault"))
                return
            vma.anon_vma = True
            if not write:                  # do_anonymous_page: the zero page, special, read-only
                entry = fmt.mkspecial(fmt.mk_pte(self.zero_pfn, prot))
                fault.outcome, fault.pfn = ZERO_PAGE, self.zero_pfn
                fault.path = chain + ("do_pte_missing", "do_anonymous_page")
            else:
                path = chain + ("do_pte_missing", "do_anonymous_page", "alloc_anon_folio", "vma_alloc_folio_noprof")
                pfn = self._alloc(0, GFP_USER_PAGE, "data page", path, fault)
                self._new_anon(pfn)
                entry = fmt.mk_pte(pfn, prot)
                if vma.flags & VM_WRITE:     # maybe_mkwrite(pte_mkdirty(entry))
                    entry = fmt.mkwrite(fmt.mkdirty(entry))
                fault.outcome, fault.pfn, fault.path = NEW_PAGE, pfn, path
            self.tables[table][idx] = entry
            fault.entry = entry
            return
        if write and not fmt.write(pte):
            self._wp_page(vma, pte, table, idx, fault, chain + ("do_wp_page",))

    def _wp_page(self, vma: VMA, pte: int, table: int, idx: int, fault: Fault, chain: tuple[str, ...]) -> None:
        """do_wp_page(): reuse the page when nothing else maps it, else copy it (the zero page: a new page)."""
        fmt = self.fmt
        old = fmt.frame(pte)
        if not fmt.special(pte) and self.kind.get(old) == "anon" and self.mapcount.get(old, 0) == 1:
            entry = fmt.mkwrite(fmt.mkdirty(fmt.mkyoung(pte)))     # wp_page_reuse(): maybe_mkwrite(pte_mkdirty())
            self.exclusive.add(old)
            fault.outcome, fault.pfn, fault.path = REUSE, old, chain + ("wp_page_reuse",)
        else:
            zero = fmt.special(pte)
            path = chain + ("wp_page_copy", "folio_prealloc", "vma_alloc_folio_noprof")
            pfn = self._alloc(0, GFP_USER_PAGE if zero else GFP_COPY_PAGE, "data page", path, fault)
            self._new_anon(pfn)
            entry = fmt.mkwrite(fmt.mkdirty(fmt.mk_pte(pfn, fmt.page_prot(vma.flags))))
            vma.anon_vma = True
            if not zero:
                self._drop_mapping(old)
            fault.outcome, fault.pfn, fault.path = COPY, pfn, path
        self.tables[table][idx] = entry
        fault.entry = entry

    def _file_fault(self, vma: VMA, addr: int, write: bool, table: int, idx: int, fault: Fault,
                    chain: tuple[str, ...]) -> None:
        """do_read_fault() with fault-around: the cached pages of the window are mapped in one go."""
        f = vma.file
        if f is None:
            raise ValueError("a file fault in a VMA without a file")
        page_index = vma.pgoff + ((addr - vma.start) >> PAGE_SHIFT)
        if write and not vma.flags & VM_SHARED:
            raise NotImplementedError("the model does not simulate a write fault on a private file mapping")
        if page_index >= f.pages:
            raise NotImplementedError("the model does not simulate SIGBUS beyond the end of a file")
        path = chain + ("do_read_fault",)
        if page_index not in f.cache:
            pfn = self._alloc(0, GFP_PAGE_CACHE, "page-cache page", path + ("__do_fault", "filemap_fault",
                                                                           "page_cache_ra_unbounded"), fault)
            f.cache[page_index] = pfn
            self.kind[pfn] = "file"
            self.mapcount[pfn] = 0
        n = self.fault_around_pages
        vma_off = (addr - vma.start) >> PAGE_SHIFT
        from_pte = max(idx - idx % n, idx - min(idx, vma_off))
        to_pte = min(from_pte + n, PTRS_PER_TABLE, idx + ((vma.end - vma.start) >> PAGE_SHIFT) - vma_off)
        fmt = self.fmt
        prot = fmt.page_prot(vma.flags)
        mapped = 0
        for i in range(from_pte, to_pte):
            pgoff = page_index + i - idx
            if pgoff >= f.pages or pgoff not in f.cache or fmt.present(self.tables[table][i]):
                continue
            pfn = f.cache[pgoff]
            self.tables[table][i] = fmt.mk_pte(pfn, prot)
            self.mapcount[pfn] += 1
            mapped += 1
        fault.outcome, fault.pfn = PAGE_CACHE, f.cache[page_index]
        fault.entry = self.tables[table][idx]
        fault.also_mapped = mapped - 1
        fault.path = path + (("do_fault_around", "filemap_map_pages") if n > 1 else ("__do_fault", "filemap_fault"))

    def _thp_allowed(self, vma: VMA, addr: int) -> bool:
        """thp_vma_allowable_order() for a PMD page at a fault: anonymous, setting, the 2 MiB inside the VMA."""
        mode = self.config.thp_enabled
        if vma.file is not None or vma.flags & VM_NOHUGEPAGE or mode == "never":
            return False
        if mode == "madvise" and not vma.flags & VM_HUGEPAGE:
            return False
        start = addr & ~(PMD_SIZE - 1)
        return start >= vma.start and start + PMD_SIZE <= vma.end

    def _huge_fault(self, vma: VMA, addr: int, write: bool, table: int, idx: int, fault: Fault,
                    chain: tuple[str, ...]) -> None:
        """do_huge_pmd_anonymous_page(): one order-9 folio mapped by the PMD entry (or the huge zero page)."""
        vma.anon_vma = True
        fmt = self.fmt
        prot = fmt.page_prot(vma.flags)
        path = chain + ("do_huge_pmd_anonymous_page",)
        if not write and self.config.thp_use_zero_page:
            if self.huge_zero_pfn is None:
                self.huge_zero_pfn = self._alloc(9, ("GFP_TRANSHUGE", "__GFP_ZERO"), "huge zero page",
                                                 path + ("mm_get_huge_zero_folio",), fault)
                self.kind[self.huge_zero_pfn] = "huge zero"
            self._new_table("PTE", path + ("pte_alloc_one",), fault)     # deposited for a later split
            # set_huge_zero_folio(): pmd_mkhuge(mk_pmd(zero folio, vm_page_prot)), write-protected, special
            entry = fmt.mkspecial(fmt.mkhuge(fmt.wrprotect(fmt.mk_pte(self.huge_zero_pfn, prot))))
            fault.outcome, fault.pfn = HUGE_ZERO_PAGE, self.huge_zero_pfn + ((addr >> 12) & 511)
        else:
            gfp = thp_gfp(self.config.thp_defrag, bool(vma.flags & VM_HUGEPAGE))
            pfn = self._alloc(9, gfp, "huge page", path + ("vma_alloc_anon_folio_pmd", "vma_alloc_folio_noprof"),
                              fault)
            self._new_table("PTE", path + ("pte_alloc_one",), fault)
            self.kind[pfn] = "thp"
            self.mapcount[pfn] = 1
            self.exclusive.add(pfn)
            entry = fmt.mkdirty(fmt.mkhuge(fmt.mk_pte(pfn, prot)))
            if vma.flags & VM_WRITE:         # maybe_pmd_mkwrite(pmd_mkdirty(entry))
                entry = fmt.mkwrite(entry)
            fault.outcome, fault.pfn = HUGE_PAGE, pfn + ((addr >> 12) & 511)
        self.tables[table][idx] = entry
        fault.entry = entry
        fault.also_mapped = 511
        fault.path = path

    # -- helpers --------------------------------------------------------------------------------------

    def _new_anon(self, pfn: int) -> None:
        self.kind[pfn] = "anon"
        self.mapcount[pfn] = 1
        self.exclusive.add(pfn)

    def _drop_mapping(self, head: int | None) -> None:
        if head is None or head not in self.mapcount:
            return
        self.mapcount[head] -= 1
        if self.mapcount[head] == 0 and self.kind.get(head) in ("anon", "thp"):
            order = 9 if self.kind[head] == "thp" else 0
            del self.mapcount[head], self.kind[head]
            self.exclusive.discard(head)
            self.buddy.free_block(head, order)

    def _folio_head(self, entry: int, level: str) -> int | None:
        if self.fmt.special(entry):
            return None
        pfn = self.fmt.frame(entry)
        return pfn if level == "PTE" else pfn & ~511

    def _leaf(self, proc: Process, addr: int) -> tuple[int, str, int, int]:
        """(entry, level, table PFN, index) of the lowest entry the walk reaches."""
        level, table, idx, entry = self.walk(proc, addr)[-1]
        return entry, level, table, idx

    def walk(self, proc: Process, addr: int) -> list[tuple[str, int, int, int]]:
        """Every entry on the way to addr: (level, table PFN, index, entry), stopping where one is missing."""
        out, t = [], proc.pgd
        for depth, shift in enumerate(self.shifts):
            idx = (addr >> shift) & 511
            entry = self.tables[t][idx]
            out.append((self.levels[depth], t, idx, entry))
            if not self.fmt.present(entry) or shift == 12 or self.fmt.is_huge(entry):
                break
            t = self.fmt.frame(entry)
        return out

    def _present_leaves(self, proc: Process, start: int, end: int):
        """(address, level, table PFN, index, entry) of every present leaf in [start, end)."""
        addr = start
        while addr < end:
            entry, level, table, idx = self._leaf(proc, addr)
            huge = level != "PTE" and self.fmt.present(entry) and self.fmt.is_huge(entry)
            size = PMD_SIZE if level == "PMD" and huge else PAGE_SIZE
            if self.fmt.present(entry) and (level == "PTE" or huge):
                yield addr, level, table, idx, entry
            addr = (addr & ~(size - 1)) + size

    def _set_leaf(self, proc: Process, addr: int, level: str, entry: int, chain: tuple[str, ...],
                  fault: Fault | None) -> None:
        """Write a leaf entry at addr, allocating the tables above it (fork's copy_page_range)."""
        t = proc.pgd
        for depth, shift in enumerate(self.shifts):
            idx = (addr >> shift) & 511
            if self.levels[depth] == level:
                self.tables[t][idx] = entry
                return
            cur = self.tables[t][idx]
            if not self.fmt.present(cur):
                new = self._new_table(self.levels[depth + 1], chain, fault)
                cur = self.tables[t][idx] = self.fmt.table_entry(new)
            t = self.fmt.frame(cur)

    # -- what /proc would show ---------------------------------------------------------------------------

    def pagemap(self, proc: Process, addr: int) -> int:
        """The /proc/PID/pagemap entry (fs/proc/task_mmu.c) the model's tables give for addr."""
        entry, level, _t, _i = self._leaf(proc, addr)
        fmt = self.fmt
        if not fmt.present(entry) or (level != "PTE" and not fmt.is_huge(entry)):
            return 0
        pfn = fmt.frame(entry)
        if level != "PTE":
            pfn = (pfn & ~511) + ((addr >> 12) & 511)
        value = 1 << 63 | pfn
        if fmt.special(entry) and level == "PTE":
            return value                                 # vm_normal_page() is NULL for the zero page
        head = self._folio_head(entry, level)
        if head is None:
            return value
        if self.kind.get(head) == "file":
            value |= 1 << 61
        if self.mapcount.get(head, 0) == 1:
            value |= 1 << 56
        return value

    def kpageflags(self, pfn: int) -> int:
        """/proc/kpageflags as 6.18 shows it: ZERO_PAGE (24), THP (22), ANON (12), MMAP (11), and for an
        anonymous page also UPTODATE (3), SWAPBACKED (14) and, while one process maps it exclusively,
        OWNER_2 (34, PG_anon_exclusive): a fresh anonymous page reads 0x400005808, as seen live."""
        if pfn == self.zero_pfn:
            return 1 << 24
        if self.huge_zero_pfn is not None and self.huge_zero_pfn <= pfn < self.huge_zero_pfn + 512:
            return 1 << 24 | 1 << 22
        head = pfn if pfn in self.kind else pfn & ~511
        kind = self.kind.get(head)
        flags = 1 << 11 if self.mapcount.get(head, 0) else 0
        if kind == "thp":
            return flags | 1 << 22 | 1 << 12
        if kind == "anon":
            exclusive = 1 << 34 if head in self.exclusive else 0
            return flags | 1 << 12 | 1 << 3 | 1 << 14 | exclusive
        return flags
