"""Every saved capture's journey, and the simulator's journey of every scenario, held to its golden JSON.

The journey is a pure function of its evidence, so the same fixture must give the same bytes whatever
builder produced them: a refactor that changes a step's title, a value, its provenance or a derivation
shows here as a diff. A deliberate change is recorded with ``PAGEFAULT_GOLDEN_UPDATE=1`` and the diff
is reviewed in the commit.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pagefault.core import journey_from_evidence
from pagefault.decode.arch import Arch
from pagefault.evidence.file import load_evidence
from pagefault.journey.model_journey import build_model_journey
from pagefault.journey.scenario_check import model_config
from pagefault.model.scenarios import SCENARIOS, run_in_model
from pagefault.views.journey_view import to_json

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "evidence"
GOLDEN = Path(__file__).resolve().parent / "golden" / "journeys"
UPDATE = os.environ.get("PAGEFAULT_GOLDEN_UPDATE") == "1"

CAPTURES = sorted(FIXTURES.glob("*/*.json.gz"))
# The simulator's shapes: x86-64 4- and 5-level, arm64 4-level, and arm64 with LPA2 (52-bit, 5 levels).
MODEL_SHAPES = [(Arch.X86_64, 4, False), (Arch.X86_64, 5, False), (Arch.ARM64, 4, False), (Arch.ARM64, 5, True)]


def _check(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    assert path.exists(), f"no golden file {path}: record it with PAGEFAULT_GOLDEN_UPDATE=1"
    assert text == path.read_text(), f"the journey of {name} differs from its golden file"


def test_every_fixture_is_covered() -> None:
    assert len(CAPTURES) >= 50, "the saved captures moved: the golden test would hold nothing"


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_saved_capture_journey(path: Path) -> None:
    loaded = load_evidence(path)
    journey = journey_from_evidence(loaded.evidence)
    _check(f"{path.parent.name}/{path.name.removesuffix('.json.gz')}.json", to_json(journey) + "\n")


@pytest.mark.parametrize("shape", MODEL_SHAPES, ids=lambda s: f"{s[0].value}-{s[1]}{'-lpa2' if s[2] else ''}")
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_model_journey(scenario, shape) -> None:
    arch, levels, lpa2 = shape
    run = run_in_model(scenario, model_config(None, levels, arch, lpa2))
    journey = build_model_journey(run, "")
    tag = f"{arch.value}-{levels}{'-lpa2' if lpa2 else ''}"
    _check(f"model/{tag}/{scenario.name}.json", to_json(journey) + "\n")
