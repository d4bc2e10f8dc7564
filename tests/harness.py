"""Shared helpers for the scheduler's tests: the installed command, polling,
recording jobs and finding a job's processes through /proc.

Integration tests run the real ``simple_gpu_scheduler`` console script with
real processes; nothing about subprocess is mocked. Every wait is a poll with
a deadline, so a hang fails a test instead of blocking the suite.
"""

from __future__ import annotations

import fcntl
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, TypeVar, Union

import pytest

#: Seconds any single scheduler run may take before the test fails.
RUN_TIMEOUT = 30.0

T = TypeVar("T")


# --- the installed command ------------------------------------------------------


def _find_command() -> Optional[str]:
    """The installed console script, looked up on PATH with this interpreter's own
    bin directory first: it is the one `pip install -e .` wrote, and a pyenv shim
    found earlier on PATH would add ~0.1 s to each of the suite's ~150 runs."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which("simple_gpu_scheduler", path=path)


SGS = _find_command()


@pytest.fixture(scope="session")
def sgs_command() -> str:
    if SGS is None:
        pytest.fail(
            "the simple_gpu_scheduler console script is not installed "
            "(run `pip install -e .` in the repository root)")
    return SGS


#: A lock directory of our own (SGS_LOCK_DIR): the schedulers of this suite never
#: wait for, or hold up, GPU locks of other suites or users running at the same time.
LOCK_DIR = tempfile.mkdtemp(prefix="sgs-test-locks-")
# Also for the tests that build their environment from os.environ themselves.
os.environ["SGS_LOCK_DIR"] = LOCK_DIR


def child_env(extra: Optional[Dict[str, str]] = None, *, shell: Optional[str] = "/bin/sh"
              ) -> Dict[str, str]:
    """The scheduler's environment: ours, without GPU variables that would leak into
    assertions, with ``SHELL=/bin/sh`` (fast) unless `shell` is None (then unset),
    and the suite's own GPU lock directory."""
    env = dict(os.environ)
    env["SGS_LOCK_DIR"] = LOCK_DIR
    for name in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "SGS_JOB_ID"):
        env.pop(name, None)
    if shell is None:
        env.pop("SHELL", None)
    else:
        env["SHELL"] = shell
    if extra:
        env.update(extra)
    return env


def run_sgs(args: Sequence[str], input: bytes = b"", *, cwd: Optional[Path] = None,
            env: Optional[Dict[str, str]] = None, timeout: float = RUN_TIMEOUT,
            **kwargs: object) -> subprocess.CompletedProcess:
    """Run the scheduler to its end with `input` on stdin; capture both streams."""
    assert SGS is not None, "simple_gpu_scheduler is not installed"
    return subprocess.run(
        [SGS, *args], input=input, capture_output=True, cwd=cwd,
        env=child_env() if env is None else env, timeout=timeout, **kwargs)


class Sgs:
    """A scheduler running in the background, in a session of its own, so a test
    can signal it alone. stderr goes to a file the test can poll."""

    def __init__(self, args: Sequence[str], workdir: Path, *, stdin: object = subprocess.PIPE,
                 stdout: object = None, env: Optional[Dict[str, str]] = None,
                 stderr: object = None, new_session: bool = True) -> None:
        assert SGS is not None, "simple_gpu_scheduler is not installed"
        self.stderr_path = workdir / f"sgs-stderr-{id(self)}.txt"
        self.stdout_path = workdir / f"sgs-stdout-{id(self)}.txt"
        own_err = stderr is None
        err = open(self.stderr_path, "wb") if own_err else stderr
        out = open(self.stdout_path, "wb") if stdout is None else stdout
        try:
            self.proc = subprocess.Popen(
                [SGS, *args], stdin=stdin, stdout=out, stderr=err, cwd=workdir,
                env=child_env() if env is None else env, start_new_session=new_session)
        finally:
            if own_err:
                err.close()  # type: ignore[union-attr]
            if stdout is None:
                out.close()  # type: ignore[union-attr]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()

    def stderr(self) -> str:
        return self.stderr_path.read_bytes().decode("utf-8", "replace")

    def stdout(self) -> bytes:
        return self.stdout_path.read_bytes()

    def wait_stderr(self, pattern: str, timeout: float = 10.0) -> "re.Match[str]":
        """Poll stderr until `pattern` (a regex) matches; return the match."""
        return poll_until(lambda: re.search(pattern, self.stderr(), re.M), timeout,
                          what=lambda: f"stderr to match {pattern!r}; stderr:\n{self.stderr()}")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        self.close_stdin()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the scheduler did not exit within {timeout}s; stderr:\n{self.stderr()}")

    def alive(self) -> bool:
        return self.proc.poll() is None


@pytest.fixture
def start_sgs(tmp_path: Path) -> Iterable[Callable[..., Sgs]]:
    """Start schedulers in the background; at teardown kill any still running
    (by pid: only what this test started) and any job process left with a marker."""
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


# --- polling ---------------------------------------------------------------------


def poll_until(predicate: Callable[[], T], timeout: float = 10.0, *, interval: float = 0.01,
               what: Union[str, Callable[[], str]] = "the condition") -> T:
    """Return the first truthy value of `predicate()`; fail after `timeout` seconds,
    saying `what` was awaited (a callable is asked only then, for the latest state)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for "
                        f"{what() if callable(what) else what}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.1)


def wait_for_file(path: Path, timeout: float = 10.0) -> Path:
    poll_until(path.exists, timeout, what=f"{path} to exist")
    return path


# --- processes of a job tree ------------------------------------------------------


def unique_sleep() -> str:
    """A sleep duration nobody else uses, so its value marks a job's process in
    /proc: ``sleep 317.482913`` (long enough never to end during a test)."""
    return f"{random.randint(300, 399)}.{random.randint(0, 999999):06d}"


def _state(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"State:"):
                    return line.split()[1].decode()
    except OSError:
        return None
    return None


def live_pids(marker: str) -> List[int]:
    """Pids whose command line contains `marker`, zombies counted as gone."""
    needle = marker.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ")
        except OSError:
            continue
        if needle in cmdline and _state(int(entry)) not in (None, "Z", "X"):
            found.append(int(entry))
    return found


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


def no_signal_pending(pid: int) -> bool:
    """True when no signal waits for delivery in `pid` or any of its threads, so the
    next one sent lands on a quiet process (the kernel then prefers the main thread)."""
    try:
        paths = [f"/proc/{pid}/task/{tid}/status" for tid in os.listdir(f"/proc/{pid}/task")]
        for path in paths:
            with open(path) as f:
                for line in f:
                    if line.startswith(("SigPnd:", "ShdPnd:")) and int(line.split()[1], 16):
                        return False
    except OSError:
        return False
    return True


def pipe_bytes(fd: int) -> int:
    """Bytes waiting to be read in the pipe whose read end is `fd`."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def wakeups(pid: int) -> int:
    """Voluntary context switches of all of `pid`'s threads: each time one slept and woke."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` from /proc/PID/stat, in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2:].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


# --- recording jobs ----------------------------------------------------------------

RECORDER = r"""#!/bin/sh
# usage: record.sh LABEL SECONDS
# Appends "start NS GPUS ID" and "end NS GPUS ID" to DIR/LABEL.rec.
f="%(dir)s/$1.rec"
echo "start $(date +%%s%%N) $CUDA_VISIBLE_DEVICES $SGS_JOB_ID" >> "$f"
sleep "$2"
echo "end $(date +%%s%%N) $CUDA_VISIBLE_DEVICES $SGS_JOB_ID" >> "$f"
"""


@dataclass(frozen=True)
class Record:
    label: str
    job_id: int
    gpus: tuple
    start: int
    end: int


class Recorder:
    """Writes the recording job into a directory and reads back what jobs recorded."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory / "records"
        self.dir.mkdir()
        self.script = directory / "record.sh"
        self.script.write_text(RECORDER % {"dir": self.dir})
        self.script.chmod(0o755)

    def command(self, label: str, seconds: float = 0.1) -> str:
        return f"{self.script} {label} {seconds}"

    def lines(self, label: str) -> List[List[str]]:
        path = self.dir / f"{label}.rec"
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []

    def record(self, label: str) -> Record:
        """The one run of `label`; fails if it ran more or less than once."""
        lines = self.lines(label)
        starts = [line for line in lines if line[0] == "start"]
        ends = [line for line in lines if line[0] == "end"]
        assert len(starts) == 1 and len(ends) == 1, f"{label} ran {len(starts)} times: {lines}"
        (_, t0, gpus, job_id), (_, t1, gpus_end, _) = starts[0], ends[0]
        assert gpus == gpus_end
        return Record(label, int(job_id), tuple(gpus.split(",")), int(t0), int(t1))

    def all_records(self, labels: Iterable[str]) -> List[Record]:
        return [self.record(label) for label in labels]


@pytest.fixture
def recorder(tmp_path: Path) -> Recorder:
    return Recorder(tmp_path)


def max_concurrency_per_gpu(records: Iterable[Record]) -> Dict[str, int]:
    """For every GPU, the most recorded intervals that overlapped at one instant."""
    events: Dict[str, List[tuple]] = defaultdict(list)
    for r in records:
        for gpu in r.gpus:
            events[gpu].append((r.start, 1))
            events[gpu].append((r.end, -1))
    result = {}
    for gpu, evs in events.items():
        evs.sort(key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
        level = peak = 0
        for _, delta in evs:
            level += delta
            peak = max(peak, level)
        result[gpu] = peak
    return result


def sgs_lines(stderr: str) -> List[str]:
    """The scheduler's own lines (``[sgs] ...``) without the prefix."""
    return [line[len("[sgs] "):] for line in stderr.splitlines() if line.startswith("[sgs] ")]


def started_ids(stderr: str) -> List[int]:
    return [int(m) for m in re.findall(r"^\[sgs\] job (\d+) started", stderr, re.M)]


def not_started(stderr: str) -> Dict[int, str]:
    """job id -> command of every ``not started`` line."""
    return {int(i): text for i, text in
            re.findall(r"^\[sgs\] not started: job (\d+): (.*)$", stderr, re.M)}
