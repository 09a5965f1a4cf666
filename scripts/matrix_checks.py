"""The kernel matrix's checks, run on one kernel (inside its QEMU guest, or on the host) as root:

    .venv/bin/python scripts/matrix_checks.py OUT_DIR

Writes OUT_DIR/<kernel release>/: doctor.json, journey.json, evidence/*.json.gz (the journey in the bpf
and perf tiers and every scenario: the offline tests' fixtures), trace.json, decode-*.json, times.json
and checks.tsv (one line per check: name, pass|fail, detail). Prints one line per check. Exit 0 when
every check passed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pagefault import core  # noqa: E402
from pagefault.decode.address import LEVEL_NAMES  # noqa: E402
from pagefault.decode.arch import Arch  # noqa: E402
from pagefault.decode.pagemap import PM_PFN_MASK  # noqa: E402
from pagefault.decode.pte import decode_pte  # noqa: E402
from pagefault.evidence import ExerciseOptions  # noqa: E402
from pagefault.evidence.file import load_evidence  # noqa: E402
from pagefault.kernel.facts import kernel_release, machine_arch  # noqa: E402
from pagefault.model.scenarios import SCENARIOS  # noqa: E402


class Checks:
    def __init__(self, out: Path):
        self.out = out
        self.rows: list[tuple[str, bool, str]] = []

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.rows.append((name, bool(ok), detail.replace("\t", " ").replace("\n", " ")))
        print(f"matrix-check {name}: {'pass' if ok else 'FAIL'} {detail}", flush=True)
        return bool(ok)

    def run(self, name: str, fn) -> None:
        """fn() -> (ok, detail); any exception is a failure with its one-line reason."""
        try:
            ok, detail = fn()
        except Exception as exc:  # a check that crashes has failed, and says how
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        self.add(name, ok, detail)

    def save(self) -> None:
        (self.out / "checks.tsv").write_text("".join(f"{n}\t{'pass' if ok else 'fail'}\t{d}\n" for n, ok, d in self.rows))


def value(journey, key, label):
    return next(s for s in journey.steps if s.key == key).value(label)


def check_journey(path: Path, tier: str) -> tuple[bool, str]:
    ev = load_evidence(path).evidence
    j = core.journey_from_evidence(ev)
    problems = []
    levels = LEVEL_NAMES[ev.paging_levels]
    cr2 = value(j, "trap", "faulting address (CR2)").value
    if cr2 != ev.vaddr + ev.options.offset:
        problems.append(f"CR2 0x{cr2:x} ≠ mapping + offset")
    pagemap_pfn = ev.snapshots["touched"].pagemap & PM_PFN_MASK
    alloc_pfn = value(j, "alloc", "PFN").value
    if alloc_pfn != pagemap_pfn:
        problems.append(f"mm_page_alloc PFN 0x{alloc_pfn:x} ≠ pagemap PFN 0x{pagemap_pfn:x}")
    flags = value(j, "flags", "flags")
    named = [v.label for s in j.steps if s.key == "flags" for v in s.values if v.label.startswith("FAULT_FLAG_")]
    unknown = [n for n in named if n not in ev.fault_flag_table]
    if unknown:
        problems.append(f"flags not in this kernel's enum: {unknown}")
    # the per-VMA lock path comes from the mmap_lock tracepoint: a lock taken is observed, its absence (the
    # per-VMA path) is inferred, so derived; either way it agrees with the kernel's enum
    lock = value(j, "flags", "per-VMA lock path")
    if lock.provenance != ("derived" if lock.value else "observed") or \
            lock.value != ("FAULT_FLAG_VMA_LOCK" in ev.fault_flag_table):
        problems.append(f"per-VMA lock path {lock.value} ({lock.provenance}: {lock.source})")
    detail = (f"{ev.paging_levels}-level, flags {flags.display}, per-VMA lock {lock.value} ({lock.provenance}), "
              f"PFN 0x{pagemap_pfn:x}")
    if tier == "bpf":
        entries = {lv: value(j, "walk", f"{lv} entry before") for lv in levels}
        missing = [lv for lv, v in entries.items() if v.provenance != "observed"]
        if missing:
            problems.append(f"raw entries not read at {missing}")
        read, derived = value(j, "pte", "PTE (read)"), value(j, "pte", "PTE (derived)")
        if read.provenance != "observed" or read.value != derived.value:
            problems.append(f"PTE read {read.display} ≠ derived {derived.display}")
        elif decode_pte(read.value, "PTE").pfn != pagemap_pfn:
            problems.append("the PTE's PFN field is not the pagemap PFN")
        detail += f", levels read {'/'.join(levels)}, PTE 0x{read.value:016x}"
        # kernel objects read through BTF agree with /proc (issue 15)
        # (struct page's PFN is the PTE's, which places the struct page: derived; pagemap is the check)
        for key, label, provenance in (("vma", "vm_start, vm_end", "observed"), ("vma", "vm_flags (struct)", "observed"),
                                       ("vma", "vm_page_prot", "observed"), ("vma", "mm->map_count", "observed"),
                                       ("pagemap", "struct page's PFN", "derived"),
                                       ("pagemap", "page mapcount", "observed")):
            v = value(j, key, label)
            if v.provenance != provenance or not v.derivation or not v.derivation[-1].endswith("the same"):
                problems.append(f"{label}: {v.provenance} {v.display or v.value} {v.derivation[-1:] or v.source}")
        maple = value(j, "vma", "maple tree search (read)")
        if maple.provenance != "observed" or not maple.derivation[-1].endswith("is inside"):
            problems.append(f"maple tree search: {maple.derivation[-1:] or maple.source}")
        detail += f", map_count {value(j, 'vma', 'mm->map_count').value}, maple {maple.value}, " \
                  f"vmemmap 0x{value(j, 'pagemap', 'vmemmap_base').value:x}"
    return not problems, "; ".join(problems) or detail


def check_scenario_kprobes(j, path: Path) -> tuple[bool, str]:
    """Where kprobes work: each fault's observed flags equal the derived ones, the handler its outcome
    needs ran, the return value was read and the duration is > 0 (issue 15)."""
    ev = load_evidence(path).evidence
    if not ev.kprobe_faults:
        from pagefault.capture.kprobes import kprobe_support
        ok, why = kprobe_support()
        return not ok, "kprobes: " + ev.unavailable.get("kprobes", why)
    problems, seen = [], []
    for step in j.steps:
        for v in step.values:
            if v.label == "flags (kprobe)":
                seen.append(f"{step.key}: flags {v.display}")
                # on arm64 the flags are the trap's only record: the model's verdict compares them
                if ev.arch is not Arch.ARM64 and not v.derivation[-1].endswith("the same"):
                    problems.append(f"{step.key}: flags {v.derivation[-1]}")
            elif v.label == "handler path (kprobes)":
                seen.append(f"path {v.value}")
                if v.derivation and "DID NOT" in v.derivation[-1]:
                    problems.append(f"{step.key}: {v.derivation[-1]}")
            elif v.label == "duration" and not v.value > 0:
                problems.append(f"{step.key}: duration {v.value}")
            elif v.label == "handle_mm_fault (kprobes)" and v.provenance == "unavailable":
                problems.append(f"{step.key}: {v.source}")
    # which compiled programs timed the calls (fentry or kprobe), and how long they took to start
    hook = ev.event_sources.get("handle_mm_fault", "")
    how = f" ({hook.split(' ', 1)[0]}, started in {hook.split(' in ', 1)[1].split(')')[0]}, " \
          f"{len(ev.kprobe_faults)} calls)" if " in " in hook else ""
    return not problems, f"kprobes{how}: " + ("; ".join(problems) or "; ".join(seen) or "no fault reached handle_mm_fault")


SCENARIO_CHECKS = tuple(f"scenario-{s.name}" for s in SCENARIOS)
ARM64_CHECKS = ("doctor", "bpf-objects", "journey-arm64", "decode", "entry-kinds", "trace-count", "trace-latency")
X86_CHECKS = ("doctor", "bpf-objects", "journey-bpf", "journey-perf", "journey-kernel-mode") + SCENARIO_CHECKS + (
    "trace", "trace-count", "trace-latency", "entry-kinds", "decode", "heldout")


def run_scenarios(out: Path, checks) -> None:
    """Every scenario live, with the model's verdict on it (it must agree) and the kprobes' view of it."""
    for scenario in SCENARIOS:
        path = out / "evidence" / f"scenario-{scenario.name}.json.gz"

        def run_scenario(scenario=scenario, path=path):
            j = core.run_journey(core.JourneyRequest(scenario=scenario.name, save_evidence=path, force=True))
            verdict = next(s for s in j.steps if s.key == "model").value("model agrees with the kernel")
            kprobe_ok, kprobe_detail = check_scenario_kprobes(j, path)
            return verdict.value is True and kprobe_ok, " | ".join(verdict.derivation) + " || " + kprobe_detail
        checks.run(f"scenario-{scenario.name}", run_scenario)


def entry_kinds_result(out: Path, seen, problems: list[str], checked: list[str]) -> tuple[bool, str]:
    """The entry-kinds check's verdict, with the entries read kept in entry-kinds.json beside it."""
    (out / "entry-kinds.json").write_text(json.dumps({"ptes": [hex(v) for v in seen.ptes],
                                                      "pagemaps": [hex(v) for v in seen.pagemaps]}, indent=2))
    return not problems, "; ".join(problems) or "decoded as the kernel keeps them: " + ", ".join(checked) + \
        " (PTEs " + ", ".join(hex(v) for v in seen.ptes) + ")"


def _offered(section: str, kernel, kprobes: bool) -> str:
    """Why this kernel cannot take a program of `section` ("" when it can, as far as can be told before load)."""
    kind, _, rest = section.partition("/")
    if kind in ("tp_btf", "raw_tp") and not kernel.has_btf_tracepoint(rest):
        return f"no btf_trace_{rest} in BTF"
    if kind == "tracepoint" and kernel.tracefs_format(*rest.split("/", 1)) is None:
        return f"no {rest.replace('/', ':')} in tracefs"
    if kind in ("kprobe", "kretprobe") and not kprobes:
        return "no kprobes"
    return ""


def bpf_objects_result() -> tuple[bool, str]:
    """Every compiled object of this machine's architecture (build/<machine>/, as the tool loads them) loads
    on this kernel with each program whose hook the kernel offers (tp_btf or raw_tp where BTF has
    btf_trace_EVENT, a classic tracepoint where tracefs has it, kprobes where kprobes work), with its default
    settings: CO-RE relocations and the verifier are met here, not on a user's machine. fentry/fexit programs
    load apart: a kernel without BPF trampolines for its functions (arm64 6.1) refuses them, which is said,
    not failed."""
    from pagefault.capture.bpf import HERE, KernelHooks
    from pagefault.capture.kprobes import kprobe_support
    from pagefault.capture.libbpf import BpfObject, LibbpfError
    kernel, kprobes = KernelHooks(), kprobe_support()[0]
    objects = sorted((HERE / "build" / os.uname().machine).glob("*.bpf.o"))
    sources = sorted(HERE.glob("*.bpf.c"))
    problems, said = [], []
    if {o.name[:-len(".bpf.o")] for o in objects} != {c.name[:-len(".bpf.c")] for c in sources}:
        problems.append(f"objects {[o.name for o in objects]} for sources {[c.name for c in sources]}: "
                        "run bash scripts/build-bpf.sh")
    for path in objects:
        name = path.name[:-len(".bpf.o")]
        with BpfObject(path) as probe:
            programs = probe.programs()
        trampolines = {n for n, sec in programs.items() if sec.split("/")[0] in ("fentry", "fexit")}
        skipped = {n: why for n, sec in programs.items() if (why := _offered(sec, kernel, kprobes))}
        t = time.monotonic()
        for group, label in ((set(programs) - trampolines - set(skipped), "loaded"), (trampolines, "fentry/fexit")):
            if not group:
                continue
            with BpfObject(path) as obj:
                for program in programs:
                    obj.set_autoload(program, program in group)
                try:
                    obj.load()
                except LibbpfError as exc:
                    if label == "fentry/fexit":
                        said.append(f"{name}: fentry/fexit refused here ({str(exc).split(': warning: ')[0]})")
                    else:
                        problems.append(f"{name}: {exc}")
                    continue
            said.append(f"{name}: {len(group)} {label}")
        if skipped:
            said.append(f"{name}: not offered here: " + ", ".join(f"{n} ({why})" for n, why in skipped.items()))
        said[-1] += f" [{time.monotonic() - t:.1f} s]"
    return not problems and bool(objects), "; ".join(problems + said)


def begin(base: Path, expected: tuple[str, ...]):
    """This kernel's output folder, its checks and times, a progress printer, and the doctor check run.

    expected.txt names every check this kernel is to report: the matrix's table marks the others "n/a" and
    fails any of these that is missing."""
    release = kernel_release()
    out = base / release
    (out / "evidence").mkdir(parents=True, exist_ok=True)
    (out / "expected.txt").write_text("".join(name + "\n" for name in expected))
    checks = Checks(out)
    times: dict[str, float] = {}
    t0 = time.monotonic()
    progress = lambda m: print(f"  [{time.monotonic() - t0:6.1f} s] {m}", flush=True)  # noqa: E731

    def doctor():
        from pagefault.capture.doctor import diagnose
        from pagefault.decode.bits import to_jsonable
        d = diagnose()
        (out / "doctor.json").write_text(json.dumps(to_jsonable(d), indent=2))
        return d.tier == "bpf", f"tier {d.tier}; " + "; ".join(f"{c.name}: {c.detail}" for c in d.checks if not c.ok)
    checks.run("doctor", doctor)
    times["doctor"] = time.monotonic() - t0
    t = time.monotonic()
    checks.run("bpf-objects", bpf_objects_result)
    times["bpf-objects"] = time.monotonic() - t
    return release, out, checks, times, t0, progress


def finish(release: str, out: Path, checks: Checks, times: dict[str, float], t0: float) -> int:
    times["total"] = time.monotonic() - t0
    (out / "times.json").write_text(json.dumps(times, indent=2))
    checks.save()
    failed = [n for n, ok, _ in checks.rows if not ok]
    print(f"matrix-kernel {release}: {len(checks.rows)} checks, {len(failed)} failed, {times['total']:.0f} s", flush=True)
    return 1 if failed else 0


def first_touch(out: Path) -> Path:
    """The bench's first-touch loop, compiled into the row's output (trace and trace-latency share it); an
    output directory kept from an earlier run is rebuilt when the source is newer."""
    import shutil
    exe = out / "first_touch"
    source = ROOT / "bench" / "c" / "first_touch.c"
    if not exe.exists() or exe.stat().st_mtime < source.stat().st_mtime:
        cc = shutil.which("cc") or shutil.which("gcc")
        subprocess.run([cc, "-O1", "-o", str(exe), str(source)], check=True)
    return exe


def kernel_mode_journey_result(out: Path) -> tuple[bool, str]:
    """`journey --kind kernel` on tests/c/read_syscall.c (a read() into a fresh buffer the program never touches):
    the fault picked lies in the buffer, its error code has the user bit clear and says write, the journey says
    kernel mode (from exceptions:page_fault_kernel) and the read system call (observed), and the PTE it set maps
    pagemap's frame: the kernel-mode path of the compiled walk on this kernel's tracepoints and BTF."""
    import re
    import shutil
    import tempfile
    sys.path.insert(0, str(ROOT / "tests"))
    from live_helpers.heldout import TMPFS_CANDIDATES, file_system
    exe = out / "read_syscall"
    cc = shutil.which("cc") or shutil.which("gcc")
    subprocess.run([cc, "-O1", "-o", str(exe), str(ROOT / "tests" / "c" / "read_syscall.c")], check=True)
    # the file read goes on a tmpfs where the row's output is on 9p (the guests): 9p reads into the buffer by
    # pinning its pages (get_user_pages faults them in, no fault the CPU takes); a page-cache read copies into it
    where = out
    if file_system(out) == "9p":
        tmpfs = next((c for c in TMPFS_CANDIDATES if Path(c).is_dir() and file_system(Path(c)) == "tmpfs"), None)
        if tmpfs is None:
            return False, f"{out} is on 9p and no tmpfs is mounted for the file read"
        where = Path(tempfile.mkdtemp(prefix="read-syscall-", dir=tmpfs))
    result = out / "journey-kernel-mode.json"
    r = subprocess.run([sys.executable, "-m", "pagefault", "journey", "-q", "--format", "json", "-o", str(result),
                        "--force", "--kind", "kernel", "--", str(exe), str(where)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    if r.returncode != 0:
        return False, f"exit {r.returncode}: {r.stderr.strip()[-400:]}"
    m = re.search(r"^buffer start=0x([0-9a-f]+) pages=(\d+)", r.stdout, re.M)
    if not m:
        return False, f"the program printed no buffer: {r.stdout[-200:]}"
    lo = int(m.group(1), 16)
    hi = lo + int(m.group(2)) * 4096
    values = {v["label"]: v for step in json.loads(result.read_text())["steps"] for v in step["values"]}
    cr2, code = values["faulting address (CR2)"]["value"], values["error code"]["value"]
    taken, syscall = values["taken in"], values["system call"]
    problems = []
    if not lo <= cr2 < hi:
        problems.append(f"CR2 0x{cr2:x} outside the buffer 0x{lo:x}-0x{hi:x}")
    if code & 0x4 or not code & 0x2:
        problems.append(f"error code 0x{code:x}: not a kernel-mode write")
    if not (str(taken["value"]).startswith("kernel mode") and "page_fault_kernel" in taken["source"]):
        problems.append(f"taken in: {taken['value']} ({taken['source']})")
    if syscall["provenance"] != "observed" or not str(syscall["value"]).startswith("read (number 0)"):
        problems.append(f"system call: {syscall['value']} ({syscall['provenance']})")
    if values["PTE's PFN is pagemap's"]["value"] is not True:
        problems.append("the PTE's PFN is not pagemap's")
    return not problems, "; ".join(problems) or (f"CR2 0x{cr2:x} in the buffer, error code 0x{code:x}, "
                                                 f"{taken['value']}, system call {syscall['value']}")


def trace_latency_result(out: Path) -> tuple[bool, str]:
    """trace --latency on the first-touch loop (256 pages of this kernel's size), with each hook (auto: fentry
    where the kernel attaches it, else kprobes; kprobe): only where kprobes work; elsewhere the refusal is
    checked. Each line says how long the compiled object took to load and attach."""
    import contextlib
    import io

    from pagefault.capture.kprobes import kprobe_support
    from pagefault.cli import main as cli_main
    exe = first_touch(out)
    pages = 256
    details, good = [], True
    for probes in ("auto", "kprobe"):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()) as err:
            code = cli_main(["trace", "--latency", "--probes", probes, "--json", "--summary", "-", "-q", "--", str(exe),
                             str(pages * os.sysconf("SC_PAGE_SIZE"))])
        ok, why = kprobe_support()
        if not ok:
            return code == 3 and "kprobes" in err.getvalue(), f"refused without kprobes (exit {code}): {why}"
        (out / f"trace-latency-{probes}.json").write_text(buf.getvalue())
        s = json.loads(buf.getvalue())
        # a new anonymous page returns 0 through do_anonymous_page; where that is inlined (6.1) no
        # outcome handler is probed for it
        inlined = any(n.startswith("not probed: do_anonymous_page") for n in s["notes"])
        handler = "(no probed handler)" if inlined else "do_anonymous_page"
        anon = [g for g in s["by_outcome"] if g["key"] == f"{handler} → 0"]
        timed = sum(g["count"] for g in anon)
        positive = all(g["percentiles_ns"]["50"] > 0 and g["max_ns"] > 0 for g in s["by_outcome"])
        hook = next((n.split(":", 1)[0].rsplit(" ", 1)[-1] for n in s["notes"]
                     if n.startswith("handle_mm_fault hooked with")), "?")
        # the loop's region is named: its mapping was told by mmap or read from /proc
        named = any(g["key"] == "[anon rw-p]" and g["count"] >= pages for g in s["by_mapping"])
        good = good and code == 0 and timed >= pages and positive and named and (probes == "auto" or hook == probes)
        started = next((n.split("started in ", 1)[1] for n in s["notes"] if "started in " in n), "?")
        details.append(f"{probes} (hooked with {hook}, started in {started}): {s['faults']} faults timed, "
                       f"{timed} through {handler} "
                       f"returning 0, the loop's mapping {'named' if named else 'NOT named'}, p50 "
                       + ", ".join(f"{g['key']}: {g['percentiles_ns']['50'] / 1000:.1f} µs"
                                   for g in s["by_outcome"][:3]))
    return good, "; ".join(details)


def main_arm64(base: Path) -> int:
    """An arm64 row: doctor, the live journey (its sources must agree), decode against what was read, the
    entry kinds (a present and a PROT_NONE PTE) read live, and, on a 4 KiB-page kernel, every scenario
    against the arm64 simulator (the scenarios are written in 4 KiB pages: with larger pages they are
    "n/a", and a live run refuses them with that reason)."""
    from pagefault.journey.arm64_journey import arm64_checks, derived_pte, first_invalid_level
    four_k = os.sysconf("SC_PAGE_SIZE") == 4096
    release, out, checks, times, t0, progress = begin(base, ARM64_CHECKS + (SCENARIO_CHECKS if four_k
                                                                           else ("scenario-refused",)))

    path = out / "evidence" / "arm64-fault.json.gz"
    t = time.monotonic()

    def journey():
        from pagefault.views.journey_view import to_json
        j = core.run_journey(core.JourneyRequest(save_evidence=path, force=True, progress=progress))
        (out / "journey.json").write_text(to_json(j))
        ev = load_evidence(path).evidence
        results = arm64_checks(ev)
        return all(c.ok for c in results), " | ".join(f"{c.name} {'ok' if c.ok else 'FAILED'}: {c.detail}" for c in results)
    checks.run("journey-arm64", journey)
    times["journey"] = time.monotonic() - t

    def decode():
        ev = load_evidence(path).evidence
        leaf = next(r for r in ev.walk_after if r.level == "PTE")
        pfn = ev.pagemap & PM_PFN_MASK
        problems = []
        # the walk's own shape: VA bits in use, page size, and LPA2's 52-bit output addresses
        shape = ["--arch", "arm64", "--va-bits", str(ev.va_bits), "--granule", f"{ev.page_size // 1024}k",
                 "--pa-bits", "52" if ev.lpa2 else "48", "--json"]
        pte = _cli_json("decode", "pte", hex(leaf.value), *shape)
        if pte["result"]["pfn"] != pfn or pte["result"]["kind"] != "page" or pte["result"]["suspicions"]:
            problems.append(f"decode pte {leaf.value:#x} gave PFN {pte['result']['pfn']}, kind "
                            f"{pte['result']['kind']}, doubts {pte['result']['suspicions']}; pagemap PFN {pfn:#x}")
        own = _cli_json("decode", "pte", hex(leaf.value), "--arch", "arm64", "--json")   # the shape left to the machine
        if own["result"]["pfn"] != pfn or "this machine's" not in own["assumed"]:
            problems.append(f"decode without --va-bits/--granule/--pa-bits gave PFN {own['result']['pfn']} ({own['assumed']})")
        if derived_pte(ev) != leaf.value:
            problems.append(f"derived {derived_pte(ev)} != read {leaf.value:#x}")
        address = _cli_json("decode", "address", hex(ev.address), *shape)
        for index, read in zip(address["result"]["indices"], ev.walk_after):
            if index["level"] != read.level:
                problems.append(f"level {index['level']} != walk's {read.level}")
        level = first_invalid_level(ev)
        x86 = _cli_json("decode", "pte", hex(leaf.value), "--arch", "x86_64", "--json")
        if not x86["result"]["suspicions"]:
            problems.append("the x86 decoder did not doubt an arm64 descriptor")
        return not problems, "; ".join(problems) or (f"PTE {leaf.value:#x} → PFN {pfn:#x} as pagemap; derived equal; "
                                                     f"walk levels as decode address; trap at level {level}; the x86 "
                                                     "decoder doubts it")
    t = time.monotonic()
    checks.run("decode", decode)
    times["decode"] = time.monotonic() - t

    def entry_kinds():
        sys.path.insert(0, str(ROOT / "tests"))
        from live_helpers.nonpresent import check_entry_kinds_arm64, read_entry_kinds_arm64
        ev = load_evidence(path).evidence
        seen = read_entry_kinds_arm64(ev.linear_offset, ev.va_bits, ev.page_size, ev.lpa2)
        version = (int(ev.kernel_version[0]), int(ev.kernel_version[1]))
        return entry_kinds_result(out, seen, *check_entry_kinds_arm64(seen, version, ev.va_bits, ev.page_size,
                                                                      ev.lpa2))
    t = time.monotonic()
    checks.run("entry-kinds", entry_kinds)
    times["entry-kinds"] = time.monotonic() - t
    def trace_count():
        """Summary-only trace on arm64: the compiled counter needs exceptions:page_fault_user, which arm64
        kernels lack; the refusal must say so (its other programs' loading is bpf-objects')."""
        import contextlib
        import io

        from pagefault.cli import main as cli_main
        exe = first_touch(out)
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = cli_main(["trace", "-q", "--json", "--summary", "-", "--", str(exe), str(64 * os.sysconf("SC_PAGE_SIZE"))])
        said = err.getvalue().strip().splitlines()
        return code != 0 and "page_fault_user" in err.getvalue(), f"exit {code}: {said[-1] if said else 'nothing said'}"
    t = time.monotonic()
    checks.run("trace-count", trace_count)
    times["trace-count"] = time.monotonic() - t
    t = time.monotonic()
    checks.run("trace-latency", lambda: trace_latency_result(out))
    times["trace-latency"] = time.monotonic() - t
    t = time.monotonic()
    if four_k:
        run_scenarios(out, checks)
    else:
        def refused():
            # larger pages: a live scenario must refuse with the reason, and the simulator stand in for a 4 KiB kernel
            try:
                core.run_journey(core.JourneyRequest(scenario="first-touch", force=True))
            except core.CannotTrace as exc:
                model = core.run_journey(core.JourneyRequest(scenario="first-touch", model=True))
                followed = next((n for n in model.notes if "the simulator follows" in n), "")
                return "written in 4 KiB pages" in str(exc) and "4 KiB pages only" in followed, f"{exc} | {followed}"
            return False, "a live scenario ran on a kernel whose pages are not 4 KiB"
        checks.run("scenario-refused", refused)
    times["scenarios"] = time.monotonic() - t
    return finish(release, out, checks, times, t0)


def _cli_json(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "pagefault", *args], capture_output=True, text=True, check=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    return json.loads(done.stdout)


def main() -> int:
    base = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "matrix-out"
    if machine_arch().arch is Arch.ARM64:
        return main_arm64(base)
    release, out, checks, times, t0, progress = begin(base, X86_CHECKS)

    for tier in ("bpf", "perf"):
        t = time.monotonic()
        path = out / "evidence" / f"journey-{tier}.json.gz"

        def journey(tier=tier, path=path):
            request = core.JourneyRequest(tier=tier, options=ExerciseOptions(), save_evidence=path, force=True,
                                          progress=progress)
            j = core.run_journey(request)
            if tier == "bpf":
                from pagefault.views.journey_view import to_json
                (out / "journey.json").write_text(to_json(j))
            return check_journey(path, tier)
        checks.run(f"journey-{tier}", journey)
        times[f"journey-{tier}"] = time.monotonic() - t

    t = time.monotonic()
    checks.run("journey-kernel-mode", lambda: kernel_mode_journey_result(out))
    times["journey-kernel-mode"] = time.monotonic() - t

    t = time.monotonic()
    run_scenarios(out, checks)
    times["scenarios"] = time.monotonic() - t

    def trace():
        from pagefault.capture.recording import load_recording
        from pagefault.capture.tracer import TraceOptions, record
        from pagefault.journey.trace_summary import summarize
        exe = first_touch(out)
        pages = 256
        with open(out / "first_touch.out", "w") as f:
            record(TraceOptions(argv=[str(exe), str(pages * 4096)], output=out / "trace.pfrec", target_stdout=f.fileno(),
                                force=True))
        s = summarize(load_recording(out / "trace.pfrec"))
        (out / "trace.json").write_text(json.dumps({"faults": s.faults, "lost": s.lost, "lost_how": s.lost_how,
                                                    "by_kind": s.by_kind}, indent=2))
        return s.faults >= pages and s.lost == 0, f"{s.faults} faults for {pages} pages, events lost {s.lost} ({s.lost_how})"
    t = time.monotonic()
    checks.run("trace", trace)
    times["trace"] = time.monotonic() - t

    def trace_count():
        """Summary-only trace on the compiled CO-RE counter: loaded through libbpf on this kernel, its hooks
        chosen from this kernel's BTF and tracefs, and its total held to the kernel's own count."""
        import contextlib
        import io

        from pagefault.cli import main as cli_main
        exe = first_touch(out)
        pages = 256
        buf, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
            code = cli_main(["trace", "-q", "--json", "--summary", "-", "--", str(exe), str(pages * 4096)])
        if code != 0:
            return False, f"exit {code}: {err.getvalue().strip()[-400:]}"
        text = buf.getvalue()
        s = json.loads(text[text.index("{\n"):])
        (out / "trace-count.json").write_text(json.dumps(s, indent=2))
        hooks = [n for n in s["notes"] if n.startswith("hook ")]
        kernel = s.get("kernel_counts", {}).get("page-faults")
        ok = s["tier"] == "bpf-counts" and s["faults"] >= pages and kernel is not None and s["faults"] <= kernel
        return ok, (f"{s['faults']} faults counted in the kernel for {pages} pages, the kernel's own count {kernel} "
                    f"(user and kernel mode); hooks: {'; '.join(h[5:] for h in hooks)}")
    t = time.monotonic()
    checks.run("trace-count", trace_count)
    times["trace-count"] = time.monotonic() - t

    def decode():
        from pagefault.cli import main as cli_main
        ev = load_evidence(out / "evidence" / "journey-bpf.json.gz").evidence
        pte = ev.bpf.reads["after"].entries["PTE"]
        results = {}
        for kind, val, extra in (("pte", pte, []), ("address", ev.vaddr + ev.options.offset,
                                                    ["--levels", str(ev.paging_levels)])):
            import contextlib
            import io
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                code = cli_main(["decode", kind, hex(val), "--json", *extra])
            (out / f"decode-{kind}.json").write_text(buf.getvalue())
            results[kind] = (code, json.loads(buf.getvalue())["result"])
        pfn_ok = results["pte"][1]["pfn"] == ev.snapshots["touched"].pagemap & PM_PFN_MASK
        levels_ok = len(results["address"][1]["indices"]) == ev.paging_levels
        return (all(c == 0 for c, _ in results.values()) and pfn_ok and levels_ok,
                f"decode pte 0x{pte:x} → PFN 0x{results['pte'][1]['pfn']:x}; address split into "
                f"{len(results['address'][1]['indices'])} levels")
    t = time.monotonic()
    checks.run("trace-latency", lambda: trace_latency_result(out))
    times["trace-latency"] = time.monotonic() - t

    def entry_kinds():
        sys.path.insert(0, str(ROOT / "tests"))
        from live_helpers.nonpresent import check_entry_kinds, read_entry_kinds

        from pagefault.kernel import facts
        ev = load_evidence(out / "evidence" / "journey-bpf.json.gz").evidence
        seen = read_entry_kinds(ev.bpf.direct_map_base, ev.paging_levels)
        return entry_kinds_result(out, seen, *check_entry_kinds(seen, ev.kernel_version, ev.paging_levels,
                                                                facts.swap_config()))
    t = time.monotonic()
    checks.run("entry-kinds", entry_kinds)
    times["entry-kinds"] = time.monotonic() - t

    t = time.monotonic()
    checks.run("decode", decode)
    times["decode"] = time.monotonic() - t

    def heldout():
        """The held-out programs (tests/c/heldout.c), recorded and counted in the kernel: each region's classes
        as built, the totals and the reads from disk equal to the kernel's own page-faults and major-faults
        counts (the count's totals where it starts as the kernel's does, sched_prepare_exec). A file mode runs
        where a file system here does what it needs (live_helpers.heldout.file_dir); one that cannot is named."""
        sys.path.insert(0, str(ROOT / "tests"))
        from live_helpers.heldout import COUNTED_IN_GUESTS, RECORDED, build, check_counted, check_recorded, file_dir
        work = out / "heldout"
        work.mkdir(exist_ok=True)
        exe = build(work)
        runnable = {m: file_dir(m, work) for m in sorted(RECORDED)}
        results = [check_recorded(exe, m, work) for m, (where, _why) in runnable.items() if where is not None]
        # counted in the kernel: the modes whose count has its own logic (a fault's own page read in, a system
        # call's adds, kernel-mode faults); a run costs ~35 s under TCG, so the live test counts them all
        results += [check_counted(exe, m, work) for m in COUNTED_IN_GUESTS if runnable[m][0] is not None]
        not_run = [f"{m} ({why})" for m, (where, why) in runnable.items() if where is None]
        (out / "heldout.txt").write_text("".join(("ok " if ok else "FAILED ") + d + "\n" for ok, d in results))
        failed = [d for ok, d in results if not ok]
        left = f"; not run: {', '.join(not_run)}" if not_run else ""
        return not failed, f"{len(results) - len(failed)} of {len(results)} runs as built{left}" + (
            "; " + " | ".join(failed) if failed else "")
    t = time.monotonic()
    checks.run("heldout", heldout)
    times["heldout"] = time.monotonic() - t

    return finish(release, out, checks, times, t0)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
