"""The exercise program's phase handshake, for the compiled program and the pure-Python fallback."""

import sys

import pytest

from pagefault.capture.exercise import (FALLBACK, ExerciseError, ExerciseOptions, ExerciseProcess, Program,
                                        build_program)
from pagefault.capture.procfs import pagemap_entry, read_maps


def drive(program: Program, options: ExerciseOptions) -> dict:
    proc = ExerciseProcess(program, options)
    try:
        proc.release()
        seen = {"ready": proc.wait_phase()}
        proc.advance()
        mapped = proc.wait_phase()
        vaddr = int(mapped.fields["vaddr"], 16)
        # paused after mmap: the VMA is there, the page is not
        assert any(m.start <= vaddr < m.end for m in read_maps(proc.pid))
        assert pagemap_entry(proc.pid, vaddr + options.offset) >> 63 == 0
        proc.advance()
        touched = proc.wait_phase()
        assert pagemap_entry(proc.pid, vaddr + options.offset) >> 63 == 1
        seen.update(mapped=mapped, touched=touched, exit=proc.finish())
        return seen
    finally:
        if proc.target.status is None:
            proc.kill()


@pytest.mark.parametrize("text", [None, "hello page"])
def test_compiled_program_walks_its_phases(text):
    program = build_program()
    if not program.compiled:
        pytest.skip(program.how)
    seen = drive(program, ExerciseOptions(offset=0x80, size=8192, text=text))
    assert seen["touched"].fields["readback"] == (text or "offset world")
    assert seen["exit"] == "exited with status 0"


def test_pure_python_fallback_walks_the_same_phases():
    fallback = Program([sys.executable, str(FALLBACK)], FALLBACK, False, "test")
    seen = drive(fallback, ExerciseOptions(offset=0x100, size=4096, text="no compiler"))
    assert seen["ready"].fields["pid"].isdigit()
    assert seen["touched"].fields["readback"] == "no compiler"


@pytest.mark.parametrize("opts,words", [(ExerciseOptions(offset=4090), "no room"),
                                        (ExerciseOptions(size=0), "out of range"),
                                        (ExerciseOptions(text="two\nlines"), "one line")])
def test_bad_options_are_refused_with_the_reason(opts, words):
    with pytest.raises(ExerciseError, match=words):
        opts.check()
