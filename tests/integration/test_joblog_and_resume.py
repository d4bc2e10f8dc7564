"""The job log and resume, through the installed command with real processes.

Each test runs ``simple_gpu_scheduler`` in a temporary directory with made-up
GPU ids and small shell jobs that leave marks in files, and then reads the job
log back with `joblog.read_joblog`. Conditions are polled with a deadline.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Iterator, List

import pytest
from harness import live_pids, poll_until, popen_sgs, rows_of, run_sgs, stop

from simple_gpu_scheduler.report.joblog import HEADER, Row, format_row, read_joblog

# ---------------------------------------------------------------- helpers







def ids_in(path: Path) -> List[int]:
    try:
        return [int(x) for x in path.read_text().split()]
    except FileNotFoundError:
        return []



def sweep(tmp_path: Path, count: int = 12, seconds: float = 0.2) -> List[bytes]:
    """Commands that each note their start, sleep a little, then note their end."""
    return [
        f"echo {i} >> '{tmp_path}/started'; sleep {seconds}; echo {i} >> '{tmp_path}/ran'".encode()
        for i in range(1, count + 1)
    ]


def success_counts(path: Path) -> Counter:
    return Counter(r.command for r in rows_of(path) if r.succeeded)


@pytest.fixture
def procs() -> Iterator[List[subprocess.Popen]]:
    started: List[subprocess.Popen] = []
    yield started
    for proc in started:
        stop(proc)


# ---------------------------------------------------------------- writing rows


def test_row_is_written_when_the_job_ends_not_at_exit(tmp_path: Path, procs: list) -> None:
    log = tmp_path / "j.log"
    flag = tmp_path / "flag"
    waiting = f"i=0; while [ ! -e '{flag}' ] && [ $i -lt 1500 ]; do sleep 0.02; i=$((i+1)); done"
    proc = popen_sgs(["--gpus", "0,1", "--joblog", str(log)], f"exit 7\n{waiting}\n".encode(),
                     cwd=tmp_path)
    procs.append(proc)
    poll_until(lambda: log.exists() and len(read_joblog(str(log))[0]) >= 1, what="the first row",
               timeout=15)
    assert proc.poll() is None, "the scheduler must still be running job 2"
    assert log.read_bytes().startswith(HEADER + b"\n")
    (first,) = rows_of(log)
    assert (first.seq, first.exitval, first.signal, first.command) == (1, 7, 0, b"exit 7")
    assert first.host in ("gpu:0", "gpu:1")
    flag.touch()
    proc.communicate(timeout=15)
    assert proc.returncode == 1
    assert [(r.seq, r.exitval) for r in rows_of(log)] == [(1, 7), (2, 0)]


def test_host_column_holds_every_gpu_of_the_job(tmp_path: Path) -> None:
    log = tmp_path / "j.log"
    done = run_sgs(["--gpus", "0", "1", "--gpus-per-job", "2", "--joblog", str(log)],
                   b"true\n", cwd=tmp_path, from_file=True)
    assert done.returncode == 0, done.stderr
    (only,) = rows_of(log)
    assert only.host == "gpu:0,1"
    raw = log.read_bytes().split(b"\n")[1].split(b"\t")
    assert raw[4:6] == [b"0", b"0"]  # Send, Receive
    assert abs(float(raw[2]) - time.time()) < 60 and float(raw[3]) >= 0


def test_commands_round_trip_exactly(tmp_path: Path) -> None:
    log = tmp_path / "j.log"
    # (input lines, the command the scheduler assembles from them)
    cases = [
        (b"printf '%s\\n' 'a\tb' > /dev/null", None),  # a literal tab inside quotes
        (b"echo \"double \\\"quoted\\\"\" 'single' `echo back` > /dev/null", None),
        (b"echo caf\xe9 > /dev/null", None),  # latin-1, not UTF-8
        (b"printf 'x\\\\ty\\n' > /dev/null", None),  # backslashes, no tab
        (b": 'carriage\rreturn' \\\\", None),  # a CR inside, an escaped backslash at the end
        (b"echo first \\\n  'second\tline' > /dev/null", None),  # backslash continuation
        (b"echo 'a\\\nb' > /dev/null", None),  # continuation inside quotes keeps the newline
    ]
    commands = [text for text, _ in cases]
    done = run_sgs(["--gpus", "0", "--joblog", str(log)], b"\n".join(commands) + b"\n",
                   cwd=tmp_path, from_file=True)
    assert done.returncode == 0, done.stderr
    rows = rows_of(log)
    assert [(r.seq, r.command) for r in rows] == list(enumerate(commands, start=1))
    assert all(r.succeeded for r in rows)
    # Every row is one line with nine fields.
    lines = log.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 2 + len(commands)
    assert all(line.count(b"\t") == 8 for line in lines[:-1])
    # Read back, the commands match the input again: a resumed run skips them all.
    again = run_sgs(["--gpus", "0", "--joblog", str(log), "--resume-failed"],
                    b"\n".join(commands) + b"\n", cwd=tmp_path, from_file=True)
    assert again.returncode == 0, again.stderr
    assert b" started on " not in again.stderr and b"7 skipped" in again.stderr
    assert len(rows_of(log)) == len(commands)


def test_a_command_that_cannot_start_has_a_row_exitval_minus_one_signal_0(tmp_path: Path) -> None:
    log = tmp_path / "j.log"
    nul = b"echo nul\0byte"
    done = run_sgs(["--gpus", "0", "--joblog", str(log)], nul + b"\ntrue\n", cwd=tmp_path,
                   from_file=True)
    assert done.returncode == 1
    bad, good = rows_of(log)
    assert (bad.seq, bad.exitval, bad.signal, bad.command) == (1, -1, 0, nul)
    assert b"echo nul\\0byte" in log.read_bytes()
    assert (good.seq, good.exitval, good.signal) == (2, 0, 0)

    log2 = tmp_path / "j2.log"
    done = run_sgs(["--gpus", "0", "--shell", str(tmp_path / "no-such-shell"),
                    "--joblog", str(log2)], b"true\n", cwd=tmp_path, from_file=True)
    assert done.returncode == 1
    (row,) = rows_of(log2)
    assert (row.exitval, row.signal, row.host) == (-1, 0, "gpu:0")


def test_joblog_without_resume_appends_to_an_existing_log(tmp_path: Path) -> None:
    log = tmp_path / "j.log"
    for _ in range(2):
        done = run_sgs(["--gpus", "0", "--joblog", str(log)], b"true\nexit 3\n", cwd=tmp_path,
                       from_file=True)
        assert done.returncode == 1
    data = log.read_bytes()
    assert data.count(HEADER) == 1
    assert [(r.seq, r.command, r.exitval) for r in rows_of(log)] == [
        (1, b"true", 0), (2, b"exit 3", 3)] * 2


def test_an_empty_existing_file_gets_the_header(tmp_path: Path) -> None:
    log = tmp_path / "j.log"
    log.touch()
    done = run_sgs(["--gpus", "0", "--joblog", str(log), "--resume-failed"], b"true\n",
                   cwd=tmp_path, from_file=True)
    assert done.returncode == 0, done.stderr
    assert log.read_bytes().startswith(HEADER + b"\n")
    assert [r.command for r in rows_of(log)] == [b"true"]


def test_an_unwritable_joblog_is_a_usage_error(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    done = run_sgs(["--gpus", "0", "--joblog", str(tmp_path / "no" / "such" / "dir.log")],
                   f"touch '{marker}'\n".encode(), cwd=tmp_path, from_file=True)
    assert done.returncode == 2 and b"--joblog" in done.stderr
    assert not marker.exists()


def test_two_schedulers_appending_to_one_log_lose_no_row(tmp_path: Path, procs: list) -> None:
    """Rows are appended: a second scheduler on the same log (another GPU, another
    terminal) must not overwrite the first one's rows, nor the first the second's."""
    log = tmp_path / "j.log"
    flag, started = tmp_path / "flag", tmp_path / "started"
    waiting = (f"touch '{started}'; i=0; while [ ! -e '{flag}' ] && [ $i -lt 1500 ]; "
               f"do sleep 0.02; i=$((i+1)); done")
    first = popen_sgs(["--gpus", "0", "--joblog", str(log)], f"{waiting}\n".encode(), cwd=tmp_path)
    procs.append(first)
    poll_until(started.exists, what="the first scheduler's job to start", timeout=15)
    second = run_sgs(["--gpus", "1", "--joblog", str(log)], b"echo second-scheduler\n",
                     cwd=tmp_path, from_file=True)
    assert second.returncode == 0, second.stderr
    flag.touch()
    first.communicate(timeout=15)
    assert first.returncode == 0
    assert sorted(r.command for r in rows_of(log)) == sorted(
        [waiting.encode(), b"echo second-scheduler"])


# ---------------------------------------------------------------- refusing and repairing


GARBAGE = [
    b"this is my thesis, not a job log\n",
    b"Seq\tHost\tWhen\n1\t2\t3\n",
    HEADER + b"\nnot\ta\trow\n",
    b"\x00\x01\x02\xff" * 10,
]


@pytest.mark.parametrize(
    "content, flags",
    [(content, []) for content in GARBAGE]
    + [(GARBAGE[0], ["--resume"]), (GARBAGE[2], ["--resume-failed"])],
)
def test_a_garbage_file_is_refused_untouched_and_nothing_runs(
    tmp_path: Path, flags: List[str], content: bytes
) -> None:
    log = tmp_path / "thesis.txt"
    log.write_bytes(content)
    os.utime(log, (1_000_000_000, 1_000_000_000))
    marker = tmp_path / "ran"
    done = run_sgs(["--gpus", "0", "--joblog", str(log), *flags],
                   f"touch '{marker}'\n".encode(), cwd=tmp_path, from_file=True)
    assert done.returncode == 2
    assert b"not a job log" in done.stderr and str(log).encode() in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert log.read_bytes() == content
    assert log.stat().st_mtime == 1_000_000_000
    assert not marker.exists()


def test_resume_without_joblog_is_a_usage_error(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    for flag in ("--resume", "--resume-failed"):
        done = run_sgs(["--gpus", "0", flag], f"touch '{marker}'\n".encode(), cwd=tmp_path,
                       from_file=True)
        assert done.returncode == 2
        assert b"--joblog" in done.stderr
    assert not marker.exists()


def test_resume_and_resume_failed_together_is_a_usage_error(tmp_path: Path) -> None:
    done = run_sgs(["--gpus", "0", "--joblog", "j.log", "--resume", "--resume-failed"],
                   b"true\n", cwd=tmp_path, from_file=True)
    assert done.returncode == 2
    assert not (tmp_path / "j.log").exists()


def test_a_cut_last_line_is_ignored_with_a_warning_and_dropped(tmp_path: Path) -> None:
    log = tmp_path / "j.log"
    a, b = b"echo a >> ran", b"echo b >> ran"
    good = HEADER + b"\n" + format_row(Row(1, "gpu:0", time.time(), 0.1, 0, 0, a))
    cut = format_row(Row(2, "gpu:0", time.time(), 0.1, 0, 0, b))[:-1]  # all but its newline
    log.write_bytes(good + cut)
    done = run_sgs(["--gpus", "0", "--joblog", str(log), "--resume-failed"],
                   a + b"\n" + b + b"\n", cwd=tmp_path, from_file=True)
    assert done.returncode == 0, done.stderr
    assert b"cut last line" in done.stderr
    assert (tmp_path / "ran").read_text() == "b\n"  # a was done; b's row was cut
    data = log.read_bytes()
    assert data.startswith(good)
    # The cut row stays, closed by the mark "\t\n"; then only b's new row.
    assert data[len(good):].startswith(cut + b"\t\n")
    assert data[len(good) + len(cut) + 2:].count(b"\n") == 1 and data.endswith(b"\n")
    rows, warning, _ = read_joblog(str(log))
    assert warning is not None and "cut line 3" in warning
    assert [(r.seq, r.command) for r in rows] == [(1, a), (2, b)]


# ---------------------------------------------------------------- resume rules


def test_resume_failed_reruns_failures_and_keeps_input_numbers(tmp_path: Path) -> None:
    log = tmp_path / "j.log"
    commands = [f"echo $SGS_JOB_ID:{i} >> ran; test -e ok{i}" for i in range(1, 5)]
    (tmp_path / "ok1").touch()
    (tmp_path / "ok3").touch()
    first = run_sgs(["--gpus", "0", "--joblog", str(log)], "\n".join(commands).encode(),
                    cwd=tmp_path, from_file=True)
    assert first.returncode == 1
    assert b"--resume-failed" in first.stderr
    (tmp_path / "ok2").touch()
    (tmp_path / "ok4").touch()
    second = run_sgs(["--gpus", "0", "--joblog", str(log), "--resume-failed"],
                     "\n".join(commands).encode(), cwd=tmp_path, from_file=True)
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "ran").read_text().split() == ["1:1", "2:2", "3:3", "4:4", "2:2", "4:4"]
    assert [(r.seq, r.exitval) for r in rows_of(log)] == [
        (1, 0), (2, 1), (3, 0), (4, 1), (2, 0), (4, 0)]
    assert b"2 skipped" in second.stderr


def test_resume_skips_failed_commands_too(tmp_path: Path) -> None:
    log = tmp_path / "j.log"
    done_before = b"echo 1 >> ran\necho 2 >> ran; exit 1\n"
    commands = done_before + b"echo 3 >> ran\n"
    assert run_sgs(["--gpus", "0", "--joblog", str(log)], done_before, cwd=tmp_path,
                   from_file=True).returncode == 1
    second = run_sgs(["--gpus", "0", "--joblog", str(log), "--resume"], commands, cwd=tmp_path,
                     from_file=True)
    assert second.returncode == 0, second.stderr
    assert ids_in(tmp_path / "ran") == [1, 2, 3]
    assert [r.seq for r in rows_of(log)] == [1, 2, 3]


def test_duplicates_are_counted(tmp_path: Path) -> None:
    log = tmp_path / "j.log"
    same = b"echo $SGS_JOB_ID >> ran"
    # A log from a run where the command succeeded once.
    log.write_bytes(HEADER + b"\n" + format_row(Row(5, "gpu:0", time.time(), 0.1, 0, 0, same)))
    done = run_sgs(["--gpus", "0", "--joblog", str(log), "--resume-failed"],
                   same + b"\n" + same + b"\n" + same + b"\n", cwd=tmp_path, from_file=True)
    assert done.returncode == 0, done.stderr
    assert ids_in(tmp_path / "ran") == [2, 3]  # twice more; the first occurrence is skipped
    assert [r.seq for r in rows_of(log)] == [5, 2, 3]


def test_reshuffled_input_resumes_by_text(tmp_path: Path) -> None:
    log = tmp_path / "j.log"
    commands = [f"echo {i} >> ran; test -e ok{i}".encode() for i in range(1, 9)]
    for i in (1, 2, 4, 5, 7):
        (tmp_path / f"ok{i}").touch()
    first = run_sgs(["--gpus", "0,1", "--joblog", str(log)], b"\n".join(commands), cwd=tmp_path,
                    from_file=True)
    assert first.returncode == 1
    for i in (3, 6, 8):
        (tmp_path / f"ok{i}").touch()
    shuffled = commands[:]
    random.Random(4).shuffle(shuffled)
    assert shuffled != commands
    second = run_sgs(["--gpus", "0,1", "--joblog", str(log), "--resume-failed"],
                     b"\n".join(shuffled), cwd=tmp_path, from_file=True)
    assert second.returncode == 0, second.stderr
    ran = ids_in(tmp_path / "ran")
    assert sorted(ran[8:]) == [3, 6, 8]
    assert success_counts(log) == Counter(commands)


# ---------------------------------------------------------------- the promise


def test_resume_failed_after_a_drain_runs_each_command_exactly_once(
    tmp_path: Path, procs: list
) -> None:
    log = tmp_path / "j.log"
    commands = sweep(tmp_path)
    # Job 3 fails in the first run and must run again.
    commands[2] = commands[2].replace(b"; echo 3", b"; test -e go || exit 1; echo 3")
    args = ["--gpus", "0,1", "--joblog", str(log)]
    first = popen_sgs(args, b"\n".join(commands) + b"\n", cwd=tmp_path)
    procs.append(first)
    poll_until(lambda: len(ids_in(tmp_path / "ran")) >= 3, what="three finished jobs", timeout=15)
    first.send_signal(signal.SIGINT)
    _, err1 = first.communicate(timeout=20)
    assert first.returncode == 130, err1
    assert b"draining" in err1
    before = success_counts(log)
    assert 3 <= sum(before.values()) < len(commands)
    # The drain let the running jobs finish, and each has its row.
    assert Counter(ids_in(tmp_path / "ran")) == Counter(
        int(c.split(b"echo ")[-1].split()[0]) for c in before)

    (tmp_path / "go").touch()
    second = run_sgs([*args, "--resume-failed"], b"\n".join(commands) + b"\n", cwd=tmp_path,
                     from_file=True)
    assert second.returncode == 0, second.stderr
    assert Counter(ids_in(tmp_path / "ran")) == Counter(range(1, 13))  # each exactly once
    assert success_counts(log) == Counter(commands)
    assert b"to run what did not succeed" not in second.stderr


def test_resume_failed_after_sigkill_runs_what_has_no_success_row(
    tmp_path: Path, procs: list
) -> None:
    log = tmp_path / "j.log"
    commands = sweep(tmp_path)
    args = ["--gpus", "0,1", "--joblog", str(log)]
    first = popen_sgs(args, b"\n".join(commands) + b"\n", cwd=tmp_path)
    procs.append(first)
    # Kill while jobs run: three have finished and another has started.
    poll_until(lambda: len(ids_in(tmp_path / "started")) > len(ids_in(tmp_path / "ran")) >= 3,
               what="three finished jobs and one running", timeout=15)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    # The jobs that were running live on in their own sessions: let them end
    # (their shells carry the temporary path in their command lines).
    poll_until(lambda: not live_pids(str(tmp_path)), what="orphaned jobs to end", timeout=15)
    rows, warning, _ = read_joblog(str(log))
    succeeded_before = Counter(r.command for r in rows if r.succeeded)
    ids_before = {int(c.split(b"echo ")[-1].split()[0]) for c in succeeded_before}
    started_before = len(ids_in(tmp_path / "started"))

    second = run_sgs([*args, "--resume-failed"], b"\n".join(commands) + b"\n", cwd=tmp_path,
                     from_file=True)
    assert second.returncode == 0, second.stderr
    ran = Counter(ids_in(tmp_path / "ran"))
    assert set(ran) == set(range(1, 13))  # every command succeeded at least once
    rerun = ids_in(tmp_path / "started")[started_before:]
    assert not ids_before & set(rerun), "a command with a success row ran again"
    for i, times in ran.items():
        assert times == 1 or (times == 2 and i not in ids_before), (i, times)
    # In the log, every command has exactly one success row.
    assert success_counts(log) == Counter(commands)


def test_resume_failed_after_sigkill_keeps_rows_of_finished_jobs(
    tmp_path: Path, procs: list
) -> None:
    """A SIGKILL of the scheduler loses no row of an attempt that had ended."""
    log = tmp_path / "j.log"
    flag = tmp_path / "flag"
    waiting = f"i=0; while [ ! -e '{flag}' ] && [ $i -lt 1500 ]; do sleep 0.02; i=$((i+1)); done"
    proc = popen_sgs(["--gpus", "0", "--jobs-per-gpu", "3", "--joblog", str(log)],
                     f"true\nexit 5\n{waiting}\n".encode(), cwd=tmp_path)
    procs.append(proc)
    poll_until(lambda: log.exists() and len(read_joblog(str(log))[0]) == 2, what="two rows",
               timeout=15)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)  # job 3 lives on and holds our pipes until it sees the flag
    flag.touch()
    proc.communicate(timeout=15)
    assert sorted((r.seq, r.exitval) for r in rows_of(log)) == [(1, 0), (2, 5)]
