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
timeout that is the next timer's deadline (kill escalation, the next look at
busy or locked GPUs), so an idle scheduler sleeps in one blocking call and
uses no CPU. `queue.SimpleQueue.put` is reentrant, which is what makes it safe
to call from a signal handler.

Before placement, the `GpuGate` (when there is one) says which GPUs the
outside world keeps from us: busy with other users' work, locked by another
scheduler, lost. It looks at the hardware only while a job waits, at most
every ``--poll`` seconds; a poll timer is set only when a waiting job could
start if the outside world changed.
"""

from __future__ import annotations

import queue
import signal
import time

from ..launch import procgroup as leftovers

from .. import threads
from .config import Config
from ..input.lines import RawCommand
from ..model.jobs import (
    FailedToStart, Job, NotStarted, TimedOut, format_duration, gpu_label, signal_name,
)
from ..launch.local import Execution, LaunchError, LocalLauncher
from ..launch.procgroup import Leftovers
from ..report.console import Console
from ..placement.pool import GpuPool
from ..report.progress import summary_lines
from ..input.reader import InputEnded, JobRead, Reader
from ..model.record import Record
from ..report.status import status_table
from .state import RunState
from .timers import Timer, Timers

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Dict, Optional, Set, Tuple

    from ..model.jobs import Outcome
    from ..input.jsonl import Defaults

DRAIN, TERMINATE, KILL = 1, 2, 3

class SignalReceived(Record):
    __slots__ = ("signum",)

    def __init__(self, signum: int) -> None:
        self.signum = signum


class JobExited(Record):
    __slots__ = ("execution",)

    def __init__(self, execution: Execution) -> None:
        self.execution = execution


class Scheduler:
    def __init__(self, config: Config, console: Console, stdin_fd: int = 0) -> None:
        self.config = config
        self.console = console
        self.events: "queue.SimpleQueue[object]" = queue.SimpleQueue()
        self.pool = GpuPool(
            config.gpus, config.jobs_per_gpu, memory=config.gpu_memory, mig=config.mig)
        self.gate = config.gate
        self._poll_armed = False
        self._said_unknown_memory = False
        self._losses_seen = 0
        #: GPUs freed this turn whose locks may go back (see `_free_gpus`)
        self._unlock_later: Set[str] = set()
        self.state = RunState()
        self.launcher = LocalLauncher(
            on_exit=lambda execution: self.events.put(JobExited(execution)),
            shell=config.shell, output=config.output,
        )
        self.reader = Reader(
            stdin_fd, self.make_job, self.events.put,
            read_ahead=max(8, 2 * self.pool.total_slots),
            continuation=config.input_format != "jsonl",
        )
        self.timers = Timers()
        self.executions: Dict[int, Execution] = {}
        #: job id -> its timeout timer, cancelled when the attempt ends in time
        self.deadlines: Dict[int, Timer] = {}
        #: job ids of attempts ended by their timeout
        self.timed_out: Dict[int, float] = {}
        #: ended jobs' process groups that still have processes: they keep
        #: their GPUs until those are gone
        self.leftovers = Leftovers()
        self._leftover_poll_armed = False
        self.stop_level = 0
        self.stop_signal: Optional[int] = None
        self.input_error = False
        self.ticker: Optional[Timer] = None
        self._jsonl_defaults: Optional[Defaults] = None  # built on the first JSON line

    # --- building jobs --------------------------------------------------------

    def make_job(self, seq: int, raw: RawCommand) -> Job:
        """A plain-text line becomes a job with the command-line defaults; a JSON
        line (``--input jsonl``) brings its own. Runs in the reader thread."""
        if self.config.input_format == "jsonl":
            from ..input.jsonl import Defaults, parse_job

            if self._jsonl_defaults is None:
                self._jsonl_defaults = Defaults(
                    gpus=self.config.gpus_per_job, aliases=self.config.aliases,
                    timeout=self.config.timeout, retries=self.config.retries,
                )
            return parse_job(seq, raw, self._jsonl_defaults)
        return Job(
            id=seq, command=raw.text, gpus=self.config.gpus_per_job, invalid=raw.invalid,
            timeout=self.config.timeout, retries=self.config.retries,
        )

    # --- the loop -------------------------------------------------------------

    def run(self) -> int:
        # The stop signals (the first drains, later ones terminate) and SIGUSR1;
        # helper threads block exactly these, so they reach this thread.
        previous = {s: signal.signal(s, self._record_signal) for s in threads.MAIN_THREAD_ONLY}
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
                if self._unlock_later:
                    assert self.gate is not None
                    self.gate.unlock_unused(self.pool, self._unlock_later)
                    self._unlock_later.clear()
                if self.config.progress is not None:
                    self._show_progress()
        except BaseException:
            # A bug of ours, or KeyboardInterrupt from a handler we did not
            # install: the running jobs are not ours to kill, but say where they are.
            for execution in self.executions.values():
                self.console.line(
                    f"job {execution.job.id} is left running as process group {execution.pid}")
            raise
        finally:
            # Whatever ended jobs left behind does not outlive the scheduler.
            self.leftovers.kill_all(time.monotonic())  # only on an error: `_done` waits
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if self.gate is not None:
                self.gate.close()
            if self.config.progress is not None:
                self.config.progress.close()
        self.launcher.finish_output()
        self._summary()
        return self.exit_status()

    def _record_signal(self, signum: int, frame: object) -> None:
        # A handler only records; the loop acts (handlers run between bytecodes
        # of the main thread, in the middle of anything).
        self.events.put(SignalReceived(signum))

    def _done(self) -> bool:
        if self.executions or self.leftovers:
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
            self._job_read(event.job)
        elif isinstance(event, InputEnded):
            self.state.input_open = False
            if event.error:
                self.input_error = True
                self.console.line(event.error)
        elif isinstance(event, SignalReceived):
            self._signal(event.signum)

    def _job_read(self, job: Job) -> None:
        if self.stop_level:
            # Read just before the stop: reported, never silently lost.
            # No permit goes back, so the reader consumes nothing more.
            self._not_started(job)
        elif self.config.resume is not None and self.config.resume.skip(job.command):
            self.reader.job_taken()
            self.state.skipped += 1
            self.console.debug(f"job {job.id} skipped: already in the job log: {job.text(200)}")
        elif not self._reject_if_unrunnable(job):
            self.state.pending.append(job)

    def _reject_if_unrunnable(self, job: Job) -> bool:
        """Fail a job that can never run here (an invalid line, or requirements
        no GPU meets) at once, instead of leaving it waiting forever."""
        impossible = self.pool.impossible(job)
        if not (job.invalid or impossible):
            return False
        self._taken(job)
        reason = job.invalid or f"it can never run here: {impossible}"
        self._ended(job, (), FailedToStart(reason), time.time(), 0.0, final=True)
        return True

    def _dispatch(self) -> None:
        """Start queued jobs while their GPUs are free.

        Jobs go by (priority, input order): first in first out unless JSONL
        priorities say otherwise. When the first cannot be placed it waits and
        nothing overtakes it, so a big job is never starved by small ones; with
        ``--backfill`` later jobs that fit now start before it. A job that can
        never run here fails at once instead of waiting forever.
        """
        pending = self.state.pending
        if not pending or self.stop_level:
            return
        if self.gate is not None:
            self.gate.refresh(self.pool, self._leaders())  # may find a GPU lost
            if self.pool.losses != self._losses_seen:
                # Jobs are checked when read; a lost GPU can make waiting ones impossible.
                self._losses_seen = self.pool.losses
                for job in list(pending):
                    if job in pending and self.pool.impossible(job):
                        pending.remove(job)
                        self._reject_if_unrunnable(job)
        progress = True
        while progress and pending and not self.stop_level:
            progress = False
            for job in sorted(pending, key=lambda j: (j.priority, j.id)):
                gpus = self._place(job)
                if gpus is not None:
                    pending.remove(job)
                    self._taken(job)
                    self._start(job, gpus)
                    progress = True
                    break
                self._wait_for_outside(job)
                if not self.config.backfill:
                    return

    def _place(self, job: Job) -> Optional[Tuple[str, ...]]:
        """The pool's placement, with the GPUs' locks taken; a GPU whose lock
        another scheduler holds is busy for now and the job is placed again."""
        if job.mem is not None and not self._said_unknown_memory and not self.config.gpu_memory:
            self._said_unknown_memory = True
            self.console.line(
                "jobs declare mem but the GPUs' memory size is unknown (no NVML or "
                "nvidia-smi): pass --gpu-memory; until then mem does not pack jobs")
        while True:
            gpus = self.pool.place(job)
            if gpus is None or self.gate is None or self.gate.lock(self.pool, gpus) is None:
                return gpus

    def _wait_for_outside(self, job: Job) -> None:
        """`job` cannot start now. If it could once the outside world changes
        (a busy GPU frees, another scheduler lets go), look again in ``--poll``
        seconds; if only our own jobs' ends can help, their events will."""
        if self.gate is None or self._poll_armed or self.pool.place(job, ideal=True) is None:
            return
        self._poll_armed = True

        def poll() -> None:
            self._poll_armed = False
            if self.gate is not None:
                self.gate.expire()

        self.timers.at(self.gate.next_check(), poll)

    def _leaders(self) -> Dict[int, Optional[Tuple[Job, Tuple[str, ...]]]]:
        """Our process groups, for telling our processes on a GPU from others'."""
        leaders: Dict[int, Optional[Tuple[Job, Tuple[str, ...]]]] = {
            left.pgid: (left.job, left.gpus) for left in self.leftovers
        }
        for execution in self.executions.values():
            leaders[execution.pid] = (execution.job, execution.gpus)
        return leaders

    def _free_gpus(self, job: Job, gpus: Tuple[str, ...]) -> None:
        self.pool.release(gpus, job)
        if self.gate is not None:
            # Their locks are given back after this turn's dispatch, and only
            # if no job took the GPUs again: a busy queue keeps its locks.
            self._unlock_later.update(gpus)
            self.gate.job_ended(self.pool)

    def _taken(self, job: Job) -> None:
        """A job left the queue: the reader may read one more, unless this was a retry."""
        if job.attempts == 0:
            self.reader.job_taken()

    def _start(self, job: Job, gpus: Tuple[str, ...]) -> None:
        job.attempts += 1
        self.pool.take(gpus, job)
        try:
            execution = self.launcher.start(job, gpus)
        except LaunchError as exc:
            self._free_gpus(job, gpus)
            self._ended(job, gpus, FailedToStart(str(exc)), time.time(), 0.0)
            return
        self.executions[job.id] = execution
        self.state.job_started(job, gpus, execution.started)
        if job.timeout is not None:
            self.deadlines[job.id] = self.timers.at(
                execution.started + job.timeout, lambda: self._time_out(execution))
        if self.console.verbosity >= 0:  # not even the text, with --quiet
            attempt = f" (attempt {job.attempts} of {job.retries + 1})" if job.attempts > 1 else ""
            self.console.info(f"job {job.id} started on {gpu_label(gpus)}{attempt}: {job.text(200)}")

    def _time_out(self, execution: Execution) -> None:
        job = execution.job
        # `ended` is set as soon as the shell exits, before its exit event
        # reaches us (it waits for the output copies): ended in time.
        if self.executions.get(job.id) is not execution or execution.ended is not None:
            return
        self.deadlines.pop(job.id, None)
        self.timed_out[job.id] = job.timeout or 0.0
        self.console.debug(f"job {job.id} reached its timeout; terminating it")
        execution.signal(signal.SIGTERM)

        def kill() -> None:
            if self.executions.get(job.id) is execution:
                execution.signal(signal.SIGKILL)

        self.timers.at(time.monotonic() + self.config.kill_grace, kill)

    def _job_exited(self, execution: Execution) -> None:
        outcome: Outcome = execution.collect()
        job = execution.job
        del self.executions[job.id]
        deadline = self.deadlines.pop(job.id, None)
        if deadline is not None:
            deadline.cancel()
        if job.id in self.timed_out:
            seconds = self.timed_out.pop(job.id)
            outcome = TimedOut(seconds, getattr(outcome, "signal", signal.SIGTERM))
        self.state.job_ended(job)
        if execution.group_alive():
            self._linger(execution)
        else:
            self._free_gpus(job, execution.gpus)
        self._ended(job, execution.gpus, outcome, execution.started_wall, execution.runtime)

    def _linger(self, execution: Execution) -> None:
        """The job's shell is gone but it left processes behind: end them
        (see `leftovers`); its GPUs stay booked until they are gone."""
        self.console.debug(f"job {execution.job.id} left processes behind; terminating them")
        self.leftovers.add(
            execution.pid, execution.job, execution.gpus, time.monotonic(),
            self.config.kill_grace, kill_now=self.stop_level >= KILL)
        self._watch_leftovers()

    def _watch_leftovers(self) -> None:
        if self.leftovers and not self._leftover_poll_armed:
            self._leftover_poll_armed = True
            self.timers.at(time.monotonic() + leftovers.POLL, self._check_leftovers)

    def _check_leftovers(self) -> None:
        self._leftover_poll_armed = False
        gone, given_up = self.leftovers.check(time.monotonic())
        for left in given_up:
            self.console.line(
                f"job {left.job.id}: process group {left.pgid} is still there after SIGKILL; "
                f"giving {gpu_label(left.gpus)} back anyway")
        for left in gone + given_up:
            self._free_gpus(left.job, left.gpus)
        self._watch_leftovers()

    def _ended(
        self, job: Job, gpus: Tuple[str, ...], outcome: Outcome, started_wall: float,
        runtime: float, final: bool = False,
    ) -> None:
        """One attempt ended: log it, then retry, or count the job as done."""
        if self.config.joblog is not None:
            self.config.joblog.write_attempt(job, gpus, started_wall, runtime, outcome)
        retry = (not outcome.ok and not final and not self.stop_level
                 and job.attempts <= job.retries)
        self._report(job, gpus, outcome, runtime, retry)
        if retry:
            self.state.pending.appendleft(job)  # the next free GPU is its
            return
        self.state.record(job, outcome)
        if not outcome.ok and self.config.halt is not None:
            level = DRAIN if self.config.halt == "soon" else TERMINATE
            self._escalate(level, f"job {job.id} failed and --halt-on-failure is {self.config.halt}")

    def _report(
        self, job: Job, gpus: Tuple[str, ...], outcome: Outcome, runtime: float, retry: bool
    ) -> None:
        where = f" on {gpu_label(gpus)}" if gpus else ""
        if outcome.ok:
            if self.console.verbosity < 0:
                return
            self.console.info(
                f"job {job.id} finished{where} after {format_duration(runtime)}: "
                f"{outcome.describe()}")
            return
        after = "" if isinstance(outcome, FailedToStart) else f" after {format_duration(runtime)}"
        again = f" (will retry: attempt {job.attempts + 1} of {job.retries + 1})" if retry else ""
        self.console.line(
            f"job {job.id} failed{where}{after}: {outcome.describe()}{again}: {job.text(200)}")

    def _not_started(self, job: Job) -> None:
        self.state.record(job, NotStarted())
        self.console.line(f"not started: job {job.id}: {job.text()}")

    # --- stopping -------------------------------------------------------------

    def _signal(self, signum: int) -> None:
        if signum == signal.SIGUSR1:
            for line in status_table(self.state.snapshot()):
                self.console.line(line)
            return
        if signum == signal.SIGHUP and self.stop_level:
            return  # a hang-up only ever drains; escalation is Ctrl-C or SIGTERM
        if self.stop_signal is None:
            self.stop_signal = signum
        name = signal_name(signum)
        level = min(self.stop_level + 1, KILL)
        self._escalate(level, f"{name} received" if level == DRAIN else f"{name} received again")

    def _escalate(self, level: int, why: str) -> None:
        """Stop the run: drain, then terminate, then kill; each level once."""
        while self.stop_level < level:
            self.stop_level += 1
            if self.stop_level == DRAIN:
                self._drain(why)
            elif self.stop_level == TERMINATE:
                self.console.line(
                    f"{why}: terminating {len(self.executions)} running job(s) "
                    f"(SIGKILL after {self.config.kill_grace:g}s; "
                    "Ctrl-C or SIGTERM once more kills them now)")
                for execution in self.executions.values():
                    execution.signal(signal.SIGTERM)
                self.timers.at(time.monotonic() + self.config.kill_grace, self._kill_all)
            else:
                self.console.line(f"{why}: killing every job now")
                self._kill_all()

    def _drain(self, why: str) -> None:
        self.reader.stop()  # reads nothing more, posts what it had read
        pending = list(self.state.pending)
        self.state.pending.clear()
        self.console.line(
            f"{why}: draining; {len(self.executions)} running job(s) will finish, "
            f"{len(pending)} queued command(s) will not start "
            "(Ctrl-C or SIGTERM again terminates the running jobs)")
        for job in pending:
            self._not_started(job)

    def _kill_all(self) -> None:
        for execution in self.executions.values():
            execution.signal(signal.SIGKILL)
        self.leftovers.kill_all(time.monotonic())

    # --- reporting ------------------------------------------------------------

    def _show_progress(self) -> None:
        progress = self.config.progress
        assert progress is not None
        progress.show(self.state.snapshot())
        # Keep the clock in the line moving while something runs; an idle
        # scheduler with nothing running sets no timer and sleeps.
        if self.executions and (self.ticker is None or self.ticker.cancelled):
            def tick() -> None:
                self.ticker = None

            self.ticker = self.timers.at(time.monotonic() + progress.interval, tick)

    def _summary(self) -> None:
        snap = self.state.snapshot()
        lines = summary_lines(snap, self.state.failed_ids, self.config.resume_hint)
        quiet_ok = not (snap.failed or snap.not_started or self.stop_level)
        for line in lines:
            (self.console.info if quiet_ok else self.console.line)(line)
