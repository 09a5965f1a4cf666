"""The scenario library: small programs, each teaching one path of the fault handler.

A scenario is a list of operations that both the live scenario program (capture/c/scenario.c)
and the simulator run, so their faults can be compared one by one. Operations:

  mmap PAGES PROT KIND      PROT r, rw or none; KIND anon, anon+populate or file (a file of PAGES
                            pages written with write(2) first); the mapping becomes "the region"
  stack PAGES               the region is the PAGES pages just below the stack's VMA
  read OFFSET, write OFFSET one byte at region + OFFSET (hex)
  mprotect PAGE N PROT      on N pages from page PAGE of the region
  madvise PAGE N hugepage   madvise(MADV_HUGEPAGE)
  munmap PAGE N
  fork                      a child starts; later operations written "child OP" run in it
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..decode.pagemap import PM_PFN_MASK, page_state
from .kernel import (
    MAP_ANONYMOUS,
    MAP_POPULATE,
    MAP_PRIVATE,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    Fault,
    ModelConfig,
    Process,
    SimulatedKernel,
)


class ScenarioError(ValueError):
    """An unknown scenario or a malformed operation; the message lists what is accepted."""


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    teaches: str
    ops: tuple[str, ...]
    featured: int          # the operation whose fault the detailed journey follows


SCENARIOS = (
    Scenario("first-touch", "first write to a fresh anonymous page",
             "mmap only promises memory; the first write faults and do_anonymous_page hands out a zeroed page",
             ("mmap 1 rw anon", "write 0x100"), 1),
    Scenario("read-then-write", "read a fresh page, then write it",
             "a read maps the shared zero page read-only; the write after it faults again (a protection "
             "fault) and gets a page of its own", ("mmap 1 rw anon", "read 0x100", "write 0x100"), 2),
    Scenario("fork-then-write", "copy-on-write after fork",
             "fork shares every anonymous page read-only; the child's write copies the page. The parent's "
             "write then finds the original mapped by no one else: do_wp_page() reuses it if no other "
             "reference holds it (wp_can_reuse_anon_folio), and copies it if one does, e.g. while the folio "
             "still sits in another CPU's LRU-add batch",
             ("mmap 2 rw anon", "write 0x0", "write 0x1000", "fork", "child write 0x0", "write 0x0"), 4),
    Scenario("file-read", "read a file through mmap",
             "a read of a file mapping maps the page-cache page itself, and fault-around maps its cached "
             "neighbours too: the second read does not fault", ("mmap 4 r file", "read 0x1000", "read 0x3000"), 1),
    Scenario("huge-page", "a transparent huge page",
             "in a 2 MiB-aligned region marked MADV_HUGEPAGE (THP 'madvise' or 'always'), one write maps "
             "a whole 2 MiB page with a single PMD entry", ("mmap 512 rw anon", "madvise 0 512 hugepage",
                                                              "write 0x100"), 2),
    Scenario("mprotect-violation", "write to a page made read-only",
             "after mprotect(PROT_READ) the PTE has no RW bit and the VMA no VM_WRITE: the write is a "
             "protection fault that ends in SIGSEGV with SEGV_ACCERR",
             ("mmap 1 rw anon", "write 0x100", "mprotect 0 1 r", "write 0x100"), 3),
    Scenario("unmapped-access", "write where nothing is mapped",
             "no VMA holds the address: the fault handler finds nothing and sends SIGSEGV with SEGV_MAPERR",
             ("mmap 2 rw anon", "munmap 1 1", "write 0x1000"), 2),
    Scenario("map-populate", "MAP_POPULATE: no fault at all",
             "MAP_POPULATE makes the kernel fault every page in during mmap itself, so the program's "
             "accesses never trap", ("mmap 4 rw anon+populate", "read 0x0", "write 0x3000"), 0),
    Scenario("stack-growth", "the stack grows down on a fault",
             "a write below the stack's VMA is not an error: the handler grows the VM_GROWSDOWN VMA down to "
             "the address and then maps a new page", ("stack 16", "write 0x0"), 1),
)


def find_scenario(name: str) -> Scenario:
    for s in SCENARIOS:
        if s.name == name:
            return s
    raise ScenarioError(f"no scenario {name!r}; the scenarios are: {', '.join(s.name for s in SCENARIOS)}")


PROTS = {"r": PROT_READ, "rw": PROT_READ | PROT_WRITE, "none": 0}


def parse_op(op: str) -> tuple[str, str, list[str]]:
    """→ (who, verb, arguments); who is "parent" or "child"."""
    words = op.split()
    who = "parent"
    if words and words[0] == "child":
        who, words = "child", words[1:]
    arity = {"mmap": 3, "stack": 1, "read": 1, "write": 1, "mprotect": 3, "madvise": 3, "munmap": 2, "fork": 0}
    if not words or words[0] not in arity or len(words) - 1 != arity[words[0]]:
        raise ScenarioError(f"malformed operation {op!r}; accepted: " + ", ".join(f"{v} ({n} arguments)"
                                                                                  for v, n in arity.items()))
    return who, words[0], words[1:]


@dataclass
class ModelRun:
    """A scenario as the simulator ran it."""

    scenario: Scenario
    kernel: SimulatedKernel
    parent: Process
    child: Process | None = None
    region: int = 0                       # the region's first address
    region_pages: int = 0
    faults_by_op: list[list[Fault]] = field(default_factory=list)
    populated: list[Fault] = field(default_factory=list)

    def final_pagemap(self) -> list[int]:
        return [self.kernel.pagemap(self.parent, self.region + i * PAGE_SIZE) for i in range(self.region_pages)]

    def final_states(self) -> list[str]:
        """One page_state word per page of the region, from the model's pagemap and kpageflags."""
        k = self.kernel
        return [page_state(e, k.kpageflags(e & PM_PFN_MASK) if e >> 63 else None) for e in self.final_pagemap()]


def run_in_model(scenario: Scenario, config: ModelConfig | None = None, region_hint: int | None = None) -> ModelRun:
    """The scenario's operations in the simulator. ``region_hint``: the address the live kernel gave the
    region's mmap, so that whatever depends on the virtual address (fault-around's window is aligned in
    virtual addresses, THP needs a 2 MiB-aligned range) happens as it did live."""
    k = SimulatedKernel(config)
    run = ModelRun(scenario, k, k.exec("scenario"))
    for op in scenario.ops:
        who, verb, args = parse_op(op)
        proc = run.child if who == "child" else run.parent
        if proc is None:
            raise ScenarioError(f"{op!r} runs in a child, but no fork came before it")
        before = len(k.faults)
        if verb == "mmap":
            pages, prot, kind = int(args[0]), PROTS[args[1]], args[2]
            flags = MAP_PRIVATE | (MAP_ANONYMOUS if kind.startswith("anon") else 0) | \
                (MAP_POPULATE if kind.endswith("+populate") else 0)
            file = k.create_file("scenario-file", pages) if kind == "file" else None
            run.region = k.mmap(proc, pages * PAGE_SIZE, prot, flags, file, hint=region_hint)
            run.region_pages = pages
        elif verb == "stack":
            stack = next(v for v in proc.vmas if v.name == "[stack]")
            run.region_pages = int(args[0])
            run.region = stack.start - run.region_pages * PAGE_SIZE
        elif verb in ("read", "write"):
            k.access(proc, run.region + int(args[0], 16), write=verb == "write")
        elif verb == "mprotect":
            k.mprotect(proc, run.region + int(args[0]) * PAGE_SIZE, int(args[1]) * PAGE_SIZE, PROTS[args[2]])
        elif verb == "madvise":
            k.madvise_hugepage(proc, run.region + int(args[0]) * PAGE_SIZE, int(args[1]) * PAGE_SIZE)
        elif verb == "munmap":
            k.munmap(proc, run.region + int(args[0]) * PAGE_SIZE, int(args[1]) * PAGE_SIZE)
        elif verb == "fork":
            run.child = k.fork(proc)
        new = k.faults[before:]
        for f in new:      # read when the operation ends, as the live program is paused and read then
            f.kpageflags_after = k.kpageflags(f.pfn) if f.pfn is not None else None
        run.populated += [f for f in new if not f.trap]
        run.faults_by_op.append([f for f in new if f.trap])
    return run
