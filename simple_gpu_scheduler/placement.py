"""Which GPUs a job gets: the slot accounting, as pure logic.

A `GpuPool` knows every schedulable GPU, how many jobs each may hold
(``--jobs-per-gpu``) and how many it holds now. `place` answers "where could
this job start right now" without changing anything; `take` and `release`
book and free the slots. No processes, threads or hardware here: the
scheduling loop calls these, and the tests call them directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .jobs import Job


@dataclass
class GpuSlots:
    """One GPU as the scheduler sees it."""

    id: str
    capacity: int
    running: int = 0

    @property
    def free(self) -> int:
        return self.capacity - self.running


class GpuPool:
    """The slot book of a fixed set of GPUs."""

    def __init__(self, ids: Sequence[str], jobs_per_gpu: int = 1) -> None:
        if jobs_per_gpu < 1:
            raise ValueError("jobs_per_gpu must be at least 1")
        self._gpus: Dict[str, GpuSlots] = {i: GpuSlots(i, jobs_per_gpu) for i in ids}
        self._order: Dict[str, int] = {gpu_id: n for n, gpu_id in enumerate(ids)}

    @property
    def ids(self) -> List[str]:
        return list(self._gpus)

    @property
    def total_slots(self) -> int:
        return sum(g.capacity for g in self._gpus.values())

    def running_on(self, gpu_id: str) -> int:
        return self._gpus[gpu_id].running

    def impossible(self, job: Job) -> Optional[str]:
        """Why `job` could never start on this pool, or None if it could."""
        if job.on is not None:
            unknown = [g for g in job.on if g not in self._gpus]
            if unknown:
                return f"it asks for unknown GPU id {', '.join(unknown)}"
            candidates = len(set(job.on))
        else:
            candidates = len(self._gpus)
        if job.gpus > candidates:
            return f"it needs {job.gpus} GPUs and only {candidates} can be used"
        return None

    def place(self, job: Job) -> Optional[Tuple[str, ...]]:
        """The GPUs `job` would get now, or None if it must wait.

        The least loaded GPUs are chosen first, so that with ``--jobs-per-gpu``
        work spreads over all GPUs before any doubles up; ties go to the order
        of ``--gpus``, so a run is reproducible.
        """
        candidates = self._candidates(job)
        usable = [g for g in candidates if g.free > 0]
        if len(usable) < job.gpus:
            return None
        usable.sort(key=lambda g: (g.running, self._order[g.id]))
        chosen = usable[: job.gpus]
        return tuple(sorted((g.id for g in chosen), key=self._order.__getitem__))

    def take(self, gpus: Iterable[str]) -> None:
        for gpu_id in gpus:
            gpu = self._gpus[gpu_id]
            if gpu.free <= 0:
                raise RuntimeError(f"GPU {gpu_id} has no free slot")
            gpu.running += 1

    def release(self, gpus: Iterable[str]) -> None:
        for gpu_id in gpus:
            gpu = self._gpus[gpu_id]
            if gpu.running <= 0:
                raise RuntimeError(f"GPU {gpu_id} released more often than taken")
            gpu.running -= 1

    def _candidates(self, job: Job) -> List[GpuSlots]:
        if job.on is None:
            return list(self._gpus.values())
        return [self._gpus[g] for g in dict.fromkeys(job.on) if g in self._gpus]
