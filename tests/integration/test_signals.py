"""Stopping a run with real signals: drain, terminate, kill, SIGHUP, SIGUSR1.

The scheduler runs in a session of its own so a test can signal it alone (or
its whole process group, as a terminal's Ctrl-C would). Every wait is a poll.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import List

import pytest
from harness import (
    Sgs,
    live_pids,
    no_signal_pending,
    not_started,
    pipe_bytes,
    poll_until,
    started_ids,
    unique_sleep,
    wait_for_file,
)


def waiting_job(name: str) -> str:
    """A job that says it started, waits for the test to release it, then says it is done."""
    return (f"touch {name}.started; while [ ! -e {name}.release ]; do sleep 0.02; done; "
            f"touch {name}.done")


def release(tmp_path: Path, name: str) -> None:
    (tmp_path / f"{name}.release").touch()


# --- drain -------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_first_signal_drains(tmp_path: Path, start_sgs, signum: int) -> None:
    sgs: Sgs = start_sgs(["--gpus", "0,1"])
    sgs.write(f"{waiting_job('a')}\n{waiting_job('b')}\ntouch never3\necho four > never4\n"
              .encode())
    wait_for_file(tmp_path / "a.started")
    wait_for_file(tmp_path / "b.started")
    sgs.wait_stderr(r"job 2 started")
    sgs.signal(signum)
    sgs.wait_stderr(r"draining")
    stderr = sgs.stderr()
    drain_line = next(line for line in stderr.splitlines() if "draining" in line)
    assert drain_line.startswith("[sgs] ") and "2 running" in drain_line, drain_line
    # Every command read but not started is listed with its id and text.
    poll_until(lambda: len(not_started(sgs.stderr())) == 2, 5, what="two 'not started' lines")
    assert not_started(sgs.stderr()) == {3: "touch never3", 4: "echo four > never4"}
    # The running jobs run to their end.
    assert sgs.alive()
    release(tmp_path, "a")
    release(tmp_path, "b")
    assert sgs.wait() == 128 + signum
    assert (tmp_path / "a.done").exists() and (tmp_path / "b.done").exists()
    assert not (tmp_path / "never3").exists() and not (tmp_path / "never4").exists()
    assert started_ids(sgs.stderr()) == [1, 2]
    assert "Traceback" not in sgs.stderr()


def test_ctrl_c_reaches_the_scheduler_only(tmp_path: Path, start_sgs) -> None:
    sgs: Sgs = start_sgs(["--gpus", "0"])
    sgs.write(f"{waiting_job('a')}\ntouch never\n".encode())
    wait_for_file(tmp_path / "a.started")
    # As a terminal does: SIGINT to the whole foreground process group.
    os.killpg(os.getpgid(sgs.pid), signal.SIGINT)
    sgs.wait_stderr(r"draining")
    release(tmp_path, "a")
    assert sgs.wait() == 130
    assert (tmp_path / "a.done").exists(), "the job was not interrupted"
    assert re.search(r"^\[sgs\] job 1 finished on gpu 0 after \S+: exit 0$", sgs.stderr(), re.M)


def test_drain_lists_every_command_already_read(tmp_path: Path, start_sgs) -> None:
    """Nothing read from stdin may vanish: each command either ran, is listed as
    not started, or is still unread in stdin so it can be fed again."""
    commands = [waiting_job("a")] + [f"touch cmd{i}" for i in range(2, 31)]
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("".join(c + "\n" for c in commands))
    with open(jobs, "rb") as stdin:
        sgs: Sgs = start_sgs(["--gpus", "0"], stdin=stdin)
        wait_for_file(tmp_path / "a.started")
        sgs.signal(signal.SIGINT)
        sgs.wait_stderr(r"draining")
        release(tmp_path, "a")
        assert sgs.wait() == 130
        offset = os.lseek(stdin.fileno(), 0, os.SEEK_CUR)
    unread = jobs.read_bytes()[offset:].decode().splitlines()
    stderr = sgs.stderr()
    listed = not_started(stderr)
    ran = started_ids(stderr)
    assert ran == [1]
    accounted = [commands[i - 1] for i in sorted(ran + list(listed))] + unread
    lost = [c for c in commands if c not in accounted]
    assert not lost, (f"{len(lost)} commands were read from stdin, never run and never listed "
                      f"(first: {lost[0]!r}); listed: {sorted(listed)}")
    for job_id, text in listed.items():
        assert text == commands[job_id - 1]


def test_after_a_drain_stdin_is_no_longer_consumed(tmp_path: Path, start_sgs) -> None:
    read_end, write_end = os.pipe()
    try:
        sgs: Sgs = start_sgs(["--gpus", "0"], stdin=read_end)
        os.write(write_end, f"{waiting_job('a')}\n".encode())
        wait_for_file(tmp_path / "a.started")
        sgs.signal(signal.SIGINT)
        sgs.wait_stderr(r"draining")
        late = b"touch late\n"
        os.write(write_end, late)

        deadline = time.monotonic() + 0.5  # proving a negative: give the reader a chance
        while time.monotonic() < deadline and pipe_bytes(read_end):
            time.sleep(0.02)
        release(tmp_path, "a")
        assert sgs.wait() == 130
        os.set_blocking(read_end, False)
        try:
            left = os.read(read_end, 1024)
        except BlockingIOError:
            left = b""
    finally:
        os.close(read_end)
        os.close(write_end)
    assert not (tmp_path / "late").exists()
    assert left == late, (f"the scheduler read {late!r} from stdin after the drain "
                          f"(stderr: {sgs.stderr()!r})")


# --- terminate and kill --------------------------------------------------------------


def sleeping_job(marks: List[str], mark: str) -> str:
    """The issue's job tree, ``sleep A & sleep B``, with unique durations as markers."""
    a, b = unique_sleep(), unique_sleep()
    marks.extend([a, b])
    return f"touch {mark}.started; sleep {a} & sleep {b}"


def test_second_signal_terminates_every_job_tree(tmp_path: Path, start_sgs,
                                                 markers: List[str]) -> None:
    sgs: Sgs = start_sgs(["--gpus", "0,1", "--kill-grace", "1"])
    nested = unique_sleep()
    markers.append(nested)
    sgs.write((f"{sleeping_job(markers, 'a')}\n"
               f"touch b.started; sh -c 'sleep {nested} & wait' & wait\n"
               "touch never\n").encode())
    poll_until(lambda: all(live_pids(m) for m in markers), 10, what="every sleep to run")
    sgs.signal(signal.SIGINT)
    sgs.wait_stderr(r"draining")
    sgs.signal(signal.SIGINT)
    sgs.wait_stderr(r"terminating 2 running job")
    assert sgs.wait(timeout=10) == 130
    poll_until(lambda: not any(live_pids(m) for m in markers), 3,
               what=lambda: f"no job process left; live: {[live_pids(m) for m in markers]}")
    assert not (tmp_path / "never").exists()
    assert re.search(r"^\[sgs\] job 1 failed on gpu 0 after \S+: killed by SIGTERM", sgs.stderr(),
                     re.M), sgs.stderr()


def test_job_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path, start_sgs,
                                                            markers: List[str]) -> None:
    mark = unique_sleep()
    markers.append(mark)
    sgs: Sgs = start_sgs(["--gpus", "0", "--kill-grace", "1"])
    sgs.write(f"trap '' TERM; touch a.started; sleep {mark} & wait\n".encode())
    poll_until(lambda: live_pids(mark), 10, what="the job's sleep")
    sgs.signal(signal.SIGTERM)
    sgs.wait_stderr(r"draining")
    sgs.signal(signal.SIGTERM)
    t0 = time.monotonic()
    sgs.wait_stderr(r"terminating 1 running job")
    assert sgs.wait(timeout=10) == 143
    waited = time.monotonic() - t0
    assert 0.8 < waited < 5, f"SIGKILL came {waited:.2f}s after SIGTERM, not after --kill-grace 1"
    poll_until(lambda: not live_pids(mark), 3, what="the sleep to be killed")
    assert "killed by SIGKILL" in sgs.stderr()


def test_third_signal_kills_at_once(tmp_path: Path, start_sgs, markers: List[str]) -> None:
    mark = unique_sleep()
    markers.append(mark)
    sgs: Sgs = start_sgs(["--gpus", "0", "--kill-grace", "60"])
    sgs.write(f"trap '' TERM; sleep {mark} & wait\n".encode())
    poll_until(lambda: live_pids(mark), 10, what="the job's sleep")
    sgs.signal(signal.SIGINT)
    sgs.wait_stderr(r"draining")
    sgs.signal(signal.SIGINT)
    sgs.wait_stderr(r"terminating")
    assert live_pids(mark), "SIGTERM is ignored; the grace is 60 s"
    sgs.signal(signal.SIGINT)
    assert sgs.wait(timeout=10) == 130
    poll_until(lambda: not live_pids(mark), 3, what="the sleep to be killed")


def test_exit_status_is_for_the_first_stop_signal(tmp_path: Path, start_sgs,
                                                  markers: List[str]) -> None:
    sgs: Sgs = start_sgs(["--gpus", "0", "--kill-grace", "1"])
    sgs.write(f"{sleeping_job(markers, 'a')}\n".encode())
    poll_until(lambda: all(live_pids(m) for m in markers), 10, what="the sleeps")
    sgs.signal(signal.SIGTERM)
    sgs.wait_stderr(r"draining")
    sgs.signal(signal.SIGINT)  # escalates, but the run was stopped by SIGTERM
    assert sgs.wait(timeout=10) == 143
    poll_until(lambda: not any(live_pids(m) for m in markers), 3, what="no job process left")


def test_sighup_only_ever_drains(tmp_path: Path, start_sgs) -> None:
    sgs: Sgs = start_sgs(["--gpus", "0", "--kill-grace", "1"])
    sgs.write(f"{waiting_job('a')}\ntouch never\n".encode())
    wait_for_file(tmp_path / "a.started")
    sgs.signal(signal.SIGHUP)
    sgs.wait_stderr(r"draining")
    sgs.signal(signal.SIGHUP)
    # The loop takes signals in order: the status table comes after the second SIGHUP
    # was handled. (Sent once the SIGHUP is delivered; see the back-to-back test.)
    poll_until(lambda: no_signal_pending(sgs.pid), 5, what="the SIGHUP to be delivered")
    sgs.signal(signal.SIGUSR1)
    sgs.wait_stderr(r"status after")
    assert "terminating" not in sgs.stderr()
    assert sgs.alive() and not (tmp_path / "a.done").exists()
    # A Ctrl-C after a hang-up does escalate; here the job ends first.
    release(tmp_path, "a")
    assert sgs.wait() == 129
    assert (tmp_path / "a.done").exists()
    assert not (tmp_path / "never").exists()


def test_ctrl_c_after_sighup_terminates_with_the_sighup_status(tmp_path: Path, start_sgs,
                                                               markers: List[str]) -> None:
    sgs: Sgs = start_sgs(["--gpus", "0", "--kill-grace", "1"])
    sgs.write(f"{sleeping_job(markers, 'a')}\n".encode())
    poll_until(lambda: all(live_pids(m) for m in markers), 10, what="the sleeps")
    sgs.signal(signal.SIGHUP)
    sgs.wait_stderr(r"draining")
    sgs.signal(signal.SIGINT)
    assert sgs.wait(timeout=10) == 129
    poll_until(lambda: not any(live_pids(m) for m in markers), 3, what="no job process left")


CHECKPOINTER = """\
import signal, sys, time
from pathlib import Path

def on_term(signum, frame):
    time.sleep(0.3)  # saving a checkpoint
    Path("saved").write_text("saved")
    sys.exit(0)

signal.signal(signal.SIGTERM, on_term)
Path("ready").write_text("")
time.sleep(60)
"""


def test_terminate_gives_the_whole_tree_the_grace(tmp_path: Path, start_sgs) -> None:
    """SIGTERM to the job's group, SIGKILL only to what is left after --kill-grace:
    a training process that saves a checkpoint on SIGTERM gets to finish saving,
    even though its shell (which does not handle SIGTERM) died at once."""
    (tmp_path / "ckpt.py").write_text(CHECKPOINTER)
    sgs: Sgs = start_sgs(["--gpus", "0", "--kill-grace", "2"])
    # `; true` keeps the shell from exec'ing Python: the shell is the parent.
    sgs.write(f"{sys.executable} ckpt.py; true\n".encode())
    wait_for_file(tmp_path / "ready")
    sgs.signal(signal.SIGINT)
    sgs.wait_stderr(r"draining")
    sgs.signal(signal.SIGINT)
    assert sgs.wait(timeout=10) == 130
    assert (tmp_path / "saved").exists(), (
        "the job's process was SIGKILLed before --kill-grace ran out; stderr:\n" + sgs.stderr())


def test_signals_sent_back_to_back_are_all_handled(tmp_path: Path, start_sgs) -> None:
    """`kill -USR1 $pid; kill -INT $pid`: both are acted on while the job runs.

    A second signal that arrives while the first is still pending for the main
    thread is delivered by the kernel to another thread (reader, waiter, pump);
    its Python handler then waits until the main thread next wakes up."""
    for attempt, second in enumerate([signal.SIGINT, signal.SIGTERM, signal.SIGHUP] * 2):
        sgs: Sgs = start_sgs(["--gpus", "0"])
        name = f"a{attempt}"
        sgs.write(f"{waiting_job(name)}\n".encode())
        wait_for_file(tmp_path / f"{name}.started")
        sgs.signal(signal.SIGUSR1)
        sgs.signal(second)
        try:
            sgs.wait_stderr(r"status after", timeout=2)
            sgs.wait_stderr(r"draining", timeout=2)
        finally:
            release(tmp_path, name)
        assert sgs.wait() == 128 + second


# --- SIGUSR1 -------------------------------------------------------------------------


def test_sigusr1_prints_a_status_table_and_carries_on(tmp_path: Path, start_sgs) -> None:
    sgs: Sgs = start_sgs(["--gpus", "0,1"])
    sgs.write(f"true\n{waiting_job('a')}\n{waiting_job('b')}\nexit 4\ntouch last\n".encode())
    wait_for_file(tmp_path / "a.started")
    wait_for_file(tmp_path / "b.started")
    sgs.wait_stderr(r"job 1 finished")
    sgs.signal(signal.SIGUSR1)
    head = sgs.wait_stderr(r"^\[sgs\] status after \S+: (.*)$")
    assert head.group(1) == "2 running, 1 succeeded, 0 failed, 2 queued"
    stderr = sgs.stderr()
    rows = re.findall(r"^\[sgs\] +(\d+) +gpu (\d) +(\S+) +(.*)$", stderr, re.M)
    assert [int(r[0]) for r in rows] == [2, 3], stderr
    assert {r[1] for r in rows} == {"0", "1"}
    for (_, _, runtime, command), name in zip(rows, "ab"):
        assert re.fullmatch(r"\d+\.\ds", runtime), runtime
        full = waiting_job(name)
        assert command == full or (command.endswith("...") and full.startswith(command[:-3]))
    assert re.search(r"^\[sgs\] +JOB +GPU +TIME +COMMAND$", stderr, re.M)
    # And the run goes on as if nothing happened.
    release(tmp_path, "a")
    release(tmp_path, "b")
    assert sgs.wait() == 1  # `exit 4` failed
    assert (tmp_path / "last").exists()
