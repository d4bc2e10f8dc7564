"""Session setup and pytest fixtures of the whole suite (tests/unit and
tests/integration); the helpers they are built on are in ``harness.py``."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable, List, Sequence

import pytest

# The test modules of both folders import `harness` (and the fake `pynvml` lives
# in tests/fakes, put on a scheduler's PYTHONPATH by FakeMachine.env, not here).
TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from harness import SGS, Recorder, Sgs, live_pids  # noqa: E402

#: A lock directory of our own (SGS_LOCK_DIR): the schedulers of this suite never
#: wait for, or hold up, GPU locks of other suites or users running at the same time.
#: In os.environ, so `child_env()` and tests that build an environment themselves get it.
LOCK_DIR = tempfile.mkdtemp(prefix="sgs-test-locks-")
os.environ["SGS_LOCK_DIR"] = LOCK_DIR
#: A control directory of our own (SGS_CONTROL_DIR, mode 0700 from mkdtemp): the
#: client verbs of this suite see only this suite's runs, never the user's own.
CONTROL_DIR = tempfile.mkdtemp(prefix="sgs-test-control-")
os.environ["SGS_CONTROL_DIR"] = CONTROL_DIR


@pytest.fixture(scope="session")
def sgs_command() -> str:
    """The installed console script; fails the test if it is not installed."""
    if SGS is None:
        pytest.fail(
            "the simple_gpu_scheduler console script is not installed "
            "(run `pip install -e .` in the repository root)")
    return SGS


@pytest.fixture
def start_sgs(tmp_path: Path) -> Iterable[Callable[..., Sgs]]:
    """Start schedulers in the background (`Sgs` in tmp_path); at teardown kill any
    still running (by pid: only what this test started)."""
    started: List[Sgs] = []

    def start(args: Sequence[str], **kwargs: object) -> Sgs:
        sgs = Sgs(args, tmp_path, **kwargs)  # type: ignore[arg-type]
        started.append(sgs)
        return sgs

    yield start
    for sgs in started:
        if sgs.alive():
            sgs.proc.kill()
            sgs.proc.wait(5)
        if sgs.proc.stdin is not None:
            sgs.proc.stdin.close()


@pytest.fixture
def markers() -> Iterable[List[str]]:
    """Markers a test used in job commands; whatever still runs with one is
    SIGKILLed at teardown, so a failing test never leaves 300 s sleeps behind."""
    used: List[str] = []
    yield used
    for marker in used:
        for pid in live_pids(marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture
def recorder(tmp_path: Path) -> Recorder:
    """A `Recorder` writing into tmp_path."""
    return Recorder(tmp_path)
