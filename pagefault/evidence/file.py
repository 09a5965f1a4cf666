"""The evidence file: one capture saved as versioned JSON (gzip when the name ends in .gz).

    {"format": "pagefault-evidence", "version": 1, "kind": "journey" | "scenario",
     "tool_version": …, "evidence": {… JourneyEvidence or ScenarioEvidence …}}

It holds everything a journey is built from (events with their call chains, the /proc snapshots,
the bpftrace reads, the kernel tables and the ELF facts at the RIP), so building from it needs
nothing of the machine. Loading checks every field's type (cattrs) and refuses a damaged,
truncated, wrong-version or hostile file with one line naming what is wrong.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

import cattrs

from ..decode.arch_interface import arch_interface
from .input_file import NotARegularInput, open_input_file  # noqa: F401  (re-exported: evidence's own readers)
from .records import Arm64FaultEvidence, JourneyEvidence, ProgramFaultEvidence, ScenarioEvidence

FORMAT = "pagefault-evidence"
VERSION = 1
MAX_BYTES = 512 << 20          # far above any capture (a journey is ~100 KiB): refuse before reading more
KINDS = {"journey": JourneyEvidence, "scenario": ScenarioEvidence, "program-fault": ProgramFaultEvidence,
         "arm64-fault": Arm64FaultEvidence}


class EvidenceError(Exception):
    """The evidence file cannot be used; the message names what is wrong (and the fix)."""


@dataclass
class EvidenceFile:
    kind: str                                   # "journey" or "scenario"
    evidence: JourneyEvidence | ScenarioEvidence
    path: Path
    tool_version: str

    def origin(self) -> str:
        """"replayed from FILE, captured on kernel K (host H) at T" for the journey's header."""
        ev = self.evidence
        return (f"replayed from {self.path}, captured on kernel {ev.kernel_release} (host {ev.host or '?'}) at "
                f"{ev.captured_at or '?'} by pagefault {self.tool_version or '?'}")


def _converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_unstructure_hook(Path, str)
    conv.register_structure_hook(Path, lambda v, _t: Path(_strict(v, str)))
    # cattrs would turn "12" into 12 and 1.5 into 1: an evidence file must hold the types it was saved with
    conv.register_structure_hook(int, lambda v, _t: _bounded(_strict(v, int)))
    conv.register_structure_hook(str, lambda v, _t: _strict(v, str))
    conv.register_structure_hook(bool, lambda v, _t: _strict(v, bool))
    conv.register_structure_hook(float, lambda v, _t: float(_strict(v, (int, float))))
    conv.register_structure_hook_factory(_has_int_keys, lambda t: _int_key_dict_hook(conv, t))
    return conv


def _has_int_keys(t) -> bool:
    return get_origin(t) is dict and get_args(t)[:1] == (int,)


def _int_key_dict_hook(conv: cattrs.Converter, t):
    """JSON object keys are strings: a dict[int, V] is saved with decimal keys and read back strictly."""
    value_type = get_args(t)[1]

    def structure(v, _t):
        _strict(v, dict)
        out = {}
        for key, item in v.items():
            if not (isinstance(key, str) and key.isdecimal() and len(key) < 30):
                raise ValueError(f"key {key!r} is not a decimal number")
            out[int(key)] = conv.structure(item, value_type)
        return out
    return structure


def _bounded(value: int) -> int:
    """Every integer of a capture is a machine word (u64 or s64): anything wider is damage, or an attack
    (a 2**70 bit position would make 1 << n a memory bomb)."""
    if not -(1 << 63) <= value < 1 << 64:
        raise ValueError(f"{value} does not fit in 64 bits")
    return value


def _strict(value: Any, kind) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"expected {getattr(kind, '__name__', kind)}, found {type(value).__name__}")
    return value


CONVERTER = _converter()


def evidence_to_json(evidence: JourneyEvidence | ScenarioEvidence | ProgramFaultEvidence | Arm64FaultEvidence) -> dict[str, Any]:
    """The evidence as the file's JSON object: format, version, kind (the evidence's type), tool version and the evidence's fields.

    :returns: a dict of JSON types only (cattrs unstructures the dataclasses). Raises nothing: every evidence type has a kind."""
    kind = next(k for k, cls in KINDS.items() if isinstance(evidence, cls))
    return {"format": FORMAT, "version": VERSION, "kind": kind, "tool_version": evidence.tool_version,
            "evidence": CONVERTER.unstructure(evidence)}


def dumps_evidence(evidence: JourneyEvidence | ScenarioEvidence | ProgramFaultEvidence | Arm64FaultEvidence,
                   gzipped: bool) -> bytes:
    """The file's bytes (gzip with a fixed mtime, so the same capture gives the same file).

    :returns: the bytes to write; nothing is written here. Raises nothing for evidence the capture made."""
    text = json.dumps(evidence_to_json(evidence), separators=(",", ":")).encode()
    return gzip.compress(text, mtime=0) if gzipped else text


def load_evidence(path: Path) -> EvidenceFile:
    """Read and check an evidence file.

    :returns: the evidence with its kind and the pagefault version that wrote it.
    :raises EvidenceError: missing, unreadable, too large, not JSON, not an evidence file, another
        version, or a field of the wrong type — one line saying which.
    """
    path = Path(path)
    try:
        with open_input_file(path) as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise EvidenceError(f"no evidence file at {path}") from None
    except NotARegularInput as exc:
        raise EvidenceError(str(exc)) from None
    except IsADirectoryError:
        raise EvidenceError(f"{path} is a directory, not an evidence file") from None
    except OSError as exc:
        raise EvidenceError(f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise EvidenceError(f"{path} is larger than {MAX_BYTES >> 20} MiB: not an evidence file pagefault wrote")
    if raw[:2] == b"\x1f\x8b":
        try:
            d = zlib.decompressobj(wbits=31)
            raw = d.decompress(raw, MAX_BYTES + 1)
            if len(raw) > MAX_BYTES or not d.eof:
                raise EvidenceError(f"{path}: the gzip stream is truncated or expands past {MAX_BYTES >> 20} MiB")
        except zlib.error as exc:
            raise EvidenceError(f"{path}: the gzip stream is damaged ({exc})") from None
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise EvidenceError(f"{path} is not JSON (damaged or truncated); save it again with "
                            "pagefault journey --save-evidence FILE") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise EvidenceError(f"{path} is not a pagefault evidence file (no \"format\": \"{FORMAT}\")")
    version = doc.get("version")
    if version != VERSION:
        raise EvidenceError(f"{path} is evidence version {_brief(version)}; this pagefault reads version {VERSION} "
                            "(capture it again with this version)")
    kind = doc.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:   # a list or an object here is not hashable
        raise EvidenceError(f"{path}: unknown evidence kind {_brief(kind)}; it is one of {', '.join(KINDS)}")
    evidence: JourneyEvidence | ScenarioEvidence
    try:
        evidence = CONVERTER.structure(doc.get("evidence"), KINDS[kind])
    except Exception as exc:   # cattrs reports every bad field in an exception group; name the first
        raise EvidenceError(f"{path}: {_first_problem(exc)}") from None
    problem = _out_of_range(evidence)
    if problem:
        raise EvidenceError(f"{path}: {problem}")
    return EvidenceFile(kind, evidence, path, str(doc.get("tool_version") or ""))


def _brief(value: Any) -> str:
    """A value from the file, quoted for a one-line message: a hostile one can be megabytes long."""
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "…"


def _out_of_range(ev: JourneyEvidence | ScenarioEvidence | ProgramFaultEvidence | Arm64FaultEvidence) -> str:
    """What no capture can hold, though each field has its type: the limits the builders rely on."""
    if isinstance(ev, Arm64FaultEvidence):
        from ..decode.arm64_address import GRANULES, check_va_bits
        from ..decode.bits import DecodeError
        if ev.page_size not in GRANULES:
            return f"evidence.page_size is {ev.page_size}: arm64 pages are 4, 16 or 64 KiB"
        try:
            check_va_bits(ev.va_bits, ev.page_size)
        except DecodeError as exc:
            return f"evidence.va_bits: {exc}"
        words = [ev.address, ev.pc, ev.pgd_virtual, ev.mapping_start] + [r.value for r in ev.walk_before + ev.walk_after]
        if any(not 0 <= w < 1 << 64 for w in words) or not 0 <= ev.flags < 1 << 32:
            return "evidence holds a register, descriptor or flag word that no 64-bit machine has"
        if ev.offset < 0 or ev.offset >= ev.mapping_size:
            return f"evidence.offset 0x{ev.offset:x} is outside the mapping of 0x{ev.mapping_size:x} bytes"
        return ""
    arch = arch_interface(ev.arch)
    if ev.paging_levels not in arch.paging_level_choices:
        return f"evidence.paging_levels is {ev.paging_levels}: {arch.paging_levels_rule}"
    if isinstance(ev, JourneyEvidence):
        try:
            ev.options.check()
        except ValueError as exc:
            return f"evidence.options: {exc}"
        except Exception as exc:   # ExerciseError: the options could not have been run
            return f"evidence.options: {exc}"
        bad = {n: b for n, b in ev.gfp_table.items() if not 0 <= b < 64}
        if bad:
            return f"evidence.gfp_table has impossible bit positions {bad}"
        bad = {n: v for n, v in ev.fault_flag_table.items() if not 0 <= v < 1 << 32}
        if bad:
            return f"evidence.fault_flag_table has values no enum fault_flag holds: {bad}"
    return ""


def _first_problem(exc: BaseException) -> str:
    """The innermost reason cattrs gives, with the path of the field it is about."""
    from cattrs.v import transform_error
    try:
        lines = transform_error(exc, path="evidence")
    except Exception:
        lines = []
    return (lines[0] if lines else f"the evidence does not have the expected shape ({type(exc).__name__})")
