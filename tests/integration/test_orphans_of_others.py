"""What the scheduler adopts as a subreaper, and what it leaves alone.

Orphans re-parented to the scheduler are its jobs' leftovers only when
something ties them to a job; what it had before its first job, and what
descends from that, is somebody else's: never signalled, never killed."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from harness import SGS, child_env, live_pids, poll_until, unique_sleep

#: A process that writes MARK to FILE when it gets SIGTERM, and otherwise sleeps.
TRAPPED = "sh -c 'trap \"echo got-TERM >> {file}; exit\" TERM; sleep {mark} & wait'"


def test_a_descendant_of_a_child_we_had_before_is_left_alone(tmp_path: Path) -> None:
    assert SGS is not None
    mark, hit = unique_sleep(), tmp_path / "hit"
    stranger = TRAPPED.format(file=hit, mark=mark)
    # The shell's background subshell starts the stranger after the exec and
    # exits: the stranger is then re-parented to the scheduler (a subreaper).
    script = (f'( sleep 0.3; {stranger} > /dev/null 2>&1 & exit ) > /dev/null 2>&1 & '
              f'exec "$0" --gpus 0 --kill-grace 0.5')
    try:
        result = subprocess.run(["sh", "-c", script, SGS], input=b"sleep 1.5\n",
                                capture_output=True, env=child_env(), timeout=30)
        assert result.returncode == 0, result.stderr
        assert b"left processes behind" not in result.stderr
        assert live_pids(mark), "the stranger was killed"
        assert not hit.exists(), "the stranger got SIGTERM"
    finally:
        for pid in live_pids(mark):
            os.kill(pid, signal.SIGKILL)


def test_an_unattributed_orphan_is_not_charged_to_another_job(tmp_path: Path) -> None:
    assert SGS is not None
    mark, hit = unique_sleep(), tmp_path / "hit"
    daemon = TRAPPED.format(file=hit, mark=mark)
    # Job 1 leaves a daemon nothing ties to it (no SGS_JOB_ID, own session)
    # while job 2 runs on the other GPU and ends first: job 2 must not be
    # charged with it. It is killed when the scheduler exits.
    jobs = (f"(env -u SGS_JOB_ID setsid {daemon} > /dev/null 2>&1 &); sleep 1.5\n"
            "sleep 0.5\n")
    try:
        result = subprocess.run([SGS, "--gpus", "0,1", "--kill-grace", "0.5", "-v"],
                                input=jobs.encode(), capture_output=True, env=child_env(),
                                timeout=30)
        assert result.returncode == 0, result.stderr
        assert b"job 2 left processes behind" not in result.stderr
        assert not hit.exists()
        poll_until(lambda: not live_pids(mark), what="the daemon killed at exit")
    finally:
        for pid in live_pids(mark):
            os.kill(pid, signal.SIGKILL)


def test_an_orphan_made_by_the_kill_gets_the_kill(tmp_path: Path) -> None:
    """A process that becomes an orphan only when its parent dies of the job's
    SIGKILL is killed too, before the job's GPU goes to the next job."""
    assert SGS is not None
    mark = unique_sleep()
    saw = tmp_path / "saw"
    pattern = mark.replace(".", "[.]")
    job1 = (f"sh -c 'trap \"\" TERM; setsid sh -c \"sleep {mark} & wait\" & exec sleep 300' & "
            "sleep 0.5; exit 0")
    job2 = f"grep -l -s -a '{pattern}' /proc/[0-9]*/cmdline > {saw}; true"
    try:
        result = subprocess.run([SGS, "--gpus", "0", "--kill-grace", "0.5"],
                                input=f"{job1}\n{job2}\n".encode(), capture_output=True,
                                env=child_env(), timeout=30)
        assert result.returncode == 0, result.stderr
        assert b"still there after SIGKILL" not in result.stderr, result.stderr
        assert saw.read_text() == "", "job 2 started while job 1's orphan ran"
    finally:
        for pid in live_pids(mark):
            os.kill(pid, signal.SIGKILL)
