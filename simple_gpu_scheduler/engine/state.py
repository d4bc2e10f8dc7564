"""The run's state: one record per job, and every view derived from it.

A job's whole life is in its `JobRecord`: queued (in the `JobQueue`, in start
order), running (an execution on some GPUs, maybe a timeout), lingering (its
main process ended, what it left behind is being ended; its GPUs stay
booked), done (an outcome). Only the engine's loop writes here. The SIGUSR1
table, the progress line, the summary and the control socket's ``status``
and ``ls`` read views made from these records, so there is one answer to
"where does the run stand".

Finished jobs are not kept as records: each becomes one compact
`FinishedRow` (no environment, no attempt state), and only the latest
`FINISHED_KEPT` rows are kept, so a run of millions of jobs stays bounded.
The ids of jobs that failed or never started are kept for the summary.
"""

from __future__ import annotations

import time
from collections import deque

from ..model.jobs import Exited, FailedToStart, Killed, Lost, NotStarted, TimedOut, printable
from ..model.record import Record
from ..model.snapshot import RunningView, Snapshot
from .queue import JobQueue

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Any, Deque, Dict, Iterator, List, Optional, Tuple

    from ..model.jobs import Job, Outcome

QUEUED, RUNNING, LINGERING = "queued", "running", "lingering"

#: Finished jobs whose rows ``ls`` lists; older rows are forgotten (counted).
FINISHED_KEPT = 100_000
#: Bytes of commands those rows may hold together: 100,000 rows of long
#: commands would otherwise hold gigabytes; the oldest rows go first.
FINISHED_BYTES = 64 * 1024 * 1024


class JobRecord:
    """One job that is not done yet, and the state of its current attempt."""

    __slots__ = ("job", "status", "gpus", "slots", "host", "execution", "started",
                 "started_wall", "runtime", "deadline", "timed_out", "rung", "outcome", "retry",
                 "no_retry", "prev", "next", "level")

    def __init__(self, job: Job) -> None:
        self.job = job
        self.status = QUEUED
        #: the GPUs the attempt runs on, as the job sees them
        self.gpus: Tuple[str, ...] = ()
        #: what it holds in the pool: its GPUs, except on a cluster, where the
        #: pool counts the cluster's GPU slots and the node picks the GPUs
        self.slots: Tuple[str, ...] = ()
        #: the node it runs on ("" on this machine)
        self.host = ""
        #: the launcher's handle on the running attempt (None while queued)
        self.execution: Any = None
        #: monotonic and wall-clock start of the current (or last) attempt
        self.started = 0.0
        self.started_wall: Optional[float] = None
        #: seconds the last attempt ran, once it has ended
        self.runtime: Optional[float] = None
        #: the timer of ``--timeout``, cancelled when the attempt ends in time
        self.deadline: Any = None
        #: the attempt was ended by its timeout
        self.timed_out = False
        #: the stop ladder's hold on this attempt (TERM sent, KILL pending), if any
        self.rung: Any = None
        #: how the attempt ended, once it has (it may still be lingering)
        self.outcome: Optional[Outcome] = None
        #: the job runs again once this attempt is cleared
        self.retry = False
        #: a ``kill`` request ended this attempt: whatever its outcome, no retry
        self.no_retry = False
        #: the queue's links while queued (`engine.queue`)
        self.prev: Optional[JobRecord] = None
        self.next: Optional[JobRecord] = None
        self.level: Any = None

    def __repr__(self) -> str:
        return f"JobRecord(job={self.job.id}, status={self.status})"


class FinishedRow(Record):
    """What ``ls`` shows of a job that is done for good: a few fields and the
    command's bytes, nothing else of the job (its environment can be large)."""

    __slots__ = ("id", "name", "state", "gpus", "started", "runtime", "exit", "signal",
                 "attempts", "priority", "command", "reason", "host")

    def __init__(self, id: int, name: Optional[str], state: str, gpus: Tuple[str, ...],
                 started: Optional[float], runtime: Optional[float], exit: Optional[int],
                 signal: Optional[int], attempts: int, priority: int, command: bytes,
                 reason: Optional[str], host: str = "") -> None:
        self.id = id
        self.host = host
        self.name = name
        self.state = state
        self.gpus = gpus
        self.started = started
        self.runtime = runtime
        self.exit = exit
        self.signal = signal
        self.attempts = attempts
        self.priority = priority
        self.command = command
        self.reason = reason


def outcome_state(outcome: Outcome) -> Tuple[str, Optional[int], Optional[int], Optional[str]]:
    """(state, exit status, signal, reason) of a job that ended with `outcome`."""
    if isinstance(outcome, Exited):
        return ("succeeded" if outcome.ok else "failed"), outcome.code, None, None
    if isinstance(outcome, TimedOut):
        return "timed_out", None, outcome.signal, None
    if isinstance(outcome, Killed):
        return "killed", None, outcome.signal, None
    if isinstance(outcome, FailedToStart):
        return "could_not_start", None, None, outcome.reason
    if isinstance(outcome, Lost):
        return "lost", None, None, outcome.reason
    assert isinstance(outcome, NotStarted)
    return "not_started", None, None, outcome.reason


class RunState:
    """Every job of the run that is not done, and the counts of those that are."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        #: job id -> record, for queued, running and lingering jobs
        self.records: Dict[int, JobRecord] = {}
        #: the queued records, in start order
        self.queue = JobQueue()
        #: job id -> record, for running and lingering jobs
        self.active: Dict[int, JobRecord] = {}
        #: the latest finished jobs, oldest first (`FINISHED_KEPT` at most, and
        #: `FINISHED_BYTES` of commands), and the same by id
        self.finished: Deque[FinishedRow] = deque()
        self.finished_by_id: Dict[int, FinishedRow] = {}
        self._finished_bytes = 0
        #: finished jobs whose rows were dropped from `finished`
        self.forgotten = 0
        self.succeeded = 0
        self.failed_ids: List[int] = []
        self.not_started_ids: List[int] = []
        #: commands skipped because the job log says they are done (``--resume``)
        self.skipped = 0
        self.input_open = True
        self.started_at = clock()
        #: commands the whole input holds, when known up front (``--progress``
        #: on a regular file), else None
        self.total: Optional[int] = None
        #: commands taken from the input so far (skipped ones too)
        self.read = 0

    @property
    def queued(self) -> int:
        """Jobs read or added and not started."""
        return len(self.queue)

    # --- transitions ------------------------------------------------------------

    def add(self, job: Job, front: bool = False) -> JobRecord:
        record = JobRecord(job)
        self.records[job.id] = record
        self.queue.push(record, front)
        return record

    def job_started(self, job: Job, gpus: Tuple[str, ...], when: Optional[float] = None,
                    wall: Optional[float] = None) -> JobRecord:
        """`job` runs on `gpus` (its record is made if it has none)."""
        record = self.records.get(job.id) or self.add(job)
        self.queue.remove(record)
        self.active[job.id] = record
        record.status = RUNNING
        record.gpus = record.slots = gpus
        record.host = ""
        record.started = self._clock() if when is None else when
        record.started_wall = wall
        record.runtime = None
        record.outcome = None
        record.timed_out = False
        record.retry = False
        record.no_retry = False
        return record

    def placed(self, record: JobRecord, gpus: Tuple[str, ...], host: str, when: float,
               wall: float) -> None:
        """A cluster node has started the attempt: on `gpus` of `host`, at `when`."""
        record.gpus = gpus
        record.host = host
        record.started = when
        record.started_wall = wall

    def requeue(self, record: JobRecord) -> None:
        """Queue a job again for its next attempt: first among its priority,
        as it was queued before the jobs now waiting."""
        self.active.pop(record.job.id, None)
        if record.status != QUEUED:
            self.queue.push(record, front=True)
        record.status = QUEUED
        record.execution = None
        record.gpus = record.slots = ()
        record.host = ""
        record.rung = None

    def record(self, job: Job, outcome: Outcome) -> None:
        """`job` is done for good (no retry left): count it, keep its row,
        forget its record."""
        record = self.records.pop(job.id, None)
        if record is not None:
            self.queue.remove(record)
            self.active.pop(job.id, None)
        if outcome.ok:
            self.succeeded += 1
        elif isinstance(outcome, NotStarted):
            self.not_started_ids.append(job.id)
        else:
            self.failed_ids.append(job.id)
        state, code, signum, reason = outcome_state(outcome)
        row = FinishedRow(
            job.id, job.name, state, record.gpus if record is not None else (),
            record.started_wall if record is not None else None,
            record.runtime if record is not None else None,
            code, signum, job.attempts, job.priority, job.command, reason,
            record.host if record is not None else "")
        self.finished.append(row)
        self.finished_by_id[job.id] = row
        self._finished_bytes += len(job.command)
        while len(self.finished) > FINISHED_KEPT or self._finished_bytes > FINISHED_BYTES:
            old = self.finished.popleft()
            del self.finished_by_id[old.id]
            self._finished_bytes -= len(old.command)
            self.forgotten += 1

    # --- views ------------------------------------------------------------------

    def with_status(self, status: str) -> Iterator[JobRecord]:
        if status == QUEUED:
            return iter(self.queue)
        return (r for r in self.active.values() if r.status == status)

    def queued_jobs(self) -> List[Job]:
        return [r.job for r in self.queue]

    @property
    def failed(self) -> int:
        return len(self.failed_ids)

    @property
    def busy(self) -> bool:
        """Whether some attempt still runs or lingers."""
        return bool(self.active)

    def snapshot(self, now: Optional[float] = None) -> Snapshot:
        now = self._clock() if now is None else now
        running = tuple(
            RunningView(r.job.id, r.gpus, now - r.started, r.job.text(),
                        printable(r.job.name) if r.job.name else None, r.host)
            for r in sorted(self.with_status(RUNNING), key=lambda r: r.job.id)
        )
        queued = self.queued
        if self.total is not None and self.input_open:
            queued += max(0, self.total - self.read)  # not read yet
        return Snapshot(
            running=running,
            queued=queued,
            succeeded=self.succeeded,
            failed=self.failed,
            not_started=len(self.not_started_ids),
            skipped=self.skipped,
            input_open=self.input_open,
            elapsed=now - self.started_at,
            total=self.total,
        )
