"""The journey from the simulator: the live journey's steps for a scenario's featured fault, then one
step per operation of the scenario. Every value is labelled modelled, those worked out from the simulator's
numbers too (with the arithmetic shown), or unavailable.
"""

from __future__ import annotations

from ..decode.arch_interface import ArchInterface, arch_interface
from ..decode.fault_flags import decode_fault_flags, fallback_fault_flag_values
from ..decode.gfp import decode_gfp, gfp_value
from ..decode.pagemap import PM_PFN_MASK, decode_kpageflags, decode_pagemap_entry, page_state, summarise_states
from ..decode.vm_flags import decode_vm_flags
from ..model import kernel as mk
from ..model.maple_tree import search as maple_search
from ..model.page_tables import Arm64Format
from ..model.scenarios import ModelRun, parse_op
from .catalogue import Filler, Missing, assemble, scenario_step
from .steps import Area, Journey, PageWalk, Provenance, Step, Value, WalkLevel, modelled, unavailable
from .vocabulary import Source, StepKey, seven_ws

LIVE_ONLY = "the simulator runs no machine code; the live journey shows it (sudo pagefault journey)"


def _src(run: ModelRun, what: str) -> str:
    return f"pagefault simulator, Linux {run.kernel.config.kernel} model: {what}"


def _computed(label: str, value, how: str, derivation: list[str] | None = None, display: str = "") -> Value:
    """A value worked out from the simulator's own numbers: still modelled (derived means from observed ones)."""
    return modelled(label, value, f"computed from the simulator's values: {how}", derivation, display)


def _model_version(k) -> tuple[int, int]:
    major, _, minor = k.config.kernel.partition(".")
    return int(major), int(minor or 0)


def model_fault_flags() -> tuple[dict[str, int], str]:
    """enum fault_flag as the model's kernel (6.18) has it."""
    return fallback_fault_flag_values((6, 18))


def featured_fault(run: ModelRun) -> mk.Fault | None:
    faults = run.faults_by_op[run.scenario.featured] if run.scenario.featured < len(run.faults_by_op) else []
    return faults[0] if faults else (run.populated[0] if run.populated else None)


def _chain(chain: tuple[str, ...]) -> str:
    return " → ".join(chain)


def _iface(run: ModelRun) -> ArchInterface:
    """The simulated machine's architecture, in the model's paging shape."""
    c = run.kernel.config
    return arch_interface(c.arch, c.paging_levels, va_bits=Arm64Format.VA_BITS.get(c.paging_levels, 48),
                          pa_bits=52 if c.lpa2 else 48)


def _kernel(run: ModelRun) -> tuple[int, int]:
    """The version the simulator's entries are decoded for: the model's own."""
    return _model_version(run.kernel)


def _trap_text(run: ModelRun, f: mk.Fault) -> str:
    return f"{_iface(run).syndrome_noun} 0x{f.error_code:x}"


def build_model_journey(run: ModelRun, note: str = "") -> Journey:
    sc, k, proc = run.scenario, run.kernel, run.parent
    j = Journey("model", f"simulated Linux {k.config.kernel}", proc.pid, [sc.name], f"scenario {sc.name}: "
                + "; ".join(sc.ops))
    if note:
        j.notes.append(note)
    j.notes.append("every value here is modelled: the simulator's own addresses and PFNs, never this machine's")
    j.fault_flag_table, source = model_fault_flags()
    j.fault_flag_source = "modelled: " + source
    f = featured_fault(run)
    j.steps += featured_steps(run, f) if f else []
    if f:
        j.walk = model_walk(run, f)
        proc_f = k.processes[f.pid]
        j.layout = [Area(v.start, v.end, v.perms(), v.name, v.start <= f.address < v.end) for v in proc_f.vmas]
        j.layout_source = _src(run, "the simulated process's VMAs when the featured fault was handled")
    for i, op in enumerate(sc.ops):
        j.steps.append(op_step(run, i, op, len(j.steps) + 1))
    j.complete = True
    return j


def model_walk(run: ModelRun, f: mk.Fault) -> PageWalk:
    """The featured fault's walk in the simulator's tables, with the entries after it (and before)."""
    proc, arch = run.kernel.processes[f.pid], _iface(run)
    walk = PageWalk(f.address, proc.pgd << 12, "modelled: " + _src(run, "the simulated PGD page's PFN << 12"),
                    **arch.walk_shape())  # type: ignore[arg-type]
    before = {level: entry for level, _t, _i, entry in f.walk_before}
    for level, table, idx, entry in (f.walk_after or f.walk_before):
        walk.levels.append(WalkLevel(level, idx, table << 12, entry, before.get(level), Provenance.MODELLED,
                                     _src(run, "the simulated page tables")))
    walk.set_frame(arch, _kernel(run))
    return walk


class _Featured:
    """The featured fault's steps, one filler each: every value modelled, or computed from modelled ones."""

    def __init__(self, run: ModelRun, f: mk.Fault):
        self.run, self.f, self.k, self.proc, self.arch = run, f, run.kernel, run.parent, _iface(run)

    def src(self, what: str) -> str:
        return _src(self.run, what)

    def fillers(self) -> dict[StepKey, Filler | Missing]:
        return {StepKey.PROCESS: self.process, StepKey.MMAP: self.mmap, StepKey.TRAP: self.trap,
                StepKey.RIP: Missing(LIVE_ONLY), StepKey.FLAGS: self.flags, StepKey.VMA: self.vma,
                StepKey.WALK: self.walk, StepKey.ALLOC: self.alloc, StepKey.PAGEMAP: self.pagemap,
                StepKey.PTE: self.pte, StepKey.RETURN: self.result}

    def process(self, s: Step) -> None:
        proc, src = self.proc, self.src
        pgd = next(a for a in self.k.allocs if a.what == "PGD table")
        s.values += [modelled("PID", proc.pid, src("the simulated process"), display=str(proc.pid)),
                     modelled("PGD page (PFN)", pgd.pfn, src("pgd_alloc during exec, from the simulated buddy allocator")),
                     _computed(f"PGD physical address ({self.arch.root_register} while it runs)", pgd.pfn << 12,
                               "PFN << 12 (of a modelled PFN)", [f"0x{pgd.pfn:x} << 12 = 0x{pgd.pfn << 12:x}"]),
                     modelled("VMAs after exec", len(proc.vmas), src("a typical dynamically linked program's layout"),
                              display=str(len(proc.vmas)))]
        s.evidence.append("PGD allocation (modelled chain): " + _chain(pgd.chain))
        s.ws = seven_ws(which=f"PGD PFN 0x{pgd.pfn:x} (modelled)")

    def mmap(self, s: Step) -> None:
        vma, src = self.f.vma, self.src
        if vma is not None:
            word = decode_vm_flags(vma.flags)
            s.values += [modelled("VMA", f"[0x{vma.start:x}, 0x{vma.end:x}) {vma.perms()} {vma.name}".rstrip(),
                                  src("the region, placed by the modelled vm_unmapped_area() top-down below mmap_base "
                                      "(2 MiB-aligned for anonymous lengths that are multiples of 2 MiB)")),
                         modelled("vm_flags", vma.flags, src("the flags mmap/mprotect/madvise gave it"),
                                  display=f"0x{vma.flags:x} = {' | '.join(word.names)}")]
        else:
            s.values.append(modelled("VMA", "none", src("no VMA holds the address")))

    def trap(self, s: Step) -> None:
        f, arch, src = self.f, self.arch, self.src
        if not f.trap:
            s.values.append(modelled("trap", "none", src("MAP_POPULATE: the kernel faulted the page in itself, inside "
                                                         "mmap; the CPU never trapped")))
        meaning = arch.decode_syndrome(f.error_code)
        s.values += [modelled(f"faulting address ({arch.address_register})", f.address, src("the scenario's access")),
                     modelled(arch.syndrome_register, f.error_code, src("the simulated MMU: " + arch.syndrome_how),
                              display=f"0x{f.error_code:x}"),
                     _computed(f"{arch.syndrome_noun} meaning", meaning.summary, arch.syndrome_fields,
                               list(meaning.derivations)),
                     unavailable(arch.pc_register, LIVE_ONLY)]

    def flags(self, s: Step) -> None:
        values, source = model_fault_flags()
        s.values.append(modelled("enum fault_flag table", source, source))
        value, how = self.arch.fault_flags(self.f.error_code, values, source, vma_lock=not self.f.stack_grown_pages)
        s.values.append(_computed("flags", value, f"from the modelled {self.arch.syndrome_noun}, as "
                                  f"{self.arch.fault_handler_source} does", how))
        s.derivations += list(decode_fault_flags(value, values, source).derivations)

    def vma(self, s: Step) -> None:
        f, vma, src = self.f, self.f.vma, self.src
        search = maple_search([(v.start, v.end) for v in self.proc.vmas], f.address)
        s.values.append(modelled("maple tree search", f"leaf {search.leaf_index}, slot {search.slot_index}",
                                 src("a maple tree packed from the simulated VMAs"), list(search.derivations)))
        if f.stack_grown_pages:
            s.values.append(modelled("stack growth", f"{f.stack_grown_pages} pages", src(
                "expand_downwards(): the address was below a VM_GROWSDOWN VMA, within RLIMIT_STACK and the guard gap")))
        if f.si_code:
            s.values.append(modelled("verdict", f.outcome, src("access_error() / no VMA → force_sig_fault(SIGSEGV)")))
        elif vma is not None:
            write = bool(vma.flags & mk.VM_WRITE)
            s.values.append(_computed("write permitted", write, "vm_flags & VM_WRITE",
                                      [f"0x{vma.flags:x} & 0x2 = 0x{vma.flags & 2:x}"]))

    def walk(self, s: Step) -> None:
        f, k = self.f, self.k
        s.values.append(modelled("paging levels", k.config.paging_levels, self.src(f"the model's setting ({k.config.arch.value})"),
                                 display=str(k.config.paging_levels)))
        indices, _how = self.arch.split(f.address)
        for i in indices:
            s.values.append(_computed(i.label, i.index, f"(address >> {i.shift}) & 0x{i.mask:x}",
                                      [f"(0x{f.address:x} >> {i.shift}) & 0x{i.mask:x} = {i.index}"], display=str(i.index)))
        for level, table, idx, entry in f.walk_before:
            points = self.arch.describe_entry(entry, level, _kernel(self.run)).points_to
            s.values.append(modelled(f"{level} entry before", entry, self.src(f"table PFN 0x{table:x}, entry {idx}"),
                                     display=f"0x{entry:016x}: {points}"))

    def alloc(self, s: Step) -> None:
        f, src = self.f, self.src
        if not f.allocs:
            why = {mk.ZERO_PAGE: "the shared zero page needs no allocation", mk.REUSE: "the page itself is reused",
                   mk.PAGE_CACHE: "the page was already in the page cache"}.get(f.outcome, f"outcome: {f.outcome}")
            s.values.append(modelled("allocation", "none", src(why)))
        for a in f.allocs:
            gfp = gfp_value(a.gfp)
            s.values += [modelled(f"{a.what}: PFN", a.pfn, src("the simulated buddy allocator (expand() splits a "
                                                                "larger free block)")),
                         modelled(f"{a.what}: order", a.order, src("the fault path"),
                                  display=f"{a.order} ({4096 << a.order} bytes)"),
                         modelled(f"{a.what}: GFP flags", gfp, src(" | ".join(a.gfp)),
                                  display=f"0x{gfp:x} = {decode_gfp(gfp).symbolic}"),
                         modelled(f"{a.what}: call chain", _chain(a.chain), src("mm/memory.c as of 6.18"))]

    def pagemap(self, s: Step) -> None:
        k, f = self.k, self.f
        pm = k.pagemap(k.processes[f.pid], f.address)
        flags = k.kpageflags(pm & PM_PFN_MASK) if pm >> 63 else None
        s.values.append(modelled("pagemap entry", pm, self.src("fs/proc/task_mmu.c's encoding of the simulated PTE"),
                                 display=f"0x{pm:016x}", derivation=list(decode_pagemap_entry(pm).derivations)))
        if flags is not None:
            s.values.append(modelled("kpageflags", flags, self.src("the page kinds the model tracks"),
                                     display=" | ".join(decode_kpageflags(flags, _model_version(k)).names) or "0"))
        s.values.append(_computed("page state", page_state(pm, flags), "decode.pagemap.page_state"))

    def pte(self, s: Step) -> None:
        f, k = self.f, self.k
        if not f.walk_after:
            s.values.append(modelled("entry", "none written", self.src(f"the fault ended in {f.outcome}")))
            return
        level, _t, _i, entry = f.walk_after[-1]
        meaning = self.arch.describe_entry(entry, level, _kernel(self.run))
        s.values.append(modelled(f"{level} entry after", entry, self.src("set_pte_at() / set_pmd_at() in the fault path"),
                                 display=f"0x{entry:016x}", derivation=list(meaning.derivations)))
        if f.outcome == mk.NEW_PAGE and level == "PTE" and f.vma is not None and f.pfn is not None:
            d = self.arch.derive_anonymous_entry(f.pfn, f.vma.flags, True, _model_version(k),
                                                 soft_dirty=k.config.soft_dirty)
            s.values.append(_computed(f"{self.arch.derive_entry_name} == the model's entry", d.value == entry,
                                      "compare", list(d.derivations)))

    def result(self, s: Step) -> None:
        f = self.f
        s.values.append(modelled("outcome", f.outcome, self.src("the fault path taken: " + _chain(f.path))))
        if f.also_mapped:
            s.values.append(modelled("pages mapped besides this one", f.also_mapped, self.src(
                "fault-around (filemap_map_pages)" if f.outcome == mk.PAGE_CACHE else "one PMD entry maps 512 pages"),
                display=str(f.also_mapped)))


def featured_steps(run: ModelRun, f: mk.Fault) -> list[Step]:
    """The catalogue's steps for the scenario's featured fault, as the simulator tells them."""
    return assemble(_Featured(run, f).fillers(), Source.MODEL, run.kernel.config.arch)


def op_step(run: ModelRun, index: int, op: str, number: int) -> Step:
    who, verb, _args = parse_op(op)
    faults = run.faults_by_op[index]
    s = scenario_step(StepKey.OPERATION, number, index=index, op=op)
    for f in faults:
        page = (f.address - run.region) >> 12
        grown = f", the stack grew {f.stack_grown_pages} pages" if f.stack_grown_pages else ""
        s.values.append(modelled(f"fault on page {page}", f"{_trap_text(run, f)} → {f.outcome}{grown}",
                                 _src(run, _chain(f.path))))
        for a in f.allocs:
            s.evidence.append(f"{a.what} PFN 0x{a.pfn:x} order {a.order}: {_chain(a.chain)}")
    if verb == "mmap" and op.endswith("+populate"):
        pop = run.populated
        s.values.append(modelled("pages faulted in by mmap itself", len(pop), _src(run, "populate_vma_page_range"),
                                 display=str(len(pop))))
    if not faults:
        s.values.append(modelled("faults", 0, _src(run, "no trap in this operation"), display="0"))
    if index == len(run.scenario.ops) - 1:
        s.values.append(modelled("region's final pagemap", summarise_states(run.final_states()),
                                 _src(run, "pagemap of every page")))
    return s

