"""pagefault exercise: asks each exercise's questions on the terminal, checks the answers, shows the
derivation after a wrong one, and keeps the person's progress ([x] done) in their state directory.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.markup import escape

from ..evidence.input_file import open_input_file
from ..journey.exercises import KINDS, ORDER, TITLES, AnswerError, Exercise

Ask = Callable[[str], "str | None"]     # None: no more input


def _attempts(n: int) -> str:
    return f"{n} attempt{'' if n == 1 else 's'}"


def state_path() -> Path:
    """$XDG_STATE_HOME/pagefault/exercises.json (default ~/.local/state); as root, never under a
    directory another user can write (a sudo-kept $HOME): safe_paths.root_safe_state_dir()."""
    from ..capture.safe_paths import root_safe_state_dir
    return root_safe_state_dir() / "exercises.json"


class ProgressError(Exception):
    """The progress file cannot be read or written; the message says which and the fix."""


def _fix(path: Path, exc: OSError) -> ProgressError:
    why = exc.strerror or str(exc)
    for part in reversed(path.parents):   # name the component in the way (a file where a directory must be)
        if os.path.lexists(part) and not os.path.isdir(part):
            why = f"{part} is a file, not a directory"
            break
    else:
        if os.path.isdir(path):
            why = f"{path} is a directory, not a file"
    return ProgressError(f"cannot use the progress file {path}: {why}; fix: set XDG_STATE_HOME to a "
                         "directory you can write (progress goes to $XDG_STATE_HOME/pagefault/exercises.json)")


def _shape_problem(loaded: object) -> str:
    """What makes a loaded progress file unusable ('' when nothing does): the file is the person's own, but
    it may have been edited by hand (or by someone else), and a wrong shape must not become a traceback."""
    if not isinstance(loaded, dict) or not isinstance(loaded.get("exercises"), dict):
        return "no 'exercises' object"
    for key, entry in loaded["exercises"].items():
        if not isinstance(entry, dict):
            return f"exercise {key!r} is {type(entry).__name__}, not an object"
        attempts = entry.get("attempts", 0)
        if not isinstance(entry.get("done", False), bool) or not isinstance(attempts, int) or isinstance(attempts, bool):
            return f"exercise {key!r} does not hold done (true or false) and attempts (a number)"
    return ""


class Progress:
    """exercises.json: per exercise, done or not, the attempts and the last fault it was set on."""

    def __init__(self, path: Path | None = None):
        self.path = path or state_path()
        self.data: dict = {"exercises": {}}
        try:
            exists = self.path.exists()
        except OSError as exc:
            raise _fix(self.path, exc) from None
        if exists:
            try:
                with open_input_file(self.path) as f:      # a FIFO planted there would block forever
                    loaded = json.loads(f.read(1 << 20).decode())
                problem = _shape_problem(loaded)
                if problem:
                    raise ValueError(problem)
                self.data = loaded
            except OSError as exc:
                raise _fix(self.path, exc) from None
            except (ValueError, RecursionError) as exc:   # not JSON, nested too deep, or the wrong shape
                broken = self.path.with_suffix(".json.broken")
                try:
                    self.path.replace(broken)
                except OSError as replace_exc:
                    raise _fix(self.path, replace_exc) from None
                self.warning = f"{self.path} could not be read ({exc}); it was kept as {broken} and progress restarts"
                return
        self.warning = ""

    def done(self, key: str) -> bool:
        return bool(self.data["exercises"].get(key, {}).get("done"))

    def record(self, key: str, right: bool, where: str) -> None:
        entry = self.data["exercises"].setdefault(key, {"done": False, "attempts": 0})
        entry["attempts"] = entry.get("attempts", 0) + 1
        entry["done"] = bool(entry.get("done")) or right
        entry["last"] = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "right": right, "on": where}
        self.save()

    def reset(self) -> None:
        self.data = {"exercises": {}}
        self.save()

    def save(self) -> None:
        """Atomically: a crash mid-write leaves the old file, never half of one."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".exercises.")
            with os.fdopen(fd, "w") as f:
                json.dump(self.data, f, indent=2)
            os.replace(tmp, self.path)
        except OSError as exc:
            raise _fix(self.path, exc) from None

    def checklist(self) -> list[str]:
        return [f"[{'x' if self.done(k) else ' '}] {k:<8} {TITLES[k]}"
                + (f" ({_attempts(self.data['exercises'][k].get('attempts', 0))})" if k in self.data["exercises"] else "")
                for k in ORDER]


def ask_exercise(e: Exercise, ask: Ask, console: Console) -> bool | None:
    """Every question of one exercise; True if all were right, None if the input ended first."""
    console.rule(f"[bold]{e.key}[/bold]: {escape(e.title)}")
    for what, value, where in e.givens:
        console.print(f"[bold]{escape(what)}[/bold] = {escape(value)}", highlight=False)
        console.print(f"    {escape(where)}", style="dim", highlight=False)
    all_right = True
    for n, q in enumerate(e.questions, 1):
        while True:
            text = ask(f"{n}/{len(e.questions)} {q.prompt} [{KINDS[q.kind]}] > ")
            if text is None:
                return None
            try:
                right = q.check(text)
                break
            except AnswerError as exc:
                console.print(f"  {escape(str(exc))}; try again", style="yellow", highlight=False)
        if right:
            console.print(f"  [green]✓ right[/green]: {escape(q.shown(q.answer))}", highlight=False)
        else:
            all_right = False
            console.print(f"  [red]✗ not this one[/red]: the answer is {escape(q.shown(q.answer))}", highlight=False)
            console.print("  how it follows:", style="bold")
            for line in q.derivation:
                console.print("    " + escape(line), highlight=False)
    for line in e.confirmation:
        console.print(f"  [cyan]seen[/cyan] {escape(line)}", highlight=False)
    return all_right


def run_exercises(exercises: list[Exercise], ask: Ask, console: Console, progress: Progress, where: str) -> int:
    """Ask each exercise in turn, saving after each; returns how many were done right this time."""
    right_now = 0
    for e in exercises:
        if e.unavailable:
            console.print(f"[yellow]{e.key}[/yellow]: {escape(e.title)} — not on this fault: {escape(e.unavailable)}",
                          highlight=False)
            continue
        result = ask_exercise(e, ask, console)
        if result is None:
            console.print("stopped: no more answers; what you finished is saved", style="yellow")
            break
        progress.record(e.key, result, where)
        right_now += result
        console.print(("[green]done[/green]" if result else
                       "[yellow]not yet: run pagefault exercise " + e.key + " to try again on a new fault[/yellow]"))
    console.print("\n".join(progress.checklist()), highlight=False, markup=False)
    console.print(f"progress kept in {progress.path}", style="dim", highlight=False)
    return right_now
