"""The local launcher: each job as ``SHELL -c COMMAND`` on this machine.

This is the one place that creates job processes. Every job runs in a session
of its own (``setsid``): Ctrl-C in the terminal reaches the scheduler only,
and a signal to the job's process group reaches its grandchildren too. stdin
is ``/dev/null`` so a job can never read the scheduler's queue.

A job's exit is an event on the engine's thread, not a thread per job: the
shell's pidfd (``os.pidfd_open``) is watched by the engine's selector and
becomes readable the moment the shell exits. Then:

- the shell is reaped and its status becomes the `Outcome`;
- if its group (or an orphan that escaped it, see `procgroup`) still has
  processes, the engine is told at once that the job ended *lingering*, and
  its stop ladder ends them; this launcher looks every `POLL` seconds, only
  while something lingers, and says ``cleared`` when nothing is left;
- otherwise, under ``--tag``/``--progress``, it waits for the copies of the
  job's output to reach their end (microseconds: nothing else holds the pipe),
  at most `OUTPUT_WAIT` seconds, so the job's last lines come before the
  scheduler's "finished" line.
"""

from __future__ import annotations

import errno
import os
import pwd
import signal
import time

from ..errors import LaunchError
from ..model.jobs import outcome_from_returncode
from .procgroup import Orphans, group_alive, send_group
from .streams import Passthrough

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    import select
    import subprocess
    from typing import Dict, List, Mapping, Optional, Tuple

    from ..model.jobs import Job, Outcome
    from .base import Cancellable, LauncherEvents, Reactor
    from .copier import Copy
    from .streams import JobStreams, OutputMode

#: Seconds between looks at what lingers after a job's shell exited.
POLL = 0.05
#: Seconds a job's end waits for the last of its output to be copied.
OUTPUT_WAIT = 0.5
#: Signals Python ignores that a job must get back at their defaults (as
#: `subprocess` does with ``restore_signals``): a job writing to a closed pipe
#: must die of SIGPIPE like it would from a shell.
RESTORED_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


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


def job_environment(base: Mapping[str, str], job: Job, gpus: Tuple[str, ...]) -> dict:
    """The environment a job runs with: ours, the job's own, and the GPU variables."""
    env = dict(job.env) if job.whole_env else dict(base)
    if not job.whole_env:
        env.update(job.env)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    env["SGS_JOB_ID"] = str(job.id)
    # Without this CUDA numbers GPUs fastest-first, so `--gpus 1` would not be
    # the GPU that nvidia-smi and NVML call 1. A user's own choice wins.
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    return env


class LocalExecution:
    """One running attempt of a job on this machine: a process group."""

    host = "local"
    placed = True

    def __init__(self, launcher: LocalLauncher, job: Job, gpus: Tuple[str, ...], pid: int,
                 proc: Optional[subprocess.Popen[bytes]]) -> None:
        self.job = job
        self.gpus = gpus
        self.pid = pid
        self.started_wall = time.time()
        self.started = time.monotonic()
        self._launcher = launcher
        self._proc = proc
        self.pidfd = -1
        self.pumps: List[Copy] = []
        self.exited = False  # the shell was reaped: its pid may be reused
        self.outcome: Optional[Outcome] = None
        #: the last signal its tree was sent: an orphan of it adopted later gets it too
        self.last_signal: Optional[int] = None
        self.reported = False
        self.output_timer: Optional[Cancellable] = None

    def terminate(self) -> None:
        self._launcher.signal(self, signal.SIGTERM)

    def kill(self) -> None:
        self._launcher.signal(self, signal.SIGKILL)

    def __repr__(self) -> str:
        return f"LocalExecution(job={self.job.id}, pid={self.pid})"


class LocalLauncher:
    """Runs jobs as ``SHELL -c COMMAND`` on this machine."""

    def __init__(
        self, shell: Optional[str] = None, output: Optional[OutputMode] = None,
        base_env: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.shell = shell or default_shell()
        self._output = output or Passthrough()
        self._base_env = dict(os.environ if base_env is None else base_env)
        self._devnull = -1
        #: /dev/null for writing, once our stdout is gone (see `_stdout_for_job`)
        self._sink = -1
        self._stdout_gone = False
        self._stdout_poll: Optional[select.poll] = None
        self._reactor: Optional[Reactor] = None
        self._events: Optional[LauncherEvents] = None
        #: leader pid -> execution, from start until nothing of it is left
        self._live: Dict[int, LocalExecution] = {}
        self._lingering: Dict[int, LocalExecution] = {}
        self._poll: Optional[Cancellable] = None
        #: output copies that may still be running, for `finish`
        self._pumps: List[Copy] = []
        self._orphans = Orphans()

    # --- the Launcher protocol ------------------------------------------------

    def attach(self, reactor: Reactor, events: LauncherEvents) -> None:
        self._reactor = reactor
        self._events = events
        # Started with SIGCHLD ignored (inherited SIG_IGN), the kernel reaps our
        # children itself and their exit statuses are lost: every job would
        # "succeed". That disposition is not the user's wish for us, so it goes
        # back to the default (and jobs inherit the default too).
        if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # One /dev/null for every job's stdin.
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._orphans.enable()

    def leaders(self) -> Dict[int, Job]:
        """Our process groups (leader pid -> job), for telling our processes
        on a GPU from other users'."""
        return {pid: ex.job for pid, ex in self._live.items()}

    def start(self, job: Job, gpus: Tuple[str, ...]) -> LocalExecution:
        assert self._reactor is not None, "attach first"
        if job.invalid:
            raise LaunchError(job.invalid)
        try:
            streams = self._output.streams(job.id, gpus, job.attempts, job.name)
        except OSError as exc:
            raise LaunchError(f"cannot open its log file: {exc.strerror}: {exc.filename}") from None
        env = job_environment(self._base_env, job, gpus)
        proc = None
        try:
            if job.cwd is None:
                pid = self._spawn(job.command, env, streams)
            else:
                proc = self._popen(job.command, env, streams, job.cwd)
                pid = proc.pid
        except ValueError as exc:  # "embedded null byte"
            streams.close()
            raise LaunchError(f"invalid command: {exc}") from None
        except OSError as exc:
            streams.close()
            raise LaunchError(self._describe(exc, job)) from None
        execution = LocalExecution(self, job, gpus, pid, proc)
        self._live[pid] = execution
        self._orphans.job_started(pid)
        reactor = self._reactor
        if streams.copies:
            execution.pumps = streams.started(
                lambda: reactor.call_soon_threadsafe(lambda: self._output_done(execution)))
            self._pumps = [p for p in self._pumps if not p.join(0)] + execution.pumps
        else:
            streams.started()
        self._watch(execution)
        return execution

    def finish(self) -> None:
        """Wait until every job's output has been copied (``--tag``): at exit,
        a slow reader downstream must still get every line."""
        for pump in self._pumps:
            pump.finish()
        self._pumps = []

    def close(self) -> None:
        """Kill whatever of our jobs is still there (only after an error: the
        engine waits for every job to be cleared)."""
        for execution in list(self._live.values()):
            self.signal(execution, signal.SIGKILL)
        self._scan()
        self._orphans.kill_all()

    # --- ending ---------------------------------------------------------------

    def signal(self, execution: LocalExecution, signum: int) -> None:
        """Signal the job's whole tree: its group, and what escaped it."""
        if self._live.get(execution.pid) is not execution:
            return  # cleared: the group id may belong to somebody else by now
        if execution.exited and not self._tree_alive(execution):
            # The shell is reaped and its group is empty: nothing pins the group
            # id any more (a live member does), so it is not ours to signal.
            return
        execution.last_signal = signum
        send_group(execution.pid, signum)
        if self._orphans.enabled:
            self._scan()
            self._orphans.signal(execution.job.id, signum)

    def _watch(self, execution: LocalExecution) -> None:
        assert self._reactor is not None
        try:
            execution.pidfd = os.pidfd_open(execution.pid)
        except (AttributeError, OSError):
            # No pidfd (Linux < 5.3): a thread waits instead, and posts.
            from .. import threads

            reactor = self._reactor
            threads.start(self._wait_in_thread, execution, reactor)
            return
        self._reactor.add_reader(execution.pidfd, lambda: self._exited(execution))

    def _wait_in_thread(self, execution: LocalExecution, reactor: Reactor) -> None:
        try:
            os.waitid(os.P_PID, execution.pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            pass
        reactor.call_soon_threadsafe(lambda: self._exited(execution))

    def _exited(self, execution: LocalExecution) -> None:
        """The shell has exited (its pidfd is readable): reap it, tell the engine."""
        assert self._reactor is not None and self._events is not None
        if execution.pidfd >= 0:
            self._reactor.remove_reader(execution.pidfd)
            os.close(execution.pidfd)
            execution.pidfd = -1
        try:
            _, status = os.waitpid(execution.pid, 0)
            returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            returncode = 0  # reaped by somebody else: nothing better is known
        if execution._proc is not None:
            execution._proc.returncode = returncode  # we reaped it, not Popen
        execution.exited = True
        execution.outcome = outcome_from_returncode(returncode)
        # The orphans this exit made are this job's when no other job runs
        # (with others running, one that nothing else ties to a job could be
        # any job's: it is then only killed when the scheduler exits).
        alone = all(ex is execution for ex in self._live.values())
        self._scan(ending=execution.job.id if alone else None)
        if self._tree_alive(execution):
            self._report(execution, lingering=True)
            self._lingering[execution.pid] = execution
            self._arm_poll()
        elif all(p.join(0) for p in execution.pumps):
            self._report(execution, lingering=False)
            self._clear(execution)
        else:
            execution.output_timer = self._reactor.call_at(
                self._reactor.time() + OUTPUT_WAIT, lambda: self._output_done(execution, True))

    def _output_done(self, execution: LocalExecution, waited: bool = False) -> None:
        """A copy of the job's output ended (or we waited long enough)."""
        if not execution.exited or execution.reported or execution.pid in self._lingering:
            return
        if waited or all(p.join(0) for p in execution.pumps):
            if execution.output_timer is not None:
                execution.output_timer.cancel()
            self._report(execution, lingering=False)
            self._clear(execution)

    def _report(self, execution: LocalExecution, lingering: bool) -> None:
        assert self._events is not None and execution.outcome is not None
        execution.reported = True
        self._events.ended(execution, execution.outcome, lingering)

    def _clear(self, execution: LocalExecution) -> None:
        assert self._events is not None
        if self._live.get(execution.pid) is execution:
            del self._live[execution.pid]
        if self._lingering.get(execution.pid) is execution:
            del self._lingering[execution.pid]
        self._events.cleared(execution)

    def _tree_alive(self, execution: LocalExecution) -> bool:
        return group_alive(execution.pid) or bool(self._orphans.of(execution.job.id))

    def _arm_poll(self) -> None:
        assert self._reactor is not None
        if self._lingering and self._poll is None:
            self._poll = self._reactor.call_at(self._reactor.time() + POLL, self._check_lingering)

    def _check_lingering(self) -> None:
        self._poll = None
        self._scan()  # reaps exited orphans: zombies are not alive
        for execution in list(self._lingering.values()):
            if not self._tree_alive(execution):
                self._clear(execution)
        self._arm_poll()

    def _scan(self, ending: Optional[int] = None) -> None:
        """Adopt new orphans; one whose job was signalled already (it became an
        orphan after the signal: its parent died of it) gets that signal too."""
        for pid in self._orphans.scan(*self._maps(), ending=ending):
            owner = self._orphans.owner_of(pid)
            for execution in self._live.values():
                if execution.job.id == owner and execution.last_signal is not None:
                    self._orphans.signal_one(pid, execution.last_signal)

    def _maps(self) -> Tuple[Dict[int, int], Dict[int, int]]:
        """(leader pid -> job id) of the shells not reaped yet, and (group id ->
        job id) of every job not cleared, for `Orphans.scan`."""
        leaders = {pid: ex.job.id for pid, ex in self._live.items() if not ex.exited}
        groups = {pid: ex.job.id for pid, ex in self._live.items()}
        return leaders, groups

    # --- starting -------------------------------------------------------------

    def _stdout_for_job(self, streams: JobStreams) -> Optional[int]:
        """The fd a job gets as stdout: its own (``--tag``, ``--log-dir``), else
        ours, unless ours is gone.

        A job that writes to a pipe whose reader has gone (``| head -1``) dies
        of SIGPIPE, as in any pipeline. Once we know our stdout is gone (the
        write end of a pipe with no reader reports POLLERR), the jobs that
        start afterwards write to /dev/null instead: the stream goes quiet and
        the run goes on, as the README says. A job already running when the
        reader left is not ours to save.
        """
        if streams.out is not None:
            return streams.out
        if not self._stdout_gone:
            if self._stdout_poll is None:
                import select

                self._stdout_poll = select.poll()
                self._stdout_poll.register(1, 0)  # errors only: POLLERR, POLLHUP, POLLNVAL
            for _, revents in self._stdout_poll.poll(0):
                if revents & 0x008:  # POLLERR
                    self._stdout_gone = True
        if not self._stdout_gone:
            return None
        if self._sink < 0:
            self._sink = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        return self._sink

    def spawn_helper(self, command: bytes, env: Mapping[str, str]) -> int:
        """Start ``SHELL -c COMMAND`` for no job and on no GPU (``--on-finish``):
        a session of its own, stdin /dev/null, its output on our stderr; it is
        left out of the orphans of our jobs. Returns its pid (OSError if it
        cannot start); the caller reaps it."""
        if self._devnull < 0:
            self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        spawn = os.posix_spawn if "/" in self.shell else os.posix_spawnp
        pid = spawn(
            self.shell, [os.fsencode(self.shell), b"-c", command], env,
            file_actions=[(os.POSIX_SPAWN_DUP2, self._devnull, 0),
                          (os.POSIX_SPAWN_DUP2, 2, 1)],
            setsid=True, setsigdef=RESTORED_SIGNALS,
        )
        self._orphans.exempt(pid)
        return pid

    def _spawn(self, command: bytes, env: Mapping[str, str], streams: JobStreams) -> int:
        """``posix_spawn``: the child execs the shell directly after ``setsid``,
        without the Python-side work of `subprocess` (a sixth of the cost of
        a short job). Exec errors (no shell, E2BIG) still raise here."""
        actions = [(os.POSIX_SPAWN_DUP2, self._devnull, 0)]
        for fd, target in ((self._stdout_for_job(streams), 1), (streams.err, 2)):
            if fd is not None:
                actions.append((os.POSIX_SPAWN_DUP2, fd, target))
        spawn = os.posix_spawn if "/" in self.shell else os.posix_spawnp
        # Every fd of ours is close-on-exec (Python's default), so the child
        # keeps exactly 0, 1 and 2.
        argv: List[bytes] = [os.fsencode(self.shell), b"-c", command]
        return spawn(
            self.shell, argv, env, file_actions=actions, setsid=True,
            setsigdef=RESTORED_SIGNALS,
        )

    def _popen(
        self, command: bytes, env: Mapping[str, str], streams: JobStreams, cwd: str
    ) -> subprocess.Popen[bytes]:
        """`subprocess` for a job with a working directory (``posix_spawn`` has
        no chdir before Python 3.13)."""
        import subprocess  # only here: a run without ``cwd`` never needs it

        return subprocess.Popen(
            [self.shell, "-c", command], stdin=self._devnull,
            stdout=self._stdout_for_job(streams),
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

