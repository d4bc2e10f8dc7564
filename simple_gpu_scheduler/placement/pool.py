"""Which GPUs a job gets: the slot and memory accounting, as pure logic.

A `GpuPool` knows every schedulable GPU and what our running jobs hold on it.
`place` answers "where could this job start right now" without changing
anything; `take` and `release` book and free. No processes, threads or
hardware here: the scheduling loop feeds in what it learns from the hardware
(`observe`, `set_available`, `mark_lost`), and the tests call all of it
directly.

How many jobs share a GPU:

- with ``jobs_per_gpu`` K, at most K jobs, whatever they declare;
- without it, jobs that declare ``mem`` share a GPU as long as their
  declarations fit in its memory, and a job without ``mem`` has it alone.

Memory is booked by declaration: a running job's ``mem`` stays reserved for its
whole run whatever the hardware shows, so a job that has not allocated yet
never makes its GPU look free to the next one. On top of that, a job must fit
in what the hardware had free at the last look (`observe`): other users'
memory, and whatever our jobs use beyond what they declared.
"""

from __future__ import annotations

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import Collection, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..model.jobs import Job


class GpuSlots:
    """One GPU as the scheduler sees it."""

    __slots__ = (
        "id", "capacity", "memory", "mig", "running", "alone", "reserved", "hw_total",
        "external", "unavailable", "lost", "removed",
    )

    def __init__(
        self, id: str, capacity: Optional[int], memory: Optional[int] = None, mig: bool = False
    ) -> None:
        self.id = id
        #: Jobs at once (``--jobs-per-gpu``); None: memory decides, see the module doc.
        self.capacity = capacity
        #: Bytes that jobs' declarations may add up to (``--gpu-memory`` or the size
        #: the hardware reports); None when unknown: ``mem`` cannot pack jobs then.
        self.memory = memory
        #: A MIG instance: CUDA gives a process only one, so no multi-GPU job here.
        self.mig = mig
        self.running = 0
        #: Running jobs that hold the GPU alone (nothing joins them).
        self.alone = 0
        #: Declared memory of the running jobs that pack by memory.
        self.reserved = 0
        #: Memory the hardware reports, and bytes held beyond our reservations at
        #: the last look (other users, and our jobs' overruns).
        self.hw_total: Optional[int] = None
        self.external = 0
        #: Why it may not take a job now (busy, locked by another scheduler), or None.
        self.unavailable: Optional[str] = None
        #: Why it will never take a job again (the GPU is lost), or None.
        self.lost: Optional[str] = None
        #: Given back by the user (``gpus remove``): no new job goes there.
        self.removed = False

    def __repr__(self) -> str:
        return f"GpuSlots({self.id!r}, running={self.running}, capacity={self.capacity})"


class GpuPool:
    """The slot and memory book of a fixed set of GPUs."""

    def __init__(
        self, ids: Sequence[str], jobs_per_gpu: Optional[int] = 1,
        memory: Optional[Mapping[str, int]] = None, mig: Collection[str] = (),
    ) -> None:
        if jobs_per_gpu is not None and jobs_per_gpu < 1:
            raise ValueError("jobs_per_gpu must be at least 1")
        memory = memory or {}
        self._jobs_per_gpu = jobs_per_gpu
        self._gpus: Dict[str, GpuSlots] = {
            i: GpuSlots(i, jobs_per_gpu, memory=memory.get(i), mig=i in mig) for i in ids
        }
        self._order: Dict[str, int] = {gpu_id: n for n, gpu_id in enumerate(ids)}
        #: GPUs marked lost so far: when it grows, waiting jobs may have become impossible
        self.losses = 0

    @property
    def ids(self) -> List[str]:
        return list(self._gpus)

    @property
    def total_slots(self) -> int:
        """Jobs that could run at once if none declared memory (for read-ahead)."""
        return sum(g.capacity or 1 for g in self._gpus.values())

    def gpu(self, gpu_id: str) -> GpuSlots:
        return self._gpus[gpu_id]

    def running_on(self, gpu_id: str) -> int:
        return self._gpus[gpu_id].running

    # --- what the hardware says ------------------------------------------------

    def observe(self, gpu_id: str, total: Optional[int], external: int) -> None:
        """The hardware's size of this GPU and the bytes held beyond our reservations."""
        gpu = self._gpus[gpu_id]
        gpu.hw_total = total
        gpu.external = max(0, external)

    def set_available(self, gpu_id: str, reason: Optional[str]) -> None:
        """Make a GPU unavailable for new jobs (busy, locked) or available again."""
        self._gpus[gpu_id].unavailable = reason

    def mark_lost(self, gpu_id: str, reason: str) -> None:
        """The GPU is gone for good: it takes no more jobs, and jobs only it could
        run become impossible."""
        if self._gpus[gpu_id].lost is None:
            self.losses += 1
        self._gpus[gpu_id].lost = reason

    def add_gpu(self, gpu_id: str, memory: Optional[int] = None, mig: bool = False) -> None:
        """A GPU joins the pool (``gpus add``), or a removed one comes back."""
        gpu = self._gpus.get(gpu_id)
        if gpu is not None:
            gpu.removed = False
            return
        self._gpus[gpu_id] = GpuSlots(gpu_id, self._jobs_per_gpu, memory=memory, mig=mig)
        self._order[gpu_id] = len(self._order)

    def set_removed(self, gpu_id: str, removed: bool) -> None:
        """A removed GPU takes no new job; what runs there goes on."""
        self._gpus[gpu_id].removed = removed

    # --- placement ---------------------------------------------------------------

    def impossible(self, job: Job) -> Optional[str]:
        """Why `job` could never start on this pool, or None if it could."""
        if job.on is not None:
            unknown = [g for g in job.on if g not in self._gpus]
            if unknown:
                return f"it asks for unknown GPU id {', '.join(unknown)}"
        candidates = [g for g in self._candidates(job) if g.lost is None]
        gone = [g.id for g in self._candidates(job) if g.lost is not None]
        lost = f" (lost: {', '.join(gone)})" if gone else ""
        if job.gpus > 1:
            whole = [g for g in candidates if not g.mig]
            if len(whole) < job.gpus and len(whole) < len(candidates):
                return (f"it needs {job.gpus} GPUs and only {len(whole)} whole GPU(s) can be "
                        "used: MIG instances cannot be combined, CUDA gives a process one")
            candidates = whole
        if job.gpus > len(candidates):
            return f"it needs {job.gpus} GPUs and only {len(candidates)} can be used{lost}"
        if job.mem is not None:
            sizes = [self._size(g) for g in candidates]
            fitting = [s for s in sizes if s is None or s >= job.mem]
            if len(fitting) < job.gpus:
                largest = max(s for s in sizes if s is not None)
                from ..model.units import format_size  # only for this message

                return (f"it needs {format_size(job.mem)} of GPU memory and the largest "
                        f"GPU it may use has {format_size(largest)}")
        return None

    def place(self, job: Job, ideal: bool = False) -> Optional[Tuple[str, ...]]:
        """The GPUs `job` would get now, or None if it must wait.

        The least loaded GPUs are chosen first, so that work spreads over all
        GPUs before any doubles up; ties go to the order of ``--gpus``, so a
        run is reproducible. With `ideal`, what only the outside world blocks
        (busy or locked GPUs, other users' memory) is ignored: "would it fit if
        the others went away", which tells whether waiting for them can help.
        """
        usable = [g for g in self._candidates(job) if self._fits(g, job, ideal)]
        if len(usable) < job.gpus:
            return None
        usable.sort(key=lambda g: (g.running, self._order[g.id]))
        chosen = usable[: job.gpus]
        return tuple(sorted((g.id for g in chosen), key=self._order.__getitem__))

    def take(self, gpus: Iterable[str], job: Optional[Job] = None) -> None:
        """Book `job` (a job without requirements if None) on `gpus`."""
        job = job or Job(id=0, command=b"")
        for gpu_id in gpus:
            gpu = self._gpus[gpu_id]
            if not self._fits(gpu, job, ideal=True):
                raise RuntimeError(f"GPU {gpu_id} has no room for job {job.id}")
            gpu.running += 1
            if self._by_memory(gpu, job):
                gpu.reserved += job.mem or 0
            elif gpu.capacity is None:
                gpu.alone += 1

    def release(self, gpus: Iterable[str], job: Optional[Job] = None) -> None:
        """Undo `take` for the same `gpus` and `job`."""
        job = job or Job(id=0, command=b"")
        for gpu_id in gpus:
            gpu = self._gpus[gpu_id]
            by_memory = self._by_memory(gpu, job)
            alone = not by_memory and gpu.capacity is None
            if gpu.running <= 0 or (alone and gpu.alone <= 0) or \
                    (by_memory and gpu.reserved < (job.mem or 0)):
                raise RuntimeError(f"GPU {gpu_id} released more often than taken")
            gpu.running -= 1
            if by_memory:
                gpu.reserved -= job.mem or 0
            elif alone:
                gpu.alone -= 1

    # --- the rules ----------------------------------------------------------------

    @staticmethod
    def _by_memory(gpu: GpuSlots, job: Job) -> bool:
        """Whether `job` is booked on `gpu` by its declared memory."""
        return job.mem is not None and gpu.memory is not None

    @staticmethod
    def _size(gpu: GpuSlots) -> Optional[int]:
        if gpu.memory is None:
            return None
        return gpu.memory if gpu.hw_total is None else min(gpu.memory, gpu.hw_total)

    def _fits(self, gpu: GpuSlots, job: Job, ideal: bool) -> bool:
        if gpu.lost is not None or gpu.alone or gpu.removed:
            return False
        if not ideal and gpu.unavailable is not None:
            return False
        if job.gpus > 1 and gpu.mig:
            return False
        by_memory = self._by_memory(gpu, job)
        if gpu.capacity is not None:
            if gpu.running >= gpu.capacity:
                return False
        elif not by_memory and gpu.running:
            return False  # a job without `mem` has its GPU alone
        if by_memory:
            need = gpu.reserved + (job.mem or 0)
            if gpu.memory is not None and need > gpu.memory:
                return False
            if gpu.hw_total is not None and need + (0 if ideal else gpu.external) > gpu.hw_total:
                return False
        return True

    def _candidates(self, job: Job) -> List[GpuSlots]:
        if job.on is None:
            return list(self._gpus.values())
        return [self._gpus[g] for g in dict.fromkeys(job.on) if g in self._gpus]
