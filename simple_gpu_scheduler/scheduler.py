"""The scheduling loop: one thread owns all state and decides everything.

::

    stdin ──▶ reader thread ── JobRead / InputEnded ──┐
                 ▲  (at most read_ahead jobs unstarted)│
                 └──────── job_taken() ◀──────────┐    ▼
    signal handlers ── SignalReceived ───────▶ events (SimpleQueue) ──▶ loop
    launcher wait threads ── JobExited ──────▶                          │
                                                                        ▼
          RunState (pending, running, counts) ◀── GpuPool.place ──▶ launcher.start
                                                                        │
                                 Console lines (stderr) ◀── outcome ────┘

Every other thread only posts events; the loop blocks on the queue with a
timeout that is the next timer's deadline (kill escalation), so an idle
scheduler sleeps in one blocking call and uses no CPU. `queue.SimpleQueue.put`
is reentrant, which is what makes it safe to call from a signal handler.
"""

from __future__ import annotations

import heapq
import itertools
import os
import queue
import signal
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from .inputs import RawCommand
from .jobs import FailedToStart, Job, NotStarted, Outcome, format_duration, gpu_label, signal_name
from .launcher import Execution, LaunchError, LocalLauncher, send_group
from .output import Console, OutputMode, Passthrough
from .placement import GpuPool
from .reader import InputEnded, JobRead, Reader
from .state import RunState, status_table

#: Signals that stop the run: the first drains, later ones terminate.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

DRAIN, TERMINATE, KILL = 1, 2, 3


@dataclass(frozen=True)
class SignalReceived:
    signum: int


@dataclass(frozen=True)
class JobExited:
    execution: Execution


@dataclass
class Config:
    gpus: Tuple[str, ...]
    jobs_per_gpu: int = 1
    gpus_per_job: int = 1
    shell: Optional[str] = None
    kill_grace: float = 10.0
    output: OutputMode = Passthrough()


class Timers:
    """Deadlines on the monotonic clock; the loop sleeps until the earliest."""

    def __init__(self) -> None:
        self._heap: List[Tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def at(self, deadline: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (deadline, next(self._seq), action))

    def timeout(self) -> Optional[float]:
        if not self._heap:
            return None
        return max(0.0, self._heap[0][0] - time.monotonic())

    def fire(self) -> None:
        now = time.monotonic()
        while self._heap and self._heap[0][0] <= now:
            _, _, action = heapq.heappop(self._heap)
            action()


class Scheduler:
    def __init__(self, config: Config, console: Console, stdin_fd: int = 0) -> None:
        self.config = config
        self.console = console
        self.events: "queue.SimpleQueue[object]" = queue.SimpleQueue()
        self.pool = GpuPool(config.gpus, config.jobs_per_gpu)
        self.state = RunState()
        self.launcher = LocalLauncher(
            on_exit=lambda execution: self.events.put(JobExited(execution)),
            shell=config.shell, output=config.output,
        )
        self.reader = Reader(
            stdin_fd, self.make_job, self.events.put,
            read_ahead=max(8, 2 * self.pool.total_slots),
        )
        self.timers = Timers()
        self.executions: Dict[int, Execution] = {}
        #: process groups of ended jobs that left processes behind -> kill deadline
        self.lingering: Dict[int, float] = {}
        self.stop_level = 0
        self.stop_signal: Optional[int] = None
        self.input_error = False

    # --- building jobs --------------------------------------------------------

    def make_job(self, seq: int, raw: RawCommand) -> Job:
        """A plain-text line becomes a job with the command-line defaults."""
        return Job(id=seq, command=raw.text, gpus=self.config.gpus_per_job, invalid=raw.invalid)

    # --- the loop -------------------------------------------------------------

    def run(self) -> int:
        previous = {s: signal.signal(s, self._record_signal) for s in (*STOP_SIGNALS, signal.SIGUSR1)}
        try:
            self.reader.start()
            while not self._done():
                try:
                    event = self.events.get(timeout=self.timers.timeout())
                except queue.Empty:
                    event = None
                if event is not None:
                    self._handle(event)
                self.timers.fire()
                self._dispatch()
        finally:
            # Whatever ended jobs left behind does not outlive the scheduler.
            for pgid in self.lingering:
                send_group(pgid, signal.SIGKILL)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return self.exit_status()

    def _record_signal(self, signum: int, frame: object) -> None:
        # A handler only records; the loop acts (handlers run between bytecodes
        # of the main thread, in the middle of anything).
        self.events.put(SignalReceived(signum))

    def _done(self) -> bool:
        if self.executions:
            return False
        return self.stop_level > 0 or (not self.state.input_open and not self.state.pending)

    def exit_status(self) -> int:
        if self.stop_signal is not None:
            return 128 + self.stop_signal
        if self.state.failed or self.state.not_started_ids or self.input_error:
            return 1
        return 0

    def _handle(self, event: object) -> None:
        if isinstance(event, JobExited):
            self._job_exited(event.execution)
        elif isinstance(event, JobRead):
            if self.stop_level:
                # Read just before the stop: reported, never silently lost.
                # No permit goes back, so the reader consumes nothing more.
                self._not_started(event.job)
            else:
                self.state.pending.append(event.job)
        elif isinstance(event, InputEnded):
            self.state.input_open = False
            if event.error:
                self.input_error = True
                self.console.line(event.error)
        elif isinstance(event, SignalReceived):
            self._signal(event.signum)

    def _dispatch(self) -> None:
        """Start queued jobs, first in first out, while their GPUs are free."""
        pending = self.state.pending
        while pending and not self.stop_level:
            job = pending[0]
            impossible = self.pool.impossible(job)
            if job.invalid or impossible:
                pending.popleft()
                self.reader.job_taken()
                reason = job.invalid or f"it can never run here: {impossible}"
                self._finished(job, (), FailedToStart(reason), 0.0)
                continue
            gpus = self.pool.place(job)
            if gpus is None:
                return
            pending.popleft()
            self.reader.job_taken()
            self._start(job, gpus)

    def _start(self, job: Job, gpus: Tuple[str, ...]) -> None:
        job.attempts += 1
        self.pool.take(gpus)
        try:
            execution = self.launcher.start(job, gpus)
        except LaunchError as exc:
            self.pool.release(gpus)
            self._finished(job, gpus, FailedToStart(str(exc)), 0.0)
            return
        self.executions[job.id] = execution
        self.state.job_started(job, gpus, execution.started)
        self.console.info(f"job {job.id} started on {gpu_label(gpus)}: {job.text(200)}")

    def _job_exited(self, execution: Execution) -> None:
        outcome = execution.collect()
        job = execution.job
        self.pool.release(execution.gpus)
        del self.executions[job.id]
        self.state.job_ended(job)
        if execution.group_alive():
            self._linger(execution)
        self._finished(job, execution.gpus, outcome, execution.runtime)

    def _linger(self, execution: Execution) -> None:
        """The job's shell is gone but it left processes behind: end them too,
        so nothing keeps holding the GPU that is now given to the next job."""
        pgid = execution.pid
        if self.stop_level >= TERMINATE:
            send_group(pgid, signal.SIGKILL)
            return
        self.console.debug(f"job {execution.job.id} left processes behind; terminating them")
        send_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.kill_grace
        self.lingering[pgid] = deadline

        def kill() -> None:
            if self.lingering.pop(pgid, None) is not None:
                send_group(pgid, signal.SIGKILL)

        self.timers.at(deadline, kill)

    def _finished(self, job: Job, gpus: Tuple[str, ...], outcome: Outcome, runtime: float) -> None:
        self.state.record(job, outcome)
        where = f" on {gpu_label(gpus)}" if gpus else ""
        if outcome.ok:
            self.console.info(
                f"job {job.id} finished{where} after {format_duration(runtime)}: {outcome.describe()}")
        elif isinstance(outcome, FailedToStart):
            self.console.line(f"job {job.id} failed: {outcome.describe()}: {job.text(200)}")
        else:
            self.console.line(
                f"job {job.id} failed{where} after {format_duration(runtime)}: "
                f"{outcome.describe()}: {job.text(200)}")

    def _not_started(self, job: Job) -> None:
        self.state.record(job, NotStarted())
        self.console.line(f"not started: job {job.id}: {job.text()}")

    # --- signals --------------------------------------------------------------

    def _signal(self, signum: int) -> None:
        if signum == signal.SIGUSR1:
            for line in status_table(self.state.snapshot()):
                self.console.line(line)
            return
        name = signal_name(signum)
        if signum == signal.SIGHUP and self.stop_level:
            return  # a hang-up only ever drains; escalation is Ctrl-C or SIGTERM
        self.stop_level = min(self.stop_level + 1, KILL)
        if self.stop_level == DRAIN:
            self.stop_signal = signum
            self._drain(name)
        elif self.stop_level == TERMINATE:
            self.console.line(
                f"{name} received again: terminating {len(self.executions)} running job(s) "
                f"(SIGKILL after {self.config.kill_grace:g}s; once more to kill now)")
            for execution in self.executions.values():
                execution.signal(signal.SIGTERM)
            self.timers.at(time.monotonic() + self.config.kill_grace, self._kill_all)
        else:
            self.console.line(f"{name} received a third time: killing every job now")
            self._kill_all()

    def _drain(self, name: str) -> None:
        pending = list(self.state.pending)
        self.state.pending.clear()
        running = len(self.executions)
        self.console.line(
            f"{name} received: draining; {running} running job(s) will finish, "
            f"{len(pending)} queued command(s) will not start "
            f"(Ctrl-C or SIGTERM again terminates the running jobs)")
        for job in pending:
            self._not_started(job)

    def _kill_all(self) -> None:
        for execution in self.executions.values():
            execution.signal(signal.SIGKILL)
        for pgid in list(self.lingering):
            send_group(pgid, signal.SIGKILL)
