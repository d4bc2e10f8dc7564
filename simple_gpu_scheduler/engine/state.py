"""The run's state in one place: queued, running and finished jobs.

The scheduling loop is the only writer. Everything that reports on the run
(the SIGUSR1 table, the summary, later a status query from another terminal)
reads a `Snapshot` taken here, so there is one answer to "where does the run
stand".
"""

from __future__ import annotations

import time
from collections import deque

from ..model.jobs import Job, NotStarted, format_duration, gpu_label
from ..model.record import Record

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Deque, Dict, List, Optional, Tuple

    from ..model.jobs import Outcome


class RunningView(Record):
    __slots__ = ("job_id", "gpus", "runtime", "command")

    def __init__(self, job_id: int, gpus: Tuple[str, ...], runtime: float, command: str) -> None:
        self.job_id = job_id
        self.gpus = gpus
        self.runtime = runtime
        self.command = command


class Snapshot(Record):
    """Where the run stands at one moment."""

    __slots__ = (
        "running", "queued", "succeeded", "failed", "not_started", "skipped", "input_open",
        "elapsed",
    )

    def __init__(
        self, running: Tuple[RunningView, ...], queued: int, succeeded: int, failed: int,
        not_started: int, skipped: int, input_open: bool, elapsed: float,
    ) -> None:
        self.running = running
        self.queued = queued
        self.succeeded = succeeded
        self.failed = failed
        self.not_started = not_started
        #: commands skipped because the job log says they are done (``--resume``)
        self.skipped = skipped
        self.input_open = input_open
        self.elapsed = elapsed


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


def status_table(snap: Snapshot, width: int = 100) -> List[str]:
    """The SIGUSR1 status report as lines (pure, so tests can read it)."""
    head = (
        f"status after {format_duration(snap.elapsed)}: {len(snap.running)} running, "
        f"{snap.succeeded} succeeded, {snap.failed} failed, {snap.queued} queued"
        + (f", {snap.not_started} not started" if snap.not_started else "")
        + ("" if snap.input_open else ", input ended")
    )
    lines = [head]
    if snap.running:
        gpu_width = max(len(gpu_label(r.gpus)) for r in snap.running)
        lines.append(f"  {'JOB':>5}  {'GPU':<{gpu_width}}  {'TIME':>7}  COMMAND")
        for r in snap.running:
            command = r.command
            room = max(20, width - gpu_width - 20)
            if len(command) > room:
                command = command[: room - 3] + "..."
            lines.append(
                f"  {r.job_id:>5}  {gpu_label(r.gpus):<{gpu_width}}  "
                f"{format_duration(r.runtime):>7}  {command}"
            )
    return lines
