"""Helpers for the job-log, resume, timeout and progress tests: the scheduler
run on an input file (so the input ends at once), its rows, its processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Sequence

from conftest import live_pids
from simple_gpu_scheduler.report.joblog import Row, read_joblog

_NEXT_TO_PYTHON = Path(sys.executable).with_name("simple_gpu_scheduler")
SCRIPT = str(_NEXT_TO_PYTHON) if _NEXT_TO_PYTHON.exists() else shutil.which("simple_gpu_scheduler")
ENV = {**os.environ, "SHELL": "/bin/sh"}


def _input_file(stdin: bytes, cwd: Path) -> Path:
    assert SCRIPT, "simple_gpu_scheduler is not on PATH (pip install -e .)"
    source = cwd / f"input-{time.monotonic_ns()}.txt"
    source.write_bytes(stdin)
    return source


def run_sgs(args: Sequence[str], stdin: bytes, cwd: Path, timeout: float = 30,
            script: str = "") -> subprocess.CompletedProcess:
    """Run the scheduler to its end on `stdin` written to a file."""
    with open(_input_file(stdin, cwd), "rb") as handle:
        return subprocess.run([script or SCRIPT, *args], stdin=handle, capture_output=True,
                              cwd=cwd, env=ENV, timeout=timeout, start_new_session=True)


def start_sgs(args: Sequence[str], stdin: bytes, cwd: Path) -> subprocess.Popen:
    with open(_input_file(stdin, cwd), "rb") as handle:
        return subprocess.Popen([SCRIPT, *args], stdin=handle, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=cwd, env=ENV, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """Leave nothing running after a failed test: terminate (twice), then kill."""
    if proc.returncode is not None:
        return
    for signum in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        proc.send_signal(signum)
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            pass
    try:
        proc.communicate(timeout=10)
    except (subprocess.TimeoutExpired, ValueError):
        pass


def wait_for(condition: Callable[[], object], timeout: float = 15, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def rows_of(path: Path) -> List[Row]:
    rows, warning, _ = read_joblog(str(path))
    assert warning is None, warning
    return rows


def processes_with(marker: bytes) -> List[int]:
    """Live (non-zombie) processes whose command line contains `marker`."""
    return live_pids(marker.decode())
