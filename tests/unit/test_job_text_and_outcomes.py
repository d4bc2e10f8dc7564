"""A job's one-line text for people, and its outcome from a return code."""

from __future__ import annotations

import signal

from simple_gpu_scheduler.model.jobs import (
    Exited,
    FailedToStart,
    Job,
    Killed,
    NotStarted,
    TimedOut,
    outcome_from_returncode,
)

# --- Job.text --------------------------------------------------------------------------


def test_job_text_plain() -> None:
    assert Job(1, b"python train.py --lr 0.1").text() == "python train.py --lr 0.1"


def test_job_text_escapes_undecodable_bytes() -> None:
    assert Job(1, b"touch caf\xe9").text() == "touch caf\\xe9"


def test_job_text_is_one_line() -> None:
    text = Job(1, b"echo a \\\n  b\nc\td").text()
    assert "\n" not in text and "\t" not in text
    assert text == "echo a b\\nc\\x09d"  # a continued line as the shell reads it


def test_job_text_cut_to_limit() -> None:
    text = Job(1, b"x" * 500).text(limit=50)
    assert len(text) == 50 and text.endswith("...")
    assert Job(1, b"short").text(limit=50) == "short"


def test_job_text_keeps_printable_unicode() -> None:
    assert Job(1, "echo héllo ✓".encode()).text() == "echo héllo ✓"


# --- outcomes ------------------------------------------------------------------------


def test_outcome_from_returncode() -> None:
    assert outcome_from_returncode(0) == Exited(0)
    assert outcome_from_returncode(0).ok
    assert not outcome_from_returncode(3).ok
    killed = outcome_from_returncode(-signal.SIGTERM)
    assert killed == Killed(signal.SIGTERM) and not killed.ok
    assert killed.describe() == "killed by SIGTERM"
    assert Exited(3).describe() == "exit 3"
    assert "NUL" in FailedToStart("the command contains a NUL byte").describe()
    assert not NotStarted().ok


def test_signals_in_outcomes_are_plain_ints() -> None:
    # `signal.SIGTERM` is an IntEnum: Python 3.9 would write it as
    # "Signals.SIGTERM" in a job log's Signal column.
    for outcome in (Killed(signal.SIGTERM), TimedOut(1.0, signal.SIGKILL)):
        assert type(outcome.signal) is int
        assert str(outcome.signal) in ("15", "9")
