"""A stop signal that a library wrapped in its own error still ends the run in one line: numpy re-raises
whatever interrupts the import of its C core (the CLI's Terminated, Ctrl-C) as an ImportError, which reached
the user as a traceback when SIGTERM landed while a capture imported numpy."""
import signal

import pytest

from pagefault import cli
from pagefault.core import dispatch


def _wrapped(inner: BaseException):
    def run_command(_args):
        try:
            raise inner
        except BaseException as exc:
            raise ImportError("Error importing numpy: you should not try to import numpy from its source "
                              "directory") from exc
    return run_command


@pytest.mark.parametrize("inner, status, words", [
    (cli.Terminated(signal.SIGTERM), 128 + signal.SIGTERM, "pagefault: stopped by SIGTERM"),
    (cli.Terminated(signal.SIGHUP), 128 + signal.SIGHUP, "pagefault: stopped by SIGHUP"),
    (KeyboardInterrupt(), 130, "pagefault: interrupted"),
])
def test_a_signal_wrapped_in_an_import_error_ends_the_run_in_one_line(monkeypatch, capsys, inner, status, words):
    monkeypatch.setattr(dispatch, "run_command", _wrapped(inner))
    assert cli.main(["doctor"]) == status
    err = capsys.readouterr().err
    assert err.strip() == words
    assert "Traceback" not in err


def test_an_import_error_with_no_signal_behind_it_is_not_taken_for_one(monkeypatch):
    def run_command(_args):
        raise ImportError("no module named numpy")
    monkeypatch.setattr(dispatch, "run_command", run_command)
    with pytest.raises(ImportError):
        cli.main(["doctor"])
