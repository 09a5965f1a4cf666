"""The journey from the simulator: the live journey's steps for a scenario's featured fault, then one
step per operation of the scenario. Every value is labelled modelled, those worked out from the simulator's
numbers too (with the arithmetic shown), or unavailable.
"""

from __future__ import annotations

from ..decode.address import split_virtual_address
from ..decode.arch import Arch
from ..decode.arm64_address import split_arm64_address
from ..decode.arm64_descriptor import DescriptorKind, decode_arm64_descriptor, derive_arm64_anonymous_pte
from ..decode.error_code import decode_error_code
from ..decode.esr import decode_esr, fault_flags_from_esr
from ..decode.fault_flags import decode_fault_flags, derive_fault_flags, fallback_fault_flag_values
from ..decode.gfp import decode_gfp, gfp_value
from ..decode.pagemap import PM_PFN_MASK, decode_kpageflags, decode_pagemap_entry, page_state, summarise_states
from ..decode.pte import decode_pte, derive_anonymous_pte
from ..decode.vm_flags import decode_vm_flags
from ..model import kernel as mk
from ..model.maple_tree import search as maple_search
from ..model.page_tables import Arm64Format
from ..model.scenarios import ModelRun, parse_op
from .steps import Area, Journey, PageWalk, Step, Value, WalkLevel, catalogue_step, modelled, unavailable

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


def _arm64(run: ModelRun) -> bool:
    return run.kernel.config.arch is Arch.ARM64


def _va_bits(run: ModelRun) -> int:
    return Arm64Format.VA_BITS[run.kernel.config.paging_levels]


def _describe_entry(run: ModelRun, entry: int, level: str):
    """The entry decoded in the model's architecture: (what it points to, its derivations)."""
    if _arm64(run):
        d = decode_arm64_descriptor(entry, level, _model_version(run.kernel), _va_bits(run),
                                    pa_bits=52 if run.kernel.config.lpa2 else 48)
        points = (f"{d.kind.value}, PFN 0x{d.pfn:x}" if d.pfn is not None else d.kind.value)
        return points, d
    p = decode_pte(entry, level)
    return p.points_to, p


def _trap_text(run: ModelRun, f: mk.Fault) -> str:
    return f"ESR 0x{f.error_code:x}" if _arm64(run) else f"error code 0x{f.error_code:x}"


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
    if _arm64(run):
        from .arm64_journey import TITLES
        for step in j.steps:
            step.title = TITLES.get(step.key, step.title)
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
    proc = run.kernel.processes[f.pid]
    walk = PageWalk(f.address, proc.pgd << 12, "modelled: " + _src(run, "the simulated PGD page's PFN << 12"))
    before = {level: entry for level, _t, _i, entry in f.walk_before}
    for level, table, idx, entry in (f.walk_after or f.walk_before):
        walk.levels.append(WalkLevel(level, idx, table << 12, entry, before.get(level), "modelled",
                                     _src(run, "the simulated page tables")))
    if not _arm64(run):
        walk.set_frame()
        return walk
    walk.root_register, walk.architecture, walk.va_bits = "TTBR0_EL1", "arm64", _va_bits(run)
    level, _t, _i, entry = (f.walk_after or f.walk_before)[-1]
    _points, d = _describe_entry(run, entry, level)
    if d.valid and d.pfn is not None and d.kind in (DescriptorKind.PAGE, DescriptorKind.BLOCK):
        # page_size is the translation granule on arm64 (what the walk's index widths follow), not the block's size
        walk.frame_pfn, walk.frame_source = d.pfn, "modelled: the output address of the leaf descriptor"
    return walk


def featured_steps(run: ModelRun, f: mk.Fault) -> list[Step]:
    k, proc = run.kernel, run.parent
    src = lambda what: _src(run, what)  # noqa: E731
    steps: list[Step] = []
    pgd = next(a for a in k.allocs if a.what == "PGD table")
    s = catalogue_step("process")
    s.values += [modelled("PID", proc.pid, src("the simulated process"), display=str(proc.pid)),
                 modelled("PGD page (PFN)", pgd.pfn, src("pgd_alloc during exec, from the simulated buddy allocator")),
                 _computed(f"PGD physical address ({'TTBR0_EL1' if _arm64(run) else 'CR3'} while it runs)", pgd.pfn << 12,
                           "PFN << 12 (of a modelled PFN)",
                         [f"0x{pgd.pfn:x} << 12 = 0x{pgd.pfn << 12:x}"]),
                 modelled("VMAs after exec", len(proc.vmas), src("a typical dynamically linked program's layout"),
                          display=str(len(proc.vmas)))]
    s.evidence.append("PGD allocation (modelled chain): " + _chain(pgd.chain))
    s.ws = {"what": "exec gave the process a fresh mm_struct with its own PGD page.",
            "who": "the simulated execve", "which": f"PGD PFN 0x{pgd.pfn:x} (modelled)"}
    steps.append(s)

    vma = f.vma
    s = catalogue_step("mmap")
    if vma is not None:
        word = decode_vm_flags(vma.flags)
        s.values += [modelled("VMA", f"[0x{vma.start:x}, 0x{vma.end:x}) {vma.perms()} {vma.name}".rstrip(),
                              src("the region, placed by the modelled vm_unmapped_area() top-down below mmap_base "
                                  "(2 MiB-aligned for anonymous lengths that are multiples of 2 MiB)")),
                     modelled("vm_flags", vma.flags, src("the flags mmap/mprotect/madvise gave it"),
                              display=f"0x{vma.flags:x} = {' | '.join(word.names)}")]
    else:
        s.values.append(modelled("VMA", "none", src("no VMA holds the address")))
    s.ws = {"what": "mmap only reserved addresses; no page frame was given yet.",
            "why": "demand paging: memory is handed out on the first touch."}
    steps.append(s)

    code = f.error_code
    s = catalogue_step("trap")
    if not f.trap:
        s.values.append(modelled("trap", "none", src("MAP_POPULATE: the kernel faulted the page in itself, inside "
                                                     "mmap; the CPU never trapped")))
    if _arm64(run):
        syndrome = decode_esr(code)
        s.values += [modelled("faulting address (FAR_EL1)", f.address, src("the scenario's access")),
                     modelled("ESR_EL1", code, src("the simulated MMU: a data abort from EL0, WnR for a write, a "
                                                   "translation fault at the level whose descriptor was invalid or "
                                                   "a permission fault at the leaf"), display=f"0x{code:x}"),
                     _computed("ESR meaning", syndrome.summary, "the ESR_EL1 fields", list(syndrome.derivations)),
                     unavailable("PC", LIVE_ONLY)]
    else:
        d = decode_error_code(code)
        s.values += [modelled("faulting address (CR2)", f.address, src("the scenario's access")),
                     modelled("error code", code, src("the simulated MMU: P if the entry was present, W for a write, "
                                                      "U for user mode"), display=f"0x{code:x}"),
                     _computed("error code meaning", d.summary, "the x86 #PF error-code bits", list(d.bit_meanings)),
                     unavailable("RIP", LIVE_ONLY)]
    steps.append(s)
    s = catalogue_step("rip")
    s.values.append(unavailable("instruction", LIVE_ONLY))
    steps.append(s)

    values, source = model_fault_flags()
    s = catalogue_step("flags")
    s.values.append(modelled("enum fault_flag table", source, source))
    if _arm64(run):
        names = ("ALLOW_RETRY", "KILLABLE", "INTERRUPTIBLE") + fault_flags_from_esr(decode_esr(code)) + \
            (() if f.stack_grown_pages else ("VMA_LOCK",))
        value = sum(values.get(f"FAULT_FLAG_{n}", 0) for n in dict.fromkeys(names))
        s.values.append(_computed("flags", value, "from the modelled ESR, as arch/arm64/mm/fault.c does", [
            "FAULT_FLAG_DEFAULT: ALLOW_RETRY | KILLABLE | INTERRUPTIBLE",
            "USER for a fault from EL0 (EC 0x24/0x20); WRITE for WnR without CM; INSTRUCTION for an instruction abort",
            "VMA_LOCK: the VMA was found under the per-VMA lock" if not f.stack_grown_pages
            else "no VMA_LOCK: the stack grew, under mmap_lock"]))
    else:
        ff = derive_fault_flags(code, values, source=source)
        value = ff.value
        s.values.append(_computed("flags", ff.value, "from the modelled error code, as arch/x86/mm/fault.c does",
                                list(ff.derivations)))
    s.derivations += list(decode_fault_flags(value, values, source).derivations)
    steps.append(s)

    s = catalogue_step("vma")
    search = maple_search([(v.start, v.end) for v in proc.vmas], f.address)
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
    steps.append(s)

    s = catalogue_step("walk")
    s.values.append(modelled("paging levels", k.config.paging_levels, src(f"the model's setting ({k.config.arch.value})"),
                             display=str(k.config.paging_levels)))
    if _arm64(run):
        for part in split_arm64_address(f.address, _va_bits(run)).indices:
            mask = (1 << (part.high_bit - part.shift + 1)) - 1
            s.values.append(_computed(f"{part.level} index (level {part.architectural_level})", part.index,
                                      f"(address >> {part.shift}) & 0x{mask:x}",
                                      [f"(0x{f.address:x} >> {part.shift}) & 0x{mask:x} = {part.index}"],
                                      display=str(part.index)))
    else:
        for i in split_virtual_address(f.address, k.config.paging_levels).indices:
            s.values.append(_computed(f"{i.level} index", i.index, f"(address >> {i.shift}) & 0x1ff",
                                    [f"(0x{f.address:x} >> {i.shift}) & 0x1ff = {i.index}"], display=str(i.index)))
    for level, table, idx, entry in f.walk_before:
        s.values.append(modelled(f"{level} entry before", entry, src(f"table PFN 0x{table:x}, entry {idx}"),
                                 display=f"0x{entry:016x}: {_describe_entry(run, entry, level)[0]}"))
    steps.append(s)

    s = catalogue_step("alloc")
    if not f.allocs:
        why = {mk.ZERO_PAGE: "the shared zero page needs no allocation", mk.REUSE: "the page itself is reused",
               mk.PAGE_CACHE: "the page was already in the page cache"}.get(f.outcome, f"outcome: {f.outcome}")
        s.values.append(modelled("allocation", "none", src(why)))
    for a in f.allocs:
        gfp = gfp_value(a.gfp)
        s.values += [modelled(f"{a.what}: PFN", a.pfn, src("the simulated buddy allocator (expand() splits a "
                                                            "larger free block)")),
                     modelled(f"{a.what}: order", a.order, src("the fault path"), display=f"{a.order} ({4096 << a.order} bytes)"),
                     modelled(f"{a.what}: GFP flags", gfp, src(" | ".join(a.gfp)),
                              display=f"0x{gfp:x} = {decode_gfp(gfp).symbolic}"),
                     modelled(f"{a.what}: call chain", _chain(a.chain), src("mm/memory.c as of 6.18"))]
    steps.append(s)

    s = catalogue_step("pagemap")
    pm = k.pagemap(k.processes[f.pid], f.address)
    flags = k.kpageflags(pm & PM_PFN_MASK) if pm >> 63 else None
    s.values.append(modelled("pagemap entry", pm, src("fs/proc/task_mmu.c's encoding of the simulated PTE"),
                             display=f"0x{pm:016x}", derivation=list(decode_pagemap_entry(pm).derivations)))
    if flags is not None:
        s.values.append(modelled("kpageflags", flags, src("the page kinds the model tracks"),
                                 display=" | ".join(decode_kpageflags(flags, _model_version(k)).names) or "0"))
    s.values.append(_computed("page state", page_state(pm, flags), "decode.pagemap.page_state"))
    steps.append(s)

    s = catalogue_step("pte")
    if f.walk_after:
        level, _t, _i, entry = f.walk_after[-1]
        _points, p = _describe_entry(run, entry, level)
        s.values.append(modelled(f"{level} entry after", entry, src("set_pte_at() / set_pmd_at() in the fault path"),
                                 display=f"0x{entry:016x}", derivation=list(p.derivations)))
        if f.outcome == mk.NEW_PAGE and level == "PTE" and f.vma is not None and f.pfn is not None:
            if _arm64(run):
                da = derive_arm64_anonymous_pte(f.pfn, f.vma.flags, True, _model_version(k),
                                                pa_bits=52 if k.config.lpa2 else 48)
                s.values.append(_computed("derive_arm64_anonymous_pte() == the model's entry", da.value == entry,
                                          "compare", list(da.derivations)))
            else:
                dp = derive_anonymous_pte(f.pfn, f.vma.flags, True, soft_dirty=k.config.soft_dirty)
                s.values.append(_computed("derive_anonymous_pte() == the model's entry", dp.value == entry, "compare",
                                        list(dp.derivations)))
    else:
        s.values.append(modelled("entry", "none written", src(f"the fault ended in {f.outcome}")))
    steps.append(s)

    s = catalogue_step("return")
    s.values.append(modelled("outcome", f.outcome, src("the fault path taken: " + _chain(f.path))))
    if f.also_mapped:
        s.values.append(modelled("pages mapped besides this one", f.also_mapped, src(
            "fault-around (filemap_map_pages)" if f.outcome == mk.PAGE_CACHE else "one PMD entry maps 512 pages"),
            display=str(f.also_mapped)))
    steps.append(s)
    return steps


def op_step(run: ModelRun, index: int, op: str, number: int) -> Step:
    who, verb, _args = parse_op(op)
    faults = run.faults_by_op[index]
    s = Step(number, f"op{index}", f"Operation {index}: {op}", "done")
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

