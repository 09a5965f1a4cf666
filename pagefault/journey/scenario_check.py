"""A scenario's faults in one comparable form, from the simulator or from the live kernel, and the comparison.

A fault is (who, page of the region, the trap, outcome, pages the stack grew by); the region's
final state is one word per page (decode.pagemap.page_state). Live outcomes are derived from what
was observed around each fault: the program's siginfo for a SIGSEGV, else the page's pagemap entry
and kpageflags after the operation, compared with before it.

The trap is compared as each architecture lets it be seen. On x86 it is the #PF error code (the
tracepoint's, and the model's). On arm64 no probe can read ESR_EL1 for a handled fault, so it is
what do_page_fault() made of the ESR: the USER, INSTRUCTION and WRITE flags it passed to
handle_mm_fault() (the kprobe's, observed; the model's, from its modelled ESR), or "not called" for a
fault that do_page_fault() refused before calling it (a SIGSEGV).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..decode.arch import Arch
from ..decode.arch_interface import arch_interface
from ..decode.esr import decode_esr
from ..decode.fault_flags import decode_fault_flags
from ..decode.pagemap import PM_PFN_MASK, page_state, summarise_states
from ..evidence import KprobeFault, MemorySettings, OpSnapshot, ScenarioEvidence, TraceEvent
from ..model import kernel as mk
from ..model.scenarios import ModelRun, Scenario

OUTCOME_BY_STATE = {"zero page": mk.ZERO_PAGE, "huge zero page": mk.HUGE_ZERO_PAGE, "huge page": mk.HUGE_PAGE,
                    "file": mk.PAGE_CACHE}


@dataclass(frozen=True)
class FaultRow:
    op: int
    who: str                  # parent / child
    page: int                 # page of the region
    error_code: int
    outcome: str
    stack_grown_pages: int = 0
    kernel_choice: str = ""   # why the kernel may legitimately have done otherwise than the model (live rows)
    gfp: int | None = None    # the GFP flags of the page this fault allocated (new page, copy, huge page)
    kpageflags: int | None = None   # of a fresh anonymous page after the fault
    arch: Arch = Arch.X86_64
    handler_flags: str = ""   # arm64: "USER|WRITE"-style names passed to handle_mm_fault, or NOT_CALLED
    esr: int | None = None    # arm64: the model's ESR; live, the SIGSEGV signal frame's (observed), when one was sent

    def trap(self) -> int | str:
        """The trap as compared: the syndrome where a tracepoint gives it (x86's error code), else
        handle_mm_fault's access flags (arm64)."""
        return self.error_code if arch_interface(self.arch).syndrome_traced else self.handler_flags

    def key(self) -> tuple:
        return (self.op, self.who, self.page, self.trap(), self.outcome, self.stack_grown_pages)

    def trap_text(self) -> str:
        ai = arch_interface(self.arch)
        if ai.syndrome_traced:
            return f"{ai.syndrome_noun} 0x{self.error_code:x}"
        if self.handler_flags == NOT_CALLED:
            return "handle_mm_fault not called"
        return f"handle_mm_fault flags {self.handler_flags}"

    def describe(self) -> str:
        grown = f", stack grew {self.stack_grown_pages} pages" if self.stack_grown_pages else ""
        who = "child: " if self.who == "child" else ""
        return f"op {self.op}: {who}page {self.page}, {self.trap_text()} → {self.outcome}{grown}"


NOT_CALLED = "not called"
ACCESS_FLAGS = ("USER", "INSTRUCTION", "WRITE")    # what arm64's do_page_fault() reads out of the ESR


def access_flag_names(flags: int, table: dict[str, int]) -> str:
    """The USER, INSTRUCTION and WRITE fault flags set in flags, by the kernel's values, as "USER|WRITE"."""
    return "|".join(n for n in ACCESS_FLAGS if table.get(f"FAULT_FLAG_{n}", 0) & flags)


@dataclass
class ScenarioOutcome:
    rows: list[FaultRow]
    final_states: list[str]
    details: dict[int, list[str]] = field(default_factory=dict)    # op → evidence lines


def model_config(settings: MemorySettings | None, paging_levels: int = 4, arch: Arch = Arch.X86_64,
                 lpa2: bool = False) -> mk.ModelConfig:
    if settings is None:
        return mk.ModelConfig(arch=arch, paging_levels=paging_levels, lpa2=lpa2)
    return mk.ModelConfig(arch=arch, paging_levels=paging_levels, lpa2=lpa2, thp_enabled=settings.thp_enabled,
                          thp_use_zero_page=settings.thp_use_zero_page, thp_defrag=settings.thp_defrag,
                          fault_around_bytes=settings.fault_around_bytes,
                          stack_rlimit=min(settings.stack_rlimit, 1 << 40))


ALLOCATING = (mk.NEW_PAGE, mk.COPY, mk.HUGE_PAGE)
# kpageflags bits that follow reclaim's timing, not the fault: a new folio waits in a per-CPU LRU-add
# batch and shows LRU (and later ACTIVE, REFERENCED) only once the batch drains. Left out of the comparison.
KPF_TIMING = 1 << 2 | 1 << 5 | 1 << 6


def from_model(run: ModelRun) -> ScenarioOutcome:
    from ..decode.gfp import gfp_value
    rows = []
    child = run.child.pid if run.child else -1
    arch = run.kernel.config.arch
    ai = arch_interface(arch)
    for op, faults in enumerate(run.faults_by_op):
        for f in faults:
            page = next((a for a in f.allocs if a.pfn == f.pfn), None) if f.outcome in ALLOCATING else None
            kpf = f.kpageflags_after if f.outcome == mk.NEW_PAGE else None
            handler = ""
            if not ai.syndrome_traced:
                handler = NOT_CALLED if f.outcome in (mk.MAPERR, mk.ACCERR) else "|".join(ai.access_flags(f.error_code))
            rows.append(FaultRow(op, "child" if f.pid == child else "parent", (f.address - run.region) >> 12,
                                 f.error_code, f.outcome, f.stack_grown_pages,
                                 gfp=gfp_value(page.gfp) if page else None, kpageflags=kpf, arch=arch,
                                 handler_flags=handler, esr=f.esr))
    return ScenarioOutcome(rows, run.final_states())


def _stack_start(maps) -> int | None:
    return next((m.start for m in maps or [] if m.path == "[stack]"), None)


def from_live(ev: ScenarioEvidence) -> ScenarioOutcome:
    out = ScenarioOutcome([], [])
    prev: OpSnapshot | None = None
    roles = {ev.pid: "parent", ev.child_pid: "child"}
    ai = arch_interface(ev.arch, ev.paging_levels)
    for snap in ev.snapshots:
        lo = snap.region
        faults = ev.region_faults(snap.index)
        lines = out.details.setdefault(snap.index, [])
        for n, e in enumerate(faults):
            addr, code = e.fields["address"], e.fields.get("error_code", 0)
            page = (addr - lo) >> 12
            after = snap.pagemaps.get(e.pid, [])
            entry = after[page] if page < len(after) else 0
            before_maps = (prev.pagemaps.get(e.pid) or prev.pagemaps.get(ev.pid)) if prev else None
            before = before_maps[page] if before_maps and page < len(before_maps) else 0
            grown, choice = 0, ""
            old_stack = _stack_start((prev.maps.get(e.pid) if prev else None) or ev.ready_maps)
            new_stack = _stack_start(snap.maps.get(e.pid))
            if old_stack is not None and new_stack is not None and new_stack <= addr < old_stack:
                grown = (old_stack - new_stack) >> 12
            if snap.segv_code and n == len(faults) - 1 and snap.segv_addr >> 12 == addr >> 12:
                outcome = mk.MAPERR if snap.segv_code == mk.SEGV_MAPERR else mk.ACCERR
                lines.append(f"SIGSEGV si_code {snap.segv_code} at 0x{snap.segv_addr:x} (the program's siginfo)")
                if snap.segv_esr:
                    syndrome = ai.decode_syndrome(snap.segv_esr)
                    lines.append(f"{ai.syndrome_register} 0x{snap.segv_esr:x} from the signal frame's esr_context: "
                                 f"{syndrome.summary}")
            else:
                flags = snap.kpageflags.get(entry & PM_PFN_MASK) if entry >> 63 else None
                state = page_state(entry, flags)
                if state in OUTCOME_BY_STATE:
                    outcome = OUTCOME_BY_STATE[state]
                elif state == "not present":
                    outcome = "not mapped afterwards"
                # a protection fault: the syndrome says so where it is traced, else the page was present before
                elif (ai.decode_syndrome(code).present if ai.syndrome_traced else before >> 63):
                    same = before >> 63 and (before & PM_PFN_MASK) == (entry & PM_PFN_MASK)
                    outcome = mk.REUSE if same else mk.COPY
                    lines.append(f"page {page}: PFN 0x{before & PM_PFN_MASK:x} before, 0x{entry & PM_PFN_MASK:x} after"
                                 f" ({'the same frame' if same else 'a new frame'})")
                    if not same:
                        choice = _copy_of_a_sole_mapping(ev, prev, e, before & PM_PFN_MASK)
                        if choice:
                            lines.append(choice)
                else:
                    outcome = mk.NEW_PAGE
                lines.append(f"page {page}: pagemap 0x{entry:016x} after → {state}")
            pfn = entry & PM_PFN_MASK if entry >> 63 else None
            alloc = next((a for a in ev.op_events(snap.index, "kmem:mm_page_alloc")
                          if pfn is not None and a.fields.get("pfn") in (pfn, pfn & ~511)), None)
            gfp = alloc.fields.get("gfp_flags") if alloc is not None and outcome in ALLOCATING else None
            kpf = snap.kpageflags.get(pfn) if outcome == mk.NEW_PAGE and pfn is not None else None
            handler = ""
            if not ai.syndrome_traced:
                kp = matching_kprobe(ev, e)
                handler = NOT_CALLED if kp is None or kp.flags is None else \
                    access_flag_names(kp.flags, ev.fault_flag_table)
            segv_esr = snap.segv_esr if outcome in (mk.MAPERR, mk.ACCERR) and snap.segv_esr else None
            out.rows.append(FaultRow(snap.index, roles[e.pid], page, code, outcome, grown, choice, gfp, kpf,
                                     ev.arch, handler, segv_esr))
        prev = snap
    if ev.snapshots:
        out.final_states = ev.snapshots[-1].region_states(ev.pid)
    return out


REUSE_RULE = ("do_wp_page() reuses an anonymous folio only if it is exclusive to this process and no other "
              "reference holds it (wp_can_reuse_anon_folio(): refcount ≤ 1 after lru_add_drain(), which drains "
              "this CPU's LRU-add batch only); otherwise it copies")


def _copy_of_a_sole_mapping(ev: ScenarioEvidence, prev: OpSnapshot | None, fault, old_pfn: int) -> str:
    """Why a write fault copied a frame only this process mapped, when the kernel's choice explains it.

    The model reuses such a frame. The kernel reuses it too unless another reference holds it: a folio
    freshly allocated on another CPU can still sit in that CPU's LRU-add batch, which lru_add_drain()
    on this CPU does not empty. Both CPUs are observed (mm_page_alloc's and the fault's), so the copy is
    a kernel choice exactly when they differ; on the same CPU it would be unexplained.
    """
    if prev is None:
        return ""
    others = [entries for pid, entries in prev.pagemaps.items() if pid != fault.pid]
    if any(e >> 63 and e & PM_PFN_MASK == old_pfn for entries in others for e in entries):
        return ""   # still shared: a copy is what the model does too
    alloc = next((a for a in ev.events if a.name == "kmem:mm_page_alloc" and a.fields.get("pfn") == old_pfn), None)
    if alloc is None or alloc.cpu == fault.cpu:
        return ""
    return (f"kernel choice: frame 0x{old_pfn:x} was allocated on CPU {alloc.cpu} and written again on CPU "
            f"{fault.cpu}, so it could still be in CPU {alloc.cpu}'s LRU-add batch holding a reference; "
            + REUSE_RULE)


def compare_esr(model_esr: int, live_esr: int) -> tuple[bool, str]:
    """The model's ESR against the one the kernel put in the signal frame: the exception class, WnR and
    the kind of fault (translation, permission, …) must agree. The level is shown, not compared: it is
    the first level whose descriptor was missing, and the live process had mapped more than the model's."""
    m, lv = decode_esr(model_esr), decode_esr(live_esr)
    fields = lambda s: (s.exception_class, s.write, s.fault_status_kind)  # noqa: E731
    level = f"level: live {lv.fault_level}, model {m.fault_level}"
    if fields(m) == fields(lv):
        return True, (f"the ESR agrees: live 0x{live_esr:x} (signal frame, observed), model 0x{model_esr:x}: "
                      f"{lv.summary} ({level}; the level is not compared: the live process had more tables)")
    return False, f"the ESR differs: live 0x{live_esr:x} = {lv.summary} | model 0x{model_esr:x} = {m.summary}"


@dataclass
class Agreement:
    agree: bool
    lines: list[str]


def _timing_free(kpageflags: int | None) -> int | None:
    return None if kpageflags is None else kpageflags & ~KPF_TIMING


def same_kernel_as_model(kernel_release: str, model_kernel: str) -> bool:
    """Whether a live kernel is the version the simulator follows ("6.18.44-…" and "6.18")."""
    return kernel_release.split("-", 1)[0].split(".")[:2] == model_kernel.split(".")[:2]


def compare(model: ScenarioOutcome, live: ScenarioOutcome, page_fields: bool = True) -> Agreement:
    """Fault by fault, then the region's final pagemap. page_fields: also hold the model to the live
    GFP flags and kpageflags of the pages the faults made, which the model states for the kernel it
    follows (on another kernel they are shown, not compared)."""
    lines, agree = [], True
    m_keys, l_keys = [r.key() for r in model.rows], [r.key() for r in live.rows]
    explained = [i for i, (m, lv) in enumerate(zip(model.rows, live.rows))
                 if m.key() != lv.key() and lv.kernel_choice and m.outcome == mk.REUSE and lv.outcome == mk.COPY
                 and m.key()[:4] == lv.key()[:4]]
    if len(m_keys) == len(l_keys) and explained and all(m_keys[i] == l_keys[i] for i in range(len(m_keys))
                                                         if i not in explained):
        for i in explained:
            lines.append(f"fault {i}: model {model.rows[i].describe()} | live {live.rows[i].describe()}: "
                         f"{live.rows[i].kernel_choice}")
        m_keys = l_keys = [k for i, k in enumerate(l_keys) if i not in explained]
    for i, (m, lv) in enumerate(zip(model.rows, live.rows)):
        for what, mv, lvv in (("GFP flags", m.gfp, lv.gfp),
                              ("kpageflags (less LRU, ACTIVE, REFERENCED: they follow the LRU batches' timing)",
                               _timing_free(m.kpageflags), _timing_free(lv.kpageflags))):
            if m.key() == lv.key() and mv is not None and lvv is not None and mv != lvv and not page_fields:
                lines.append(f"fault {i}: the page's {what}: model 0x{mv:x} (Linux 6.18) | live 0x{lvv:x} "
                             "(another kernel: shown, not compared)")
            elif m.key() == lv.key() and mv is not None and lvv is not None and mv != lvv:
                agree = False
                lines.append(f"fault {i}: the page's {what} differ: model 0x{mv:x} | live 0x{lvv:x}")
            elif m.key() == lv.key() and mv is not None and lvv is not None:
                lines.append(f"fault {i}: the page's {what} agree: 0x{lvv:x}")
        if m.key() == lv.key() and m.esr is not None and lv.esr is not None:
            same, text = compare_esr(m.esr, lv.esr)
            agree = agree and same
            lines.append(f"fault {i}: {text}")
    if m_keys == l_keys:
        lines.append(f"the {len(m_keys)} fault{'s' if len(m_keys) != 1 else ''} agree: "
                     + ("; ".join(r.describe() for r in live.rows) or "none on either side"))
    else:
        agree = False
        for i in range(max(len(model.rows), len(live.rows))):
            m_text = model.rows[i].describe() if i < len(model.rows) else "—"
            l_text = live.rows[i].describe() if i < len(live.rows) else "—"
            lines.append(f"fault {i}: model {m_text} | live {l_text}" + ("" if m_text == l_text else "   ← differs"))
    if model.final_states == live.final_states:
        lines.append("the region's final pagemap agrees: " + summarise_states(live.final_states))
    else:
        agree = False
        lines.append(f"final pagemap differs: model {summarise_states(model.final_states)} | live {summarise_states(live.final_states)}")
    return Agreement(agree, lines)


def model_run_for(scenario: Scenario, ev: ScenarioEvidence) -> ModelRun:
    """The simulator's run of the scenario with the live machine's settings and paging levels, its mmap
    placed at the address the live kernel chose (observed), as fault-around's window depends on it."""
    from ..model.scenarios import run_in_model
    hint = next((snap.region for snap in ev.snapshots if snap.op.split()[:1] == ["mmap"]), None)
    config = model_config(ev.settings, ev.paging_levels, ev.arch, ev.lpa2)
    return run_in_model(scenario, config, region_hint=hint)


def cross_check(scenario: Scenario, ev: ScenarioEvidence) -> tuple[ScenarioOutcome, ScenarioOutcome, Agreement, ModelRun]:
    """The live evidence and the simulator's run of the same operations, compared (pure: live or replayed)."""
    run = model_run_for(scenario, ev)
    model, live = from_model(run), from_live(ev)
    return model, live, compare(model, live, same_kernel_as_model(ev.kernel_release, run.kernel.config.kernel)), run


# The handler each outcome must go through (mm/memory.c, mm/huge_memory.c), where it can be probed.
EXPECTED_HANDLER = {mk.NEW_PAGE: "do_anonymous_page", mk.ZERO_PAGE: "do_anonymous_page", mk.COPY: "do_wp_page",
                    mk.REUSE: "do_wp_page", mk.PAGE_CACHE: "do_fault", mk.HUGE_PAGE: "do_huge_pmd_anonymous_page"}


def matching_kprobe(ev: ScenarioEvidence, event: TraceEvent) -> KprobeFault | None:
    """The handle_mm_fault call of this page_fault_user event: same task and page, the first one after it."""
    page = event.fields["address"] & ~0xFFF
    later = [k for k in ev.kprobe_faults if k.pid == event.pid and k.address is not None
             and k.address & ~0xFFF == page and (k.start_ns or 0) >= event.time_ns]
    return min(later, key=lambda k: k.start_ns or 0) if later else None


def kprobe_fault_values(ev: ScenarioEvidence, event: TraceEvent, row: FaultRow) -> list:
    """What the kprobes saw of one fault: flags against their derivation, handlers, return value, duration."""
    from .steps import derived, observed, unavailable
    if not ev.kprobe_faults:
        return [unavailable("handle_mm_fault (kprobes)", ev.unavailable.get("kprobes", "the kprobe tier was not used"))]
    kp = matching_kprobe(ev, event)
    if kp is None:
        if row.outcome in (mk.MAPERR, mk.ACCERR):
            return [derived("handle_mm_fault (kprobes)", "not called", "no kprobe hit for this fault",
                            ["fault.c refused the access before calling handle_mm_fault (bad_area)"])]
        return [unavailable("handle_mm_fault (kprobes)", "no kprobe hit matched this fault")]
    code = row.error_code
    flags = kp.flags or 0
    names = decode_fault_flags(flags, ev.fault_flag_table).names
    grown = [f"the stack grew {row.stack_grown_pages} pages: the address was below every VMA, so the fault ran "
             "under mmap_lock, not the per-VMA lock"] if row.stack_grown_pages else []
    ai = arch_interface(ev.arch, ev.paging_levels)
    if not ai.syndrome_traced:
        why = [ai.untraced_syndrome_note]
    else:
        # a fault below the stack is outside every VMA: lock_vma_under_rcu() finds none, and fault.c takes
        # mmap_lock to grow the stack (no FAULT_FLAG_VMA_LOCK)
        value, _how = ai.fault_flags(code, ev.fault_flag_table, ev.fault_flag_source,
                                     vma_lock=not row.stack_grown_pages)
        diff = decode_fault_flags(flags ^ value, ev.fault_flag_table).names
        why = [f"derived from {ai.syndrome_noun} 0x{code:x}: 0x{value:x}: " + (
            "the same" if flags == value else f"DIFFERENT in {' | '.join(diff)}")]
    values = [observed("flags (kprobe)", flags, "kprobe handle_mm_fault arg2",
                       display=f"0x{flags:x} = {' | '.join(names)}", derivation=grown + why)]
    path = [fn for fn, _ns in kp.handlers]
    expected = EXPECTED_HANDLER.get(row.outcome)
    check = []
    if expected and expected not in kp.not_probeable:
        check = [f"a {row.outcome} goes through {expected}: " + ("it did" if expected in path else "it DID NOT")]
    values.append(observed("handler path (kprobes)", " → ".join(path) or "none of the probed handlers",
                           "kprobes on the handlers during this handle_mm_fault", derivation=check))
    if kp.retval is not None:
        reasons = ev.kernel_enums.get("vm_fault_reason", {})
        bits = [reasons.get(1 << b, f"bit {b}") for b in range(32) if kp.retval >> b & 1]
        values.append(observed("return value (kretprobe)", kp.retval, "kretprobe handle_mm_fault",
                               display=f"0x{kp.retval:x}" + (f" = {' | '.join(bits)}" if bits else " (handled)")))
    if kp.duration_ns is not None:
        values.append(observed("duration", kp.duration_ns, "kretprobe − kprobe time", display=f"{kp.duration_ns / 1000:.1f} µs"))
    return values


class _ScenarioSteps:
    """The live scenario's steps, one filler each (catalogue.SCENARIO_DEFS defines and titles them)."""

    def __init__(self, scenario: Scenario, ev: ScenarioEvidence, live: ScenarioOutcome, model: ScenarioOutcome,
                 agreement: Agreement):
        self.scenario, self.ev, self.live, self.model, self.agreement = scenario, ev, live, model, agreement
        self.ai = arch_interface(ev.arch, ev.paging_levels)
        self.src_fault = ev.event_sources.get(ev.fault_event, ev.fault_event)
        # where the syndrome is not traced, the trap is read from the flags handle_mm_fault() was given
        self.src_trap = self.src_fault if self.ai.syndrome_traced else "kprobe handle_mm_fault arg2 (flags)"

    def intro(self, s) -> None:
        from .steps import observed
        ev = self.ev
        s.values.append(observed("program", " ".join(["scenario"] + [repr(o) for o in ev.ops]),
                                 f"PID {ev.pid}, paused after each operation"))
        s.derivations.append(self.scenario.teaches)

    def operation(self, s, snap: OpSnapshot) -> None:
        from .steps import observed, unavailable
        ev = self.ev
        rows = [r for r in self.live.rows if r.op == snap.index]
        for r, event in zip(rows, ev.region_faults(snap.index)):
            self._fault(s, snap, r, event)
        if not rows:
            s.values.append(observed("faults in the region", 0, self.src_fault, display="0"))
        s.values.append(observed("region's pagemap after", summarise_states(snap.region_states(ev.pid)),
                                 f"/proc/{ev.pid}/pagemap, /proc/kpageflags"))
        for a in ev.op_events(snap.index, "kmem:mm_page_alloc"):
            if any("fault" in fn for _a, fn in a.kernel_chain):
                s.evidence.append(f"PID {a.pid} mm_page_alloc PFN 0x{a.fields['pfn']:x} order {a.fields['order']}: "
                                  + " → ".join(fn.split("+")[0] for _a, fn in reversed(a.kernel_chain)))
        if snap.errors:
            s.values.append(unavailable("some /proc reads", "; ".join(snap.errors)))

    def _fault(self, s, snap: OpSnapshot, r: FaultRow, event: TraceEvent) -> None:
        from .steps import derived, observed
        ai, src_fault, src_trap = self.ai, self.src_fault, self.src_trap
        s.values.append(observed(f"fault on page {r.page}" + (" (child)" if r.who == "child" else ""),
                                 r.trap_text(), f"{src_fault}; {src_trap}" if src_trap != src_fault else src_fault))
        s.values.append(derived("outcome", r.outcome + (f", stack grew {r.stack_grown_pages} pages"
                                                        if r.stack_grown_pages else ""),
                                "the program's siginfo, or the page's pagemap and kpageflags after the "
                                "operation compared with before", self.live.details.get(snap.index, [])))
        if r.esr is not None:
            s.values.append(observed(f"{ai.syndrome_register} (signal frame)", r.esr, "the SIGSEGV's esr_context "
                                     "record in the program's signal frame (arm64 passes a user address's ESR "
                                     "unsanitised)", display=f"0x{r.esr:x} = {ai.decode_syndrome(r.esr).summary}"))
        s.values += kprobe_fault_values(self.ev, event, r)

    def verdict(self, s) -> None:
        from .steps import derived, modelled
        ev = self.ev
        s.values.append(modelled("simulator's faults", "; ".join(r.describe() for r in self.model.rows) or "none",
                                 f"pagefault simulator ({ev.arch.value}, {ev.paging_levels} levels) with this "
                                 "machine's THP, zero-page and fault-around settings"))
        s.values.append(derived("model agrees with the kernel", self.agreement.agree, "compare", self.agreement.lines))


def build_scenario_journey(scenario: Scenario, ev: ScenarioEvidence, live: ScenarioOutcome,
                           model: ScenarioOutcome, agreement: Agreement):
    """The live scenario as the catalogue's scenario steps: the scenario, one step per operation (observed),
    then the model's verdict."""
    from .catalogue import scenario_step
    from .steps import Journey
    from .vocabulary import StepKey
    j = Journey("perf", ev.kernel_release, ev.pid, list(ev.ops), f"scenario {scenario.name}: {ev.program.how}")
    fill = _ScenarioSteps(scenario, ev, live, model, agreement)
    intro = scenario_step(StepKey.SCENARIO, 1, name=scenario.name, title=scenario.title)
    fill.intro(intro)
    j.steps.append(intro)
    for snap in ev.snapshots:
        s = scenario_step(StepKey.OPERATION, len(j.steps) + 1, index=snap.index, op=snap.op)
        fill.operation(s, snap)
        j.steps.append(s)
    j.timeline = _scenario_timeline(ev)
    verdict = scenario_step(StepKey.VERDICT, len(j.steps) + 1)
    fill.verdict(verdict)
    j.steps.append(verdict)
    j.notes += [f"{k}: {v}" for k, v in ev.settings.sources.items()]
    if ev.lost_events:
        j.notes.append(f"LOST {ev.lost_events} events: some faults may be missing")
    j.complete = True
    return j


def _scenario_timeline(ev: ScenarioEvidence):
    from .steps import timeline_from
    items = [(snap.time_ns, f"program paused after operation {snap.index}: {snap.op}",
              "pagefault's clock (CLOCK_MONOTONIC)") for snap in ev.snapshots]
    for snap in ev.snapshots:
        items += [(e.time_ns, f"PID {e.pid}: fault at 0x{e.fields['address']:x}" + (
                   f", error code 0x{e.fields['error_code']:x}" if "error_code" in e.fields else
                   f", PC 0x{e.fields.get('ip', 0):x}"), ev.event_sources.get(e.name, e.name))
                  for e in ev.region_faults(snap.index)]
    return timeline_from(items, ev.start_ns)
