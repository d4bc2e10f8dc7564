"""Starting a job's command on given GPUs, and learning how it ended.

This is the one place that creates processes. The interface is small on
purpose, so that a launcher for other machines (a Ray cluster) can stand in
for `LocalLauncher` later:

- ``start(job, gpus) -> Execution`` starts the command or raises `LaunchError`
  with a one-line reason;
- when the command's process ends, the launcher calls ``on_exit(execution)``
  from a helper thread; the scheduling loop then calls ``execution.collect()``
  for the `Outcome`;
- ``execution.signal(sig)`` signals the job's whole process tree.

Every job runs in a session of its own (``setsid``): Ctrl-C in the terminal
reaches the scheduler only, and a signal to the job's process group reaches
its grandchildren too. stdin is ``/dev/null`` so a job can never read the
scheduler's queue.
"""

from __future__ import annotations

import errno
import os
import pwd
import signal
import time
TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    import subprocess
    from typing import Callable, List, Mapping, Optional, Tuple

from ..model.jobs import Job, Killed, Exited, outcome_from_returncode
from .. import threads
from .streams import JobStreams, OutputMode, Passthrough, TagPump


class LaunchError(Exception):
    """The command could not be started; the message says why in one line."""


def default_shell() -> str:
    """The user's login shell: ``$SHELL``, else the passwd entry, else ``/bin/sh``."""
    shell = os.environ.get("SHELL")
    if shell:
        return shell
    try:
        entry = pwd.getpwuid(os.getuid()).pw_shell
    except KeyError:
        entry = ""
    return entry or "/bin/sh"


def job_environment(
    base: Mapping[str, str], job: Job, gpus: Tuple[str, ...]
) -> dict:
    """The environment a job runs with: ours, the job's own, and the GPU variables."""
    env = dict(base)
    env.update(job.env)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    env["SGS_JOB_ID"] = str(job.id)
    # Without this CUDA numbers GPUs fastest-first, so `--gpus 1` would not be
    # the GPU that nvidia-smi and NVML call 1. A user's own choice wins.
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    return env


class Execution:
    """One running attempt of a job."""

    def __init__(
        self, job: Job, gpus: Tuple[str, ...], pid: int, reap: Callable[[], int],
        pumps: List[TagPump],
    ) -> None:
        self.job = job
        self.gpus = gpus
        self.pid = pid
        self.started_wall = time.time()
        self.started = time.monotonic()
        self.ended: Optional[float] = None
        self._reap = reap
        self._pumps = pumps

    def signal(self, signum: int) -> None:
        """Send `signum` to the job's whole process group; gone is not an error."""
        send_group(self.pid, signum)

    def group_alive(self) -> bool:
        """Whether any process of the job's group is still there."""
        return group_alive(self.pid)

    def collect(self) -> Exited | Killed:
        """Reap the exited shell and return how it ended (call after ``on_exit``)."""
        returncode = self._reap()
        if self.ended is None:
            self.ended = time.monotonic()
        return outcome_from_returncode(returncode)

    @property
    def runtime(self) -> float:
        return (self.ended if self.ended is not None else time.monotonic()) - self.started

    def _wait_for_exit(self, on_exit: Callable[[Execution], None]) -> None:
        # WNOWAIT leaves the process a zombie: its pid, and so its process
        # group id, cannot be reused until the scheduling loop reaps it in
        # `collect`, so a signal sent before that can never hit a stranger.
        try:
            os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            pass
        self.ended = time.monotonic()
        # Let the copies of the job's output finish, so its last lines come
        # before the scheduler's "finished" line. Something the job left
        # running may hold the pipe open: do not wait for that.
        for pump in self._pumps:
            pump.join(0.5)
        on_exit(self)


#: Signals Python ignores that a job must get back at their defaults (as
#: `subprocess` does with ``restore_signals``): a job writing to a closed pipe
#: must die of SIGPIPE like it would from a shell.
RESTORED_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


class LocalLauncher:
    """Runs jobs as ``SHELL -c COMMAND`` on this machine."""

    def __init__(
        self, on_exit: Callable[[Execution], None], shell: Optional[str] = None,
        output: Optional[OutputMode] = None, base_env: Optional[Mapping[str, str]] = None,
    ) -> None:
        self._on_exit = on_exit
        self.shell = shell or default_shell()
        self._output = output or Passthrough()
        self._base_env = dict(os.environ if base_env is None else base_env)
        # One /dev/null for every job's stdin.
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        #: output copies that may still be running, for `finish_output`
        self._pumps: List[TagPump] = []

    def finish_output(self) -> None:
        """Wait until every job's output has been copied (``--tag``): at exit,
        a slow reader downstream must still get every line."""
        for pump in self._pumps:
            pump.finish()
        self._pumps = []

    def start(self, job: Job, gpus: Tuple[str, ...]) -> Execution:
        if job.invalid:
            raise LaunchError(job.invalid)
        try:
            streams = self._output.streams(job.id, gpus, job.attempts)
        except OSError as exc:
            raise LaunchError(f"cannot open its log file: {exc.strerror}: {exc.filename}") from None
        env = job_environment(self._base_env, job, gpus)
        try:
            if job.cwd is None:
                pid = self._spawn(job.command, env, streams)
                reap: Callable[[], int] = lambda: os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            else:
                proc = self._popen(job.command, env, streams, job.cwd)
                pid, reap = proc.pid, proc.wait
        except ValueError as exc:  # "embedded null byte"
            streams.close()
            raise LaunchError(f"invalid command: {exc}") from None
        except OSError as exc:
            streams.close()
            raise LaunchError(self._describe(exc, job)) from None
        pumps = streams.started()
        execution = Execution(job, gpus, pid, reap, pumps)
        threads.start(execution._wait_for_exit, self._on_exit)
        if pumps or self._pumps:
            self._pumps = [p for p in self._pumps if not p.join(0)] + pumps
        return execution

    def _spawn(self, command: bytes, env: Mapping[str, str], streams: JobStreams) -> int:
        """``posix_spawn``: the child execs the shell directly after ``setsid``,
        without the Python-side work of `subprocess` (a sixth of the cost of
        a short job). Exec errors (no shell, E2BIG) still raise here."""
        actions = [(os.POSIX_SPAWN_DUP2, self._devnull, 0)]
        for fd, target in ((streams.out, 1), (streams.err, 2)):
            if fd is not None:
                actions.append((os.POSIX_SPAWN_DUP2, fd, target))
        spawn = os.posix_spawn if "/" in self.shell else os.posix_spawnp
        # Every fd of ours is close-on-exec (Python's default), so the child
        # keeps exactly 0, 1 and 2.
        return spawn(
            self.shell, [self.shell, "-c", command], env, file_actions=actions,
            setsid=True, setsigdef=RESTORED_SIGNALS,
        )

    def _popen(
        self, command: bytes, env: Mapping[str, str], streams: JobStreams, cwd: str
    ) -> subprocess.Popen[bytes]:
        """`subprocess` for a job with a working directory (``posix_spawn`` has
        no chdir before Python 3.13)."""
        import subprocess  # only here: a run without ``cwd`` never needs it

        return subprocess.Popen(
            [self.shell, "-c", command], stdin=self._devnull, stdout=streams.out,
            stderr=streams.err, env=env, cwd=cwd, start_new_session=True,
        )

    def _describe(self, exc: OSError, job: Job) -> str:
        if exc.errno == errno.E2BIG:
            return (f"the command ({len(job.command)} bytes) and environment are "
                    "longer than the kernel allows (E2BIG)")
        if exc.errno == errno.ENOENT and exc.filename == job.cwd and job.cwd:
            return f"working directory {job.cwd} does not exist"
        if exc.errno in (errno.ENOENT, errno.EACCES, errno.ENOEXEC):
            return f"cannot run the shell {self.shell}: {exc.strerror}"
        return f"{exc.strerror or exc}"


def group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` is still there."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def send_group(pgid: int, signum: int = signal.SIGKILL) -> None:
    """Signal a process group that may already be gone."""
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass
