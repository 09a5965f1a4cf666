"""Red team, second round (issue 28, class 12): malformed numbers in every numeric field of evidence.

JSON text may hold what json.dumps of a well-typed document never writes: NaN, Infinity, 1e400 (read as inf),
1e-400 (0.0), an integer of 5,000 digits (past Python's int/str conversion limit), -0.0. Each lands in every
numeric leaf of a journey's and a scenario's evidence (a seeded sample of 40 leaves each, different per run);
the answer is a result or one line, never a traceback."""

from __future__ import annotations

import copy
import gzip
import json
import os
import random

import pytest
from test_fuzz_inputs import EVIDENCE_DIR, one_line_or_result

LITERALS = ["NaN", "Infinity", "-Infinity", "1e400", "1e-400", "1" * 5000, "-0.0", "18446744073709551616"]
DOCS = ["6.18.44-fc-v669/journey-perf.json.gz", "6.18.44-fc-v669/program-own.json.gz",
        "6.18.44-fc-v669/scenario-first-touch.json.gz", "6.12.95+deb12-arm64/arm64-fault.json.gz"]


def _numeric_leaves(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _numeric_leaves(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _numeric_leaves(value, path + (i,))
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield path


@pytest.mark.parametrize("name", DOCS)
def test_non_finite_and_oversized_numbers_are_a_result_or_one_line(tmp_path, name):
    doc = json.loads(gzip.open(EVIDENCE_DIR / name).read())
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    leaves = list(_numeric_leaves(doc["evidence"]))
    file = tmp_path / "e.json"
    for path in rng.sample(leaves, min(40, len(leaves))):
        literal = rng.choice(LITERALS)
        bad = copy.deepcopy(doc)
        parent = bad["evidence"]
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = "__NUMBER__"
        file.write_text(json.dumps(bad).replace('"__NUMBER__"', literal))
        try:
            one_line_or_result(["journey", "--replay", str(file), "--format", rng.choice(["json", "text"])])
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}: {path} = {literal[:20]}: {exc}") from None
