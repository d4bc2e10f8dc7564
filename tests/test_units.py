"""Unit tests of the small pure pieces: durations, sizes, job text, outcomes and
the SIGUSR1 status table."""

from __future__ import annotations

import math
import signal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simple_gpu_scheduler.model.jobs import (
    Exited, FailedToStart, Job, Killed, NotStarted, format_duration, outcome_from_returncode,
)
from simple_gpu_scheduler.engine.state import RunState
from simple_gpu_scheduler.report.status import status_table
from simple_gpu_scheduler.model.units import format_size, parse_duration, parse_size

# --- parse_duration ---------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [
    ("90", 90), ("30s", 30), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1.5h", 5400),
    (".5", 0.5), ("2.", 2), (" 10 m ", 600), ("3H", 10800),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", [
    "", " ", "0", "0s", "-5", "5x", "m", "1e3", "nan", "inf", "1.2.3", "5 5", "9" * 400,
])
def test_parse_duration_rejects_with_a_value_error_that_quotes_the_input(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    assert repr(text) in str(info.value)


# --- parse_size / format_size --------------------------------------------------------


@pytest.mark.parametrize("text, size", [
    ("100", 100), ("100B", 100), ("500MiB", 500 * 1024**2), ("12GiB", 12 * 1024**3),
    ("16GB", 16 * 10**9), ("1.5G", 1_500_000_000), ("2k", 2000), ("1KiB", 1024),
    ("1tib", 1024**4), (" 3 MB ", 3 * 10**6), ("0", 0),
])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GiB", "-1GiB", "12 GiBs", "1e9", "12XB", "1.2.3G"])
def test_parse_size_rejects_with_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_parse_size_huge_number_is_a_value_error() -> None:
    # The contract is ValueError for every bad size, so the CLI can print one line;
    # float('999...') is inf and int(inf) raises OverflowError instead.
    with pytest.raises(ValueError):
        parse_size("9" * 400)


@pytest.mark.parametrize("size, text", [
    (0, "0B"), (100, "100B"), (1023, "1023B"), (1024, "1.0KiB"),
    (12 * 1024**3, "12.0GiB"), (1536 * 1024**2, "1.5GiB"), (2 * 1024**4, "2.0TiB"),
])
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1024, max_value=1024**5))
def test_format_size_reads_back_within_rounding(size: int) -> None:
    text = format_size(size)
    back = parse_size(text)
    assert math.isclose(back, size, rel_tol=0.06), (size, text, back)


# --- format_duration ---------------------------------------------------------------


@pytest.mark.parametrize("seconds, text", [
    (0, "0.0s"), (0.4, "0.4s"), (9.94, "9.9s"), (12, "12s"), (59.4, "59s"), (59.6, "1m00s"),
    (185, "3m05s"), (3599.6, "1h00m"), (7260, "2h01m"), (86399, "23h59m"),
    (3 * 86400 + 4 * 3600, "3d04h"),
])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=0, max_value=10**7, allow_nan=False))
def test_format_duration_is_short_and_one_token(seconds: float) -> None:
    text = format_duration(seconds)
    assert len(text) <= 7 and " " not in text


# --- Job.text --------------------------------------------------------------------------


def test_job_text_plain() -> None:
    assert Job(1, b"python train.py --lr 0.1").text() == "python train.py --lr 0.1"


def test_job_text_escapes_undecodable_bytes() -> None:
    assert Job(1, b"touch caf\xe9").text() == "touch caf\\xe9"


def test_job_text_is_one_line() -> None:
    text = Job(1, b"echo a \\\n  b\nc\td").text()
    assert "\n" not in text and "\t" not in text
    assert text == "echo a \\   b\\nc\\x09d"


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


# --- status_table ----------------------------------------------------------------------


def new_state(started_at: float) -> RunState:
    state = RunState()
    state.started_at = started_at
    return state


def make_state() -> RunState:
    state = new_state(100.0)
    state.job_started(Job(3, b"python train.py --lr 0.1"), ("0",), when=120.0)
    state.job_started(Job(4, b"x" * 300), ("1", "2"), when=149.0)
    state.record(Job(1, b"true"), Exited(0))
    state.record(Job(2, b"false"), Exited(1))
    state.pending.extend([Job(5, b"a"), Job(6, b"b")])
    return state


def test_status_table_lists_running_jobs_and_counts() -> None:
    lines = status_table(make_state().snapshot(now=150.0))
    assert lines[0] == "status after 50s: 2 running, 1 succeeded, 1 failed, 2 queued"
    assert lines[1].split() == ["JOB", "GPU", "TIME", "COMMAND"]
    row3 = lines[2].split(None, 4)
    assert row3 == ["3", "gpu", "0", "30s", "python train.py --lr 0.1"]
    row4 = lines[3].split(None, 4)
    assert row4[:4] == ["4", "gpu", "1,2", "1.0s"]
    assert len(lines) == 4


def test_status_table_cuts_long_commands_to_the_width() -> None:
    lines = status_table(make_state().snapshot(now=150.0), width=80)
    assert all(len(line) <= 80 for line in lines[1:]), lines
    assert "..." in lines[3] and lines[3].endswith("x")  # cut in the middle


def test_status_table_when_idle_and_input_ended() -> None:
    state = new_state(0.0)
    state.input_open = False
    lines = status_table(state.snapshot(now=5.0))
    assert lines == ["status after 5.0s: 0 running, 0 succeeded, 0 failed, 0 queued, input ended"]


def test_snapshot_is_ordered_by_job_id() -> None:
    snap = make_state().snapshot(now=150.0)
    assert [r.job_id for r in snap.running] == [3, 4]
    snap = snap.replace(running=snap.running[::-1])
    assert [line.split()[0] for line in status_table(snap)[2:]] == ["4", "3"]
