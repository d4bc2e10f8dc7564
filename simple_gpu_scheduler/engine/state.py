"""The run's state: one record per job, and every view derived from it.

A job's whole life is in its `JobRecord`: queued, running (an execution on
some GPUs, maybe a timeout), lingering (its main process ended, what it left
behind is being ended; its GPUs stay booked), done (an outcome). Only the
engine's loop writes here. The SIGUSR1 table, the progress line, the summary
and, later, a status request read a `Snapshot` made from these records, so
there is one answer to "where does the run stand".

Finished jobs are not kept as records: a run of a million jobs keeps a count
of successes and the ids of jobs that failed or never started.
"""

from __future__ import annotations

import time

from ..model.jobs import NotStarted, printable
from ..model.snapshot import RunningView, Snapshot

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Any, Dict, Iterator, List, Optional, Tuple

    from ..model.jobs import Job, Outcome

QUEUED, RUNNING, LINGERING = "queued", "running", "lingering"


class JobRecord:
    """One job that is not done yet, and the state of its current attempt."""

    __slots__ = ("job", "status", "gpus", "execution", "started", "deadline", "timed_out",
                 "rung", "outcome", "retry")

    def __init__(self, job: Job) -> None:
        self.job = job
        self.status = QUEUED
        self.gpus: Tuple[str, ...] = ()
        #: the launcher's handle on the running attempt (None while queued)
        self.execution: Any = None
        #: monotonic start of the current attempt
        self.started = 0.0
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

    def __repr__(self) -> str:
        return f"JobRecord(job={self.job.id}, status={self.status})"


class RunState:
    """Every job of the run that is not done, and the counts of those that are."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        #: job id -> record, for queued, running and lingering jobs
        self.records: Dict[int, JobRecord] = {}
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
        #: records with status QUEUED, kept as their status changes (the loop
        #: asks at every step; records are not walked for it)
        self.queued = 0

    # --- transitions ------------------------------------------------------------

    def add(self, job: Job) -> JobRecord:
        record = JobRecord(job)
        self.records[job.id] = record
        self.queued += 1
        return record

    def job_started(self, job: Job, gpus: Tuple[str, ...], when: Optional[float] = None
                    ) -> JobRecord:
        """`job` runs on `gpus` (its record is made if it has none)."""
        record = self.records.get(job.id) or self.add(job)
        if record.status == QUEUED:
            self.queued -= 1
        record.status = RUNNING
        record.gpus = gpus
        record.started = self._clock() if when is None else when
        record.outcome = None
        record.timed_out = False
        record.retry = False
        return record

    def requeue(self, record: JobRecord) -> None:
        if record.status != QUEUED:
            self.queued += 1
        record.status = QUEUED
        record.execution = None
        record.gpus = ()
        record.rung = None

    def record(self, job: Job, outcome: Outcome) -> None:
        """`job` is done for good (no retry left): count it, forget its record."""
        record = self.records.pop(job.id, None)
        if record is not None and record.status == QUEUED:
            self.queued -= 1
        if outcome.ok:
            self.succeeded += 1
        elif isinstance(outcome, NotStarted):
            self.not_started_ids.append(job.id)
        else:
            self.failed_ids.append(job.id)

    # --- views ------------------------------------------------------------------

    def with_status(self, status: str) -> Iterator[JobRecord]:
        return (r for r in self.records.values() if r.status == status)

    def queued_jobs(self) -> List[Job]:
        return [r.job for r in self.with_status(QUEUED)]

    @property
    def failed(self) -> int:
        return len(self.failed_ids)

    @property
    def busy(self) -> bool:
        """Whether some attempt still runs or lingers."""
        return any(r.status != QUEUED for r in self.records.values())

    def snapshot(self, now: Optional[float] = None) -> Snapshot:
        now = self._clock() if now is None else now
        running = tuple(
            RunningView(r.job.id, r.gpus, now - r.started, r.job.text(),
                        printable(r.job.name) if r.job.name else None)
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
