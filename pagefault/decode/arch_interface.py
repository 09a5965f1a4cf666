"""What differs between the architectures pagefault explains, behind one interface.

``Arch`` (decode/arch.py) names an architecture; ``arch_interface`` gives its object for one paging
shape (levels, virtual-address bits, granule, physical-address bits). journey/ and model/ ask the
object — which register holds what, how an address splits, how an entry or the trap's syndrome
decodes, which fault flags the syndrome gives — instead of branching on the architecture's name.
Adding riscv64 is one more class here.

Pure: integers in, decoded results out.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .address import split_virtual_address, virtual_address_bits
from .arch import Arch
from .arm64_address import split_arm64_address
from .arm64_descriptor import POE_SINCE, DescriptorKind, decode_arm64_descriptor, derive_arm64_anonymous_pte
from .error_code import X86_PF_INSTR, X86_PF_PROT, X86_PF_USER, X86_PF_WRITE, decode_error_code
from .esr import FaultStatusKind, decode_esr, fault_flags_from_esr
from .fault_flags import derive_fault_flags
from .pte import decode_pte, derive_anonymous_pte
from .swap_entry import SwapConfig

Version = tuple[int, int]
LEAF_PAGE_SIZE = {"PTE": 4096, "PMD": 2 << 20, "PUD": 1 << 30}


@dataclass(frozen=True)
class LevelIndex:
    """One level's index in a split address, in the words every architecture shares."""

    level: str                  # Linux's name: PGD, P4D, PUD, PMD, PTE
    index: int
    shift: int
    mask: int
    label: str                  # how a step names it ("PMD index", "PMD index (level 2)")


class EntryRole(enum.Enum):
    """What an entry does in the walk, whatever the architecture calls it."""

    NEXT_TABLE = "→ the next table"
    FRAME = "→ the page frame"
    NEITHER = "neither"             # empty, swapped out, PROT_NONE, reserved: its kind says which


@dataclass(frozen=True)
class EntryMeaning:
    """An entry decoded: what it points to, its frame if it maps one, and how it was read."""

    points_to: str
    kind: str                   # the architecture's word for it (present, table, page, swap-format entry, …)
    role: EntryRole
    pfn: int | None             # the frame of a valid leaf (page or block), else None
    derivations: tuple[str, ...]
    decoded: object             # the architecture's own decoded record (PageTableEntry, Arm64Descriptor)


@dataclass(frozen=True)
class SyndromeMeaning:
    """The trap's syndrome (x86's #PF error code, arm64's ESR_EL1) decoded."""

    summary: str
    derivations: tuple[str, ...]
    write: bool                 # the access was a write
    present: bool               # the entry was present (a protection fault, not a translation fault)


@dataclass(frozen=True)
class VmFlagBits:
    """How an architecture reads vm_flags' architecture bits (VM_ARCH_1, VM_HIGH_ARCH_*) over the generic,
    x86-64-shaped table of decode/vm_flags.py."""

    absent: frozenset[str] = frozenset()    # flags of the generic table this architecture never has
    dropped: frozenset[int] = frozenset()   # bits whose generic (x86) meaning it does not share
    own: tuple[tuple[int, str, str], ...] = ()   # (bit, name, meaning) it gives those bits instead
    note: str = ""


# arm64's own vm_flags bits, checked in Debian's 6.1.192 and 6.12.117 include/linux/mm.h: before 6.12 MTE
# takes VM_HIGH_ARCH_0/1; 6.12 gave VM_HIGH_ARCH_0..2 to POE protection keys and moved MTE to 4/5.
_ARM64_VM_BEFORE_6_12 = ((24, "VM_ARM64_BTI", "arm64 VM_ARCH_1: BTI-guarded pages (the GP bit)"),
                         (32, "VM_MTE", "arm64: memory tagging in use"),
                         (33, "VM_MTE_ALLOWED", "arm64: memory tagging allowed"))
_ARM64_VM_FROM_6_12 = ((24, "VM_ARM64_BTI", "arm64 VM_ARCH_1: BTI-guarded pages (the GP bit)"),
                       (32, "VM_PKEY_BIT0", "arm64 POE protection key bit 0"),
                       (33, "VM_PKEY_BIT1", "POE protection key bit 1"),
                       (34, "VM_PKEY_BIT2", "POE protection key bit 2"),
                       (36, "VM_MTE", "arm64: memory tagging in use"),
                       (37, "VM_MTE_ALLOWED", "arm64: memory tagging allowed"))
_X86_ONLY_VM_BITS = frozenset({24, 32, 33, 34, 35})


@dataclass(frozen=True)
class DerivedEntry:
    value: int
    derivations: tuple[str, ...]


class ArchInterface(ABC):
    """One architecture in one paging shape."""

    arch: Arch
    address_register: str       # holds the faulting address
    pc_register: str            # holds the faulting instruction's address
    root_register: str          # holds the PGD's physical address
    syndrome_register: str      # the trap's syndrome, as a step labels it
    syndrome_noun: str          # the syndrome in a sentence ("error code", "ESR")
    syndrome_fields: str        # what its decoding reads
    fault_handler_source: str   # the file that turns the syndrome into fault flags
    derive_entry_name: str      # the function that derives an anonymous page's entry
    # Whether a tracepoint gives the syndrome of every fault, handled or not (x86's page_fault_user has the
    # error code); where none does, the trap is known only by the flags handle_mm_fault() was given. It also
    # says which live captures run here: a program of the user's is followed fault by fault at that
    # tracepoint; without it, the live journey is the exercise program's (capture/arm64_fault.py).
    syndrome_traced: bool
    trap_event: str             # the event whose samples are a scenario's faults
    untraced_syndrome_note: str = ""   # where the syndrome is not traced: what stands in for it, and why
    entry_address_field: str    # the field of a table entry that holds the next table's (or frame's) address
    syndrome_how: str           # how the MMU sets the syndrome, as the simulator does
    paging_level_choices: tuple[int, ...]   # the page-table depths a capture can have walked
    paging_levels_rule: str
    # the journey's step titles (by step key) that this architecture words in its own registers and tables;
    # a step not here keeps the catalogue's title
    step_titles: Mapping[str, str] = MappingProxyType({})
    # `pagefault decode`: the kind that decodes the trap's syndrome, and the line that points another
    # architecture's user at it
    syndrome_kind: str
    syndrome_decode_hint: str
    # whether a walk's shape is more than its depth (arm64's VA size, granule and output-address size, which
    # `decode` takes as --va-bits, --granule, --pa-bits), so that a decoding has to say which it assumed
    shape_beyond_levels: bool = False
    nr_perf_event_open: int     # perf_event_open(2)'s system-call number (the generic table's on arm64)

    def __init__(self, paging_levels: int = 4, *, va_bits: int = 48, granule: int = 4096, pa_bits: int = 48):
        self.paging_levels, self.va_bits, self.granule, self.pa_bits = paging_levels, va_bits, granule, pa_bits

    @abstractmethod
    def walk_shape(self) -> dict[str, object]:
        """The PageWalk fields that say whose walk it is (its root register, its architecture, its VA size
        where the drawing needs it to decode entries)."""

    @abstractmethod
    def split(self, address: int) -> tuple[tuple[LevelIndex, ...], tuple[str, ...]]:
        """The address's index at each level, outermost first, and the arithmetic."""

    @abstractmethod
    def describe_entry(self, entry: int, level: str, kernel: Version | None = None) -> EntryMeaning:
        """An entry found at ``level`` decoded as the kernel ``kernel`` (None: the decoder's default) reads it."""

    @abstractmethod
    def decode_syndrome(self, code: int) -> SyndromeMeaning: ...

    @abstractmethod
    def fault_flags(self, code: int, table: dict[str, int], source: str, *, vma_lock: bool) -> tuple[int, list[str]]:
        """The FAULT_FLAG_* word the trap handler hands to handle_mm_fault() for this syndrome, and how."""

    @abstractmethod
    def derive_anonymous_entry(self, pfn: int, vm_flags: int, write: bool, kernel: Version,
                               soft_dirty: bool = False) -> DerivedEntry:
        """The leaf entry do_anonymous_page() installs for this frame and VMA."""

    @abstractmethod
    def leaf_frame(self, entry: int, level: str, kernel: Version | None = None) -> tuple[int, int] | None:
        """The frame a leaf entry maps and the page size the walk's drawing shows, or None if it maps none."""

    @abstractmethod
    def frame_field(self, level: str) -> str:
        """Where in the entry the frame is, in a sentence."""

    @abstractmethod
    def access_flags(self, code: int) -> tuple[str, ...]:
        """The USER, INSTRUCTION and WRITE fault flags (their names, no FAULT_FLAG_) the handler reads out of
        the syndrome ``code`` for a user-mode fault."""

    def vm_flag_bits(self, version: Version) -> VmFlagBits:
        """How this architecture reads vm_flags' architecture bits in kernel ``version`` (the generic table's
        meanings are x86-64's)."""
        return VmFlagBits()

    @abstractmethod
    def decode_address(self, address: int) -> object:
        """The address split with this architecture's own decoder (AddressSplit, Arm64AddressSplit), with
        every field it has; :raises DecodeError: the address is outside this shape's translation."""

    @abstractmethod
    def decode_entry(self, entry: int, level: str, kernel: Version | None, swap_config: SwapConfig) -> object:
        """An entry at ``level`` with this architecture's own decoder (PageTableEntry, Arm64Descriptor), as
        the kernel ``kernel`` reads it with ``swap_config``'s swap-entry layout."""

    @abstractmethod
    def decode_syndrome_fully(self, code: int) -> object:
        """The trap's syndrome with this architecture's own decoder (ErrorCode, Syndrome), every field kept."""


class X86_64(ArchInterface):
    arch = Arch.X86_64
    address_register, pc_register, root_register = "CR2", "RIP", "CR3"
    syndrome_register = syndrome_noun = "error code"
    syndrome_fields = "the x86 #PF error-code bits"
    fault_handler_source = "arch/x86/mm/fault.c"
    derive_entry_name = "derive_anonymous_pte()"
    syndrome_traced, trap_event = True, "exceptions:page_fault_user"
    entry_address_field = "frame field"
    syndrome_how = "P if the entry was present, W for a write, U for user mode"
    paging_level_choices, paging_levels_rule = (4, 5), "x86-64 pages with 4 or 5 levels"
    syndrome_kind = "error-code"
    nr_perf_event_open = 298    # arch/x86/entry/syscalls/syscall_64.tbl
    syndrome_decode_hint = "on x86-64 the trap pushes an error code: pagefault decode error-code VALUE --arch x86_64"

    def __init__(self, paging_levels: int = 4, *, va_bits: int = 48, granule: int = 4096, pa_bits: int = 48):
        # the levels fix x86's address size (48 or 57 bits) and its granule is 4 KiB
        super().__init__(paging_levels, va_bits=virtual_address_bits(paging_levels), pa_bits=pa_bits)

    def walk_shape(self) -> dict[str, object]:
        return {"root_register": self.root_register, "architecture": self.arch.value}

    def split(self, address: int) -> tuple[tuple[LevelIndex, ...], tuple[str, ...]]:
        s = split_virtual_address(address, self.paging_levels)
        return tuple(LevelIndex(i.level, i.index, i.shift, 0x1FF, f"{i.level} index") for i in s.indices), s.derivations

    def describe_entry(self, entry: int, level: str, kernel: Version | None = None) -> EntryMeaning:
        p = decode_pte(entry, level) if kernel is None else decode_pte(entry, level, kernel=kernel,
                                                                          paging_levels=self.paging_levels)
        role = EntryRole.NEITHER if not p.present else EntryRole.FRAME if p.leaf else EntryRole.NEXT_TABLE
        return EntryMeaning(p.points_to, p.kind.value, role, p.pfn if p.present else None, tuple(p.derivations), p)

    def decode_syndrome(self, code: int) -> SyndromeMeaning:
        d = decode_error_code(code)
        return SyndromeMeaning(d.summary, tuple(d.bit_meanings), bool(code & X86_PF_WRITE), bool(code & X86_PF_PROT))

    def fault_flags(self, code: int, table: dict[str, int], source: str, *, vma_lock: bool) -> tuple[int, list[str]]:
        ff = derive_fault_flags(code, table, source=source, vma_lock=vma_lock)
        return ff.value, list(ff.derivations)

    def access_flags(self, code: int) -> tuple[str, ...]:
        # do_user_addr_fault(): USER for a user-mode fault, WRITE for X86_PF_WRITE, INSTRUCTION for X86_PF_INSTR
        return tuple(n for n, b in (("USER", X86_PF_USER), ("INSTRUCTION", X86_PF_INSTR), ("WRITE", X86_PF_WRITE))
                     if code & b)

    def derive_anonymous_entry(self, pfn: int, vm_flags: int, write: bool, kernel: Version,
                               soft_dirty: bool = False) -> DerivedEntry:
        d = derive_anonymous_pte(pfn, vm_flags, write, soft_dirty=soft_dirty, kernel=kernel[:2] if kernel else None)
        return DerivedEntry(d.value, tuple(d.derivations))

    def leaf_frame(self, entry: int, level: str, kernel: Version | None = None) -> tuple[int, int] | None:
        p = decode_pte(entry, level)
        return (p.pfn, LEAF_PAGE_SIZE.get(level, 4096)) if p.present and p.pfn is not None else None

    def frame_field(self, level: str) -> str:
        return f"the frame field of the {level} entry"

    def decode_address(self, address: int) -> object:
        return split_virtual_address(address, self.paging_levels)

    def decode_entry(self, entry: int, level: str, kernel: Version | None, swap_config: SwapConfig) -> object:
        return decode_pte(entry, level, kernel=kernel, swap_config=swap_config, paging_levels=self.paging_levels)

    def decode_syndrome_fully(self, code: int) -> object:
        return decode_error_code(code)


class Arm64(ArchInterface):
    arch = Arch.ARM64
    address_register, pc_register, root_register = "FAR_EL1", "PC", "TTBR0_EL1"
    syndrome_register, syndrome_noun = "ESR_EL1", "ESR"
    syndrome_fields = "the ESR_EL1 fields"
    fault_handler_source = "arch/arm64/mm/fault.c"
    derive_entry_name = "derive_arm64_anonymous_pte()"
    # no arm64 tracepoint has the trap (6.1 has no exceptions:page_fault_user): the faults are the perf
    # software page-fault event's samples, and no probe can read ESR_EL1 for a handled fault
    syndrome_traced, trap_event = False, "page-faults"
    untraced_syndrome_note = ("arm64: ESR_EL1 cannot be read for a handled fault, so these flags are the trap's "
                              "record: do_page_fault() set USER for a fault from EL0, WRITE for WnR without CM, "
                              "INSTRUCTION for an instruction abort")
    entry_address_field = "output address"
    syndrome_how = ("a data abort from EL0, WnR for a write, a translation fault at the level whose descriptor was "
                    "invalid or a permission fault at the leaf")
    paging_level_choices, paging_levels_rule = (3, 4, 5), "arm64 with 4 KiB pages walks 3, 4 or 5 levels"
    syndrome_kind = "esr"
    nr_perf_event_open = 241    # include/uapi/asm-generic/unistd.h
    syndrome_decode_hint = "on arm64 the trap's syndrome is ESR_EL1: pagefault decode esr VALUE --arch arm64"
    shape_beyond_levels = True
    step_titles = MappingProxyType({
        "trap": "The CPU takes a data abort from EL0: FAR (the address), ELR (the PC) and ESR_EL1",
        "rip": "The PC proven: the faulting instruction, disassembled",
        "flags": "Fault flags: what do_page_fault() hands to handle_mm_fault()",
        "walk": "The page-table walk: TTBR0_EL1 → one descriptor per level",
        "pte": "The page descriptor that lets the retried instruction succeed",
    })

    def walk_shape(self) -> dict[str, object]:
        return {"root_register": self.root_register, "architecture": self.arch.value, "va_bits": self.va_bits}

    def split(self, address: int) -> tuple[tuple[LevelIndex, ...], tuple[str, ...]]:
        s = split_arm64_address(address, self.va_bits, self.granule)
        return tuple(LevelIndex(p.level, p.index, p.shift, (1 << (p.high_bit - p.shift + 1)) - 1,
                                f"{p.level} index (level {p.architectural_level})") for p in s.indices), s.derivations

    def describe_entry(self, entry: int, level: str, kernel: Version | None = None) -> EntryMeaning:
        d = decode_arm64_descriptor(entry, level, kernel, self.va_bits, self.granule, self.pa_bits)
        points = f"{d.kind.value}, PFN 0x{d.pfn:x}" if d.pfn is not None else d.kind.value
        leaf = d.valid and d.pfn is not None and d.kind in (DescriptorKind.PAGE, DescriptorKind.BLOCK)
        role = (EntryRole.NEXT_TABLE if d.kind is DescriptorKind.TABLE else
                EntryRole.FRAME if d.kind in (DescriptorKind.PAGE, DescriptorKind.BLOCK) else EntryRole.NEITHER)
        return EntryMeaning(points, d.kind.value, role, d.pfn if leaf else None, tuple(d.derivations), d)

    def decode_syndrome(self, code: int) -> SyndromeMeaning:
        s = decode_esr(code)
        # a translation fault is arm64's not-present; permission and access-flag faults are on a valid entry
        present = s.fault_status_kind in (FaultStatusKind.PERMISSION, FaultStatusKind.ACCESS_FLAG)
        return SyndromeMeaning(s.summary, tuple(s.derivations), s.write, present)

    def fault_flags(self, code: int, table: dict[str, int], source: str, *, vma_lock: bool) -> tuple[int, list[str]]:
        names = ("ALLOW_RETRY", "KILLABLE", "INTERRUPTIBLE") + fault_flags_from_esr(decode_esr(code)) + \
            (("VMA_LOCK",) if vma_lock else ())
        value = sum(table.get(f"FAULT_FLAG_{n}", 0) for n in dict.fromkeys(names))
        return value, ["FAULT_FLAG_DEFAULT: ALLOW_RETRY | KILLABLE | INTERRUPTIBLE",
                       "USER for a fault from EL0 (EC 0x24/0x20); WRITE for WnR without CM; INSTRUCTION for an "
                       "instruction abort",
                       "VMA_LOCK: the VMA was found under the per-VMA lock" if vma_lock
                       else "no VMA_LOCK: the stack grew, under mmap_lock"]

    def derive_anonymous_entry(self, pfn: int, vm_flags: int, write: bool, kernel: Version,
                               soft_dirty: bool = False) -> DerivedEntry:
        d = derive_arm64_anonymous_pte(pfn, vm_flags, write, kernel, granule=self.granule, pa_bits=self.pa_bits)
        return DerivedEntry(d.value, tuple(d.derivations))

    def leaf_frame(self, entry: int, level: str, kernel: Version | None = None) -> tuple[int, int] | None:
        pfn = self.describe_entry(entry, level, kernel).pfn
        # the drawing's page size is the translation granule (what the walk's index widths follow)
        return None if pfn is None else (pfn, self.granule)

    def frame_field(self, level: str) -> str:
        return "the output address of the leaf descriptor"

    def access_flags(self, code: int) -> tuple[str, ...]:
        return fault_flags_from_esr(decode_esr(code))

    def decode_address(self, address: int) -> object:
        return split_arm64_address(address, self.va_bits, self.granule)

    def decode_entry(self, entry: int, level: str, kernel: Version | None, swap_config: SwapConfig) -> object:
        return decode_arm64_descriptor(entry, level, kernel=kernel, va_bits=self.va_bits, granule=self.granule,
                                       pa_bits=self.pa_bits, swap_config=swap_config)

    def decode_syndrome_fully(self, code: int) -> object:
        return decode_esr(code)

    def vm_flag_bits(self, version: Version) -> VmFlagBits:
        own = _ARM64_VM_FROM_6_12 if tuple(version[:2]) >= POE_SINCE else _ARM64_VM_BEFORE_6_12
        note = ("; arm64's bits 32..37 as in 6.12, not checked for later kernels (arm64 GCS came in 6.13)"
                if tuple(version[:2]) > (6, 12) else "")
        return VmFlagBits(frozenset({"VM_SHADOW_STACK"}), _X86_ONLY_VM_BITS, own, note)


_CLASSES: dict[Arch, type[ArchInterface]] = {Arch.X86_64: X86_64, Arch.ARM64: Arm64}


def arch_interface(arch: Arch, paging_levels: int = 4, *, va_bits: int = 48, granule: int = 4096,
                   pa_bits: int = 48) -> ArchInterface:
    """The interface of ``arch`` in one paging shape (va_bits, granule and pa_bits matter on arm64 only)."""
    return _CLASSES[arch](paging_levels, va_bits=va_bits, granule=granule, pa_bits=pa_bits)
