"""Capture this kernel's evidence fixtures (as root): the journey in every tier this machine can run,
and every scenario, saved under tests/fixtures/evidence/<kernel release>/ for the offline tests.

    sudo .venv/bin/python scripts/capture_fixtures.py [--out DIR] [--tiers bpf,perf,user]

The kernel matrix runs it inside each guest, so the ordinary test run replays every kernel tried.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pagefault import core  # noqa: E402
from pagefault.evidence import ExerciseOptions  # noqa: E402
from pagefault.kernel.facts import kernel_release  # noqa: E402
from pagefault.model.scenarios import SCENARIOS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "evidence"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="directory (default tests/fixtures/evidence/<release>)")
    p.add_argument("--tiers", default="bpf,perf,user")
    p.add_argument("--scenarios", default=",".join(s.name for s in SCENARIOS))
    p.add_argument("--programs", default="own,major,cow,thp,stack",
                   help="faults of tests/c/fault_kinds.c to capture as program journeys (own: the default selector)")
    args = p.parse_args()
    out = args.out or ROOT / kernel_release()
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for tier in [t for t in args.tiers.split(",") if t]:
        path = out / f"journey-{tier}.json.gz"
        request = core.JourneyRequest(tier=tier, options=ExerciseOptions(), save_evidence=path, force=True)
        try:
            core.run_journey(request)
        except (core.CannotTrace, core.JourneyUsageError) as exc:
            print(f"capture_fixtures: journey tier {tier}: {exc}", file=sys.stderr)
            failed += 1
    for name in [s for s in args.scenarios.split(",") if s]:
        path = out / f"scenario-{name}.json.gz"
        request = core.JourneyRequest(scenario=name, save_evidence=path, force=True)
        try:
            core.run_journey(request)
        except (core.CannotTrace, core.JourneyUsageError) as exc:
            print(f"capture_fixtures: scenario {name}: {exc}", file=sys.stderr)
            failed += 1
    failed += _program_faults(out, [k for k in args.programs.split(",") if k])
    print(f"capture_fixtures: wrote {len(list(out.glob('*.json.gz')))} files to {out}; {failed} failed")
    return 1 if failed else 0


def _program_faults(out: Path, kinds: list[str]) -> int:
    """program-<kind>.json.gz: the journey of one fault of tests/c/fault_kinds.c, chosen by --kind (or by default)."""
    import shutil
    import subprocess
    import tempfile
    if not kinds:
        return 0
    work = Path(tempfile.mkdtemp(prefix="pagefault-fixtures-"))
    try:
        exe = work / "fault_kinds"
        src = Path(__file__).resolve().parent.parent / "tests" / "c" / "fault_kinds.c"
        subprocess.run([shutil.which("cc") or "gcc", "-O1", "-g", "-o", str(exe), str(src)], check=True)
        failed = 0
        for kind in kinds:
            request = core.JourneyRequest(save_evidence=out / f"program-{kind}.json.gz", force=True)
            try:
                core.program_fault_journey([str(exe), str(work)], None, "own" if kind == "own" else "kind",
                                           None if kind == "own" else kind, request)
            except (core.CannotTrace, core.JourneyUsageError) as exc:
                print(f"capture_fixtures: program fault {kind}: {exc}", file=sys.stderr)
                failed += 1
        return failed
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
