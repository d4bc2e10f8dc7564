"""``--on-finish CMD``: a command run after each job ends for good.

For a desktop notification, a chat webhook, a marker file. It runs through
the jobs' shell with the job's facts in its environment (`variables`), on
no GPU and in no slot: it never delays a job. Its exit status is reported
when it is not 0 and never fails the run. It runs for every job that was
started or could not start; not for the jobs a drain or ``cancel`` left
unstarted (a drain of 10,000 queued commands must not send 10,000
messages).

Each command is reaped by a small helper thread of its own (they are few
and short); the run waits for the ones still running before it ends, so the
last job's notification is not lost.
"""

from __future__ import annotations

import os
from collections import deque

from .. import threads
from ..model import events as ev
from ..model.jobs import Exited, Killed, NotStarted, TimedOut, signal_name

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Callable, Deque, Dict, Mapping, Tuple

    from ..launch.base import Reactor
    from .local import LocalLauncher


def variables(event: ev.JobDone) -> Dict[str, str]:
    """SGS_JOB_ID, SGS_JOB_NAME, SGS_EXIT, SGS_SIGNAL, SGS_STATUS, SGS_GPUS and
    SGS_COMMAND of the job that ended."""
    job, outcome = event.job, event.outcome
    code, signum = "", ""
    if isinstance(outcome, Exited):
        status = "succeeded" if outcome.ok else "failed"
        code = str(outcome.code)
    elif isinstance(outcome, TimedOut):
        status, signum = "timed out", signal_name(outcome.signal)
    elif isinstance(outcome, Killed):
        status, signum = "killed", signal_name(outcome.signal)
    else:
        status = "failed"  # it could not start
    return {
        "SGS_JOB_ID": str(job.id), "SGS_JOB_NAME": job.name or "", "SGS_EXIT": code,
        "SGS_SIGNAL": signum, "SGS_STATUS": status, "SGS_GPUS": ",".join(event.gpus),
        # A NUL cannot be in an environment (an invalid input line has one).
        "SGS_COMMAND": os.fsdecode(job.command.replace(b"\0", b"\\0")),
    }


#: --on-finish commands that run at once; the others wait their turn.
AT_ONCE = 8


class OnFinish:
    def __init__(self, command: str, launcher: LocalLauncher, reactor: Reactor,
                 say: Callable[[str, int], None], base_env: Mapping[str, str]) -> None:
        self.command = os.fsencode(command)
        self._launcher = launcher
        self._reactor = reactor
        self._say = say
        self._base_env = dict(base_env)
        #: pid -> the job it is for
        self._running: Dict[int, int] = {}
        #: (job id, environment) of the commands not started yet
        self._waiting: Deque[Tuple[int, Dict[str, str]]] = deque()

    @property
    def busy(self) -> bool:
        return bool(self._running or self._waiting)

    def __call__(self, event: ev.Event) -> None:
        if not isinstance(event, ev.JobDone) or isinstance(event.outcome, NotStarted):
            return
        env = dict(self._base_env)
        env.update(variables(event))
        env.pop("CUDA_VISIBLE_DEVICES", None)  # it holds no GPU
        env["SGS_ON_FINISH"] = "1"  # the mark `procgroup` knows: never a job's orphan
        self._waiting.append((event.job.id, env))
        self._start_some()

    def _start_some(self) -> None:
        """Start waiting commands while fewer than `AT_ONCE` run: a drain that
        fails 10,000 jobs at once must not start 10,000 shells."""
        while self._waiting and len(self._running) < AT_ONCE:
            job_id, env = self._waiting.popleft()
            try:
                pid = self._launcher.spawn_helper(self.command, env)
            except (OSError, ValueError) as exc:  # ValueError: a NUL in a variable
                self._say(f"--on-finish for job {job_id} could not start: "
                          f"{getattr(exc, 'strerror', None) or exc}", 1)
                continue
            self._running[pid] = job_id
            try:
                threads.start(self._wait, pid)
            except RuntimeError:  # no thread to be had: reap it on this one
                self._ended(pid, os.waitpid(pid, 0)[1])

    def _wait(self, pid: int) -> None:
        # On a helper thread: only hand the status over.
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            status = 0
        self._reactor.call_soon_threadsafe(lambda: self._ended(pid, status))

    def _ended(self, pid: int, status: int) -> None:
        job_id = self._running.pop(pid, 0)
        self._start_some()
        if os.WIFSIGNALED(status):
            why = f"was killed by {signal_name(os.WTERMSIG(status))}"
        elif os.WEXITSTATUS(status):
            why = f"exited with status {os.WEXITSTATUS(status)}"
        else:
            return
        self._say(f"--on-finish for job {job_id} {why} (the run goes on)", 1)



