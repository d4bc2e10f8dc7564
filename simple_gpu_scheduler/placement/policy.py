"""Which queued job starts next: the dispatch rule, as one pure function.

Jobs go by (priority, id): first in first out unless JSON lines' priorities
say otherwise (lower first, among the jobs already read). When the first
cannot be placed it waits and nothing overtakes it, so a big job is never
starved by small ones; with backfill, later jobs that fit now start before it.
"""

from __future__ import annotations

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Callable, Iterable, List, Optional, Tuple

    from ..model.jobs import Job

    Placement = Tuple[str, ...]


def dispatch_order(jobs: Iterable[Job]) -> List[Job]:
    return sorted(jobs, key=lambda job: (job.priority, job.id))


def next_start(
    queued: Iterable[Job], place: Callable[[Job], Optional[Placement]], backfill: bool,
) -> Tuple[Optional[Tuple[Job, Placement]], List[Job]]:
    """The job to start now with its GPUs (or None), and the jobs looked at
    that must wait, in order.

    `queued` must be in `dispatch_order`; `place` says where a job would run
    now, or None. Without `backfill` only the first job is ever looked at.
    """
    waiting: List[Job] = []
    for job in queued:
        gpus = place(job)
        if gpus is not None:
            return (job, gpus), waiting
        waiting.append(job)
        if not backfill:
            break
    return None, waiting
