"""The run's state in one place: queued, running and finished jobs.

The scheduling loop is the only writer. Everything that reports on the run
(the SIGUSR1 table, the summary, later a status query from another terminal)
reads a `Snapshot` taken here, so there is one answer to "where does the run
stand".
"""

from __future__ import annotations

import time
from collections import deque

from ..model.jobs import Job, NotStarted
from ..model.snapshot import RunningView, Snapshot

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Deque, Dict, List, Optional, Tuple

    from ..model.jobs import Outcome


class RunState:
    """Counts and queues of one run."""

    def __init__(self) -> None:
        #: read, not started: the scheduling loop's queue
        self.pending: Deque[Job] = deque()
        #: job id -> (job, gpus, monotonic start time) of every running attempt
        self.running: Dict[int, Tuple[Job, Tuple[str, ...], float]] = {}
        self.succeeded = 0
        self.failed_ids: List[int] = []
        self.not_started_ids: List[int] = []
        #: commands skipped because the job log says they are done (``--resume``)
        self.skipped = 0
        self.input_open = True
        self.started_at = time.monotonic()

    def job_started(self, job: Job, gpus: Tuple[str, ...], when: Optional[float] = None) -> None:
        self.running[job.id] = (job, gpus, time.monotonic() if when is None else when)

    def job_ended(self, job: Job) -> None:
        self.running.pop(job.id, None)

    def record(self, job: Job, outcome: Outcome) -> None:
        """Count a job that has ended for good (no retry left)."""
        if outcome.ok:
            self.succeeded += 1
        elif isinstance(outcome, NotStarted):
            self.not_started_ids.append(job.id)
        else:
            self.failed_ids.append(job.id)

    @property
    def failed(self) -> int:
        return len(self.failed_ids)

    def snapshot(self, now: Optional[float] = None) -> Snapshot:
        now = time.monotonic() if now is None else now
        running = tuple(
            RunningView(job.id, gpus, now - start, job.text())
            for job, gpus, start in sorted(self.running.values(), key=lambda r: r[0].id)
        )
        return Snapshot(
            running=running,
            queued=len(self.pending),
            succeeded=self.succeeded,
            failed=self.failed,
            not_started=len(self.not_started_ids),
            skipped=self.skipped,
            input_open=self.input_open,
            elapsed=now - self.started_at,
        )
