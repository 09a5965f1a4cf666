"""Running a journey: live, in the simulator, or replayed from an evidence file — outside the CLI.

cli.py parses arguments and maps core/errors.py's exceptions to exit statuses; this module decides what runs:
the live capture, the fallback to the simulator where this machine cannot trace (said on stderr),
the interactive stepping through a paused program, saving the evidence, and replaying it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..decode.arch import Arch
from ..evidence import Arm64FaultEvidence, ExerciseError, ExerciseOptions, JourneyEvidence, ProgramFaultEvidence, ScenarioEvidence
from ..journey.catalogue import STEP_CATALOGUE
from ..journey.steps import Journey
from .errors import CannotTrace, JourneyUsageError, NothingMatched

if TYPE_CHECKING:
    from ..decode.arch_interface import ArchInterface

Progress = Callable[[str], None] | None


@dataclass
class JourneyRequest:
    """What `pagefault journey` (or `exercise`) was asked for."""

    tier: str = "auto"                    # auto | bpf | perf | user | model
    options: ExerciseOptions = field(default_factory=ExerciseOptions)
    scenario: str | None = None
    model: bool = False
    save_evidence: Path | None = None
    force: bool = False
    progress: Progress = None
    model_arch: Arch | None = None         # the simulator's architecture when asked for (--arch); else this machine's
    fallback_reason: str = ""             # what the simulator's journey says when it stands in
    timeout: float | None = None          # a program's fault: give up when none matched after this long


def model_journey(scenario_name: str | None, note: str = "", arch: Arch | None = None) -> Journey:
    """The simulator's journey of a scenario (first-touch by default), with this machine's settings, and its
    architecture and paging shape unless ``arch`` names another (then its usual shape: 4 levels, 48 bits).

    Any user gets the same journey: the settings read (/proc/sys/vm, THP) are world-readable.

    :raises JourneyUsageError: no scenario has that name.
    """
    from ..journey.model_journey import build_model_journey
    from ..journey.scenario_check import model_config
    from ..kernel.facts import memory_settings, model_shape
    from ..model.scenarios import ScenarioError, find_scenario, run_in_model
    try:
        scenario = find_scenario(scenario_name or "first-touch")
    except ScenarioError as exc:
        raise JourneyUsageError(str(exc)) from None
    arch_here, levels, lpa2, shape_note = model_shape()
    if arch is not None and arch is not arch_here:
        levels, lpa2 = 4, False
        shape_note = (f"the simulator follows {arch.value} as asked (--arch), with 4 KiB pages and 4 levels "
                      f"(48-bit addresses); this machine is {arch_here.value}")
    arch = arch or arch_here
    run = run_in_model(scenario, model_config(memory_settings(), levels, arch, lpa2))
    journey = build_model_journey(run, note)
    journey.notes.append(shape_note)
    return journey


def _say(note: str) -> None:
    from ..views.terminal import say
    say(f"note: {note}")


def complete_evidence(ev: JourneyEvidence) -> JourneyEvidence:
    """Read what the journey needs from the program's ELF file (the RIP's symbol, bytes and line) into
    the evidence, so that it can be built again anywhere from the evidence alone.

    :returns: ``ev`` itself, filled in place (unchanged when the fault's RIP is unknown or already read). An ELF file
        that cannot be read leaves the RIP's facts unavailable; nothing is raised for it."""
    from ..journey.build import fault_event
    from ..symbols.elf import rip_facts
    touched = ev.snapshots.get("touched")
    fault = fault_event(ev)
    if touched is None or fault is None or "ip" not in fault.fields or (ev.rip and ev.rip.ip == fault.fields["ip"]):
        return ev
    ip = fault.fields["ip"]
    mapping = next((m for m in touched.maps if m.start <= ip < m.end), None)
    if mapping is not None:
        ev.rip = rip_facts(ip, mapping)
    return ev


def build_live(ev: JourneyEvidence) -> Journey:
    """The live journey of ``ev``, with the RIP's facts read from the program's ELF file first.

    :returns: the Journey; raises nothing of its own (an ELF file it cannot read leaves those values unavailable)."""
    from ..journey.build import build_journey
    return build_journey(complete_evidence(ev))


def start_live(request: JourneyRequest):
    """A LiveJourney for the exercise program, or None after saying why the simulator stands in.

    :raises CannotTrace: an explicitly requested tier cannot run here.
    :raises JourneyUsageError: the exercise options are wrong, or the program cannot be built.
    """
    from ..capture.journey_capture import LiveJourney
    from ..capture.tracer import CaptureError
    try:
        return LiveJourney(request.options, tier=request.tier, progress=request.progress)
    except CaptureError as exc:
        if request.tier != "auto":
            raise CannotTrace(str(exc)) from None
        request.fallback_reason = f"this machine cannot trace here ({exc})"
        return None
    except ExerciseError as exc:
        raise JourneyUsageError(str(exc)) from None


def stand_in_journey(request: JourneyRequest, instead: str = "this is the simulator's journey instead") -> Journey:
    """The simulator's journey where start_live() found this machine cannot trace; says why on stderr
    (``request.fallback_reason``, then ``instead``).

    :returns: the simulator's Journey, every value modelled; needs no root and raises nothing."""
    note = f"{request.fallback_reason}; {instead}"
    _say(note)
    return model_journey(None, note)


def finish_live(live, request: JourneyRequest) -> Journey:
    """Run the traced program to its end and build its journey (saving the evidence if asked); the capture is
    closed (every probe detached, the program stopped) whatever happens.

    :raises CannotTrace: the capture failed on the way (the message says where and the fix).
    :raises JourneyUsageError: the evidence file cannot be written.
    """
    from ..capture.tracer import CaptureError
    try:
        live.run_all()
    except (CaptureError, ExerciseError) as exc:
        raise CannotTrace(str(exc)) from None
    finally:
        live.close()
    if request.progress and sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
    journey = build_live(live.ev)
    save_evidence(live.ev, request)
    return journey


def save_evidence(ev: JourneyEvidence | ScenarioEvidence | ProgramFaultEvidence | Arm64FaultEvidence,
                  request: JourneyRequest) -> None:
    """Write ``ev`` to ``request.save_evidence`` (gzip if it ends in .gz), if asked; says where on stderr.

    :raises JourneyUsageError: the file exists (without ``request.force``) or is not a safe place to write.
    """
    if request.save_evidence is None:
        return
    from ..capture.safe_paths import OutputError, write_output
    from ..evidence.file import dumps_evidence
    if isinstance(ev, JourneyEvidence):
        complete_evidence(ev)
    path = request.save_evidence
    try:
        write_output(path, dumps_evidence(ev, gzipped=path.name.endswith(".gz")), request.force)
    except OutputError as exc:
        raise JourneyUsageError(str(exc)) from None
    from ..views.terminal import say
    say(f"evidence saved to {path} (open it anywhere: pagefault journey --replay {path})")


def program_fault_journey(argv: list[str] | None, pid: int | None, selector: str, value, request: JourneyRequest) -> Journey:
    """The journey of one fault of any program (journey -- CMD, or -p PID), chosen by a selector.

    :raises CannotTrace: this machine (or user) cannot capture it; the message has the reason and fix.
    :raises NothingMatched: no fault, symbol or line matched; or --kind picked a fault at entry whose events
        show another class (the journey is not shown; the evidence is saved if asked).
    """
    from ..capture import tracer
    from ..capture.program_fault import ProgramFault
    from ..journey.program_journey import build_program_journey
    try:
        ev = ProgramFault(argv, pid, selector, value, request.progress, timeout=request.timeout).run()
    except tracer.TargetProblem as exc:
        raise JourneyUsageError(str(exc)) from None
    except tracer.NothingMatched as exc:
        raise NothingMatched(str(exc)) from None
    except tracer.CaptureError as exc:
        raise CannotTrace(str(exc)) from None
    save_evidence(ev, request)
    if selector == "kind":
        check_kind(ev, str(value))
    return build_program_journey(ev)


def check_kind(ev, kind: str) -> None:
    """--kind picks a fault at its entry, from its PTE and VMA; its events tell what it really was.

    :raises NothingMatched: the events give a class that is not `kind`'s (the journey must not be shown as one).
    """
    from ..journey.program_journey import classify_chosen, kind_classes
    cls, how, _window = classify_chosen(ev)
    if cls not in kind_classes(kind):
        raise NothingMatched(f"the fault picked at entry as a {kind} fault (0x{ev.address:x}, its PTE and VMA "
                             f"looked so) was a {cls.value} fault by its events ({how}); nothing is shown: run it "
                             "again, or choose the fault with --nth or --at")


def arm64_journey(request: JourneyRequest) -> Journey:
    """The live journey on an arm64 machine (capture/arm64_fault.py): the exercise program's write fault.

    :raises CannotTrace: not root (a caller without root gets this at once, nothing started), or the capture
        failed.
    """
    from ..capture.arm64_fault import capture_arm64_fault
    from ..capture.bpf_walk import BpfError
    from ..journey.arm64_journey import build_arm64_journey
    from ..kernel.facts import is_root
    if not is_root():
        raise CannotTrace("the arm64 journey reads kernel memory with its compiled BPF walk: run it as root (sudo)")
    try:
        ev = capture_arm64_fault(request.options, request.progress)
    except (BpfError, ExerciseError) as exc:
        raise CannotTrace(str(exc)) from None
    save_evidence(ev, request)
    return build_arm64_journey(ev)


def machine_interface() -> ArchInterface:
    """This machine's Arch interface (its usual paging shape): what the live captures can do here.

    :raises CannotTrace: the machine is of an architecture pagefault does not trace.
    """
    import os

    from ..decode.arch import arch_of_machine
    from ..decode.arch_interface import arch_interface
    from ..decode.bits import DecodeError
    try:
        return arch_interface(arch_of_machine(os.uname().machine))
    except DecodeError as exc:
        raise CannotTrace(f"{exc}; fix: pagefault journey --model --arch x86_64 (or arm64) shows the simulator's") from None


def run_journey(request: JourneyRequest) -> Journey:
    """The journey asked for, run to its end: the simulator's, a live scenario's, or the live one.

    A caller without root gets the simulator's journey, with a note on stderr saying why (unless a tier was
    asked for explicitly: then CannotTrace).

    :raises CannotTrace: an explicitly requested tier cannot run here, or a capture failed.
    :raises JourneyUsageError: the request's options or scenario name are wrong.
    """
    if request.model or request.tier == "model":
        return model_journey(request.scenario, arch=request.model_arch)
    if request.scenario:
        return live_scenario(request)
    if not machine_interface().syndrome_traced:
        return arm64_journey(request)
    live = start_live(request)
    if live is None:
        return stand_in_journey(request)
    return finish_live(live, request)


def check_scenario(scenario, progress: Progress = None):
    """Run the scenario live, then in the simulator with this machine's settings, and compare.

    :returns: (the model's outcome, the live outcome, their agreement, the live evidence, the model's run).
    :raises CaptureError: the scenario cannot run live here (capture/ says why and the fix).
    """
    from ..capture.scenario_capture import run_scenario_live
    from ..journey.scenario_check import cross_check
    ev = run_scenario_live(list(scenario.ops), progress, scenario.name)   # capture gathers; journey/ only compares
    model, live, agreement, run = cross_check(scenario, ev)
    return model, live, agreement, ev, run


def live_scenario(request: JourneyRequest) -> Journey:
    """A scenario run live with the model's verdict; the simulator's run where this user cannot trace (a caller
    without root gets that, with a note on stderr).

    :raises JourneyUsageError: no scenario has that name.
    :raises CannotTrace: root, but the scenario cannot run live here (capture/ says why and the fix).
    """
    from ..capture.tracer import CaptureError
    from ..journey.scenario_check import build_scenario_journey
    from ..kernel.facts import is_root
    from ..model.scenarios import ScenarioError, find_scenario
    try:
        scenario = find_scenario(request.scenario or "")
    except ScenarioError as exc:
        raise JourneyUsageError(str(exc)) from None
    if not is_root():
        note = "a live scenario needs root (tracepoints, PFNs); this is the simulator's run of it instead"
        _say(f"{note} (fix: sudo)")
        return model_journey(request.scenario, note)
    try:
        model, live, agreement, ev, _run = check_scenario(scenario, request.progress)
    except CaptureError as exc:
        raise CannotTrace(str(exc)) from None
    if request.progress and sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
    save_evidence(ev, request)
    return build_scenario_journey(scenario, ev, live, model, agreement)


def replay(path: Path) -> Journey:
    """The journey built from an evidence file, on any machine: nothing is read but the file.

    :raises JourneyUsageError: the file is missing, damaged, of another version, or inconsistent.
    """
    from ..evidence.file import EvidenceError, load_evidence
    try:
        loaded = load_evidence(path)
    except EvidenceError as exc:
        raise JourneyUsageError(str(exc)) from None
    try:
        journey = journey_from_evidence(loaded.evidence)
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, OverflowError) as exc:
        # every field had its type: the values contradict each other (a hand-edited or hostile file)
        raise JourneyUsageError(f"{path}: the evidence is inconsistent ({type(exc).__name__}: {exc})") from None
    journey.notes.insert(0, loaded.origin())
    journey.replayed_from = loaded.origin()
    return journey


def journey_from_evidence(ev: JourneyEvidence | ScenarioEvidence | ProgramFaultEvidence | Arm64FaultEvidence) -> Journey:
    """The journey a saved capture supports: a pure function of the evidence (nothing of the machine is read).

    :raises KeyError, ValueError, TypeError, IndexError: the evidence's values contradict each other (replay()
        turns these into one line).
    """
    from ..journey.build import build_journey
    from ..journey.program_journey import build_program_journey
    from ..journey.scenario_check import build_scenario_journey, cross_check
    from ..model.scenarios import find_scenario
    if isinstance(ev, JourneyEvidence):
        return build_journey(ev)
    if isinstance(ev, ProgramFaultEvidence):
        return build_program_journey(ev)
    if isinstance(ev, Arm64FaultEvidence):
        from ..journey.arm64_journey import build_arm64_journey
        return build_arm64_journey(ev)
    scenario = find_scenario(ev.scenario)
    model, live, agreement, _run = cross_check(scenario, ev)
    return build_scenario_journey(scenario, ev, live, model, agreement)


# --- stepping through a journey at the terminal --------------------------------------------------------

_typed = b""


def _wait_readable(fd: int) -> bool:
    """Wait until `fd` has input; a signal that lands meanwhile always ends the wait for a moment, so that
    its Python handler runs (a SIGTERM or SIGHUP while the person reads stops the paused program).
    False: only a signal came, look again."""
    import os
    import select
    import signal
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    old = signal.set_wakeup_fd(wake_w)
    try:
        ready, _, _ = select.select([fd, wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 512)
            return False
        return True
    finally:
        signal.set_wakeup_fd(old)
        os.close(wake_r)
        os.close(wake_w)


def read_line(prompt: str) -> str | None:
    """One line typed (None at the end of input), for a stdin that is not a terminal. (input() waits
    inside readline, where a signal that lands between two of its select() calls went unnoticed until
    the next key.)

    :returns: the line without its newline, or None at the end of input. Raises OSError if stdin cannot be read."""
    global _typed
    import os
    sys.stdout.write(prompt)
    sys.stdout.flush()
    while b"\n" not in _typed:
        if not _wait_readable(sys.stdin.fileno()):
            continue
        chunk = os.read(sys.stdin.fileno(), 4096)
        if not chunk:
            sys.stdout.write("\n")    # what is printed next starts on its own line
            return None
        _typed += chunk
    line, _typed = _typed.split(b"\n", 1)
    return line.decode(errors="replace")


def read_key(prompt: str) -> str | None:
    """One key pressed at a terminal, without waiting for Enter ("\n" for Enter; None at the end of input
    or on Ctrl-D). The terminal is in cbreak mode only while waiting, and is put back whatever happens.

    :returns: the key (lower case), "\\n" for Enter, or None at the end of input. Raises OSError if stdin cannot be read."""
    import os
    import termios
    import tty
    fd = sys.stdin.fileno()
    if not os.isatty(fd):
        line = read_line(prompt)
        return None if line is None else (line.strip()[:1].lower() or "\n")
    saved = termios.tcgetattr(fd)
    try:
        # TCSANOW, and before the prompt shows: a key pressed as soon as the prompt appears is kept
        # (setcbreak's default, TCSAFLUSH, would throw away what was typed before the switch)
        tty.setcbreak(fd, termios.TCSANOW)
        sys.stdout.write(prompt)
        sys.stdout.flush()
        while not _wait_readable(fd):
            pass
        key = os.read(fd, 1)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
    sys.stdout.write("\n")            # the prompt's line ends here, whatever was pressed
    sys.stdout.flush()
    if key in (b"", b"\x04"):
        return None
    return "\n" if key in (b"\r", b"\n") else key.decode(errors="replace").lower()


def next_index(index: int, prompt: str) -> int | None:
    """Enter (or any other key): the next step; b: the one before; q (or end of input): None, to stop.

    :returns: the next index (never below 0), or None to stop. Raises OSError if stdin cannot be read."""
    key = read_key(prompt)
    if key is None or key == "q":
        return None
    return max(0, index - 1) if key == "b" else index + 1


def step_list(journey: Journey, console) -> None:
    """Enter: next step; b: back; q: quit, over steps already built (the simulator's, or a finished run).

    :returns: None, once the steps are shown or the reader quit. Raises OSError if stdin cannot be read."""
    from ..views import journey_view
    journey_view.header(journey, console)
    for note in journey.notes:
        console.print(f"note: {note}", style="yellow", highlight=False, markup=False)
    index: int | None = 0
    while index is not None and index < len(journey.steps):
        console.print(journey_view.step_renderable(journey.steps[index], len(journey.steps)))
        index = next_index(index, "[Enter] next  [b] back  [q] quit ")
    if index is not None:
        journey_view.render_timeline(journey, console)


def step_through(live, console, request: JourneyRequest) -> None:
    """Enter: next step; b: back; q: quit. The target waits at its phase while the person reads; the capture is
    closed whatever happens, and the evidence saved (if asked) as far as the person went.

    :raises CannotTrace: the capture failed on the way.
    """
    from ..capture.tracer import CaptureError
    from ..views import journey_view
    try:
        live.start()
        journey = build_live(live.ev)
        journey_view.header(journey, console)
        index: int | None = 0
        while index is not None:
            while index >= len(journey.steps) and live.ev.stage != "done":
                live.next_stage()
                journey = build_live(live.ev)
            if index >= len(journey.steps):
                journey_view.render_timeline(journey, console)
                console.print(f"the program has ended ({live.ev.exit}); the journey is complete")
                save_evidence(live.ev, request)
                return
            console.print(journey_view.step_renderable(journey.steps[index], len(STEP_CATALOGUE), fit=console))
            pid = live.ev.pid
            hint = (f"PID {pid} is paused at phase '{live.ev.stage}' (look: cat /proc/{pid}/maps)"
                    if live.ev.stage != "done" else "the program has ended")
            index = next_index(index, f"[Enter] next  [b] back  [q] quit — {hint} ")
        save_evidence(live.ev, request)   # as far as the person went: its stage says where that was
    except (CaptureError, ExerciseError) as exc:
        raise CannotTrace(str(exc)) from None
    finally:
        live.close()
