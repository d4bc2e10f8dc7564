"""The text of ``--progress``'s status line, of the end-of-run summary and of
the resume hint: pure functions of a `Snapshot`, and the throttling of plain lines.
(The command's own output is tested in integration/test_progress_and_summary.py.)"""

from __future__ import annotations

import os
from typing import List

import pytest
from harness import PROGRESS_STATUS as STATUS

from simple_gpu_scheduler.model.snapshot import RunningView, Snapshot
from simple_gpu_scheduler.model.units import format_clock as clock
from simple_gpu_scheduler.report import progress
from simple_gpu_scheduler.report.progress import (
    ProgressLine,
    progress_text,
    resume_command,
    summary_lines,
)


def snap(succeeded: int = 0, failed: int = 0, running: int = 0, queued: int = 0,
         not_started: int = 0, skipped: int = 0, input_open: bool = False,
         elapsed: float = 60.0) -> Snapshot:
    views = tuple(RunningView(i, ("0",), 1.0, "cmd") for i in range(running))
    return Snapshot(running=views, queued=queued, succeeded=succeeded, failed=failed,
                    not_started=not_started, skipped=skipped, input_open=input_open,
                    elapsed=elapsed)


# ---------------------------------------------------------------- pure: the line


def test_clock() -> None:
    assert [clock(s) for s in (0, 59.9, 61, 3600, 86400 + 5)] == [
        "0:00:00", "0:00:59", "0:01:01", "1:00:00", "24:00:05"]


def test_progress_text_while_input_is_open_has_no_eta() -> None:
    text = progress_text(snap(succeeded=12, failed=1, running=4, queued=8, input_open=True,
                              elapsed=190))
    assert text == "done 12 | failed 1 | running 4 | queued 8+ | 0:03:10 | 4.1/min"


def test_progress_text_once_input_ended_has_an_eta() -> None:
    # 13 done in 190 s; 12 left at that rate take 175 s.
    text = progress_text(snap(succeeded=12, failed=1, running=4, queued=8, elapsed=190))
    assert text == "done 12 | failed 1 | running 4 | queued 8 | 0:03:10 | 4.1/min | ETA 0:02:55"


def test_progress_text_with_a_known_total_is_exact_and_has_an_eta_while_input_is_open(
) -> None:
    text = progress_text(snap(succeeded=12, failed=1, running=4, queued=8, input_open=True,
                              elapsed=190).replace(total=25))
    assert text == "done 12 | failed 1 | running 4 | queued 8 | 0:03:10 | 4.1/min | ETA 0:02:55"


def test_progress_text_fast_rate_in_per_second() -> None:
    text = progress_text(snap(succeeded=30, elapsed=10))
    assert text == "done 30 | failed 0 | running 0 | queued 0 | 0:00:10 | 3.00/s | ETA -"


def test_progress_text_before_anything_finished() -> None:
    assert progress_text(snap(running=2, queued=3, elapsed=0)) == (
        "done 0 | failed 0 | running 2 | queued 3 | 0:00:00 | 0.0/min | ETA -")
    assert STATUS.fullmatch(progress_text(snap(running=2, queued=3, elapsed=0)))


# ---------------------------------------------------------------- pure: the summary


def test_summary_all_succeeded_has_no_hint() -> None:
    lines = summary_lines(snap(succeeded=3, elapsed=65), [], "simple_gpu_scheduler x")
    assert lines == ["done in 0:01:05: 3 of 3 succeeded, 0 failed, 0 not started"]


def test_summary_with_failures_names_them_and_gives_the_hint() -> None:
    lines = summary_lines(snap(succeeded=40, failed=1, not_started=1, skipped=5, elapsed=724),
                          [17], "simple_gpu_scheduler --gpus 0,1 --joblog j --resume-failed")
    assert lines == [
        "done in 0:12:04: 40 of 42 succeeded, 1 failed, 1 not started; "
        "5 skipped as done in the job log",
        "failed jobs: 17",
        "to run what did not succeed, feed the same input to: "
        "simple_gpu_scheduler --gpus 0,1 --joblog j --resume-failed",
    ]


def test_summary_without_joblog_has_no_hint() -> None:
    lines = summary_lines(snap(failed=1), [1], None)
    assert not any("feed the same input" in x for x in lines)


def test_summary_lists_at_most_50_failed_ids() -> None:
    lines = summary_lines(snap(failed=60), list(range(1, 61)), None)
    assert lines[1] == "failed jobs: " + ", ".join(map(str, range(1, 51))) + " and 10 more"


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--gpus", "0,1", "--joblog", "sweep.log"],
         "simple_gpu_scheduler --gpus 0,1 --joblog sweep.log --resume-failed"),
        (["--gpus", "0", "--joblog", "my log's.tsv", "--resume"],
         "simple_gpu_scheduler --gpus 0 --joblog 'my log'\"'\"'s.tsv' --resume-failed"),
        (["--resume-failed", "--gpus", "0", "--joblog=j.log", "--retries", "2"],
         "simple_gpu_scheduler --gpus 0 --joblog=j.log --retries 2 --resume-failed"),
    ],
)
def test_resume_command(argv: List[str], expected: str) -> None:
    assert resume_command(argv) == expected


# ---------------------------------------------------------------- pure-ish: plain lines


def test_plain_progress_lines_are_throttled(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    read_end, write_end = os.pipe()
    try:
        line = ProgressLine(tty=False, fd=write_end)
        line.show(snap(running=1, queued=3, input_open=True))
        now[0] += 1
        line.show(snap(succeeded=1, running=1, queued=2, input_open=True))  # too soon
        now[0] += progress.PLAIN_EVERY
        line.show(snap(succeeded=1, running=1, queued=2, input_open=True, elapsed=99))
        now[0] += progress.PLAIN_EVERY
        line.show(snap(succeeded=1, running=1, queued=2, input_open=True, elapsed=200))  # same
        line.show(snap(succeeded=1, running=1, queued=2), force=True)
        line.close()
        os.close(write_end)
        write_end = -1
        with os.fdopen(read_end, "rb") as reader:
            read_end = -1
            out = reader.read().decode()
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
    lines = out.splitlines()
    assert len(lines) == 3 and "\r" not in out and "\x1b" not in out
    assert all(x.startswith("[sgs] progress: ") for x in lines)
    assert lines[0].startswith("[sgs] progress: done 0 | failed 0 | running 1 | queued 3+")
    assert lines[1].startswith("[sgs] progress: done 1 | failed 0 | running 1 | queued 2+")
    assert " | ETA " in lines[2] and "queued 2 |" in lines[2]
