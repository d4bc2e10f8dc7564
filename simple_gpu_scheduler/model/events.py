"""What happens in a run, as values: the engine says it, `report` words it.

The engine decides and never formats a message; it hands each event to a
listener (the console reporter today, a control client later), so the same
history can be printed, logged, sent over a socket or asserted in a unit test.
"""

from __future__ import annotations

from .record import Record

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Callable, Optional, Tuple

    from .jobs import Job, Outcome
    from .snapshot import Snapshot

    #: Where the engine sends its events.
    Listener = Callable[["Event"], None]


class Event(Record):
    __slots__: Tuple[str, ...] = ()


class JobStarted(Event):
    """An attempt started on `gpus`, on the machine `host` names."""

    __slots__ = ("job", "gpus", "host")

    def __init__(self, job: Job, gpus: Tuple[str, ...], host: str) -> None:
        self.job = job
        self.gpus = gpus
        self.host = host


class AttemptEnded(Event):
    """An attempt ended (or could not start); `retry` when the job runs again."""

    __slots__ = ("job", "gpus", "host", "outcome", "started_wall", "runtime", "retry")

    def __init__(
        self, job: Job, gpus: Tuple[str, ...], host: str, outcome: Outcome, started_wall: float,
        runtime: float, retry: bool,
    ) -> None:
        self.job = job
        self.gpus = gpus
        self.host = host
        self.outcome = outcome
        self.started_wall = started_wall
        self.runtime = runtime
        self.retry = retry


class JobSkipped(Event):
    """The job log says this command is done (``--resume``)."""

    __slots__ = ("job",)

    def __init__(self, job: Job) -> None:
        self.job = job


class JobNotStarted(Event):
    """The run stopped before this job could start, or (`reason`) a control
    request cancelled it."""

    __slots__ = ("job", "reason")

    def __init__(self, job: Job, reason: Optional[str] = None) -> None:
        self.job = job
        self.reason = reason


class JobDone(Event):
    """The job is done for good (no attempt follows): what ``wait``, ``log -f``
    and ``--on-finish`` wait for. `gpus` are its last attempt's, if it ran."""

    __slots__ = ("job", "outcome", "gpus")

    def __init__(self, job: Job, outcome: Outcome, gpus: Tuple[str, ...] = ()) -> None:
        self.job = job
        self.outcome = outcome
        self.gpus = gpus


class Steered(Event):
    """A control request changed the run (added jobs, paused, removed a GPU):
    `text` says what, for the console, at `level` (as `Notice`'s)."""

    __slots__ = ("text", "level")

    def __init__(self, text: str, level: int = 0) -> None:
        self.text = text
        self.level = level


class Lingering(Event):
    """The job's main process ended but it left processes behind, now being ended."""

    __slots__ = ("job",)

    def __init__(self, job: Job) -> None:
        self.job = job


class GaveUp(Event):
    """Something of the job survived SIGKILL; its GPUs are given back anyway."""

    __slots__ = ("job", "gpus", "where")

    def __init__(self, job: Job, gpus: Tuple[str, ...], where: str) -> None:
        self.job = job
        self.gpus = gpus
        self.where = where


class TimeoutReached(Event):
    __slots__ = ("job",)

    def __init__(self, job: Job) -> None:
        self.job = job


class Stopping(Event):
    """The run moved up the stop ladder: 1 drain, 2 terminate, 3 kill."""

    __slots__ = ("level", "why", "running", "queued", "grace")

    def __init__(self, level: int, why: str, running: int, queued: int, grace: float) -> None:
        self.level = level
        self.why = why
        self.running = running
        self.queued = queued
        self.grace = grace


class InputFailed(Event):
    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


class Notice(Event):
    """A sentence from a collaborator (the GPU gate, a launcher) for the user.

    `level` is 1 for what must always be shown, 0 for what ``--quiet`` hides,
    -1 for details shown only with ``--verbose``.
    """

    __slots__ = ("text", "level")

    def __init__(self, text: str, level: int = 0) -> None:
        self.text = text
        self.level = level


class StatusAsked(Event):
    """SIGUSR1: show where the run stands."""

    __slots__ = ("snapshot",)

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot


class Progress(Event):
    """The run's state changed or time passed: redraw the progress line."""

    __slots__ = ("snapshot",)

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot


class RunEnded(Event):
    """The last event of a run."""

    __slots__ = ("snapshot", "failed_ids", "stopped")

    def __init__(self, snapshot: Snapshot, failed_ids: Tuple[int, ...], stopped: bool) -> None:
        self.snapshot = snapshot
        self.failed_ids = failed_ids
        self.stopped = stopped
