"""--timeout, --retries and --halt-on-failure, through the installed command.

Durations are parsed by a pure function (tested in unit/test_timeout_durations.py);
everything else runs real jobs on made-up GPU ids and checks the job log, the marks the jobs
leave in files, the scheduler's lines and its exit status.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import List

import pytest
from harness import live_pids, poll_until, popen_sgs, rows_of, run_sgs, stop

# ---------------------------------------------------------------- helpers






def kill_all(marker: str) -> None:
    for pid in live_pids(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def unique_sleep() -> str:
    """A ``sleep`` argument no other process on the machine has: a marker for /proc."""
    return f"300.{random.randrange(10**8, 10**9)}"


def lines(stream: bytes) -> List[str]:
    return stream.decode("utf-8", "replace").splitlines()


def wait_until_exists(path: Path) -> str:
    """A shell loop (bounded at ~30 s) that waits for `path`."""
    return f"i=0; while [ ! -e '{path}' ] && [ $i -lt 1500 ]; do sleep 0.02; i=$((i+1)); done"


@pytest.mark.parametrize("bad", ["10x", "0", "-5", "", "2 hours"])
def test_malformed_timeout_is_a_usage_error(tmp_path: Path, bad: str) -> None:
    marker = tmp_path / "ran"
    done = run_sgs(["--gpus", "0", f"--timeout={bad}"], f"touch '{marker}'\n".encode(),
                   cwd=tmp_path, from_file=True)
    assert done.returncode == 2
    (line,) = lines(done.stderr)
    assert "--timeout" in line and "duration" in line
    assert not marker.exists()


@pytest.mark.parametrize("bad", ["-1", "two", "1.5"])
def test_malformed_retries_is_a_usage_error(tmp_path: Path, bad: str) -> None:
    done = run_sgs(["--gpus", "0", f"--retries={bad}"], b"true\n", cwd=tmp_path, from_file=True)
    assert done.returncode == 2 and b"--retries" in done.stderr


def test_halt_on_failure_accepts_only_soon_and_now(tmp_path: Path) -> None:
    done = run_sgs(["--gpus", "0", "--halt-on-failure", "later"], b"true\n", cwd=tmp_path,
                   from_file=True)
    assert done.returncode == 2 and b"--halt-on-failure" in done.stderr


def test_a_job_within_its_timeout_is_untouched(tmp_path: Path) -> None:
    log = tmp_path / "j.log"
    done = run_sgs(["--gpus", "0", "--timeout", "1d", "--joblog", str(log)],
                   b"sleep 0.1; echo ok > out\n", cwd=tmp_path, from_file=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out").read_text() == "ok\n"
    assert [(r.exitval, r.signal) for r in rows_of(log)] == [(0, 0)]


@pytest.mark.parametrize(
    "args, command",
    [
        # "practically forever", as people type it: 317 years
        (["--timeout", "9999999999"], "echo ok > out"),
        (["--timeout", "400000d"], "echo ok > out"),
        # a timeout that fires, with a grace nobody will wait for
        (["--timeout", "0.2", "--kill-grace", "9999999999"], "echo ok > out; sleep 0.5"),
    ],
)
def test_a_huge_but_valid_duration_does_not_crash_the_scheduler(
    tmp_path: Path, args: List[str], command: str
) -> None:
    done = run_sgs(["--gpus", "0", *args], command.encode(), cwd=tmp_path, from_file=True)
    assert b"Traceback" not in done.stderr, done.stderr.decode()
    assert (tmp_path / "out").read_text() == "ok\n"
    assert done.returncode in (0, 1)


# ---------------------------------------------------------------- timeouts


def test_timeout_kills_the_whole_tree_and_frees_the_gpu(tmp_path: Path) -> None:
    log = tmp_path / "j.log"
    arg = unique_sleep()
    marker = arg
    second = tmp_path / "second"
    commands = f"sh -c 'sleep {arg} & sleep {arg}'\necho $CUDA_VISIBLE_DEVICES > '{second}'\n"
    try:
        begin = time.monotonic()
        done = run_sgs(["--gpus", "0", "--timeout", "1", "--kill-grace", "1", "--joblog", str(log)],
                       commands.encode(), cwd=tmp_path, from_file=True)
        elapsed = time.monotonic() - begin
        assert done.returncode == 1, done.stderr
        assert elapsed < 10
        assert second.read_text() == "0\n"  # the next job got the GPU
        poll_until(lambda: not live_pids(marker), timeout=5, what="the grandchildren to die")
    finally:
        kill_all(marker)
    first, nxt = rows_of(log)
    assert (first.seq, first.exitval, first.signal) == (1, -1, signal.SIGTERM)
    assert 0.9 <= first.runtime < 5
    assert (nxt.seq, nxt.exitval, nxt.signal) == (2, 0, 0)
    (line,) = [x for x in lines(done.stderr) if x.startswith("[sgs] job 1 failed")]
    assert "timed out" in line
    assert "failed jobs: 1" in done.stderr.decode()


def test_timeout_escalates_to_sigkill_after_the_grace(tmp_path: Path) -> None:
    log = tmp_path / "j.log"
    arg = unique_sleep()
    marker = arg
    try:
        done = run_sgs(
            ["--gpus", "0", "--timeout", "0.5", "--kill-grace", "0.5", "--joblog", str(log)],
            f"trap '' TERM; sleep {arg}; true\n".encode(), cwd=tmp_path, from_file=True)
        assert done.returncode == 1, done.stderr
        poll_until(lambda: not live_pids(marker), timeout=5, what="the job to die")
    finally:
        kill_all(marker)
    (row,) = rows_of(log)
    assert (row.exitval, row.signal) == (-1, signal.SIGKILL)
    assert 0.9 <= row.runtime < 5
    assert "timed out" in done.stderr.decode()


@pytest.mark.parametrize("output", [[], ["--tag"], ["--progress"]])
def test_a_job_that_exits_before_its_deadline_did_not_time_out(
    tmp_path: Path, output: List[str]
) -> None:
    """The shell exits 0 at 0.3 s, deadline 0.6 s; a background process it left
    keeps the output pipe open (so --tag/--progress wait a little for the last
    lines). The attempt ended in time: it succeeded, whatever the output mode."""
    log = tmp_path / "j.log"
    arg = unique_sleep()
    try:
        done = run_sgs(["--gpus", "0", "--timeout", "0.6", "--kill-grace", "1", *output,
                        "--joblog", str(log)], f"sleep 0.3; sleep {arg} & exit 0\n".encode(),
                       cwd=tmp_path, from_file=True)
    finally:
        kill_all(arg)
    assert [(r.exitval, r.signal) for r in rows_of(log)] == [(0, 0)], done.stderr.decode()
    assert done.returncode == 0
    assert "timed out" not in done.stderr.decode()


def test_timed_out_attempts_are_retried_each_with_its_own_row(tmp_path: Path) -> None:
    log = tmp_path / "j.log"
    arg = unique_sleep()
    try:
        done = run_sgs(["--gpus", "0", "--timeout", "0.3", "--kill-grace", "1", "--retries", "1",
                        "--joblog", str(log)], f"sleep {arg}\n".encode(), cwd=tmp_path,
                       from_file=True)
    finally:
        kill_all(arg)
    assert done.returncode == 1
    assert [(r.seq, r.exitval, r.signal) for r in rows_of(log)] == [(1, -1, 15)] * 2
    assert "will retry" in done.stderr.decode()


# ---------------------------------------------------------------- retries


def test_retries_land_as_separate_rows_and_go_to_the_front(tmp_path: Path) -> None:
    log = tmp_path / "j.log"
    # Job 1 fails twice, then succeeds; job 2 always fails; job 3 succeeds.
    flaky = ("sleep 0.1; n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; "
             "echo 1 >> order; [ $n -ge 3 ]")
    commands = f"{flaky}\necho 2 >> order; exit 3\necho 3 >> order\n"
    done = run_sgs(["--gpus", "0", "--retries", "2", "--joblog", str(log)], commands.encode(),
                   cwd=tmp_path, from_file=True)
    assert done.returncode == 1
    # A retry goes before the queued jobs.
    assert (tmp_path / "order").read_text().split() == ["1", "1", "1", "2", "2", "2", "3"]
    assert [(r.seq, r.exitval) for r in rows_of(log)] == [
        (1, 1), (1, 1), (1, 0), (2, 3), (2, 3), (2, 3), (3, 0)]
    err = done.stderr.decode()
    assert "(will retry: attempt 2 of 3)" in err and "(will retry: attempt 3 of 3)" in err
    assert "job 1 started on gpu 0 (attempt 3 of 3)" in err
    assert "2 of 3 succeeded, 1 failed, 0 not started" in err
    assert "failed jobs: 2" in err


def test_retry_runs_on_whichever_gpu_is_free(tmp_path: Path) -> None:
    log = tmp_path / "j.log"
    # Job 1 holds GPU "a" while job 2 starts on "b"; job 2 fails after job 1 has
    # ended, so both GPUs are free and the retry goes to "a" (first in --gpus).
    one = tmp_path / "one"
    commands = (f"touch '{one}'\n"
                f"if [ -e tried ]; then echo $CUDA_VISIBLE_DEVICES > second; "
                f"else touch tried; {wait_until_exists(one)}; sleep 0.3; exit 1; fi\n")
    done = run_sgs(["--gpus", "a,b", "--retries", "1", "--joblog", str(log)], commands.encode(),
                   cwd=tmp_path, from_file=True)
    assert done.returncode == 0, done.stderr
    rows = rows_of(log)
    retried = [r for r in rows if r.seq == 2]
    assert [(r.exitval, r.host) for r in retried] == [(1, "gpu:b"), (0, "gpu:a")]
    assert (tmp_path / "second").read_text() == "a\n"


def test_retries_zero_means_one_attempt(tmp_path: Path) -> None:
    log = tmp_path / "j.log"
    done = run_sgs(["--gpus", "0", "--joblog", str(log)], b"exit 1\n", cwd=tmp_path, from_file=True)
    assert done.returncode == 1
    assert len(rows_of(log)) == 1 and b"will retry" not in done.stderr


# ---------------------------------------------------------------- halting


def test_halt_soon_drains(tmp_path: Path) -> None:
    log = tmp_path / "j.log"
    started2 = tmp_path / "started2"
    commands = [
        f"{wait_until_exists(started2)}; exit 1",
        f"touch '{started2}'; sleep 0.4; touch done2",
        "touch ran3", "touch ran4", "touch ran5",
    ]
    done = run_sgs(["--gpus", "0,1", "--halt-on-failure", "soon", "--joblog", str(log)],
                   "\n".join(commands).encode(), cwd=tmp_path, from_file=True)
    assert done.returncode == 1, done.stderr
    assert (tmp_path / "done2").exists()  # the running job finished
    assert not any((tmp_path / f"ran{i}").exists() for i in (3, 4, 5))
    assert [(r.seq, r.exitval, r.signal) for r in rows_of(log)] == [(1, 1, 0), (2, 0, 0)]
    err = done.stderr.decode()
    assert "--halt-on-failure is soon" in err and "draining" in err
    assert "terminating" not in err
    assert "1 of 5 succeeded, 1 failed, 3 not started" in err
    for i in (3, 4, 5):
        assert f"not started: job {i}: touch ran{i}" in err


def test_halt_now_terminates_running_jobs(tmp_path: Path) -> None:
    log = tmp_path / "j.log"
    started2 = tmp_path / "started2"
    arg = unique_sleep()
    commands = [
        f"{wait_until_exists(started2)}; exit 1",
        f"touch '{started2}'; sleep {arg}; touch done2",
        "touch ran3",
    ]
    try:
        begin = time.monotonic()
        done = run_sgs(["--gpus", "0,1", "--halt-on-failure", "now", "--joblog", str(log)],
                       "\n".join(commands).encode(), cwd=tmp_path, from_file=True)
        assert time.monotonic() - begin < 8  # well before the 10 s kill grace
        poll_until(lambda: not live_pids(arg), timeout=5, what="job 2 to die")
    finally:
        kill_all(arg)
    assert done.returncode == 1, done.stderr
    assert not (tmp_path / "done2").exists() and not (tmp_path / "ran3").exists()
    assert [(r.seq, r.exitval, r.signal) for r in rows_of(log)] == [(1, 1, 0), (2, -1, 15)]
    err = done.stderr.decode()
    assert "--halt-on-failure is now" in err and "terminating 1 running job" in err
    assert "1 not started" in err


def test_halt_waits_for_the_last_retry(tmp_path: Path) -> None:
    log = tmp_path / "j.log"
    commands = b"echo x >> tries; exit 1\ntouch ran2\n"
    done = run_sgs(["--gpus", "0", "--retries", "2", "--halt-on-failure", "soon",
                    "--joblog", str(log)], commands, cwd=tmp_path, from_file=True)
    assert done.returncode == 1
    assert (tmp_path / "tries").read_text().split() == ["x", "x", "x"]
    assert not (tmp_path / "ran2").exists()
    assert [(r.seq, r.exitval) for r in rows_of(log)] == [(1, 1)] * 3


def test_a_stop_signal_sets_exit_status_128_plus_signal(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    proc = popen_sgs(["--gpus", "0"], f"touch '{marker}'; sleep 0.3\ntouch ran2\n".encode(),
                     cwd=tmp_path)
    try:
        poll_until(marker.exists, what="job 1 to start", timeout=15)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        stop(proc)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert not (tmp_path / "ran2").exists()
