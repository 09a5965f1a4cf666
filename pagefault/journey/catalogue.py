"""The step catalogue: every step of a journey defined once, and the one builder that assembles them.

A step's definition holds its key, its title (and how a source tells it in its own words; an
architecture's words are its Arch interface's step_titles), the phase the live exercise is paused at
while it is read, the evidence it needs, and the label of the value that stands in for it when a source
lacks that evidence. Each source (the live exercise,
a fault in any program, the simulator, the arm64 exercise) gives the builder a filler per step it has
evidence for, or a ``Missing`` with the reason it has none; the builder numbers the steps in the
catalogue's order, titles them, and turns each ``Missing`` into the step's "unavailable, because …".

The closed vocabularies it uses (step keys, phases, the 7 Ws, the sources) are journey/vocabulary.py's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..decode.arch import Arch
from ..decode.arch_interface import arch_interface
from .steps import Step, unavailable
from .vocabulary import Source, Stage, StepKey, W


@dataclass(frozen=True)
class StepDef:
    key: StepKey
    title: str
    stage: Stage                    # the phase the live exercise is paused at while the step is read
    needs: str                      # the evidence the step is built from
    missing_label: str              # the value that says why, when a source lacks that evidence
    told_as: Mapping[Source, str] = field(default_factory=dict)   # a source's own title

    def title_for(self, source: Source, arch: Arch) -> str:
        """The title as ``source`` tells it, else as the architecture names the step (its Arch interface's
        step_titles: registers and tables have its names), else the catalogue's."""
        return self.told_as.get(source) or arch_interface(arch).step_titles.get(self.key) or self.title


_T = Stage.TOUCHED
CATALOGUE: tuple[StepDef, ...] = (
    StepDef(StepKey.PROCESS, "The process and its mm exist before main() runs", Stage.READY,
            "the exec and its PGD allocation", "PID"),
    StepDef(StepKey.SELECTED, "Which fault: chosen in the kernel while the program ran at full speed", Stage.DONE,
            "the selector and the chosen fault", "selector"),
    StepDef(StepKey.MMAP, "mmap() creates a VMA: a promise of memory, no page yet", Stage.MAPPED,
            "the mmap call and the VMA it made", "VMA"),
    StepDef(StepKey.TRAP, "The CPU traps: #PF with the faulting address, RIP and error code", _T,
            "the trap's address, instruction pointer and syndrome", "page fault",
            {Source.PROGRAM: "The CPU traps: address, RIP, error code"}),
    StepDef(StepKey.RIP, "RIP proven: the faulting instruction, found in the file", _T,
            "the faulting instruction's bytes", "instruction",
            {Source.PROGRAM: "The instruction that faulted"}),
    StepDef(StepKey.FLAGS, "Fault flags: what do_user_addr_fault() hands to handle_mm_fault()", _T,
            "the syndrome and enum fault_flag", "fault flags",
            {Source.PROGRAM: "The flags handle_mm_fault() gets"}),
    StepDef(StepKey.VMA, "The VMA lookup: is the address legal, and is a write allowed?", _T,
            "the VMA that holds the address", "VMA",
            {Source.PROGRAM: "The VMA that holds the address"}),
    StepDef(StepKey.WALK, "The page-table walk: one index per level", _T,
            "the page-table entries at each level", "walk",
            {Source.PROGRAM: "The page-table walk, before and after"}),
    StepDef(StepKey.ALLOC, "The buddy allocator hands out a page", _T,
            "the page allocations inside the fault", "allocation",
            {Source.PROGRAM: "The page the fault got"}),
    StepDef(StepKey.CLASS, "What kind of fault it was", _T, "the events inside the fault", "class"),
    StepDef(StepKey.PAGEMAP, "The PFN confirmed in /proc/PID/pagemap", _T,
            "the page's pagemap entry", "pagemap entry"),
    StepDef(StepKey.PTE, "The PTE that lets the retried instruction succeed", _T,
            "the leaf entry after the fault", "PTE",
            {Source.PROGRAM: "The PTE after, and the page behind it"}),
    StepDef(StepKey.RETURN, "Return: the instruction retried", _T,
            "what happened after the handler returned", "outcome",
            {Source.PROGRAM: "Back to the program"}),
)
STEP_DEFS: dict[StepKey, StepDef] = {d.key: d for d in CATALOGUE}


# The 7 Ws each source tells of a step that do not depend on its evidence; the source's filler adds the
# rest (when, which, …), and the step shows them in W's order.
STEP_WS: dict[StepKey, dict[Source, dict[W, str]]] = {
    StepKey.PROCESS: {
        Source.EXERCISE: {
            W.WHY: "a process needs an address space (mm_struct, VMAs, page tables) before any of its code can run.",
            W.WHERE: "kernel/fork.c (fork), fs/exec.c (exec: alloc_bprm → mm_init → pgd_alloc).",
            W.WHO: "pagefault forked the child; the child's execve built the new mm.",
            W.WHEN: "before main(): the loader's own faults above happened before the program's first line.",
            W.WITHOUT: "without an mm there is no CR3 to load and no VMA to check a fault against.",
        },
        Source.MODEL: {
            W.WHAT: "exec gave the process a fresh mm_struct with its own PGD page.",
            W.WHO: "the simulated execve",
        },
    },
    StepKey.MMAP: {
        Source.EXERCISE: {
            W.WHY: "mmap only reserves addresses: physical memory is given on the first touch (demand paging).",
            W.WHERE: "mm/mmap.c do_mmap → __get_unmapped_area → vm_unmapped_area; the VMA goes into mm->mm_mt.",
            W.WHO: "the program's mmap() call; the kernel picked the address (top-down, below the stack gap).",
            W.WHEN: "after exec, before the write: the program is paused right after mmap returned.",
            W.WITHOUT: "without the VMA the later write would have no mapping and end in SIGSEGV.",
        },
        Source.MODEL: {
            W.WHAT: "mmap only reserved addresses; no page frame was given yet.",
            W.WHY: "demand paging: memory is handed out on the first touch.",
        },
        Source.ARM64_EXERCISE: {
            W.WHAT: "a private anonymous read-write mapping: a VMA, no page, no page-table entry yet",
            W.WHY: "mmap only promises memory; the first touch pays for it",
        },
    },
    StepKey.TRAP: {
        Source.EXERCISE: {
            W.WHAT: "a user-mode write to a page with no present PTE: the MMU cannot translate, so it raises #PF.",
            W.WHY: "the VMA exists but no page frame has been given to this page yet.",
            W.WHERE: "vector 14 → asm_exc_page_fault → exc_page_fault (arch/x86/mm/fault.c), where the tracepoint "
                     "fires.",
            W.WHO: "the CPU saved CR2, RIP and the error code; the kernel's entry code read them.",
            W.WITHOUT: "without the trap the store would silently miss: the fault is what lets the kernel fill the "
                       "page.",
        },
        Source.ARM64_EXERCISE: {
            W.WHERE: "the exception vector el0_sync → el0_da → do_mem_abort → do_translation_fault → do_page_fault",
            W.WHO: "the MMU found no valid descriptor and raised a synchronous data abort",
        },
    },
    StepKey.RIP: {
        Source.EXERCISE: {
            W.WHAT: "the address the CPU saved as RIP, traced back to a byte offset in a file on disk.",
            W.WHY: "ASLR moves where a file is mapped; the offset inside the file does not move.",
            W.WHO: "the instruction the CPU retries after the handler returns.",
            W.WHEN: "the instruction was executing when the trap came; it had not completed.",
            W.WITHOUT: "without this proof the RIP is just a number; with it, it is a line of code.",
        },
    },
    StepKey.FLAGS: {
        Source.EXERCISE: {
            W.WHY: "the generic mm code speaks FAULT_FLAG_*, not x86 error codes.",
            W.WHERE: "do_user_addr_fault() in arch/x86/mm/fault.c (inlined into exc_page_fault here).",
            W.WHO: "the x86 fault handler; the values of the bits come from this kernel's enum fault_flag.",
            W.WHEN: "after the trap, before the VMA lookup.",
            W.WITHOUT: "without FAULT_FLAG_WRITE the kernel would map the shared zero page read-only instead.",
        },
    },
    StepKey.VMA: {
        Source.EXERCISE: {
            W.WHAT: "find the VMA that contains the address and check the access against its flags.",
            W.WHY: "only a VMA says whether an address is part of the process and what it may do there.",
            W.WHERE: "lock_vma_under_rcu() → mas_walk() over mm->mm_mt (mm/memory.c, lib/maple_tree.c).",
            W.WHO: "the fault handler, under RCU and the VMA's own lock rather than mmap_lock.",
            W.WHEN: "right after the flags are set, before any page-table work.",
            W.WITHOUT: "no VMA → SEGV_MAPERR; a VMA without VM_WRITE → SEGV_ACCERR.",
        },
    },
    StepKey.WALK: {
        Source.EXERCISE: {
            W.WHAT: "the same walk the MMU did in hardware, now done by __handle_mm_fault() in software.",
            W.WHY: "to find (and create where missing) the tables down to the PTE that will map the page.",
            W.WHERE: "pgd_offset → p4d_alloc → pud_alloc → pmd_alloc → the PTE in handle_pte_fault (mm/memory.c).",
            W.WHO: "the fault handler; missing tables come from the page allocator too.",
            W.WHEN: "after the VMA check, before the page is allocated.",
            W.WITHOUT: "without the indices the kernel could not tell which entry of each table is this address's.",
        },
    },
    StepKey.ALLOC: {
        Source.EXERCISE: {
            W.WHY: "a private anonymous page must start as zeros and belong to this process alone.",
            W.WHERE: "do_anonymous_page → vma_alloc_folio → alloc_pages_mpol → the buddy allocator (mm/page_alloc.c).",
            W.WHO: "the page allocator, likely from this CPU's per-CPU free list.",
            W.WHEN: "inside the fault, after the page tables down to the PMD exist.",
            W.WITHOUT: "without a free page the fault would reclaim, or end in the OOM killer.",
        },
    },
    StepKey.PAGEMAP: {
        Source.EXERCISE: {
            W.WHAT: "the kernel's own report of which frame now backs the page.",
            W.WHY: "a second, independent witness for the PFN the allocator handed out.",
            W.WHO: "read by pagefault while the program is paused right after its write.",
            W.WHEN: "after the fault returned and the write completed.",
            W.WITHOUT: "without root the PFN reads as 0: the physical layout is hidden (Rowhammer and friends).",
        },
    },
    StepKey.PTE: {
        Source.EXERCISE: {
            W.WHAT: "the entry that maps the virtual page to the frame, with its permission bits.",
            W.WHY: "the MMU only understands page tables; this entry is what makes the retry succeed.",
            W.WHERE: "set_pte_at() in do_anonymous_page (mm/memory.c), into the PTE table found in the walk.",
            W.WHO: "the fault handler writes it; the MMU reads it on the retry and caches it in the TLB.",
            W.WHEN: "at the end of the fault, before returning to user mode.",
            W.WITHOUT: "no PTE → the retry faults again, forever.",
        },
    },
    StepKey.RETURN: {
        Source.EXERCISE: {
            W.WHAT: "iret back to the same RIP; the store runs again and this time the MMU finds the PTE.",
            W.WHY: "a page fault is restartable: the instruction did not complete the first time.",
            W.WHERE: "the exception return path (arch/x86/entry), back to user mode.",
            W.WHO: "the CPU, retrying the instruction it faulted on.",
            W.WHEN: "right after the handler returned.",
            W.WITHOUT: "without the retry the program would have to know about paging; it never does.",
        },
        Source.ARM64_EXERCISE: {
            W.WHAT: "the exception returns (eret) to the same PC, and the store now finds a valid descriptor",
        },
    },
}


@dataclass(frozen=True)
class Missing:
    """A source lacks a step's evidence: the step is shown, its catalogue value unavailable with this reason."""

    reason: str


Filler = Callable[[Step], None]


def assemble(fillers: Mapping[StepKey, Filler | Missing], source: Source, arch: Arch = Arch.X86_64,
             stage: Stage | None = None) -> list[Step]:
    """The journey's steps: one per key given, in the catalogue's order, numbered from 1.

    Each step is the catalogue's (title as ``source`` and ``arch`` tell it; the catalogue's phase, or
    ``stage`` for a source that reads every step after the program ran), filled by its filler, or holding
    the catalogue's unavailable value when the source gave a ``Missing``; its 7 Ws are the ones ``source``
    tells of it whatever the evidence (STEP_WS) with those the filler gave, in W's order.
    """
    steps: list[Step] = []
    for d in CATALOGUE:
        if d.key not in fillers:
            continue
        s = Step(len(steps) + 1, d.key, d.title_for(source, arch), stage or d.stage)
        filler = fillers[d.key]
        if isinstance(filler, Missing):
            s.values.append(unavailable(d.missing_label, filler.reason))
        else:
            filler(s)
        told: dict[str, str] = {w: text for w, text in STEP_WS.get(d.key, {}).get(source, {}).items()}
        told.update(s.ws)
        s.ws = {w: told[w] for w in W if w in told}
        steps.append(s)
    return steps


# A scenario's steps, whether the simulator ran it or the live kernel did (checked against the simulator):
# the scenario, one step per operation, and (live) the simulator's verdict. Their titles take the
# scenario's words; an operation's key is OPERATION's with the operation's index (op0, op1, …).
SCENARIO_DEFS: dict[StepKey, StepDef] = {d.key: d for d in (
    StepDef(StepKey.SCENARIO, "Scenario {name}: {title}", Stage.READY, "the scenario's program and what it teaches",
            "program"),
    StepDef(StepKey.OPERATION, "Operation {index}: {op}", Stage.DONE,
            "the operation's faults and the region's pagemap after it", "faults"),
    StepDef(StepKey.VERDICT, "The simulator, run on the same operations", Stage.DONE,
            "the simulator's run of the same operations with the machine's settings", "simulator's faults"),
)}


def scenario_step(key: StepKey, number: int, **words: object) -> Step:
    """A scenario's step as SCENARIO_DEFS defines it, numbered ``number``, its title filled with ``words``
    (name and title of the scenario; index and op of an operation)."""
    d = SCENARIO_DEFS[key]
    step_key = f"{d.key}{words['index']}" if key is StepKey.OPERATION else d.key
    return Step(number, step_key, d.title.format(**words), d.stage)


# The live exercise's steps, in order (the stepper counts them).
EXERCISE_KEYS = (StepKey.PROCESS, StepKey.MMAP, StepKey.TRAP, StepKey.RIP, StepKey.FLAGS, StepKey.VMA, StepKey.WALK,
                 StepKey.ALLOC, StepKey.PAGEMAP, StepKey.PTE, StepKey.RETURN)
STEP_CATALOGUE = {k: STEP_DEFS[k] for k in EXERCISE_KEYS}
