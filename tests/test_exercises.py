"""pagefault exercise: answers read and checked, right and wrong, derivations after wrong ones, progress kept."""

import argparse
import io
import json
import os
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from pagefault.core import model_journey
from pagefault.journey.exercises import AnswerError, build_exercises, read_answer
from pagefault.views.exercise_view import Progress, run_exercises

CLI = [sys.executable, "-m", "pagefault"]


@pytest.fixture(scope="module")
def model_exercises():
    j = model_journey(None)
    return j, {e.key: e for e in build_exercises(j)}


def run(exercises, answers, path):
    out = io.StringIO()
    feed = iter(answers)
    progress = Progress(path)
    right = run_exercises(exercises, lambda _p: next(feed, None), Console(file=out, width=200), progress, "test")
    return right, out.getvalue(), progress


# --- reading answers -----------------------------------------------------------------------------------

def test_answers_are_read_by_kind():
    assert read_answer("0x1255", "hex") == read_answer("1255", "hex") == read_answer(" 0X12_55 ", "hex") == 0x1255
    assert read_answer("73", "int") == 73 and read_answer("0x49", "int") == 73
    assert read_answer("Yes", "yesno") is True and read_answer("n", "yesno") is False
    assert read_answer("MOV qword", "word") == "mov"
    for text, kind in (("", "hex"), ("0xzz", "hex"), ("seven", "int"), ("maybe", "yesno")):
        with pytest.raises(AnswerError):
            read_answer(text, kind)


@given(st.integers(0, 1 << 64))
def test_property_any_number_round_trips_in_each_notation(n):
    assert read_answer(f"0x{n:x}", "hex") == read_answer(f"{n:X}", "hex") == n
    assert read_answer(str(n), "int") == read_answer(f"0x{n:x}", "int") == n


@given(st.text(max_size=30))
def test_property_bad_input_is_an_answer_error_never_a_crash(text):
    for kind in ("hex", "int", "yesno", "word"):
        try:
            read_answer(text, kind)
        except AnswerError:
            pass


# --- the exercises on the simulator's fault ------------------------------------------------------------

def test_rip_needs_a_live_fault_and_says_so(model_exercises):
    _j, ex = model_exercises
    assert "sudo pagefault exercise" in ex["rip"].unavailable
    assert not any(ex[k].unavailable for k in ("flags", "indices", "pfn", "pte"))


def test_right_answers_mark_the_exercise_done(model_exercises, tmp_path):
    j, ex = model_exercises
    addr = next(v for s in j.steps if s.key == "trap" for v in s.values if v.label == "faulting address (CR2)").value
    answers = [str((addr >> shift) & 0x1FF) for shift in (39, 30, 21, 12)] + [hex(addr & 0xFFF)]
    right, out, progress = run([ex["indices"]], answers, tmp_path / "p.json")
    assert right == 1 and out.count("✓ right") == 5 and "✗" not in out
    assert progress.done("indices")
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved["exercises"]["indices"]["done"] and saved["exercises"]["indices"]["attempts"] == 1
    assert "[x] indices" in out and "[ ] pfn" in out


def test_pte_flags_and_pfn_by_hand_rules(model_exercises, tmp_path):
    j, ex = model_exercises
    pfn = next(v for s in j.steps if s.key == "alloc" for v in s.values if v.label == "data page: PFN").value
    # error code 0x6 (user write, not present): DEFAULT 0x4|0x10|0x200, WRITE 0x1, USER 0x40, VMA_LOCK 0x1000
    flags = ["y", "y", "0x1255"]
    # a present, exclusively mapped anonymous page: bits 63 and 56 over the PFN
    pagemap = ["y", hex(pfn), hex(pfn << 12)]
    # NX | frame | D 0x40 | A 0x20 | US 0x4 | RW 0x2 | P 0x1
    pte = [hex(1 << 63 | pfn << 12 | 0x67)]
    right, out, progress = run([ex["flags"], ex["pfn"], ex["pte"]], flags + pagemap + pte, tmp_path / "p.json")
    assert right == 3 and "✗" not in out, out
    assert all(progress.done(k) for k in ("flags", "pfn", "pte"))


def test_a_wrong_answer_shows_its_derivation_and_leaves_it_undone(model_exercises, tmp_path):
    j, ex = model_exercises
    addr = ex["indices"].questions[0].answer
    wrong = [str((addr + 1) % 512), "1", "2", "3", "0x0"]
    right, out, progress = run([ex["indices"]], wrong, tmp_path / "p.json")
    assert right == 0 and out.count("✗ not this one") == 5
    assert re.search(r"PGD: \(0x[0-9a-f]+ >> 39\) & 0x1ff = \d+", out)          # the derivation of that index
    assert "not yet: run pagefault exercise indices" in out
    assert not progress.done("indices") and "[ ] indices" in out
    # a right answer later keeps the first attempt counted
    trap = next(v for s in j.steps if s.key == "trap" for v in s.values if v.label == "faulting address (CR2)").value
    run([ex["indices"]], [str((trap >> s) & 0x1FF) for s in (39, 30, 21, 12)] + [hex(trap & 0xFFF)], tmp_path / "p.json")
    saved = json.loads((tmp_path / "p.json").read_text())["exercises"]["indices"]
    assert saved["done"] and saved["attempts"] == 2


def test_not_an_answer_is_asked_again_and_end_of_input_keeps_what_was_finished(model_exercises, tmp_path):
    _j, ex = model_exercises
    right, out, progress = run([ex["flags"], ex["pfn"]], ["maybe", "y", "y", "0x1255", "y"], tmp_path / "p.json")
    assert "answer y or n; try again" in out
    assert right == 1 and progress.done("flags") and not progress.done("pfn")
    assert "stopped: no more answers; what you finished is saved" in out


def test_a_broken_progress_file_is_kept_aside_and_said(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("{not json")
    p = Progress(path)
    assert "could not be read" in p.warning and (tmp_path / "p.json.broken").read_text() == "{not json"
    assert p.checklist()[0].startswith("[ ] rip")


# --- the command -----------------------------------------------------------------------------------------

def _cli(args, stdin, state):
    env = dict(os.environ, XDG_STATE_HOME=str(state))
    return subprocess.run(CLI + ["exercise", *args], input=stdin, capture_output=True, text=True, env=env, timeout=120)


def test_cli_model_right_then_list_then_reset(model_exercises, tmp_path):
    j, ex = model_exercises
    answers = [str(q.answer) if q.kind == "int" else hex(q.answer) for q in ex["indices"].questions]
    r = _cli(["--model", "indices"], "\n".join(answers) + "\n", tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("✓ right") == 5 and "[x] indices" in r.stdout
    assert (tmp_path / "pagefault" / "exercises.json").exists()
    r = _cli(["--list"], "", tmp_path)
    assert "[x] indices" in r.stdout and "[ ] pte" in r.stdout and str(tmp_path) in r.stdout
    r = _cli(["--reset"], "", tmp_path)
    assert "progress reset" in r.stdout
    assert "[ ] indices" in _cli(["--list"], "", tmp_path).stdout


def test_cli_unknown_exercise_is_a_clear_error(tmp_path):
    r = _cli(["walk"], "", tmp_path)
    assert r.returncode == 2 and "no exercise walk; the exercises are: rip, flags, indices, pfn, pte" in r.stderr
    assert "Traceback" not in r.stderr


# --- live: a person who reads the givens and works the answers out --------------------------------------

class Session:
    def __init__(self, state):
        env = dict(os.environ, XDG_STATE_HOME=str(state), COLUMNS="250")
        self.p = subprocess.Popen(CLI + ["exercise", "--all", "-q"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=env)
        self.seen = ""

    def until_prompt(self) -> str | None:
        """The line of the next '> ' prompt (all text before it goes to seen); None when the program ended."""
        buf = b""
        while True:
            ready, _, _ = select.select([self.p.stdout], [], [], 120)
            assert ready, "no prompt within 120 s"
            chunk = os.read(self.p.stdout.fileno(), 4096)
            if not chunk:
                self.seen += buf.decode()
                return None
            buf += chunk
            if buf.rstrip(b" ").endswith(b">"):
                self.seen += buf.decode()
                return buf.decode().splitlines()[-1]

    def answer(self, text: str) -> None:
        self.p.stdin.write(text.encode() + b"\n")
        self.p.stdin.flush()


def _hex_after(label: str, text: str) -> int:
    return int(re.findall(rf"{re.escape(label)} = (0x[0-9a-f]+)", text)[-1], 16)


@pytest.mark.live
def test_live_every_exercise_answered_from_the_givens(can_trace, tmp_path):
    from elftools.elf.elffile import ELFFile
    s = Session(tmp_path)
    answered = 0
    while (prompt := s.until_prompt()) is not None:
        text = s.seen
        if "At which offset in the file" in prompt:
            rip = _hex_after("RIP", text)
            start, _end, offset = re.findall(r"= ([0-9a-f]+)-([0-9a-f]+) r-xp ([0-9a-f]+) ", text)[-1]
            s.answer(hex(rip - int(start, 16) + int(offset, 16)))
        elif "Which instruction is it" in prompt:
            path = re.findall(r"Disassemble (\S+) at that offset", prompt)[-1]
            file_offset = int(re.findall(r"✓ right: (0x[0-9a-f]+)", s.seen)[-1], 16)
            with open(path, "rb") as f:
                seg = next(sg for sg in ELFFile(f).iter_segments() if sg["p_type"] == "PT_LOAD" and
                           sg["p_offset"] <= file_offset < sg["p_offset"] + sg["p_filesz"])
                vaddr = file_offset - seg["p_offset"] + seg["p_vaddr"]
            dump = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--start-address={vaddr:#x}",
                                   f"--stop-address={vaddr + 16:#x}", path], capture_output=True, text=True).stdout
            s.answer(re.search(rf"^\s*{vaddr:x}:\s+(\w+)", dump, re.M).group(1))
        elif "Was it a write" in prompt:
            s.answer("y" if _hex_after("error code", text) & 2 else "n")
        elif "from user mode" in prompt:
            s.answer("y" if _hex_after("error code", text) & 4 else "n")
        elif "flags value" in prompt:
            code = _hex_after("error code", text)
            s.answer(hex(0x4 | 0x10 | 0x200 | (0x1 if code & 2 else 0) | 0x40 | 0x1000))
        elif "index?" in prompt:
            addr = _hex_after("faulting address (CR2)", text)
            level = prompt.split()[1]
            s.answer(str((addr >> {"PGD": 39, "PUD": 30, "PMD": 21, "PTE": 12}[level]) & 0x1FF))
        elif "page offset?" in prompt:
            s.answer(hex(_hex_after("faulting address (CR2)", text) & 0xFFF))
        elif "Is the page present" in prompt:
            s.answer("y" if _hex_after("/proc/PID/pagemap", text) >> 63 else "n")
        elif "Which PFN" in prompt:
            s.answer(hex(_hex_after("/proc/PID/pagemap", text) & ((1 << 55) - 1)))
        elif "physical address does the page start" in prompt:
            s.answer(hex((_hex_after("/proc/PID/pagemap", text) & ((1 << 55) - 1)) << 12))
        elif "Which PTE" in prompt:
            pfn = _hex_after("PFN", text)
            s.answer(hex(1 << 63 | pfn << 12 | 0x67))     # NX | frame | D A US RW P
        else:
            pytest.fail(f"unexpected prompt: {prompt[-200:]}")
        answered += 1
    assert s.p.wait(30) == 0, s.p.stderr.read().decode()
    assert answered == 2 + 3 + 5 + 3 + 1
    assert "✗" not in s.seen, s.seen[-3000:]
    assert s.seen.count("✓ right") == answered
    for key in ("rip", "flags", "indices", "pfn", "pte"):
        assert f"[x] {key}" in s.seen
    saved = json.loads((tmp_path / "pagefault" / "exercises.json").read_text())["exercises"]
    assert all(saved[k]["done"] for k in saved) and len(saved) == 5


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to nobody with setpriv")
def test_as_nobody_the_simulator_is_used_and_an_unwritable_state_dir_is_a_clear_error(tmp_path):
    import tempfile
    drop = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    state = Path(tempfile.mkdtemp(prefix="pf-nobody-", dir="/tmp"))
    os.chmod(state, 0o777)
    env = dict(os.environ, XDG_STATE_HOME=str(state))
    r = subprocess.run(drop + CLI + ["exercise", "flags", "-q"], input="y\ny\n0x1255\n", capture_output=True,
                       text=True, env=env, cwd="/tmp", timeout=120)
    assert r.returncode == 0, r.stderr
    assert "need root for the error code, the PFN and the PTE (fix: sudo)" in r.stderr
    assert "[x] flags" in r.stdout and "(1 attempt)" in r.stdout
    locked = Path(tempfile.mkdtemp(prefix="pf-locked-", dir="/tmp"))   # root's, mode 0700
    env = dict(os.environ, XDG_STATE_HOME=str(locked / "s"))
    r = subprocess.run(drop + CLI + ["exercise", "--list"], capture_output=True, text=True, env=env, cwd="/tmp",
                       timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "cannot use the progress file" in r.stderr and "fix: set XDG_STATE_HOME" in r.stderr


def test_rip_exercise_hand_checked_with_a_wrong_offset_and_a_right_mnemonic(tmp_path):
    from pagefault.journey.exercises import exercise_rip
    from pagefault.journey.steps import Journey, Step, derived, observed
    j = Journey("bpf", "6.18", 7, ["prog"], "prog")
    trap, rip = Step(3, "trap", "trap", "touched"), Step(4, "rip", "rip", "touched")
    trap.values.append(observed("RIP", 0x5556E21ED2B4, "tracepoint"))
    rip.values += [observed("mapping holding RIP", "5556e21ed000-5556e21ee000 r-xp 00001000 fe:00 16039955 /tmp/prog",
                            "/proc/7/maps"),
                   derived("file offset", 0x12B4, "RIP − start + offset"),
                   derived("instruction", "mov qword ptr [rcx], rax", "capstone", ["bytes 48 89 01 → mov"])]
    j.steps += [trap, rip]
    e = exercise_rip(j)
    # 0x5556e21ed2b4 − 0x5556e21ed000 + 0x1000 = 0x2b4 + 0x1000 = 0x12b4
    assert [q.answer for q in e.questions] == [0x12B4, "mov"]
    right, out, progress = run([e], ["0x2b4", "MOV"], tmp_path / "p.json")
    assert right == 0 and not progress.done("rip")
    assert "✗ not this one: the answer is 0x12b4" in out
    assert "0x5556e21ed2b4 − 0x5556e21ed000 + 0x1000 = 0x12b4" in out and "✓ right: mov" in out
