"""Signal dispositions the scheduler inherits: SIGCHLD ignored, SIGHUP ignored.

An ignored disposition survives ``exec``: a scheduler started from a program
that ignores SIGCHLD (some daemons and job runners do) starts with SIGCHLD
ignored, and the kernel then reaps its children itself, so their exit
statuses are lost unless it puts SIGCHLD back to the default. ``nohup`` starts
it with SIGHUP ignored, and that wish must stay: a hang-up does not drain.

The dispositions are set in the scheduler's child only (``preexec_fn``): the
test process keeps its own SIGCHLD, or its ``waitpid`` would lose the
scheduler's status too.
"""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

from harness import (
    RUN_TIMEOUT,
    SGS,
    child_env,
    no_signal_pending,
    not_started,
    poll_until,
    started_ids,
)


def ignoring(signum: int):
    def preexec() -> None:
        signal.signal(signum, signal.SIG_IGN)

    return preexec


def test_exit_statuses_are_kept_when_started_with_sigchld_ignored(tmp_path: Path) -> None:
    assert SGS is not None
    result = subprocess.run(
        [SGS, "--gpus", "0"], input=b"false\nexit 3\ntrue\n", capture_output=True,
        cwd=tmp_path, env=child_env(), timeout=RUN_TIMEOUT, start_new_session=True,
        preexec_fn=ignoring(signal.SIGCHLD))
    stderr = result.stderr.decode()
    assert re.search(r"^\[sgs\] job 1 failed on gpu 0 after \S+: exit 1: false$", stderr, re.M), \
        stderr
    assert re.search(r"^\[sgs\] job 2 failed on gpu 0 after \S+: exit 3: exit 3$", stderr, re.M), \
        stderr
    assert re.search(r"^\[sgs\] job 3 finished on gpu 0 after \S+: exit 0$", stderr, re.M), stderr
    assert "1 of 3 succeeded, 2 failed" in stderr
    assert result.returncode == 1, stderr


def test_a_hang_up_does_not_drain_when_started_with_sighup_ignored(tmp_path: Path) -> None:
    assert SGS is not None
    jobs = ("touch a.started; while [ ! -e a.release ]; do sleep 0.02; done\n"
            "touch two\ntouch three\n")
    (tmp_path / "jobs.txt").write_text(jobs)
    err = tmp_path / "stderr.txt"
    with open(tmp_path / "jobs.txt", "rb") as stdin, open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [SGS, "--gpus", "0"], stdin=stdin, stdout=subprocess.DEVNULL, stderr=stderr,
            cwd=tmp_path, env=child_env(), start_new_session=True,
            preexec_fn=ignoring(signal.SIGHUP))
    try:
        poll_until((tmp_path / "a.started").exists, 10, what="job 1 to start")
        proc.send_signal(signal.SIGHUP)
        # Wait until the hang-up is delivered (ignored: dropped; handled: queued
        # for the loop), then ask for the status table: the loop takes signals in
        # order, so once the table is out, a drain would have been said before it.
        poll_until(lambda: no_signal_pending(proc.pid), 5, what="the SIGHUP to be delivered")
        proc.send_signal(signal.SIGUSR1)
        poll_until(lambda: "status after" in err.read_text(), 10,
                   what=lambda: f"the status table; stderr:\n{err.read_text()}")
        assert "draining" not in err.read_text()
        (tmp_path / "a.release").touch()
        assert proc.wait(timeout=RUN_TIMEOUT) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr_text = err.read_text()
    assert "draining" not in stderr_text and not not_started(stderr_text), stderr_text
    assert started_ids(stderr_text) == [1, 2, 3], stderr_text
    assert (tmp_path / "two").exists() and (tmp_path / "three").exists()
