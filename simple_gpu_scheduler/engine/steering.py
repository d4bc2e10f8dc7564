"""What a control request may change in a running engine, as operations.

The control socket's handlers (`control.handlers`) parse and check a
request, then call one of these on the engine's thread; each either changes
the run or raises `Refused` with a sentence for the client, and changes
nothing then. Every operation is all or nothing: a request naming five jobs,
one of them wrong, does nothing to the other four.

They are kept out of `loop.py` so that the loop stays the loop; they use its
state, its stop ladder and its stop levels, and add no state of their own
beyond the loop's `paused` and `serving`.
"""

from __future__ import annotations

from ..model import events as ev
from .state import QUEUED, RUNNING
from .stopping import DRAIN, TERMINATE

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Callable, Iterable, List, Optional, Sequence

    from ..model.jobs import Job
    from .loop import Loop
    from .state import JobRecord

    #: Makes GPUs new to the run usable (checks them as ``--gpus`` ids are,
    #: adds them to the pool and the gate); raises ValueError with why not.
    Admit = Callable[[Sequence[str]], None]


class Refused(Exception):
    """A request that cannot be done; the message says why, for the client."""


def require_job(loop: Loop, job_id: int) -> None:
    """Refuse a job id this run never gave (ids run from 1 to the last given)."""
    if not 0 < job_id <= loop.source.count:
        raise Refused(f"there is no job {job_id} in this run")


class Steering:
    def __init__(self, loop: Loop, admit: Optional[Admit] = None) -> None:
        self.loop = loop
        self._admit = admit

    # --- jobs -------------------------------------------------------------------

    def add(self, jobs: Sequence[Job], front: bool = False) -> List[int]:
        """Queue `jobs` (ids are given here, after every id so far), or refuse
        all of them: one that could never run, or a run that has stopped."""
        loop = self.loop
        if loop.stop_level:
            raise Refused("the run is stopping: it takes no new jobs")
        for n, job in enumerate(jobs, 1):
            which = f"job {n} of {len(jobs)}" if len(jobs) > 1 else "the job"
            if job.invalid:
                raise Refused(f"{which}: {job.invalid}")
            impossible = loop.pool.impossible(job)
            if impossible:
                raise Refused(f"{which} can never run here: {impossible}")
        ids = []
        for job in jobs:
            job.id = loop.source.next_id()
            ids.append(job.id)
        # With `front`, the first job given goes first.
        for job in (reversed(jobs) if front else jobs):
            loop.state.add(job, front)
        what = f"job {ids[0]}" if len(ids) == 1 else f"jobs {ids[0]}-{ids[-1]}"
        # Only with --verbose: a script may add thousands, and each start is said.
        loop.emit(ev.Steered(f"{what} added by a control client", -1))
        return ids

    def cancel(self, ids: Iterable[int]) -> List[int]:
        """Queued jobs will not start: each is listed as not started."""
        records = self._records(ids, (QUEUED,), "queued", "only a queued job can be cancelled "
                                "(kill ends a running one)")
        for record in records:
            self.loop.state.queue.remove(record)
            self.loop._not_started(record.job, "cancelled")
        return [r.job.id for r in records]

    def kill(self, ids: Iterable[int]) -> List[int]:
        """Running jobs get the stop ladder; the attempt is not retried."""
        records = self._records(ids, (RUNNING,), "running", "only a running job can be "
                                "killed (cancel keeps a queued one from starting)")
        loop = self.loop
        for record in records:
            record.no_retry = True
            record.rung = loop.ladder.stop(record.execution, record.rung)
            loop.emit(ev.Steered(f"{record.job.label()} is being killed by a control client"))
        return [r.job.id for r in records]

    def move(self, job_id: int, to: str, before: Optional[int] = None) -> None:
        """Reorder the queue: `to` is "front", "back" or "before" (job `before`)."""
        (record,) = self._records((job_id,), (QUEUED,), "queued", "only queued jobs move")
        queue = self.loop.state.queue
        if to == "before":
            assert before is not None
            if before == job_id:
                raise Refused(f"job {job_id} cannot go before itself")
            (other,) = self._records((before,), (QUEUED,), "queued",
                                     "a job can only go before a queued job")
            queue.remove(record)
            queue.insert_before(record, other)
        else:
            queue.remove(record)
            queue.push(record, front=to == "front")

    def _records(self, ids: Iterable[int], statuses: Sequence[str], what: str,
                 hint: str) -> List[JobRecord]:
        records = []
        state = self.loop.state
        for job_id in dict.fromkeys(ids):
            record = state.records.get(job_id)
            if record is None:
                require_job(self.loop, job_id)
                raise Refused(f"job {job_id} is not {what}: it is done ({hint})")
            if record.status not in statuses:
                raise Refused(f"job {job_id} is not {what}: it is {record.status} ({hint})")
            records.append(record)
        return records

    # --- the run ----------------------------------------------------------------

    def pause(self, paused: bool) -> None:
        loop = self.loop
        if loop.paused != paused:
            loop.paused = paused
            loop.emit(ev.Steered("paused by a control client: no new job starts"
                                 if paused else "unpaused by a control client"))

    def drain(self) -> None:
        self.loop._escalate(DRAIN, "drain asked by a control client")

    def stop(self) -> None:
        self.loop._escalate(TERMINATE, "stop asked by a control client")

    # --- GPUs ---------------------------------------------------------------------

    def remove_gpus(self, ids: Sequence[str], kill: bool = False) -> List[int]:
        """The GPUs take no new job; with `kill`, the jobs on them are killed
        (returned). A GPU's lock goes back once nothing of ours runs there."""
        loop = self.loop
        pool = loop.pool
        unknown = [g for g in ids if g not in pool.ids]
        if unknown:
            raise Refused(f"gpu {unknown[0]} is not one of this run's ({', '.join(pool.ids)})")
        for gpu_id in ids:
            pool.set_removed(gpu_id, True)
        killed: List[int] = []
        if kill:
            on = set(ids)
            running = [r.job.id for r in loop.state.active.values()
                       if r.status == RUNNING and on.intersection(r.gpus)]
            killed = self.kill(running) if running else []
        if loop.gate is not None:
            loop.gate.unlock_unused(pool, ids)
        loop.emit(ev.Steered(f"gpu {','.join(ids)} removed by a control client"))
        return killed

    def add_gpus(self, ids: Sequence[str]) -> None:
        """GPUs take jobs again (removed ones), or join the run (new ones,
        checked by `admit` as ``--gpus`` ids are)."""
        pool = self.loop.pool
        new = [g for g in dict.fromkeys(ids) if g not in pool.ids]
        if new:
            if self._admit is None:
                raise Refused("this run cannot take new GPUs")
            try:
                self._admit(new)
            except ValueError as exc:
                raise Refused(str(exc)) from None
        for gpu_id in ids:
            pool.set_removed(gpu_id, False)
        self.loop.emit(ev.Steered(f"gpu {','.join(ids)} added by a control client"))
