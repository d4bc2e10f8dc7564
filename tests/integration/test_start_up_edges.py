"""The scheduler before its engine runs, and what is not its own."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from harness import SGS, FakeMachine, child_env, fake_gpu, poll_until, popen_sgs, read_lines


def test_a_sigusr1_while_the_hardware_is_asked_does_not_kill(tmp_path: Path) -> None:
    machine = FakeMachine(tmp_path, [fake_gpu(0)], delay=2.0)
    proc = popen_sgs(["--lock-dir", str(machine.locks)], input=b"echo ran\n", cwd=tmp_path,
                     env=machine.env("smi"), stdout=tmp_path / "out", stderr=tmp_path / "err")
    try:
        poll_until(lambda: machine.calls("smi"), what="the first nvidia-smi call")
        proc.send_signal(signal.SIGUSR1)
        assert proc.wait(timeout=30) == 0, (tmp_path / "err").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert read_lines(tmp_path / "out") == ["ran"]


def test_a_child_we_had_before_the_first_job_is_not_killed(tmp_path: Path) -> None:
    """A shell that `exec`s the scheduler leaves its background jobs as our
    children: they are not orphans of our jobs, and live on after us."""
    assert SGS is not None
    pidfile = tmp_path / "bg"
    script = f'sleep 30 > /dev/null 2>&1 & echo $! > {pidfile}; exec "$0" --gpus 0'
    result = subprocess.run(["sh", "-c", script, SGS], input=b"true\n", capture_output=True,
                            env=child_env(), timeout=30)
    assert result.returncode == 0, result.stderr
    pid = int(read_lines(pidfile)[0])
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        assert state != "Z", "the shell's background job was killed by the scheduler"
    finally:
        os.kill(pid, signal.SIGKILL)


def test_a_gpu_id_of_digits_that_are_not_ascii_is_no_internal_error() -> None:
    result = subprocess.run([SGS or "simple_gpu_scheduler", "--gpus", "\u00b2"], input=b"true\n",
                            capture_output=True, env=child_env(), timeout=30)
    assert b"internal error" not in result.stderr, result.stderr
