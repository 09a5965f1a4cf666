"""The shape issue 27 asks for, checked: cli.py only parses and maps outcomes to exit statuses, core is
split by command and loads each command's code only when it runs, no long functions where the project
forbids them, and the architecture is asked of its Arch interface instead of being compared by name."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pagefault import cli
from pagefault.decode.arch import Arch
from pagefault.decode.arch_interface import arch_interface

PACKAGE = Path(cli.__file__).parent


def _functions(path: Path):
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_function_over_80_lines_in_journey_capture_and_core():
    files = [p for d in ("journey", "capture", "core") for p in sorted((PACKAGE / d).rglob("*.py"))] + [
        PACKAGE / "cli.py"]
    long = [f"{p.relative_to(PACKAGE)}:{f.lineno} {f.name} ({f.end_lineno - f.lineno + 1} lines)"
            for p in files for f in _functions(p) if f.end_lineno - f.lineno + 1 > 80]
    assert long == []


def test_cli_defines_only_the_parser_and_the_exit_statuses():
    """Every function of cli.py builds the parser or maps how a command ended to an exit status."""
    allowed = {"build_parser", "main", "error", "__init__", "_terminate", "_one_line", "_os_error_line",
               "_stop_signal_behind", "_say_stopped"}   # how a signal ended the run: its line and status
    names = {f.name for f in _functions(PACKAGE / "cli.py")}
    assert {n for n in names if not n.startswith("_register_")} <= allowed, names
    # and it imports nothing of capture, journey (but its vocabulary) or views (but the line writer) at the top
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    top = {node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.level == 1}
    assert top <= {None, "core.errors", "journey.vocabulary", "views.terminal"}, top


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join(sys.modules))"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return set(out.split())


def test_core_and_the_trace_command_load_nothing_of_the_journey():
    """`pagefault trace` starts fast: the core package, its dispatcher and the trace command import no journey
    builder, no evidence file format and no rich (core.py used to import the step catalogue and the evidence)."""
    loaded = _modules_after("import pagefault.cli, pagefault.core, pagefault.core.dispatch, pagefault.core.trace")
    heavy = {"pagefault.core.journey", "pagefault.journey.catalogue", "pagefault.journey.build", "pagefault.evidence",
             "pagefault.evidence.file", "rich", "numpy"}
    assert heavy & loaded == set()


def test_the_journey_names_are_still_reachable_from_the_core_package():
    import pagefault.core as core
    from pagefault.core import journey
    from pagefault.core.errors import UsageError
    assert core.replay is journey.replay and core.JourneyRequest is journey.JourneyRequest
    assert core.JourneyUsageError is UsageError
    with pytest.raises(AttributeError):
        core.no_such_name  # noqa: B018


@pytest.mark.parametrize("argv, status, words", [
    (["decode", "error-code", "6", "--arch", "arm64"], 2, "on arm64 the trap's syndrome is ESR_EL1: pagefault "
                                                          "decode esr VALUE --arch arm64"),
    (["decode", "esr", "0x92000047", "--arch", "x86_64"], 2, "pagefault decode error-code VALUE --arch x86_64"),
    (["decode", "fault-flags", "6", "--from-error-code", "--arch", "arm64"], 2, "(decode esr VALUE)"),
])
def test_another_architectures_syndrome_is_refused_with_its_own_decoder_named(argv, status, words, capsys):
    assert cli.main(argv) == status
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1


def test_decode_asks_the_interface_for_each_architectures_own_formats(capsys):
    """An arm64 page descriptor and an x86 PTE decoded through the same command: hand-checked values."""
    assert cli.main(["decode", "pte", "0x800000013a875067", "--arch", "x86_64", "--json", "--kernel", "6.18"]) == 0
    import json
    x86 = json.loads(capsys.readouterr().out)
    assert x86["architecture"] == "x86_64" and x86["result"]["pfn"] == 0x13a875
    # arm64 4 KiB page descriptor: valid|page (0b11), AF (bit 10), output address 0x4000_1000 → PFN 0x40001
    assert cli.main(["decode", "pte", str(0x40001403), "--arch", "arm64", "--json", "--kernel", "6.12",
                     "--va-bits", "48", "--granule", "4k", "--pa-bits", "48"]) == 0
    arm = json.loads(capsys.readouterr().out)
    assert arm["architecture"] == "arm64" and arm["result"]["pfn"] == 0x40001 and arm["assumed"] == ""


def test_the_interface_decodes_with_each_architectures_own_decoder():
    from pagefault.decode.arm64_descriptor import decode_arm64_descriptor
    from pagefault.decode.error_code import decode_error_code
    from pagefault.decode.esr import decode_esr
    from pagefault.decode.pte import decode_pte
    from pagefault.decode.swap_entry import SwapConfig
    x86, arm = arch_interface(Arch.X86_64, 5), arch_interface(Arch.ARM64, va_bits=39)
    assert x86.decode_entry(0x800000013a875067, "PTE", (6, 18), SwapConfig()) == decode_pte(
        0x800000013a875067, "PTE", kernel=(6, 18), paging_levels=5)
    assert arm.decode_entry(0x40001403, "PTE", (6, 12), SwapConfig()) == decode_arm64_descriptor(
        0x40001403, "PTE", kernel=(6, 12), va_bits=39)
    assert x86.decode_syndrome_fully(6) == decode_error_code(6) and arm.decode_syndrome_fully(0x92000047) == \
        decode_esr(0x92000047)
    # 0x7f949c434100 at 5 levels: PML5 index 0 (bits 56..48 are 0); >>39 &0x1ff = 0xff, >>30 = 0x52, >>21 = 0xe2, >>12 = 0x34
    assert [i.index for i in x86.decode_address(0x7f949c434100).indices] == [0, 255, 82, 226, 52]
    assert (x86.syndrome_kind, arm.syndrome_kind) == ("error-code", "esr")
    assert (x86.shape_beyond_levels, arm.shape_beyond_levels) == (False, True)


def test_following_a_program_is_refused_where_the_trap_is_not_traced(monkeypatch, capsys):
    """On an arm64 machine (no exceptions:page_fault_user) journey -- CMD is one line, exit 2; the machine's
    interface says so, not a comparison of `uname -m`."""
    from pagefault.core import journey
    monkeypatch.setattr(journey, "machine_interface", lambda: arch_interface(Arch.ARM64))
    assert cli.main(["journey", "--no-pause", "--", "true"]) == 2
    err = capsys.readouterr().err
    assert "needs the exceptions:page_fault_user tracepoint, which arm64 kernels lack" in err


@pytest.mark.parametrize("outcome, status", [("DONE", 0), ("PARTIAL", 1), ("NO_COMMAND", 2)])
def test_each_outcome_has_its_exit_status(outcome, status, monkeypatch, capsys):
    import pagefault.core.dispatch as dispatch
    from pagefault.core.errors import Outcome
    outcome = Outcome[outcome]
    monkeypatch.setattr(dispatch, "run_command", lambda args: outcome)
    assert cli.main(["scenarios"]) == status


@pytest.mark.parametrize("name, message, status, prefix", [
    ("UsageError", "a\nb", 2, "pagefault: a; b"), ("CannotTrace", "no perf", 3, "pagefault: cannot trace here: no perf"),
    ("NothingMatched", "none", 4, "pagefault: nothing matched: none")])
def test_each_way_of_failing_is_one_line_with_its_exit_status(name, message, status, prefix, monkeypatch, capsys):
    import pagefault.core.dispatch as dispatch
    from pagefault.core import errors
    exc = getattr(errors, name)(message)

    def fail(args):
        raise exc
    monkeypatch.setattr(dispatch, "run_command", fail)
    assert cli.main(["scenarios"]) == status
    assert capsys.readouterr().err == prefix + "\n"


@pytest.mark.parametrize("argv, assumed", [
    (["vm-flags", "0x100073"], False), (["fault-flags", "0x255"], False), (["gfp", "0xcc0"], False),
    (["address", "0x7f949c434100"], True), (["esr", "0x92000047"], True), (["pte", "0x40001403"], True)])
def test_an_arm64_shape_is_assumed_only_for_the_formats_it_shapes(argv, assumed, capsys):
    """vm_flags, fault flags and GFP flags do not depend on the walk's VA size or granule: no shape is said to be
    assumed for them (only arm64's address, descriptor and ESR decoders take it)."""
    import json
    assert cli.main(["decode", *argv, "--arch", "arm64", "--json", "--va-bits", "48", "--granule", "4k"]) == 0
    out = json.loads(capsys.readouterr().out)
    # --pa-bits is the one left out: said where the format takes it (this machine's on arm64, else Linux's usual)
    assert out["assumed"].startswith("assumed --pa-bits ") if assumed else out["assumed"] == ""


# The Arch implementations, where the architectures are told apart by name: decode/arch.py maps `uname -m`
# (and --arch) to an Arch, decode/arch_interface.py is one class per Arch. Nothing else may.
ARCH_IMPLEMENTATIONS = {"decode/arch.py", "decode/arch_interface.py"}
ARCH_WORDS = {"x86", "x86_64", "x86-64", "amd64", "i386", "arm64", "aarch64", "riscv64"}
INTERFACE_CLASSES = {"X86_64", "Arm64", "X86Format", "Arm64Format"}


def _arch_member(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Arch"


def _arch_word(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.lower() in ARCH_WORDS


def _machine_name(node: ast.AST) -> bool:
    """`os.uname().machine`, `platform.machine()`, `uname -m`'s word: the machine's name itself."""
    return (isinstance(node, ast.Attribute) and node.attr == "machine" and isinstance(node.value, ast.Call)) or (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "machine")


def arch_branches(source: str) -> list[tuple[int, str]]:
    """Where ``source`` tells architectures apart by name rather than asking an Arch interface: a comparison
    with an Arch member, an architecture's name or the machine's name; a table keyed by architecture names,
    or by Arch members that leaves one out (a lookup over every Arch is the interface's, one missing is an
    else-branch in disguise); an isinstance() of an interface's class; a call of an on_<arch>() test."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(_arch_member(o) or _arch_word(o) or _machine_name(o) for o in operands) or any(
                    isinstance(o, (ast.Tuple, ast.Set, ast.List)) and any(_arch_word(e) or _arch_member(e)
                                                                         for e in o.elts) for o in operands):
                out.append((node.lineno, "compares an architecture by name"))
        elif isinstance(node, ast.Dict):
            keys = [k for k in node.keys if k is not None]
            if any(_arch_word(k) for k in keys):
                out.append((node.lineno, "a table keyed by architecture names"))
            members = {k.attr for k in keys if _arch_member(k)}
            if members and members != {a.name for a in Arch}:
                out.append((node.lineno, f"a table keyed by {sorted(members)}, not every Arch"))
        elif isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)):
            name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
            if name == "isinstance" and len(node.args) == 2 and any(
                    isinstance(n, (ast.Name, ast.Attribute)) and (n.id if isinstance(n, ast.Name) else n.attr)
                    in INTERFACE_CLASSES for n in ast.walk(node.args[1])):
                out.append((node.lineno, "isinstance() of an architecture's class"))
            elif name.startswith("on_") and name[3:] in ARCH_WORDS:
                out.append((node.lineno, f"{name}() tests the machine's architecture by name"))
    return out


def test_nothing_outside_the_arch_implementations_branches_on_an_architectures_name():
    found = [f"{p.relative_to(PACKAGE)}:{line} {why}" for p in sorted(PACKAGE.rglob("*.py"))
             if str(p.relative_to(PACKAGE)) not in ARCH_IMPLEMENTATIONS
             for line, why in arch_branches(p.read_text())]
    assert found == []


@pytest.mark.parametrize("code, caught", [
    ("if os.uname().machine == 'aarch64':\n    pass", True),
    ("arm64 = platform.machine() in ('arm64', 'aarch64')", True),
    ("x = ev.arch is Arch.ARM64", True),
    ("NR = {'x86_64': 298, 'aarch64': 241}", True),
    ("BASE = {Arch.ARM64: 1}", True),
    ("if isinstance(here, Arm64):\n    pass", True),
    ("if facts.on_arm64():\n    pass", True),
    # what the interface is for, and tables over every Arch, are not branches
    ("BASE = {Arch.X86_64: 0, Arch.ARM64: 1}", False),
    ("if not here.syndrome_traced:\n    pass", False),
    ("def f(arch: Arch = Arch.X86_64): return arch_interface(arch)", False),
    ("if isinstance(ev, Arm64FaultEvidence):\n    pass", False),
])
def test_the_architecture_branch_check_catches_each_form(code, caught):
    assert bool(arch_branches(code)) is caught


# A contract, as drgn's helpers state one: what the function returns and what it raises (or that it raises
# nothing), said in its docstring; what a caller without root gets is said where it differs.
CONTRACT_WORDS = re.compile(r":returns?:|:raises\b|:yields?:|\b(returns?|raises?|never raises|yields?)\b", re.I)


def missing_contracts(source: str) -> list[str]:
    """The public module-level functions of ``source`` whose docstring says neither what they return nor raise."""
    return [f"{n.lineno} {n.name}" for n in ast.parse(source).body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and not n.name.startswith("_")
            and not CONTRACT_WORDS.search(ast.get_docstring(n) or "")]


def test_every_boundary_function_of_evidence_capture_and_core_states_its_contract():
    found = [f"{p.relative_to(PACKAGE)}:{where}" for d in ("evidence", "capture", "core")
             for p in sorted((PACKAGE / d).rglob("*.py")) for where in missing_contracts(p.read_text())]
    assert found == []


@pytest.mark.parametrize("code, missing", [
    ("def f(): pass", ["1 f"]),
    ('def f():\n    """The maps of a process."""', ["1 f"]),
    ('def f():\n    """The maps.\n\n    :raises OSError: the process is gone."""', []),
    ('def f():\n    """The maps; a caller without root gets its own only. Returns [] when none."""', []),
    ("def _private(): pass", []),
])
def test_the_contract_check_catches_a_function_without_one(code, missing):
    assert missing_contracts(code) == missing
