"""What trace and report both make of a recording: its summary, its pprof profile, its folded flame graph.

Each reads a recording file written by pagefault trace (capture/recording.py); any user may read one
(root is needed to make it, not to read it); kernel symbols are resolved only where /proc/kallsyms shows
addresses (root).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from ..journey.count_summary import SUMMARY_TOP
from ..views.terminal import say, write_text
from .errors import UsageError


@contextlib.contextmanager
def recording_problems_as_one_line(path: Path | str) -> Iterator[None]:
    """A recording that cannot be read, or whose records contradict its metadata, is one line.

    :raises UsageError: in place of RecordingError, or of the ValueError, IndexError, KeyError, TypeError or
        OverflowError a recording at odds with its metadata makes the readers raise.
    """
    from ..capture.recording import RecordingError
    try:
        yield
    except RecordingError as exc:
        raise UsageError(str(exc)) from None
    except (ValueError, IndexError, KeyError, TypeError, OverflowError) as exc:
        # the chunks' CRCs matched, so the file was written this way: a bug or a hand-made file
        raise UsageError(f"{path}: the records do not match the metadata ({exc}); record it again") from None


def summarize_recording(path: Path | str, top: int = SUMMARY_TOP):
    """The TraceSummary of the recording at ``path``, ``top`` rows per table.

    :raises UsageError: the recording is missing, damaged or inconsistent (never a traceback).
    """
    from ..capture.recording import load_recording
    from ..journey.trace_summary import summarize
    with recording_problems_as_one_line(path):
        return summarize(load_recording(Path(path)), top=top)


def frames_escaped(stacks: Counter) -> Counter:
    """Stacks whose frame names (the program's comm and symbols, from the recording) have every control
    character escaped, newlines too: a folded file is read as it is printed (cat, a terminal), and a newline
    in a frame would start a stack of its own.

    :returns: a new Counter with the same counts; ``stacks`` is left as it was. Raises nothing."""
    from ..views.safe_text import escape_controls
    escaped: Counter = Counter()
    for frames, count in stacks.items():
        escaped[tuple(escape_controls(f) for f in frames)] += count
    return escaped


def emit_folded(text: str, where: str, force: bool, faults: int, stacks: int) -> None:
    """Folded stacks to ``where`` (- for standard output), and one line on stderr saying what was written.

    :raises OutputError: ``where`` exists (without ``force``) or is not a safe place to write.
    """
    if where == "-":
        write_text(text)
    else:
        from ..capture.safe_paths import write_output
        write_output(Path(where), text, force)
    say(f"{faults:,} faults in {stacks:,} stacks, one root per class"
        + ("" if where == "-" else f"; written to {where}, open it with flamegraph.pl, inferno-flamegraph or "
           "speedscope.app"))


def write_folded(recording: Path, where: str, force: bool) -> None:
    """A recording's faults as a folded flame graph (what report --format folded writes).

    :raises UsageError: the recording is damaged, or of the user tier (no kernel stacks).
    """
    from ..capture.recording import load_recording
    from ..journey.fault_stacks import fault_stacks, folded
    with recording_problems_as_one_line(recording):
        rec = load_recording(recording)
        if rec.meta.get("tier", "perf") != "perf":
            raise UsageError("flame graphs need a recording of the perf tier (run pagefault trace as root)")
        stacks, _chains = fault_stacks(rec)
    stacks = frames_escaped(stacks)
    emit_folded(folded(stacks), where, force, sum(stacks.values()), len(stacks))


def write_pprof(recording: Path, path: Path, force: bool) -> None:
    """The recording's faults as a pprof profile at ``path`` (go tool pprof, Pyroscope, Parca, Grafana).

    :raises UsageError: the recording is damaged, or of the user tier.
    :raises OutputError: ``path`` exists (without ``force``) or is not a safe place to write.
    """
    from ..capture.recording import load_recording
    from ..capture.safe_paths import write_output
    from ..journey.fault_stacks import fault_samples
    from ..views.pprof import to_pprof
    with recording_problems_as_one_line(recording):
        rec = load_recording(recording)
        if rec.meta.get("tier", "perf") != "perf":
            raise UsageError("a pprof profile needs a recording of the perf tier (run pagefault trace as root)")
        samples, chains = fault_samples(rec)
    started = float(rec.meta.get("started") or 0)
    duration = float(rec.meta.get("duration") or 0)
    write_output(path, to_pprof(samples, time_ns=int(started * 1e9), duration_ns=int(duration * 1e9)), force)
    say(f"{sum(samples.values()):,} faults in {len(samples):,} samples written to {path} (pprof"
        + ("" if chains else "; no call chains: record with -g for whole stacks")
        + f"); read it with: go tool pprof -top {path}")
