"""The engine: one thread that owns the run's state and decides everything.

::

    stdin fd ──────────────┐                   ┌──▶ placement: policy + GpuPool (+ GpuGate)
    job pidfds ────────────┤                   │
    wake pipe ◀─ signals ──┼──▶ poll() ──▶ Loop ┼──▶ launcher.start / terminate / kill
             ◀─ sampler ───┤      ▲            │
             ◀─ output end ┘   timers           └──▶ RunState (one record per job)
                                                        │
                                   listener ◀── events ─┘ (report: console, job log, progress)

Everything the loop waits for is one file descriptor in one ``poll`` (the
`Reactor` it is, `engine/reactor.py`): the input (only while the read-ahead
has room), each running job's pidfd, and a wake-up pipe that signal handlers
(`signal.set_wakeup_fd`) and helper threads (the hardware sampler, output
copies) write to. The poll's timeout is the next timer's deadline
(timeouts, the stop ladder, a look at busy GPUs), so an idle scheduler
sleeps in one system call and uses no CPU.

Collaborators come in as arguments (launcher, input source, GPU pool and
gate, listener, clock), so unit tests replay histories without processes.
The loop formats no message: it sends events (`model.events`) to its
listener.
"""

from __future__ import annotations

import signal
import time

from ..errors import ExitCode, LaunchError
from ..model import events as ev
from ..model.jobs import FailedToStart, Killed, NotStarted, TimedOut, signal_name
from ..placement.policy import next_start
from .reactor import Reactor
from .state import LINGERING, QUEUED, RUNNING, RunState
from .stopping import DRAIN, KILL, TERMINATE, StopLadder

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Callable, Dict, Mapping, Optional, Set, Tuple

    from ..gpus.gate import GpuGate
    from ..gpus.sampler import Sampler
    from ..input.reader import InputSource
    from ..launch.base import Execution, Launcher
    from ..model.devices import Usage
    from ..model.jobs import Job, Outcome
    from ..placement.pool import GpuPool
    from .config import Settings
    from .state import JobRecord
    from .timers import Timer

class Loop(Reactor):
    """The scheduling: what the reactor's wake-ups mean for the run."""

    def __init__(
        self, settings: Settings, launcher: Launcher, source: InputSource, pool: GpuPool,
        listener: Callable[[ev.Event], None], gate: Optional[GpuGate] = None,
        sampler: Optional[Sampler] = None,
        owners: Callable[[], Mapping[int, Job]] = dict,
        clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
        total: Optional[int] = None,
    ) -> None:
        self.settings = settings
        self.launcher = launcher
        self.source = source
        self.pool = pool
        self.emit = listener
        self.gate = gate
        self.sampler = sampler
        #: our process groups, for telling our GPU processes from others'
        self.owners = owners
        super().__init__(clock)
        self.wall = wall
        self.state = RunState(clock)
        #: how many commands the input holds, if counted up front (progress only)
        self.state.total = total
        self.ladder = StopLadder(self.call_at, clock, settings.kill_grace, self._give_up)
        self.read_ahead = max(8, 2 * pool.total_slots)
        self.stop_level = 0
        self.stop_signal: Optional[int] = None
        self.input_error = False
        #: pause: start nothing new until unpause (a control request)
        self.paused = False
        #: keep running after the input has ended, for added jobs (``--serve``)
        self.serving = False
        #: whether work beside the jobs still runs (``--on-finish`` commands):
        #: the run waits for it before it ends, unless killing
        self.helpers_busy: Callable[[], bool] = lambda: False
        #: why a job can never run on the launcher's machines, or None (a
        #: cluster's launcher knows its nodes; the pool only counts GPUs)
        self.refuses: Callable[[Job], Optional[str]] = getattr(
            launcher, "refuses", lambda job: None)
        self._watching_input = False
        self._poll_armed = False
        self._said_unknown_memory = False
        self._losses_seen = 0
        #: GPUs freed this turn whose locks may go back (see `_free`)
        self._unlock_later: Set[str] = set()
        self._ticker: Optional[Timer] = None

    # --- the run ------------------------------------------------------------------

    def run(self) -> int:
        """Run until the input has ended and every job is done, or a stop; then
        say the last word (`RunEnded`) and return the exit status."""
        previous = self._install_handlers()
        try:
            self._open()
            self.launcher.attach(self, self)
            try:
                self._turn_done()
                while not self._done():
                    self._wait()
                    self._turn_done()
            except BaseException:
                # A bug of ours (or an interrupt we did not ask for): no job of
                # ours may outlive us holding a GPU.
                for record in list(self.state.records.values()):
                    if record.execution is not None:
                        self.emit(ev.Notice(
                            f"job {record.job.id} is killed: the scheduler is failing", 1))
                raise
            finally:
                self.launcher.close()  # after a clean run, nothing is left to kill
                if self.sampler is not None:
                    self.sampler.close()
                if self.gate is not None:
                    self.gate.close()
            self.launcher.finish()
            # What helper threads posted last (the output a `log -f` client
            # follows, copied as the jobs ended) is handed on before the end.
            self._run_posted(everything=True)
            self.emit(ev.RunEnded(self.state.snapshot(), tuple(self.state.failed_ids),
                                  stopped=self.stop_level > 0))
        finally:
            # Only now: a stop signal while output was still being finished
            # must not meet the default handlers and kill us without a summary.
            self._restore_handlers(previous)
            # The wake-up pipe stays open: a helper thread (an output copy that
            # ends late) may still write to it, and a closed number could by
            # then name another file. It goes with the process.
        return self.exit_status()

    def exit_status(self) -> int:
        if self.stop_signal is not None:
            return ExitCode.for_signal(self.stop_signal)
        if self.state.failed_ids or self.state.not_started_ids or self.input_error:
            return ExitCode.FAILED
        return ExitCode.OK

    def _done(self) -> bool:
        if self.state.busy or (self.stop_level < KILL and self.helpers_busy()):
            return False
        if self.stop_level > 0:
            return True
        return not self.state.input_open and not self.serving and self.state.queued == 0

    def _turn_done(self) -> None:
        """After every wake-up: what threads posted, signals, timers, then
        input and starts."""
        self._run_posted()
        while self._signals:
            self._signal(self._signals.popleft())
        self.timers.fire()
        self._take_input()
        self._dispatch()
        if self._unlock_later:
            assert self.gate is not None
            self.gate.unlock_unused(self.pool, self._unlock_later)
            self._unlock_later.clear()
        if self.settings.progress_every is not None:
            self._progress()

    # --- input --------------------------------------------------------------------

    def _take_input(self) -> None:
        source = self.source
        while not self.stop_level and self.state.queued < self.read_ahead:
            job = source.take()
            if job is None:
                break
            self._job_read(job)
        want = (not self.stop_level and self.state.queued < self.read_ahead
                and source.wants_read())
        if want != self._watching_input:
            self._watching_input = want
            if want:
                self.add_reader(source.fd, self._input_ready)
            else:
                self.remove_reader(source.fd)
        if source.at_end and not source.buffered and self.state.input_open:
            self.state.input_open = False
            if source.error:
                self.input_error = True
                self.emit(ev.InputFailed(source.error))

    def _input_ready(self) -> None:
        self.source.read()
        self._take_input()

    def _job_read(self, job: Job) -> None:
        self.state.read += 1
        skip = self.settings.skip
        if skip is not None and skip(job.command):
            self.state.skipped += 1
            self.emit(ev.JobSkipped(job))
            return
        record = self.state.add(job)
        self._reject_if_unrunnable(record)

    def _reject_if_unrunnable(self, record: JobRecord) -> bool:
        """Fail a job that can never run here (an invalid line, or requirements
        no GPU meets) at once, instead of leaving it waiting forever."""
        job = record.job
        # The launcher first: on a cluster its reason is the one that explains.
        impossible = self.refuses(job) or self.pool.impossible(job)
        if not (job.invalid or impossible):
            return False
        reason = job.invalid or f"it can never run here: {impossible}"
        self._finish(record, FailedToStart(reason), (), "", self.wall(), 0.0, final=True)
        return True

    # --- starting -----------------------------------------------------------------

    def _dispatch(self) -> None:
        """Start queued jobs while their GPUs are free (`placement.policy`)."""
        if not self.state.queued or self.stop_level or self.paused:
            return
        if self.gate is not None:
            self._look_at_gpus()
            if self.pool.losses != self._losses_seen:
                # Jobs are checked when read; a lost GPU can make waiting ones impossible.
                self._losses_seen = self.pool.losses
                for record in list(self.state.with_status(QUEUED)):
                    # A rejection may halt the run (--halt-on-failure), and a
                    # drain settles the rest: skip what is no longer queued.
                    if self.stop_level:
                        break
                    if self.state.records.get(record.job.id) is record \
                            and record.status == QUEUED:
                        self._reject_if_unrunnable(record)
        queue = self.state.queue
        while queue and not self.stop_level:
            # The queue is in start order already; only its head is looked at
            # (all of it with backfill, until a job fits).
            choice, waiting = next_start(
                (r.job for r in queue), self._place, self.settings.backfill)
            for job in waiting:
                self._wait_for_outside(job)
            if choice is None:
                return
            job, gpus = choice
            self._start(self.state.records[job.id], gpus)

    def _look_at_gpus(self) -> None:
        """Start a look at the hardware when one is due; the sample comes
        back later as a callback, never blocking this thread."""
        gate = self.gate
        assert gate is not None
        if not gate.due() or (self.sampler is not None and self.sampler.busy):
            return
        devices = gate.begin_look(self.pool)
        if not devices:
            return
        if self.sampler is not None:
            self.sampler.request(devices, self._sampled)
        elif gate.backend is not None:
            # No sampler given (a caller that built the loop without one): the
            # look is taken here, on this thread, rather than never.
            self._sampled(gate.backend.sample(devices))

    def _sampled(self, samples: Dict[str, Usage]) -> None:
        assert self.gate is not None
        self.gate.sampled(self.pool, samples, self.owners())

    def _place(self, job: Job) -> Optional[Tuple[str, ...]]:
        """The pool's placement, with the GPUs' locks taken; a GPU whose lock
        another scheduler holds is busy for now and the job is placed again."""
        if job.mem is not None and not self._said_unknown_memory and \
                not self.settings.memory_known:
            self._said_unknown_memory = True
            self.emit(ev.Notice(
                "jobs declare mem but the GPUs' memory size is unknown (no NVML or "
                "nvidia-smi): pass --gpu-memory; until then mem does not pack jobs", 1))
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

        self.call_at(self.gate.next_check(), poll)

    def _start(self, record: JobRecord, gpus: Tuple[str, ...]) -> None:
        job = record.job
        job.attempts += 1
        self.pool.take(gpus, job)
        try:
            execution = self.launcher.start(job, gpus)
        except LaunchError as exc:
            self._free(job, gpus)
            self._finish(record, FailedToStart(str(exc)), gpus, "", self.wall(), 0.0)
            return
        self.state.job_started(job, gpus, execution.started, execution.started_wall)
        record.execution = execution
        # A cluster's launcher hands the job to the cluster: it has started
        # once a node says so (`placed`), on the GPUs the node gave it.
        if getattr(execution, "placed", True):
            self._began(record, execution)

    def placed(self, execution: Execution) -> None:
        """A cluster node started the attempt, on ``execution.gpus`` of
        ``execution.host`` (the `LauncherEvents` of a cluster's launcher)."""
        record = self.state.records.get(execution.job.id)
        if record is None or record.execution is not execution or record.status != RUNNING:
            return
        self.state.placed(record, execution.gpus, execution.host, execution.started,
                          execution.started_wall)
        self._began(record, execution)

    def _began(self, record: JobRecord, execution: Execution) -> None:
        """The attempt runs: its timeout counts from now."""
        job = record.job
        if job.timeout is not None:
            record.deadline = self.call_at(
                execution.started + job.timeout, lambda: self._time_out(record))
        self.emit(ev.JobStarted(job, execution.gpus, execution.host))

    def _time_out(self, record: JobRecord) -> None:
        if record.status != RUNNING:
            return
        record.timed_out = True
        record.deadline = None
        self.emit(ev.TimeoutReached(record.job))
        record.rung = self.ladder.stop(record.execution, record.rung)

    # --- ending: the LauncherEvents the launcher calls ------------------------------

    def ended(self, execution: Execution, outcome: Outcome, lingering: bool) -> None:
        """The attempt's main process is gone; what it left may still linger."""
        record = self.state.records.get(execution.job.id)
        if record is None or record.execution is not execution:
            return
        job = record.job
        if record.deadline is not None:
            record.deadline.cancel()
            record.deadline = None
        if record.timed_out:
            outcome = TimedOut(job.timeout or 0.0, getattr(outcome, "signal", signal.SIGTERM))
        record.status = LINGERING
        record.outcome = outcome
        runtime = self.clock() - record.started
        if lingering:
            self.emit(ev.Lingering(job))
            record.rung = self.ladder.stop(execution, record.rung, now=self.stop_level >= KILL)
        self._finish(record, outcome, execution.gpus, execution.host, execution.started_wall,
                     runtime)

    def cleared(self, execution: Execution) -> None:
        """Nothing of the attempt is left: its GPUs go to the next job."""
        record = self.state.records.get(execution.job.id)
        if record is None or record.execution is not execution:
            return  # given up on already
        if record.rung is not None:
            record.rung.cancel()
        self._free(record.job, record.slots)
        self._settle(record)

    def _give_up(self, execution: Execution) -> None:
        """Still there a while after SIGKILL (a zombie nobody reaps): give the
        GPUs back anyway; the launcher kills what is left at exit."""
        record = self.state.records.get(execution.job.id)
        if record is None or record.execution is not execution:
            return
        self.emit(ev.GaveUp(record.job, execution.gpus, execution.host))
        if record.status == RUNNING:
            # Its main process never ended: the attempt ends here, killed.
            record.status = LINGERING
            job = record.job
            record.outcome = (TimedOut(job.timeout or 0.0, signal.SIGKILL) if record.timed_out
                              else Killed(signal.SIGKILL))
            self._finish(record, record.outcome, execution.gpus, execution.host,
                         execution.started_wall, self.clock() - record.started)
        self._free(record.job, record.slots)
        self._settle(record)

    def _finish(
        self, record: JobRecord, outcome: Outcome, gpus: Tuple[str, ...], host: str,
        started_wall: float, runtime: float, final: bool = False,
    ) -> None:
        """One attempt ended: say so; decide whether the job runs again."""
        job = record.job
        retry = (not outcome.ok and not final and not self.stop_level and not record.no_retry
                 and job.attempts <= job.retries)
        record.outcome = outcome
        record.retry = retry
        record.runtime = runtime
        if record.started_wall is None:
            record.started_wall = started_wall
        self.emit(ev.AttemptEnded(job, gpus, host, outcome, started_wall, runtime, retry))
        if record.execution is None:  # it never ran: nothing to clear
            self._settle(record)
        # A job killed on request (`kill`) failed because the user said so:
        # that is no reason for --halt-on-failure to stop the others.
        if not retry and not outcome.ok and self.settings.halt is not None \
                and not record.no_retry:
            level = DRAIN if self.settings.halt == "soon" else TERMINATE
            self._escalate(
                level, f"job {job.id} failed and --halt-on-failure is {self.settings.halt}")

    def _settle(self, record: JobRecord) -> None:
        """The attempt is over and cleared: queue the job again, or count it done."""
        if record.retry and not self.stop_level:
            self.state.requeue(record)
            return
        if record.retry:
            # Its next attempt was announced, and the run stopped since: that
            # attempt is not started, as it would be had it been queued already.
            self._not_started(record.job)
            return
        assert record.outcome is not None
        self._done_for_good(record.job, record.outcome, record.gpus)

    def _done_for_good(self, job: Job, outcome: Outcome, gpus: Tuple[str, ...] = ()) -> None:
        self.state.record(job, outcome)
        self.emit(ev.JobDone(job, outcome, gpus))

    def _free(self, job: Job, gpus: Tuple[str, ...]) -> None:
        self.pool.release(gpus, job)
        if self.gate is not None:
            # Their locks are given back after this turn's dispatch, and only
            # if no job took the GPUs again: a busy queue keeps its locks.
            self._unlock_later.update(gpus)
            self.gate.job_ended(self.pool)

    # --- stopping -------------------------------------------------------------------

    def _signal(self, signum: int) -> None:
        if signum == signal.SIGUSR1:
            self.emit(ev.StatusAsked(self.state.snapshot()))
            return
        if signum == signal.SIGHUP and self.stop_level:
            return  # a hang-up only ever drains; escalation is Ctrl-C or SIGTERM
        if self.stop_signal is None:
            self.stop_signal = signum
        name = signal_name(signum)
        level = min(self.stop_level + 1, KILL)
        self._escalate(level, f"{name} received" if level == DRAIN else f"{name} received again")

    def _escalate(self, level: int, why: str) -> None:
        """Climb to stop `level`: drain, then terminate, then kill; each level once."""
        while self.stop_level < level:
            self.stop_level += 1
            running = [r for r in self.state.records.values() if r.status == RUNNING]
            if self.stop_level == DRAIN:
                self._drain(why, len(running))
            elif self.stop_level == TERMINATE:
                self.emit(ev.Stopping(TERMINATE, why, len(running), 0, self.settings.kill_grace))
                for record in running:
                    record.rung = self.ladder.stop(record.execution, record.rung)
            else:
                self.emit(ev.Stopping(KILL, why, len(running), 0, 0.0))
                for record in list(self.state.records.values()):
                    if record.execution is not None:
                        record.rung = self.ladder.stop(record.execution, record.rung, now=True)

    def _drain(self, why: str, running: int) -> None:
        """Start nothing more: every command read and not started is listed."""
        queued = self.state.queued_jobs()  # in start order
        unread = self.source.drain()  # read from stdin, not taken yet: never lost
        if self._watching_input:
            self._watching_input = False
            self.remove_reader(self.source.fd)
        # Read but not taken yet: they meet the --resume rule as any read job does.
        skip = self.settings.skip
        self.state.read += len(unread)
        if skip is not None:
            left = []
            for job in unread:  # one call per job: a skip uses up a job-log row
                if skip(job.command):
                    self.state.skipped += 1
                    self.emit(ev.JobSkipped(job))
                else:
                    left.append(job)
            unread = left
        self.emit(ev.Stopping(DRAIN, why, running, len(queued) + len(unread),
                              self.settings.kill_grace))
        for job in queued + unread:
            self._not_started(job)
        self.state.input_open = False
        self.serving = False

    def _not_started(self, job: Job, reason: Optional[str] = None) -> None:
        self.emit(ev.JobNotStarted(job, reason))
        self._done_for_good(job, NotStarted(reason))

    # --- progress -------------------------------------------------------------------

    def _progress(self) -> None:
        every = self.settings.progress_every
        assert every is not None
        self.emit(ev.Progress(self.state.snapshot()))
        # Keep the clock in the line moving while something runs; an idle
        # scheduler with nothing running sets no timer and sleeps.
        if self.state.busy and (self._ticker is None or self._ticker.cancelled):
            def tick() -> None:
                self._ticker = None

            self._ticker = self.call_at(self.clock() + every, tick)

