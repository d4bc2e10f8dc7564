"""The one helper module of the tests: the installed commands, the scheduler's
environment, running and starting it, polling with a deadline, a job's
processes through /proc, the recording job, and the fake GPUs.

Plain functions and classes only. The pytest fixtures built on them, and the
session setup (the suite's own lock directory, ``SGS_LOCK_DIR``), are in
``tests/conftest.py``, which also puts ``tests/`` on ``sys.path`` so that
``from harness import ...`` works in ``tests/unit/`` and ``tests/integration/``.

Integration tests run the real ``simple_gpu_scheduler`` console script with
real processes; nothing about subprocess is mocked. Every wait is a poll with
a deadline, so a hang fails a test instead of blocking the suite.

Only the hardware is fake: `FakeMachine` writes the JSON file that the fake
``pynvml`` (tests/fakes/pynvml.py, first on PYTHONPATH) and the fake
``nvidia-smi`` (tests/fakes/nvidia-smi, first on PATH) read on every call, so
a test changes what the GPUs show while a real scheduler process runs.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import (
    IO,
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Optional,
    Sequence,
    TypeVar,
    Union,
)

import pytest

if TYPE_CHECKING:
    from simple_gpu_scheduler.report.joblog import Row

#: The repository's root directory (where pyproject.toml and benchmarks/ are).
REPO_ROOT = Path(__file__).resolve().parent.parent

#: Seconds any single scheduler run may take before the test fails.
RUN_TIMEOUT = 30.0

T = TypeVar("T")


# --- the installed commands ------------------------------------------------------


def find_command(name: str) -> Optional[str]:
    """An installed console script, looked up on PATH with this interpreter's own
    bin directory first: it is the one `pip install -e .` wrote, and a pyenv shim
    found earlier on PATH would add ~0.1 s to each of the suite's ~150 runs."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which(name, path=path)


#: The installed ``simple_gpu_scheduler`` (None if not installed: the
#: ``sgs_command`` fixture then fails the test with the reason).
SGS = find_command("simple_gpu_scheduler")
#: The installed ``simple_hypersearch``.
HYPERSEARCH = find_command("simple_hypersearch")


# --- environments ---------------------------------------------------------------


def child_env(extra: Optional[Dict[str, str]] = None, *, shell: Optional[str] = "/bin/sh"
              ) -> Dict[str, str]:
    """The scheduler's environment: ours (with the suite's own ``SGS_LOCK_DIR``,
    set by conftest.py), without GPU variables that would leak into assertions,
    with ``SHELL=/bin/sh`` (fast) unless `shell` is None (then unset)."""
    env = dict(os.environ)
    for name in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "SGS_JOB_ID"):
        env.pop(name, None)
    if shell is None:
        env.pop("SHELL", None)
    else:
        env["SHELL"] = shell
    if extra:
        env.update(extra)
    return env


# --- running and starting the scheduler ----------------------------------------------


def input_file(data: bytes, directory: Path) -> Path:
    """`data` written to a new file in `directory`, to be the scheduler's stdin."""
    path = directory / f"input-{time.monotonic_ns()}.txt"
    path.write_bytes(data)
    return path


def run_sgs(args: Sequence[str], input: Union[bytes, str] = b"", *, cwd: Optional[Path] = None,
            env: Optional[Dict[str, str]] = None, timeout: float = RUN_TIMEOUT,
            from_file: bool = False, **kwargs: Any) -> subprocess.CompletedProcess:
    """Run the scheduler to its end with `input` on stdin; capture both streams.

    `env` defaults to `child_env()`. With ``text=True`` (passed on to
    `subprocess.run`) `input` and the captured streams are str. With
    `from_file`, stdin is a regular file in `cwd` holding `input` (as in
    ``simple_gpu_scheduler < jobs.txt``) and the scheduler runs in a session of
    its own."""
    assert SGS is not None, "simple_gpu_scheduler is not installed"
    env = child_env() if env is None else env
    if not from_file:
        if kwargs.get("text") and input == b"":
            input = ""
        return subprocess.run([SGS, *args], input=input, capture_output=True, cwd=cwd,
                              env=env, timeout=timeout, **kwargs)
    assert cwd is not None and isinstance(input, bytes), "from_file needs cwd and bytes"
    kwargs.setdefault("start_new_session", True)
    with open(input_file(input, cwd), "rb") as handle:
        return subprocess.run([SGS, *args], stdin=handle, capture_output=True, cwd=cwd,
                              env=env, timeout=timeout, **kwargs)


Target = Union[int, IO[Any], Path, None]


def popen_sgs(args: Sequence[str], input: Optional[bytes] = None, *,
              cwd: Optional[Path] = None, env: Optional[Dict[str, str]] = None,
              stdin: Target = subprocess.PIPE, stdout: Target = subprocess.PIPE,
              stderr: Target = subprocess.PIPE, text: bool = False,
              new_session: bool = True) -> subprocess.Popen:
    """Start the scheduler in the background and return its `Popen`.

    With `input`, stdin is a regular file in `cwd` holding it (the input ends at
    once); otherwise `stdin` (a pipe by default: write to it with `send`).
    `stdout` and `stderr` may be a `Path`: the stream then goes to that file,
    which the test can poll. `env` defaults to `child_env()`; `new_session`
    puts the scheduler in a session of its own, so a test can signal it alone."""
    assert SGS is not None, "simple_gpu_scheduler is not installed"
    opened: List[IO[Any]] = []

    def target(value: Target, mode: str) -> Any:
        if isinstance(value, Path):
            opened.append(open(value, mode))
            return opened[-1]
        return value

    try:
        if input is not None:
            assert cwd is not None, "input goes to a file in cwd"
            stdin = input_file(input, cwd)
        return subprocess.Popen(
            [SGS, *args], stdin=target(stdin, "rb"), stdout=target(stdout, "wb"),
            stderr=target(stderr, "wb"), cwd=cwd, env=child_env() if env is None else env,
            text=text, start_new_session=new_session)
    finally:
        for handle in opened:
            handle.close()


def send(proc: subprocess.Popen, *commands: str) -> None:
    """Write `commands`, one a line, to the scheduler's stdin pipe and flush."""
    assert proc.stdin is not None
    data = "".join(c + "\n" for c in commands)
    proc.stdin.write(data if isinstance(proc.stdin, io.TextIOBase) else data.encode())
    proc.stdin.flush()


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


class Sgs:
    """A scheduler running in the background (`popen_sgs`), in a session of its own,
    so a test can signal it alone. stdout and stderr go to files the test can poll,
    unless given. The ``start_sgs`` fixture makes these and cleans up after them."""

    def __init__(self, args: Sequence[str], workdir: Path, *, stdin: object = subprocess.PIPE,
                 stdout: object = None, env: Optional[Dict[str, str]] = None,
                 stderr: object = None, new_session: bool = True) -> None:
        self.stderr_path = workdir / f"sgs-stderr-{id(self)}.txt"
        self.stdout_path = workdir / f"sgs-stdout-{id(self)}.txt"
        self.proc = popen_sgs(
            args, cwd=workdir, env=env, stdin=stdin,  # type: ignore[arg-type]
            stdout=self.stdout_path if stdout is None else stdout,  # type: ignore[arg-type]
            stderr=self.stderr_path if stderr is None else stderr,  # type: ignore[arg-type]
            new_session=new_session)

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
    """Poll until `path` exists; return it."""
    poll_until(path.exists, timeout, what=f"{path} to exist")
    return path


def read_lines(path: Path) -> List[str]:
    """The lines of `path`; none while it does not exist yet."""
    return path.read_text().splitlines() if path.exists() else []


def rows_of(path: Path) -> List[Row]:
    """The rows of the job log at `path`, which must read without a warning."""
    # Imported here: the harness imports no package code until a test needs it.
    from simple_gpu_scheduler.report.joblog import read_joblog

    rows, warning, _ = read_joblog(str(path))
    assert warning is None, warning
    return rows


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
        """The job command that records `label`'s start and end around a sleep."""
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


#: One ``--progress`` status line (group 5 is "+" while the input is still open).
PROGRESS_STATUS = re.compile(
    r"done (\d+) \| failed (\d+) \| running (\d+) \| queued (\d+)(\+?) \| \d+:\d\d:\d\d"
    r" \| [\d.]+/(?:s|min)(?: \| ETA (?:\d+:\d\d:\d\d|-))?")


def started_ids(stderr: str) -> List[int]:
    """The ids of the ``job N started`` lines (``job N (name) started``), in order."""
    return [int(m) for m in re.findall(r"^\[sgs\] job (\d+)(?: \(.*?\))? started", stderr, re.M)]


def not_started(stderr: str) -> Dict[int, str]:
    """job id -> command of every ``not started`` line."""
    return {int(i): text for i, text in
            re.findall(r"^\[sgs\] not started: job (\d+)(?: \(.*?\))?: (.*)$", stderr, re.M)}


# --- the fake GPUs ----------------------------------------------------------------

FAKES = Path(__file__).resolve().parent / "fakes"
GiB = 2**30


def fake_gpu(n: int, **fields: Any) -> Dict[str, Any]:
    """One fake GPU: 80 GiB, idle, no processes, unless told otherwise."""
    gpu: Dict[str, Any] = {
        "uuid": f"GPU-{n:08x}-1111-2222-3333-{n:012x}", "name": "Fake A100 80GB",
        "memory_total": 80 * GiB, "util": 0, "processes": [],
    }
    gpu.update(fields)
    return gpu


def fake_mig(n: int, **fields: Any) -> Dict[str, Any]:
    """One fake MIG instance of 40 GiB (for a fake GPU's ``mig`` list)."""
    mig: Dict[str, Any] = {"uuid": f"MIG-{n:08x}-aaaa-bbbb-cccc-{n:012x}",
                           "name": "Fake A100 MIG 3g.40gb", "memory_total": 40 * GiB,
                           "processes": []}
    mig.update(fields)
    return mig


class FakeMachine:
    """The fake GPUs of one test, and what the fakes were asked."""

    def __init__(self, root: Path, gpus: List[Dict[str, Any]], **top: Any) -> None:
        self.root = root
        self.path = root / "gpus.json"
        self.log = root / "fake-calls.log"
        self.locks = root / "locks"
        self.state: Dict[str, Any] = {"gpus": gpus, **top}
        self.write()

    @property
    def gpus(self) -> List[Dict[str, Any]]:
        return self.state["gpus"]

    def write(self) -> None:
        # Atomic: a scheduler may read the file at any moment.
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.path)

    def env(self, route: str = "nvml", **extra: str) -> Dict[str, str]:
        """The environment of a scheduler that finds the GPUs through `route`:
        "nvml", "smi" (NVML fails, nvidia-smi works) or "none"."""
        if route != "nvml" and self.state.get("nvml", True):
            self.state["nvml"] = False
            self.write()
        env = child_env()
        env.update(SGS_FAKE_GPUS=str(self.path), SGS_FAKE_LOG=str(self.log),
                   PYTHONPATH=str(FAKES))
        python_bin = str(Path(sys.executable).parent)
        if route == "none":
            # Only the tools jobs use: no nvidia-smi, even on a machine with one.
            tools = self.root / "tools-bin"
            tools.mkdir(exist_ok=True)
            for tool in ("sh", "date", "sleep", "touch", "cat"):
                found = shutil.which(tool)
                if found and not (tools / tool).exists():
                    (tools / tool).symlink_to(found)
            env["PATH"] = str(tools)
        else:
            env["PATH"] = os.pathsep.join([str(FAKES), python_bin, env.get("PATH", "")])
        env.update(extra)
        return env

    def calls(self, prefix: str = "") -> List[str]:
        """The calls the fakes logged (``nvml NAME ...``, ``smi ARGS``) starting with `prefix`."""
        if not self.log.exists():
            return []
        return [line for line in self.log.read_text().splitlines() if line.startswith(prefix)]

    def samples(self) -> int:
        """How many times usage was sampled (the process list is only asked then)."""
        return len(self.calls("nvml nvmlDeviceGetComputeRunningProcesses")) + len(
            self.calls("smi --query-compute-apps"))


# --- the control socket ----------------------------------------------------------


def control_dir() -> Path:
    """The suite's control directory (``SGS_CONTROL_DIR``, set by conftest.py)."""
    return Path(os.environ["SGS_CONTROL_DIR"])


def run_name(tag: str = "run") -> str:
    """A run name no other test uses (``--name``)."""
    return f"{tag}-{os.getpid()}-{time.monotonic_ns()}"


def verb(*args: str, env: Optional[Dict[str, str]] = None, input: Optional[str] = None,
         timeout: float = RUN_TIMEOUT, cwd: Optional[Path] = None
         ) -> subprocess.CompletedProcess:
    """``simple_gpu_scheduler VERB ...`` (a client), run to its end, text streams."""
    assert SGS is not None, "simple_gpu_scheduler is not installed"
    return subprocess.run([SGS, *args], input=input, capture_output=True, text=True,
                          env=child_env() if env is None else env, timeout=timeout, cwd=cwd)


def verb_json(*args: str, **kwargs: Any) -> Any:
    """A client verb with ``--json``: its output, parsed; fails the test on exit != 0."""
    done = verb(*args, "--json", **kwargs)
    assert done.returncode == 0, (args, done.returncode, done.stderr)
    return json.loads(done.stdout)


class Client:
    """A raw connection to a run's socket, for what the verbs never send."""

    def __init__(self, name: str, timeout: float = 10.0) -> None:
        import socket

        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(control_dir() / f"{name}.sock"))
        self._buffer = b""
        self.greeting = self.read()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> Any:
        """The next line from the server, parsed (None at its end)."""
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def request(self, message: Dict[str, Any]) -> Any:
        self.send_raw(json.dumps(message).encode() + b"\n")
        return self.read()

    def close(self) -> None:
        self.sock.close()


def wait_for_run(name: str, timeout: float = 10.0) -> Dict[str, Any]:
    """Poll until run `name` answers on its socket; its greeting."""
    def greeting() -> Optional[Dict[str, Any]]:
        try:
            client = Client(name, timeout=1.0)
        except OSError:
            return None
        client.close()
        return client.greeting

    return poll_until(greeting, timeout, what=f"run {name} to answer on its socket")
