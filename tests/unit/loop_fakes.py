"""Fakes for driving a real engine `Loop` without processes: a scripted launcher,
an input pipe, a recording listener, and `run_loop` that ties them together.

A job's attempts follow `Plan`s (by job id; the last plan repeats): end after
`duration` seconds with `outcome`, linger after ending, ignore SIGTERM, never
end even on SIGKILL, or fail to start. Everything an execution does happens on
the loop's own thread through its timers, as a real launcher's pidfds would.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, cast

from simple_gpu_scheduler.engine.config import Settings
from simple_gpu_scheduler.engine.loop import Loop
from simple_gpu_scheduler.input.reader import InputSource, job_factory
from simple_gpu_scheduler.launch.base import LaunchError
from simple_gpu_scheduler.model import events as ev
from simple_gpu_scheduler.model.jobs import Exited, Job, Killed
from simple_gpu_scheduler.threads import MAIN_THREAD_ONLY as HANDLED

if TYPE_CHECKING:
    from simple_gpu_scheduler.launch.base import LauncherEvents, Reactor
    from simple_gpu_scheduler.model.jobs import Outcome
from simple_gpu_scheduler.placement.pool import GpuPool

#: How long an execution takes to react to terminate() or kill().
REACT = 0.001
#: An attempt's outcome unless its plan says otherwise.
SUCCESS = Exited(0)
#: A run that takes longer than this is hung: the watchdog breaks it.
WATCHDOG = 3.0


class Plan:
    """What one attempt does."""

    def __init__(
        self, duration: Optional[float] = 0.005, outcome: Outcome = SUCCESS,
        linger: float = 0.0, term: str = "end", kill: str = "end",
        launch_error: Optional[str] = None,
    ) -> None:
        #: seconds until it ends by itself; None: only a signal ends it
        self.duration = duration
        self.outcome = outcome
        #: seconds from its end until it is cleared; 0: at once; math.inf: only
        #: when its leftovers are signalled (`term` / `kill` decide which)
        self.linger = linger
        #: "end": terminate() ends it (or its leftovers); "ignore": SIGTERM does nothing
        self.term = term
        #: "end": kill() ends it; "never": not even SIGKILL (the give-up path)
        self.kill = kill
        #: start() raises LaunchError with this reason
        self.launch_error = launch_error


class FakeExecution:
    def __init__(self, launcher: FakeLauncher, job: Job, gpus: Tuple[str, ...],
                 plan: Plan) -> None:
        self.launcher = launcher
        self.job = job
        self.attempt = job.attempts
        self.gpus = gpus
        self.host = "fake:" + ",".join(gpus)
        self.plan = plan
        reactor = launcher.reactor
        self.started = reactor.time()
        self.started_wall = time.time()
        self.terminated: List[float] = []
        self.killed: List[float] = []
        self.ended_at: Optional[float] = None
        self.cleared_at: Optional[float] = None
        self.outcome: Optional[Outcome] = None
        self._natural = None
        if plan.duration is not None:
            self._natural = reactor.call_at(
                self.started + plan.duration, lambda: self._end(plan.outcome, plan.linger))

    @property
    def released(self) -> bool:
        """Whether the engine may have given its GPUs to another job."""
        return self.cleared_at is not None or self.launcher.gave_up_on(self)

    def terminate(self) -> None:
        self.terminated.append(self.launcher.reactor.time())
        if self.plan.term == "end":
            self._react(Killed(signal.SIGTERM))

    def kill(self) -> None:
        self.killed.append(self.launcher.reactor.time())
        if self.plan.kill == "end":
            self._react(Killed(signal.SIGKILL))

    def _react(self, outcome: Outcome) -> None:
        reactor = self.launcher.reactor
        if self.ended_at is None:  # the main process dies, and takes its leftovers along
            reactor.call_at(reactor.time() + REACT, lambda: self._end(outcome, 0.0))
        elif self.cleared_at is None:  # what it left behind dies
            reactor.call_at(reactor.time() + REACT, self._clear)

    def _end(self, outcome: Outcome, linger: float) -> None:
        if self.ended_at is not None:
            return
        if self._natural is not None:
            self._natural.cancel()
        reactor = self.launcher.reactor
        self.ended_at = reactor.time()
        self.outcome = outcome
        self.launcher.events.ended(self, outcome, linger > 0)
        if linger <= 0:
            self._clear()
        elif not math.isinf(linger):
            reactor.call_at(self.ended_at + linger, self._clear)

    def _clear(self) -> None:
        if self.cleared_at is not None:
            return
        self.cleared_at = self.launcher.reactor.time()
        self.launcher.events.cleared(self)
        hook = self.launcher.on_clear.get(self.job.id)
        if hook is not None:
            hook(self)


class FakeLauncher:
    """The Launcher protocol, scripted per job; checks GPU capacity at each start."""

    def __init__(self, plans: Mapping[int, Sequence[Plan]], jobs_per_gpu: int = 1) -> None:
        self.plans = plans
        self.jobs_per_gpu = jobs_per_gpu
        self.executions: List[FakeExecution] = []
        #: (job id, attempt, reason) of each start that raised LaunchError
        self.failed_starts: List[Tuple[int, int, str]] = []
        #: what broke the rules: a GPU over capacity, a job on the wrong GPU count
        self.violations: List[str] = []
        self.given_up: List[FakeExecution] = []
        self.finished = 0
        self.closed = 0
        self.on_start: Dict[int, Callable[[FakeExecution], None]] = {}
        #: called on the loop's thread right after the engine was told `cleared`
        self.on_clear: Dict[int, Callable[[FakeExecution], None]] = {}
        #: (seconds after the first start, signum): stop signals for the loop
        self.signals: Sequence[Tuple[float, int]] = ()
        #: when the first execution started (monotonic), once one has
        self.first_start: Optional[float] = None
        #: called at each start, before anything else (the recorder looks at the loop)
        self.watch: Callable[[], None] = lambda: None

    def attach(self, reactor: Reactor, events: LauncherEvents) -> None:
        self.reactor = reactor
        self.events = events

    def plan_for(self, job: Job) -> Plan:
        plans = self.plans.get(job.id) or [Plan()]
        return plans[min(job.attempts, len(plans)) - 1]

    def start(self, job: Job, gpus: Tuple[str, ...]) -> FakeExecution:
        self.watch()
        plan = self.plan_for(job)
        if len(gpus) != job.gpus or len(set(gpus)) != len(gpus):
            self.violations.append(f"job {job.id} got {gpus} for {job.gpus} GPU(s)")
        for gpu in gpus:
            holding = [e.job.id for e in self.executions if gpu in e.gpus and not e.released]
            if len(holding) >= self.jobs_per_gpu:
                self.violations.append(f"job {job.id} on gpu {gpu} beside jobs {holding}")
        if plan.launch_error is not None:
            self.failed_starts.append((job.id, job.attempts, plan.launch_error))
            raise LaunchError(plan.launch_error)
        execution = FakeExecution(self, job, gpus, plan)
        self.executions.append(execution)
        if self.first_start is None:
            # Signals are timed from here, not from the run's start: the input may
            # take a moment to arrive, and a stop before any start tests nothing.
            self.first_start = execution.started
            for delay, signum in self.signals:
                post_signal(cast(Loop, self.reactor), signum, execution.started + delay)
        hook = self.on_start.get(job.id)
        if hook is not None:
            hook(execution)
        return execution

    def gave_up_on(self, execution: FakeExecution) -> bool:
        return any(e is execution for e in self.given_up)

    def finish(self) -> None:
        self.finished += 1

    def close(self) -> None:
        self.closed += 1

    # --- views for the tests --------------------------------------------------------

    def started_ids(self) -> List[int]:
        return [e.job.id for e in self.executions]

    def of(self, job_id: int) -> List[FakeExecution]:
        return [e for e in self.executions if e.job.id == job_id]


class Recorder:
    """The loop's listener: every event, with the time and the job's attempt then."""

    def __init__(self, launcher: FakeLauncher) -> None:
        self.launcher = launcher
        self.events: List[ev.Event] = []
        self.times: List[float] = []
        #: job.attempts when the event was sent (Job objects change afterwards)
        self.attempts: List[int] = []
        self.loop: Optional[Loop] = None
        #: the most records the loop held queued at any event or start
        self.most_queued = 0
        launcher.watch = self.look

    def __call__(self, event: ev.Event) -> None:
        self.events.append(event)
        self.times.append(time.monotonic())
        job = getattr(event, "job", None)
        self.attempts.append(job.attempts if job is not None else 0)
        if isinstance(event, ev.GaveUp):
            self.launcher.given_up.extend(
                e for e in self.launcher.executions
                if e.job is event.job and e.cleared_at is None)
        self.look()

    def look(self) -> None:
        if self.loop is not None:
            self.most_queued = max(self.most_queued, self.loop.state.queued)

    def of(self, kind: type) -> List[ev.Event]:
        return [e for e in self.events if isinstance(e, kind)]

    def ended(self) -> List[ev.AttemptEnded]:
        return [e for e in self.events if isinstance(e, ev.AttemptEnded)]

    def attempts_ended(self) -> List[Tuple[int, int, Outcome, bool]]:
        """(job id, attempt, outcome, retry) of every AttemptEnded, in order."""
        return [(e.job.id, a, e.outcome, e.retry)
                for e, a in zip(self.events, self.attempts) if isinstance(e, ev.AttemptEnded)]

    def time_of(self, event: ev.Event) -> float:
        return next(t for e, t in zip(self.events, self.times) if e is event)

    def not_started_ids(self) -> List[int]:
        return [e.job.id for e in self.of(ev.JobNotStarted)]  # type: ignore[attr-defined]

    def run_ended(self) -> ev.RunEnded:
        last = self.events[-1]
        assert isinstance(last, ev.RunEnded), last
        return last


def pipe_with(data: bytes) -> int:
    """The read end of a pipe holding `data`, its write end closed (the input ended)."""
    assert len(data) < 60000, "more than a pipe holds: the write would block"
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    return r


def lines(commands: Sequence[str]) -> bytes:
    return "".join(c + "\n" for c in commands).encode()


class Run:
    """One finished run: its loop, launcher, listener and exit status."""

    def __init__(self, loop: Loop, launcher: FakeLauncher, recorder: Recorder,
                 source: InputSource, status: int) -> None:
        self.loop = loop
        self.launcher = launcher
        self.recorder = recorder
        self.source = source
        self.status = status

    @property
    def began(self) -> float:
        """When the first job started: what `signals` are timed from."""
        assert self.launcher.first_start is not None
        return self.launcher.first_start

    @property
    def events(self) -> List[ev.Event]:
        return self.recorder.events


class Hung(Exception):
    """The loop did not finish within the watchdog's time."""


def run_loop(
    data: bytes, plans: Optional[Mapping[int, Sequence[Plan]]] = None,
    gpus: Sequence[str] = ("0",), jobs_per_gpu: int = 1, settings: Optional[Settings] = None,
    jsonl: bool = False, gpus_per_job: int = 1, timeout: Optional[float] = None,
    retries: int = 0, signals: Sequence[Tuple[float, int]] = (),
    on_start: Optional[Dict[int, Callable[[FakeExecution], None]]] = None,
    on_clear: Optional[Dict[int, Callable[[FakeExecution], None]]] = None,
    watchdog: float = WATCHDOG, setup: Optional[Callable[[Loop], None]] = None,
) -> Run:
    """Run a real `Loop` over `data` with fakes; `signals` are (seconds after the
    first job started, signum), posted to the loop as its signal handler would."""
    launcher = FakeLauncher(plans or {}, jobs_per_gpu)
    launcher.on_start.update(on_start or {})
    launcher.on_clear.update(on_clear or {})
    launcher.signals = signals
    recorder = Recorder(launcher)
    fd = pipe_with(data)
    source = InputSource(fd, job_factory(jsonl, gpus=gpus_per_job, timeout=timeout,
                                         retries=retries), continuation=not jsonl)
    pool = GpuPool(list(gpus), jobs_per_gpu)
    loop = Loop(settings or Settings(kill_grace=0.05), launcher, source, pool, recorder)
    recorder.loop = loop
    if setup is not None:
        setup(loop)  # e.g. timers that steer the run as a control client would

    def hung() -> None:
        raise Hung(f"the loop did not end within {watchdog}s")

    dog = threading.Timer(watchdog, lambda: loop.call_soon_threadsafe(hung))
    dog.start()
    try:
        status = loop.run()
    finally:
        dog.cancel()
        os.close(fd)
        loop._waker.close()
    return Run(loop, launcher, recorder, source, status)


def post_signal(loop: Loop, signum: int, when: float) -> None:
    """At monotonic `when`, have the loop act on `signum` as if its handler had
    caught it: posted from a timer through `call_soon_threadsafe`."""
    loop.call_at(when, lambda: loop.call_soon_threadsafe(lambda: loop._signal(signum)))


def handlers_now() -> Tuple[Tuple[object, ...], int]:
    """The handlers of the signals the loop handles, and the wake-up fd."""
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    return tuple(signal.getsignal(s) for s in sorted(HANDLED)), wakeup
